//! # bulkhead-analytics — SQL over the lake
//!
//! Role: answer data teams' and the console's questions over the lake tables.
//! Consumes: the lake's Delta tables (`bulkhead_schemas::lake::TABLES`: `flows`, `edges`,
//! `workloads`, `policy`, `recommendations`, `status` — whichever exist).
//! Produces: query results for the CLI (`bulkhead sql`), Arrow Flight SQL clients and the
//! HTTP JSON API (`bulkhead serve`), which also hosts the console and the routers of other
//! components (the policy workflow).
//!
//! Entry points:
//! - [`Engine`]: DataFusion over the lake ([`catalog`]; a local lake's Parquet files are read
//!   through memory maps, [`mapped_files`]), read-only, with the flow
//!   functions of [`udf`], the optimizer rules of [`rules`], [`run_aggregate`] and
//!   [`yielding`], and the memory and time limits of [`limits`].
//! - [`cli::run_sql`]: `bulkhead sql`.
//! - [`serve::Server`]: `bulkhead serve` — HTTP ([`http`]) and Flight SQL ([`flight`]).
//!   Other components mount their axum `Router` with
//!   `Server::builder(engine, config).merge(router)`; the bearer token guards them too.
//!
//! Extending: a new SQL function goes into the list in [`udf::all`]; a new HTTP endpoint
//! into [`http::api_routes`] and the OpenAPI document in [`openapi`].

pub mod catalog;
pub mod cli;
pub mod engine;
pub mod flight;
pub mod http;
pub mod lake_scan;
pub mod limits;
pub mod mapped_files;
pub mod openapi;
pub mod output;
mod output_caps;
pub mod queries;
pub mod rules;
pub mod run_aggregate;
pub mod serve;
pub mod sql_shape;
pub mod udf;
pub mod yielding;

pub use catalog::LakeLocation;
pub use engine::{Engine, QueryError};
pub use limits::Limits;
