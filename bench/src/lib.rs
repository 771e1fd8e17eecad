//! # bulkhead-bench — synthetic workloads and benchmarks
//!
//! Role: produce realistic, reproducible input for tests, the demo and benchmarks, and
//! (as components land) measure them against baselines in the same run.
//! Consumes: a seed and sizes. Produces: [`workload::Estate`]s — hosts with labels and
//! inventories — and their [`FlowBatch`](bulkhead_schemas::proto::FlowBatch)es, exactly as
//! collectors would publish them (both ends of a connection report it).
//!
//! [`lab`] builds test hosts (network namespaces on a bridge) for end-to-end tests and
//! benchmarks; [`demo_lab`] is the persistent lab estate behind `bulkhead lab`, and
//! [`demo_lab::demo`] runs `bulkhead demo` around it (ingest and serve as children).
//! `bulkhead gen` is the command-line face of [`workload`].

pub mod collector;
pub mod datacenter;
pub mod demo_lab;
pub mod enforcer;
pub mod ingest;
pub mod ingest_stages;
pub mod lab;
pub mod query;
pub mod recommend;
pub mod report;
pub mod schemas;
pub mod stats;
pub mod workload;
