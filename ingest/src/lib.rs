//! # bulkhead-ingest — from the event log to the lake
//!
//! Role: consume `bulkhead.flows.v1` in a consumer group, enrich flows with workloads
//! and labels from `bulkhead.inventory.v1` and with `policy_decision` and IP lists from
//! the verified versions on `bulkhead.policy.v1`, and write the `flows` Delta table
//! (`bulkhead_schemas::lake::flows_schema`, partitioned by date and hour) and the `edges`
//! table (the dependency map, per tumbling window) exactly once; refused messages go to
//! `bulkhead.flows.dlq.v1` as `DeadLetter`s. The read models `workloads`, `status` and
//! `policy` are folds of their topics, replaced as a whole when they change.
//!
//! Entry point: [`run::run`] with an [`IngestConfig`] (from [`IngestArgs`], validated by
//! [`IngestConfig::from_args`] without side effects). `bulkhead ingest` is the command.
//!
//! - [`config`]: flags and their pure validation.
//! - [`run`](mod@run): the consume → buffer → seal loop, rebalances, shutdown.
//! - `committer`: the thread that sorts, encodes and commits sealed buffers while the
//!   loop reads on, and answers a partition's offsets in the tables.
//! - [`writer`]: the Delta tables: sorted zstd Parquet, one `txn` per Kafka partition in
//!   every commit of `flows` and of `edges` (`bulkhead-ingest-<topic>-<partition>`,
//!   version = last offset); [`writer::SnapshotTable`] for the read models.
//! - [`edges`]: orientation (client → server), the once-per-connection rule, windows.
//! - [`dlq`]: what is refused and why, and the dead letter that carries it.
//! - [`enrich`]: source and destination workload and labels, by address and time.
//! - [`policy`]: verified policy versions, decisions and IP lists per flow.
//! - [`read_models`]: `workloads`, `status`, `policy`.
//! - [`follow`]: reading a state topic to its end, then following it.
//! - [`telemetry`]: metrics and logs, one function per event.
//! - [`maintenance`]: compact, vacuum and retention (`bulkhead lake …`).
//! - [`memory`]: freed memory kept for the next commit's buffers.
//!
//! Not yet here (see docs/design-notes.md): S3.
//!
//! Extending: a new append table gets an [`writer::AppendTable`] with its own txn per
//! partition, committed from the same loop after `flows` (as `edges` is); a new read
//! model is a fold plus a batch builder in [`read_models`].

mod committer;
pub mod config;
pub mod dlq;
pub mod edges;
pub mod enrich;
pub mod flow_rows;
pub mod follow;
pub mod maintenance;
pub mod memory;
pub mod policy;
pub mod read_models;
pub mod run;
pub mod telemetry;
pub mod writer;

pub use config::{IngestArgs, IngestConfig};
pub use run::{IngestError, Summary, run};
