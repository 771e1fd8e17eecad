//! # bulkhead-ingest — from the event log to the lake
//!
//! Role: consume `bulkhead.flows.v1` in a consumer group, enrich flows with workloads
//! and labels from `bulkhead.inventory.v1`, and write the `flows` Delta table
//! (`bulkhead_schemas::lake::flows_schema`, partitioned by date and hour) exactly once;
//! refused messages go to `bulkhead.flows.dlq.v1` as `DeadLetter`s.
//!
//! Entry point: [`run::run`] with an [`IngestConfig`] (from [`IngestArgs`], validated by
//! [`IngestConfig::from_args`] without side effects). `bulkhead ingest` is the command.
//!
//! - [`config`]: flags and their pure validation.
//! - [`run`]: the consume → buffer → commit loop, rebalances, shutdown.
//! - [`writer`]: the Delta table: sorted zstd Parquet, one `txn` per Kafka partition in
//!   every commit (`bulkhead-ingest-<topic>-<partition>`, version = last offset).
//! - [`dlq`]: what is refused and why, and the dead letter that carries it.
//! - [`enrich`]: source and destination workload and labels, by address and time, from
//!   the inventory topic.
//! - [`telemetry`]: metrics and logs, one function per event.
//! - [`maintenance`]: compact, vacuum and retention (`bulkhead lake …`).
//!
//! Not yet here (see docs/design-notes.md): `policy_decision` from the policy topic, DNS
//! names, IP lists, the `edges`, `workloads` and `status` tables, S3.
//!
//! Extending: a new table gets its own writer next to [`writer::FlowsTable`] with its own
//! txn application ids, committed from the same loop.

pub mod config;
pub mod dlq;
pub mod edges;
pub mod enrich;
pub mod follow;
pub mod maintenance;
pub mod policy;
pub mod read_models;
pub mod run;
pub mod telemetry;
pub mod writer;

pub use config::{IngestArgs, IngestConfig};
pub use run::{IngestError, Summary, run};
