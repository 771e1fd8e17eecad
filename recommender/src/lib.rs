//! # bulkhead-recommender — policy from traffic
//!
//! Role: lift observed edges to label-based allow rules an analyst can review.
//! Consumes: the `edges` and `workloads` tables.
//! Produces: `Recommendation`s on `bulkhead.recommendations.v1`.
//!
//! This crate is empty until the policy engine issue lands.
