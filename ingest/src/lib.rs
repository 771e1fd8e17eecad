//! # bulkhead-ingest — from the event log to the lake
//!
//! Role: consume flows and the read-model topics, enrich flows with workloads, labels and
//! policy decisions, and write the Delta Lake tables exactly once.
//! Consumes: `bulkhead.flows.v1`, `bulkhead.inventory.v1`, `bulkhead.policy.v1`,
//! `bulkhead.status.v1`.
//! Produces: the `flows`, `edges`, `workloads`, `policy` and `status` tables
//! (`bulkhead_schemas::lake`) and dead letters on `bulkhead.flows.dlq.v1`.
//!
//! This crate is empty until the ingest issue lands.
