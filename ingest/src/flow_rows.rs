//! The `flows` rows of a commit: decoded, enriched `FlowBatch`es held until the commit,
//! then appended to Arrow column builders in the order the files store them.
//!
//! Building the columns as messages arrive and sorting them at the commit gathers every
//! column once more (random reads of 44 columns per row: the largest of ingest's steps).
//! Sorting only the rows' keys and then appending each record once, in file order, skips
//! that gather.

use arrow_array::builder::{Date32Builder, Int32Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;
use bulkhead_schemas::lake::{
    APPEND_CHUNK, BadAddress, FlowColumns, FlowRow, SharedLabels, check_addresses, date_hour,
};
use bulkhead_schemas::proto::{FlowBatch, FlowRecord};

use crate::writer::{PARALLEL_ROWS, key_order, on_two_threads};

/// The columns a `flows` file's rows are ordered by: the table partition (`date`,
/// `hour`), then [`crate::writer::SORT_COLUMNS`], so that IP and port filters prune.
pub const FLOW_FILE_ORDER: [&str; 5] = ["date", "hour", "src_ip", "dst_ip", "dst_port"];

/// One partition's decoded, enriched batches since its last commit.
#[derive(Default)]
pub struct FlowRows {
    /// Each batch with the labels enrichment found for its records' ends.
    batches: Vec<(FlowBatch, Vec<SharedLabels>)>,
    rows: usize,
}

impl FlowRows {
    /// Adds `batch` (with `shared[i]` the labels of record `i`'s ends; a record beyond
    /// `shared` has none). A record with an address the lake cannot store refuses the
    /// whole batch, so the rows never hold half a batch.
    pub fn push(&mut self, batch: FlowBatch, shared: Vec<SharedLabels>) -> Result<(), BadAddress> {
        check_addresses(&batch)?;
        self.rows += batch.records.len();
        self.batches.push((batch, shared));
        Ok(())
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// A record's place: its batch (across every part) and its index in it.
type Place = (u32, u32);

/// The rows of `parts` as `flows` batches ordered by [`FLOW_FILE_ORDER`] (equal keys keep
/// their order: part, then arrival): one batch, or two consecutive ones built on two
/// threads for a large commit. No batch when `parts` hold no row.
pub fn sorted_flows(parts: &[&FlowRows]) -> Result<Vec<RecordBatch>, ArrowError> {
    let batches: Vec<&(FlowBatch, Vec<SharedLabels>)> =
        parts.iter().flat_map(|part| &part.batches).collect();
    let total: usize = parts.iter().map(|part| part.rows).sum();
    if total == 0 {
        return Ok(vec![]);
    }
    let places = match packed_file_order(&batches, total) {
        Some(places) => places,
        None => file_order(&batches, total)?,
    };
    let row = |&(batch, record): &Place| {
        let (batch, shared) = batches[batch as usize];
        FlowRow::of(batch, record as usize, shared)
    };
    let build = |places: &[Place]| -> Result<RecordBatch, ArrowError> {
        let mut columns = FlowColumns::with_capacity(places.len());
        let mut chunks = places.chunks(APPEND_CHUNK);
        let (mut rows, mut next) = (Vec::new(), Vec::with_capacity(APPEND_CHUNK));
        fetch(chunks.next(), row, &mut next);
        while !next.is_empty() {
            std::mem::swap(&mut rows, &mut next);
            fetch(chunks.next(), row, &mut next);
            rows.iter().for_each(|row| prefetch_fields(row.record));
            columns.append_checked_rows(&rows);
        }
        columns.finish()
    };
    if total < PARALLEL_ROWS {
        return Ok(vec![build(&places)?]);
    }
    let (first, second) = places.split_at(total / 2);
    let (first, second) = on_two_threads(|| build(first), || build(second))?;
    Ok(vec![first?, second?])
}

/// In file order the records are scattered over the commit's batches, and waiting for
/// memory one pointer after another took more than the append: while a chunk of rows is
/// appended, the next chunk's records (with their ends' labels) are fetched into the
/// cache, and before a chunk is appended, the strings its records point to.
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    #[allow(unused_unsafe)]
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
}

/// `chunk`'s rows (none for no chunk) into `rows`, their records (with their ends'
/// labels) fetched into the cache.
fn fetch<'a>(
    chunk: Option<&[Place]>,
    row: impl Fn(&Place) -> FlowRow<'a>,
    rows: &mut Vec<FlowRow<'a>>,
) {
    rows.clear();
    rows.extend(chunk.unwrap_or_default().iter().map(row));
    rows.iter().for_each(prefetch_row);
}

fn prefetch_row(row: &FlowRow<'_>) {
    let start = (row.record as *const FlowRecord).cast::<u8>();
    for line in (0..size_of::<FlowRecord>()).step_by(64) {
        prefetch(start.wrapping_add(line));
    }
    prefetch(row.shared);
}

fn prefetch_fields(record: &FlowRecord) {
    for bytes in [&record.src_ip, &record.dst_ip] {
        prefetch(bytes.as_ptr());
    }
    for text in [
        &record.interface,
        &record.process_name,
        &record.executable,
        &record.remote_dns_name,
        &record.src_workload,
        &record.dst_workload,
        &record.host_id,
    ] {
        prefetch(text.as_ptr());
    }
}

/// A record's [`FLOW_FILE_ORDER`] key in integers, then its place (arrival order breaks
/// ties), in 48 bytes: the fewer bytes the sort moves, the faster it is. `date` and
/// `hour` are one count of hours, and the port is the column's `i32` with its sign bit
/// flipped (the same order as unsigned). An address's text of at most 16 bytes,
/// zero-padded, compares as a big-endian integer exactly as the text compares (no
/// address text holds a zero byte).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PackedKey {
    hours: i32,
    src_ip: u128,
    dst_ip: u128,
    dst_port: u32,
    place: Place,
}

const _: () = assert!(size_of::<PackedKey>() == 48);

/// `text` zero-padded to 16 bytes, as a big-endian integer; `None` when longer.
fn packed_text(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    let mut padded = [0u8; 16];
    padded.get_mut(..bytes.len())?.copy_from_slice(bytes);
    Some(u128::from_be_bytes(padded))
}

/// Every record of `batches` with its place, in arrival order.
fn places<'a>(
    batches: &'a [&'a (FlowBatch, Vec<SharedLabels>)],
) -> impl Iterator<Item = (Place, &'a FlowRecord)> {
    batches.iter().enumerate().flat_map(|(b, (batch, _))| {
        batch
            .records
            .iter()
            .enumerate()
            .map(move |(r, record)| ((b as u32, r as u32), record))
    })
}

/// The records' places in [`FLOW_FILE_ORDER`], sorted as integers; `None` when an
/// address's text is too long for that (IPv6 beyond 16 characters): then
/// [`file_order`] sorts them. Comparing integers rather than arrow's row format saves
/// ~0.1 µs per flow (`bench ingest`'s stage lines).
fn packed_file_order(
    batches: &[&(FlowBatch, Vec<SharedLabels>)],
    total: usize,
) -> Option<Vec<Place>> {
    let mut keys = Vec::with_capacity(total);
    let mut text = String::with_capacity(48);
    let mut packed_ip = |ip: &[u8]| {
        bulkhead_schemas::ip::write_text(ip, &mut text);
        packed_text(&text)
    };
    for (place, record) in places(batches) {
        let (date, hour) = date_hour(record.first_seen_unix_ns);
        keys.push(PackedKey {
            hours: date * 24 + hour,
            src_ip: packed_ip(&record.src_ip)?,
            dst_ip: packed_ip(&record.dst_ip)?,
            dst_port: (record.dst_port as i32 as u32) ^ (1 << 31),
            place,
        });
    }
    keys.sort_unstable();
    Some(keys.into_iter().map(|key| key.place).collect())
}

/// The records' places in [`FLOW_FILE_ORDER`], the key columns computed as
/// [`FlowColumns`] computes them and compared in arrow's row format.
fn file_order(
    batches: &[&(FlowBatch, Vec<SharedLabels>)],
    total: usize,
) -> Result<Vec<Place>, ArrowError> {
    let mut date = Date32Builder::with_capacity(total);
    let mut hour = Int32Builder::with_capacity(total);
    let mut src_ip = StringBuilder::with_capacity(total, total * 14);
    let mut dst_ip = StringBuilder::with_capacity(total, total * 14);
    let mut dst_port = Int32Builder::with_capacity(total);
    let mut arrival = Vec::with_capacity(total);
    let mut text = String::with_capacity(48);
    for (place, record) in places(batches) {
        let (d, h) = date_hour(record.first_seen_unix_ns);
        date.append_value(d);
        hour.append_value(h);
        bulkhead_schemas::ip::write_text(&record.src_ip, &mut text);
        src_ip.append_value(&text);
        bulkhead_schemas::ip::write_text(&record.dst_ip, &mut text);
        dst_ip.append_value(&text);
        dst_port.append_value(record.dst_port as i32);
        arrival.push(place);
    }
    let keys: Vec<ArrayRef> = vec![
        std::sync::Arc::new(date.finish()),
        std::sync::Arc::new(hour.finish()),
        std::sync::Arc::new(src_ip.finish()),
        std::sync::Arc::new(dst_ip.finish()),
        std::sync::Arc::new(dst_port.finish()),
    ];
    let order = key_order(&[keys])?;
    Ok(order.iter().map(|&i| arrival[i as usize]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::{SORT_COLUMNS, sort_batches_by};

    fn batch(host: &str, seq: u64, records: Vec<FlowRecord>) -> FlowBatch {
        FlowBatch {
            host_id: host.into(),
            batch_seq: seq,
            records,
            ..Default::default()
        }
    }

    fn record(src: [u8; 4], dst: [u8; 4], port: u32, first_seen_s: u64, bytes: u64) -> FlowRecord {
        FlowRecord {
            src_ip: src.to_vec(),
            dst_ip: dst.to_vec(),
            dst_port: port,
            protocol: 6,
            first_seen_unix_ns: first_seen_s * 1_000_000_000,
            last_seen_unix_ns: first_seen_s * 1_000_000_000,
            bytes,
            ..Default::default()
        }
    }

    /// Two partitions' rows across two hours, with text order unlike numeric order
    /// (10.0.0.10 before 10.0.0.9), equal keys and a port beyond `i32`.
    fn parts() -> Vec<FlowRows> {
        let hour = 1_790_000_000 - 1_790_000_000 % 3600;
        let a = held(
            "a",
            vec![
                vec![
                    record([10, 0, 0, 9], [10, 0, 1, 1], 443, hour + 3700, 1),
                    record([10, 0, 0, 10], [10, 0, 1, 1], 443, hour + 10, 2),
                    record([10, 0, 0, 9], [10, 0, 1, 1], 80, hour + 20, 3),
                ],
                vec![record([10, 0, 0, 9], [10, 0, 1, 1], 80, hour + 30, 4)],
            ],
        );
        let b = held(
            "b",
            vec![vec![
                record([10, 0, 0, 9], [10, 0, 1, 1], 80, hour + 5, 5),
                record([192, 168, 0, 1], [10, 0, 0, 2], 22, hour + 3601, 6),
                // A port no collector sends: stored as a negative `i32`, so first.
                record([10, 0, 0, 9], [10, 0, 1, 1], 3_000_000_000, hour + 40, 9),
            ]],
        );
        vec![a, b]
    }

    /// One partition's rows: a batch from `host` per entry of `batches`, in turn.
    fn held(host: &str, batches: Vec<Vec<FlowRecord>>) -> FlowRows {
        let mut rows = FlowRows::default();
        for (seq, records) in batches.into_iter().enumerate() {
            rows.push(batch(host, seq as u64 + 1, records), vec![])
                .unwrap();
        }
        rows
    }

    /// `parts` built into columns as they arrive, then sorted the general way.
    fn built_then_sorted(parts: &[FlowRows]) -> RecordBatch {
        let built: Vec<RecordBatch> = parts
            .iter()
            .map(|part| {
                let mut columns = FlowColumns::default();
                for (batch, shared) in &part.batches {
                    columns.append_enriched(batch, shared).unwrap();
                }
                columns.finish().unwrap()
            })
            .collect();
        sort_batches_by(&built, &FLOW_FILE_ORDER).unwrap()
    }

    #[test]
    fn rows_come_out_as_sorting_the_built_columns_would_order_them() {
        let parts = parts();
        let refs: Vec<&FlowRows> = parts.iter().collect();
        let sorted = sorted_flows(&refs).unwrap();
        assert_eq!(sorted.len(), 1);
        assert_eq!(sorted[0], built_then_sorted(&parts));
        assert_eq!(FLOW_FILE_ORDER[2..], *SORT_COLUMNS);
        let bytes = sorted[0]
            .column_by_name("bytes")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        // Hour one: 10.0.0.10 (text order), then 10.0.0.9 by the stored port, equal keys
        // in arrival order (partition a before b); hour two: 10.0.0.9, then 192.168.0.1.
        assert_eq!(bytes, vec![2, 9, 3, 4, 5, 1, 6]);
    }

    #[test]
    fn long_ipv6_addresses_are_ordered_by_their_text_too() {
        let mut parts = parts();
        let v6 = |last: u8| {
            let mut ip = [
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
            ];
            ip[8] = 0xab; // "2001:db8::ab00:0:0:N"-like text, longer than 16 characters
            ip.to_vec()
        };
        let mut two = record([10, 0, 0, 9], [10, 0, 1, 1], 443, 1_790_000_000, 7);
        two.src_ip = v6(2);
        let mut ten = record([10, 0, 0, 9], [10, 0, 1, 1], 443, 1_790_000_000, 8);
        ten.src_ip = v6(10);
        parts[1]
            .push(batch("c", 1, vec![two, ten]), vec![])
            .unwrap();
        let batches: Vec<&(FlowBatch, Vec<SharedLabels>)> =
            parts.iter().flat_map(|part| &part.batches).collect();
        assert!(packed_file_order(&batches, 9).is_none(), "too long to pack");
        let refs: Vec<&FlowRows> = parts.iter().collect();
        assert_eq!(sorted_flows(&refs).unwrap()[0], built_then_sorted(&parts));
    }

    #[test]
    fn packed_text_compares_as_the_text_does() {
        let texts = [
            "",
            "1",
            "10.0.0.1",
            "10.0.0.10",
            "10.0.0.9",
            "10.0.0.100",
            "9.9.9.9",
            "fd00::1",
            "fd00::10",
            "fd00::1:0",
            "255.255.255.255",
            "1234567890abcdef",
        ];
        for a in texts {
            for b in texts {
                let (pa, pb) = (packed_text(a).unwrap(), packed_text(b).unwrap());
                assert_eq!(pa.cmp(&pb), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
        assert_eq!(packed_text("1234567890abcdef0"), None);
    }

    #[test]
    fn a_large_commit_is_built_in_two_consecutive_batches() {
        let hour = 1_790_000_000 - 1_790_000_000 % 3600;
        let mut part = FlowRows::default();
        let records: Vec<FlowRecord> = (0..PARALLEL_ROWS as u64 + 11)
            .map(|i| {
                let ip = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes();
                record(ip, [10, 0, 0, 1], (i % 1000) as u32, hour + i % 7200, i)
            })
            .collect();
        part.push(batch("h", 1, records), vec![]).unwrap();
        let sorted = sorted_flows(&[&part]).unwrap();
        assert_eq!(sorted.len(), 2);
        let both = arrow_select::concat::concat_batches(&sorted[0].schema(), &sorted).unwrap();
        let mut columns = FlowColumns::default();
        columns.append_enriched(&part.batches[0].0, &[]).unwrap();
        let built = columns.finish().unwrap();
        assert_eq!(both, sort_batches_by(&[built], &FLOW_FILE_ORDER).unwrap());
    }

    #[test]
    fn a_batch_with_a_bad_address_is_refused_whole() {
        let mut part = FlowRows::default();
        let mut bad = record([10, 0, 0, 1], [10, 0, 0, 2], 80, 1_790_000_000, 1);
        bad.dst_ip = vec![1, 2, 3];
        let good = record([10, 0, 0, 1], [10, 0, 0, 2], 80, 1_790_000_000, 1);
        let error = part
            .push(batch("h", 3, vec![good, bad]), vec![])
            .unwrap_err();
        assert!(error.to_string().contains("dst_ip has 3 bytes"), "{error}");
        assert!(part.is_empty());
        assert!(sorted_flows(&[&part]).unwrap().is_empty());
    }
}
