//! Bad input: classification of a flow message that cannot become rows, and the dead
//! letter that carries it (byte for byte, with the reason) to `bulkhead.flows.dlq.v1`.

use bulkhead_schemas::FlowBatchDecodeError;
use bulkhead_schemas::lake::FlowColumns;
use bulkhead_schemas::proto::{DeadLetter, FlowBatch};

/// The `FlowBatch` wire schema version this build reads.
pub const SUPPORTED_SCHEMA_VERSION: u32 = 1;

/// Why a message was refused (`error_kind` of the dead letter, and a metric tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    /// Not a `FlowBatch` (garbage, truncated, empty).
    Decode,
    /// A `FlowBatch` of a schema version this build does not know.
    SchemaVersion,
    /// Decodes, but holds a value the lake cannot store (a malformed address).
    Invalid,
}

impl RejectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Decode => "decode",
            RejectKind::SchemaVersion => "schema_version",
            RejectKind::Invalid => "invalid",
        }
    }
}

/// A refused message: what kind of problem and a sentence naming it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub reason: String,
}

/// Decodes one message of the flows topic and appends its records to `columns`. On error
/// nothing is appended. Returns the number of records appended.
pub fn append_message(
    payload: Option<&[u8]>,
    columns: &mut FlowColumns,
    enrich: impl FnOnce(&mut FlowBatch),
) -> Result<usize, Rejection> {
    let mut batch = decode_message(payload)?;
    enrich(&mut batch);
    columns.append_batch(&batch).map_err(|e| Rejection {
        kind: RejectKind::Invalid,
        reason: e.to_string(),
    })?;
    Ok(batch.records.len())
}

/// Decodes and checks one message of the flows topic: a `FlowBatch` of the supported
/// schema version whose addresses the lake can store.
pub fn decode_message(payload: Option<&[u8]>) -> Result<FlowBatch, Rejection> {
    let payload = payload.unwrap_or_default();
    if payload.is_empty() {
        return Err(Rejection {
            kind: RejectKind::Decode,
            reason: "empty message: a FlowBatch always has content".into(),
        });
    }
    let batch = bulkhead_schemas::decode_flow_batch(payload).map_err(|e| match e {
        FlowBatchDecodeError::Malformed(e) => Rejection {
            kind: RejectKind::Decode,
            reason: format!("not a bulkhead.v1.FlowBatch ({} bytes): {e}", payload.len()),
        },
        too_many @ FlowBatchDecodeError::TooManyRecords { .. } => Rejection {
            kind: RejectKind::Invalid,
            reason: format!("FlowBatch refused: {too_many}"),
        },
    })?;
    if batch.schema_version != SUPPORTED_SCHEMA_VERSION {
        return Err(Rejection {
            kind: RejectKind::SchemaVersion,
            reason: format!(
                "FlowBatch schema_version {} from host {:?}; this ingest reads version {SUPPORTED_SCHEMA_VERSION}",
                batch.schema_version, batch.host_id
            ),
        });
    }
    bulkhead_schemas::lake::check_addresses(&batch).map_err(|e| Rejection {
        kind: RejectKind::Invalid,
        reason: e.to_string(),
    })?;
    Ok(batch)
}

/// Where a message came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl Source<'_> {
    /// The dead letter's key: `<topic>/<partition>/<offset>`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// The dead letter for a refused message.
pub fn dead_letter(
    source: &Source<'_>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    rejection: &Rejection,
    consumer: &str,
    at_unix_ns: u64,
) -> DeadLetter {
    DeadLetter {
        schema_version: 1,
        source_topic: source.topic.to_string(),
        source_partition: source.partition,
        source_offset: source.offset,
        key: key.unwrap_or_default().to_vec(),
        payload: payload.unwrap_or_default().to_vec(),
        error_kind: rejection.kind.as_str().to_string(),
        reason: rejection.reason.clone(),
        consumer: consumer.to_string(),
        at_unix_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_schemas::proto::FlowRecord;
    use prost::Message as _;

    fn batch(version: u32, dst_ip: Vec<u8>) -> Vec<u8> {
        FlowBatch {
            schema_version: version,
            host_id: "h1".into(),
            agent_instance_id: "a".into(),
            batch_seq: 4,
            records: vec![FlowRecord {
                src_ip: vec![10, 0, 0, 1],
                dst_ip,
                ip_version: 4,
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn good_batches_append_and_bad_ones_are_classified_without_appending() {
        let mut columns = FlowColumns::default();
        assert_eq!(
            append_message(Some(&batch(1, vec![10, 0, 0, 2])), &mut columns, |_| {}),
            Ok(1)
        );
        let good = batch(1, vec![10, 0, 0, 2]);
        let cases: Vec<(Option<Vec<u8>>, RejectKind, &str)> = vec![
            (None, RejectKind::Decode, "empty"),
            (Some(vec![0xff; 13]), RejectKind::Decode, "13 bytes"),
            (
                Some(good[..good.len() - 3].to_vec()),
                RejectKind::Decode,
                "FlowBatch",
            ),
            (
                Some(batch(2, vec![10, 0, 0, 2])),
                RejectKind::SchemaVersion,
                "schema_version 2",
            ),
            (
                Some(batch(1, vec![1, 2, 3])),
                RejectKind::Invalid,
                "dst_ip has 3 bytes",
            ),
            // Empty records, two bytes each: refused before they are decoded.
            (
                Some([0x32, 0x00].repeat(1_000)),
                RejectKind::Invalid,
                "1000 records in 2000 bytes",
            ),
        ];
        for (payload, kind, needle) in cases {
            let err = append_message(payload.as_deref(), &mut columns, |_| {}).unwrap_err();
            assert_eq!(err.kind, kind, "{err:?}");
            assert!(err.reason.contains(needle), "{needle:?} not in {err:?}");
        }
        assert_eq!(columns.len(), 1, "only the good batch was appended");
    }

    #[test]
    fn dead_letters_keep_the_bytes_and_name_the_source() {
        let source = Source {
            topic: "bulkhead.flows.v1",
            partition: 3,
            offset: 42,
        };
        assert_eq!(source.key(), "bulkhead.flows.v1/3/42");
        let rejection = Rejection {
            kind: RejectKind::Decode,
            reason: "bad".into(),
        };
        let letter = dead_letter(
            &source,
            Some(b"host"),
            Some(b"\x01\x02"),
            &rejection,
            "c",
            9,
        );
        assert_eq!(letter.payload, b"\x01\x02");
        assert_eq!(letter.key, b"host");
        assert_eq!(letter.error_kind, "decode");
        assert_eq!((letter.source_partition, letter.source_offset), (3, 42));
    }
}
