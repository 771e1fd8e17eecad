//! # bulkhead-enforcer — policy on the host
//!
//! Role: verify signed policy versions and apply this host's view of them atomically
//! as the nftables table `inet bulkhead`.
//! Consumes: `bulkhead.policy.v1` (`SignedPolicy`, verified with
//! `bulkhead_schemas::policy::PolicyVerifier`) and `bulkhead.inventory.v1`.
//! Produces: `EnforcerStatus` heartbeats on `bulkhead.status.v1`.
//!
//! This crate is empty until the enforcer issue lands.
