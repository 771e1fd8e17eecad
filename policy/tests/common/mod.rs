//! Shared by the policy tests: generated datacenters as recommender input and as flows.
#![allow(dead_code)]

// The generator of `bench` (bulkhead gen --model datacenter), compiled into the test
// itself: depending on the bench crate would pull the collector and enforcer into
// every policy test build.
#[path = "../../../bench/src/datacenter.rs"]
mod datacenter;

use bulkhead_policy::simulate::FlowKey;
use bulkhead_recommender::{
    EdgeRow, Options, Recommendations, WorkloadLabels, edges_frame, recommend,
};
use bulkhead_schemas::policy::PolicySigner;
use bulkhead_schemas::proto::{self, control_event::Event};
pub use datacenter::{Datacenter, DcSpec};
use polars::prelude::IntoLazy as _;

/// 2025-11-26T00:00:00Z.
pub const END_NS: u64 = 1_764_115_200_000_000_000;

pub fn datacenter(seed: u64, apps: usize) -> Datacenter {
    Datacenter::generate(&DcSpec::day(seed, apps, END_NS))
}

pub fn labels(dc: &Datacenter) -> WorkloadLabels {
    dc.workloads
        .iter()
        .map(|w| (w.id.clone(), w.labels.clone()))
        .collect()
}

/// The `edges` rows of the datacenter's connections (one window: the whole day).
pub fn edge_rows(dc: &Datacenter) -> Vec<EdgeRow> {
    dc.connections
        .iter()
        .map(|c| EdgeRow {
            src_workload: dc.workload_id(c.src).map(str::to_string),
            src_ip: Some(dc.ip(c.src).to_string()),
            dst_workload: dc.workload_id(c.dst).map(str::to_string),
            dst_ip: Some(dc.ip(c.dst).to_string()),
            dst_port: c.port as i32,
            protocol: c.protocol as i32,
            process: (!c.process.is_empty()).then(|| c.process.to_string()),
            flows: c.flows as i64,
            packets: c.flows as i64 * 4,
            bytes: c.bytes as i64,
            first_seen_us: (c.first_seen_unix_ns / 1000) as i64,
            last_seen_us: (c.last_seen_unix_ns / 1000) as i64,
        })
        .collect()
}

pub fn recommendations(dc: &Datacenter) -> Recommendations {
    let frame = edges_frame(&edge_rows(dc)).unwrap().lazy();
    recommend(frame, &labels(dc), &Options::default()).unwrap()
}

/// Every connection as a simulation input, with its legitimacy.
pub fn flow_keys(dc: &Datacenter) -> Vec<(FlowKey, bool)> {
    dc.flow_keys()
}

pub fn signer() -> PolicySigner {
    PolicySigner::new(ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]))
}

/// The changes an analyst makes to adopt the datacenter: label every workload, set it
/// to full enforcement.
pub fn labelling_changes(dc: &Datacenter) -> Vec<Event> {
    let mut out = Vec::new();
    for w in &dc.workloads {
        for (k, v) in &w.labels {
            out.push(Event::LabelAssigned(proto::LabelAssigned {
                workload_id: w.id.clone(),
                label: Some(proto::Label {
                    key: k.clone(),
                    value: v.clone(),
                }),
            }));
        }
        out.push(Event::EnforcementModeSet(proto::EnforcementModeSet {
            workload_id: w.id.clone(),
            mode: proto::EnforcementMode::Full as i32,
        }));
    }
    out
}
