//! The flow path's first steps: protobuf `FlowBatch` decode and the columnar conversion
//! into the `flows` Arrow schema, in records per second on one core — beside the
//! protobuf decode alone (the floor any consumer pays), alternating in the same run.

use std::time::Instant;

use bulkhead_schemas::lake::FlowColumns;
use bulkhead_schemas::proto::FlowBatch;
use prost::Message as _;

use crate::stats::Summary;
use crate::workload::{Estate, FlowSpec};

#[derive(Debug, serde::Serialize)]
pub struct ConversionReport {
    pub records: u64,
    pub encoded_bytes: usize,
    pub decode_and_convert_records_per_s: Summary,
    pub baseline_decode_only_records_per_s: Summary,
    /// Conversion throughput / decode-only throughput.
    pub ratio: f64,
}

/// Decodes and converts `records` synthetic records `rounds` times.
pub fn conversion(records: u64, rounds: usize) -> ConversionReport {
    let estate = Estate::generate(7, 200);
    let spec = FlowSpec {
        seed: 7,
        records,
        start_unix_ns: 1_764_115_200_000_000_000,
        span_ns: 300_000_000_000,
        batch_records: 5_000,
    };
    let encoded: Vec<Vec<u8>> = estate.flows(&spec).map(|b| b.encode_to_vec()).collect();
    let encoded_bytes = encoded.iter().map(Vec::len).sum();
    let (mut full, mut decode_only) = (vec![], vec![]);
    for _ in 0..rounds {
        let started = Instant::now();
        let mut columns = FlowColumns::with_capacity(records as usize);
        for bytes in &encoded {
            let batch = FlowBatch::decode(bytes.as_slice()).expect("generated batches decode");
            columns
                .append_batch(&batch)
                .expect("generated addresses are valid");
        }
        let rows = columns.finish().expect("columns build").num_rows();
        assert_eq!(rows as u64, records);
        full.push(records as f64 / started.elapsed().as_secs_f64());

        let started = Instant::now();
        let mut n = 0;
        for bytes in &encoded {
            n += FlowBatch::decode(bytes.as_slice())
                .expect("generated batches decode")
                .records
                .len();
        }
        assert_eq!(n as u64, records);
        decode_only.push(records as f64 / started.elapsed().as_secs_f64());
    }
    let (full, decode_only) = (Summary::of(full), Summary::of(decode_only));
    let ratio = full.median / decode_only.median;
    println!(
        "FlowBatch decode → Arrow: {:.0} records/s (median of {rounds}; spread {:.0}-{:.0}) | baseline decode only: {:.0} records/s → {ratio:.2}×",
        full.median, full.min, full.max, decode_only.median
    );
    ConversionReport {
        records,
        encoded_bytes,
        decode_and_convert_records_per_s: full,
        baseline_decode_only_records_per_s: decode_only,
        ratio,
    }
}
