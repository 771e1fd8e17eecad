//! # bulkhead-enforcer — policy on the host
//!
//! Role: the VEN's enforcement half. It verifies signed policy versions and applies this
//! host's view of them, atomically, as the nftables table `inet bulkhead`.
//! Consumes: `bulkhead.policy.v1` (`SignedPolicy`, verified with
//! `bulkhead_schemas::policy::PolicyVerifier`) and `bulkhead.inventory.v1` (which
//! addresses each workload has).
//! Produces: `EnforcerStatus` heartbeats on `bulkhead.status.v1`, and the `inet bulkhead`
//! table — nothing else on the host is touched.
//!
//! The path of a policy: [`agent`] (catch up, verify, heartbeat) → [`compile`] (the
//! host's view: rules that concern it, peers resolved to addresses; pure) → [`ranges`]
//! (disjoint set elements; pure) → [`render`] (one nftables JSON transaction; pure) →
//! [`nft`] (the only module that runs `nft`).
//!
//! Extending: a new kind of match is a new bucket in [`compile::Matchers`] and its set
//! and rule in [`render`]; render tests pin the JSON, the end-to-end tests in
//! `tests/enforcer.rs` prove packets are dropped or not.

pub mod agent;
pub mod compile;
pub mod config;
pub mod nft;
pub mod ranges;
pub mod render;
mod telemetry;

pub use config::{EnforceArgs, EnforcerConfig};

/// Why the enforcer stopped.
#[derive(Debug, thiserror::Error)]
pub enum EnforcerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Kafka(#[from] bulkhead_kafka::KafkaError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
}
