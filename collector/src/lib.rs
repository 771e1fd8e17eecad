//! # bulkhead-collector — the agent's eyes
//!
//! Role: capture every flow on the host with eBPF (TC programs on each interface, socket
//! hooks for process attribution, DNS answers for names) and publish them.
//! Consumes: packets and socket events of its own network namespace.
//! Produces: `FlowBatch`es on `bulkhead.flows.v1` and `HostInventory` on
//! `bulkhead.inventory.v1` (types in `bulkhead-schemas`).
//!
//! This crate is empty until the collector issue lands; its contract is fixed by
//! `bulkhead_schemas::proto::{FlowBatch, HostInventory}`.
