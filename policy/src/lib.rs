//! # bulkhead-policy — the Policy Compute Engine
//!
//! Role: own the policy state and turn reviewed recommendations into signed policy.
//! Consumes: control events on `bulkhead.control.v1` (the state is their fold, rebuilt
//! by replay on start), recommendations (from the recommender), the lake's `flows`
//! table (simulation).
//! Produces: attributed control events, signed `PolicyVersion`s on the compacted
//! `bulkhead.policy.v1`, simulations, Kubernetes NetworkPolicy exports, and the policy
//! part of the HTTP API ([`router`](mod@router)).
//!
//! - [`state`]: the fold ([`state::PolicyState::apply`] refuses bad events without
//!   changing anything);
//! - [`engine`]: the single writer (check, publish, apply; signing key handling);
//! - [`simulate`]: flows replayed against draft and active policy per app;
//! - [`export`]: NetworkPolicy YAML;
//! - [`router`](mod@router): the axum routes of HTTP-API.md.

pub mod engine;
pub mod export;
pub mod router;
pub mod simulate;
pub mod state;

pub use engine::{Engine, EngineConfig, EngineError};
pub use router::router;
pub use state::{ControlError, PolicyState};
