//! The policy as ingest knows it: every version on `bulkhead.policy.v1` whose Ed25519
//! signature verifies with the key given by `--policy-public-key` (others are refused,
//! counted and logged). A flow is judged against the version that was active at its
//! `first_seen` — the newest version created at or before it — and the mode that version
//! gives the host; before any version the decision is `unknown`.
//!
//! Without a key nothing is trusted: no decisions (`unknown`), no `policy` rows, and
//! ingest says so when it starts.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{KafkaConfig, KafkaError};
use bulkhead_schemas::ip;
use bulkhead_schemas::lake::NO_SHARED_LABELS;
use bulkhead_schemas::policy::{
    Decider, Endpoint, PolicyVerifier, PolicyVersion, ip_lists_containing,
};
use bulkhead_schemas::proto::{FlowBatch, FlowRecord, PolicyDecision};
use bulkhead_schemas::topics::Topic;

use crate::telemetry;

/// A verified version, prepared for judging flows.
pub struct Active {
    pub version: &'static PolicyVersion,
    decider: Decider<'static>,
}

/// Verified policy versions, by version number.
#[derive(Default)]
pub struct PolicyHistory {
    versions: BTreeMap<u64, Active>,
    /// Bumped by every accepted version.
    pub generation: u64,
}

/// Shared between the follower task, the ingest loop and the read-model writer.
pub type SharedPolicy = Arc<RwLock<PolicyHistory>>;

impl PolicyHistory {
    /// Verifies and keeps one message of the policy topic; a refused one is reported.
    pub fn apply_bytes(&mut self, verifier: &PolicyVerifier, offset: i64, bytes: &[u8]) {
        match verifier.verify_bytes(bytes, None) {
            Ok(version) => {
                tracing::info!(version = version.version, offset, "policy version verified");
                self.insert(version);
            }
            Err(e) => telemetry::policy_rejected(offset, &e.to_string()),
        }
    }

    /// Keeps a verified version.
    pub fn insert(&mut self, version: PolicyVersion) {
        if self.versions.contains_key(&version.version) {
            return; // a replay of the topic
        }
        // Versions live as long as ingest (they are few: one per provision), so the
        // decider may borrow its document for good.
        let version: &'static PolicyVersion = Box::leak(Box::new(version));
        let active = Active {
            version,
            decider: Decider::new(&version.document),
        };
        self.versions.insert(version.version, active);
        self.generation += 1;
    }

    /// Every verified version, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = &'static PolicyVersion> + '_ {
        self.versions.values().map(|a| a.version)
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&'static PolicyVersion> {
        self.versions.values().next_back().map(|a| a.version)
    }

    /// The version active at `unix_ns`: the newest one created at or before it.
    pub fn active_at(&self, unix_ns: u64) -> Option<&Active> {
        self.versions
            .values()
            .rev()
            .find(|a| a.version.created_unix_ns <= unix_ns)
    }

    /// Fills `policy_decision`, `policy_version` and the IP lists of addresses that are
    /// no workload, from the version active at each record's `first_seen`. A decision
    /// the collector already made is kept.
    pub fn decide(&self, batch: &mut FlowBatch) {
        if self.versions.is_empty() {
            return;
        }
        for record in &mut batch.records {
            let Some(active) = self.active_at(record.first_seen_unix_ns) else {
                continue;
            };
            judge(active, record);
        }
    }
}

fn judge(active: &Active, record: &mut FlowRecord) {
    let doc = &active.version.document;
    for (ip_bytes, workload, lists) in [
        (
            &record.src_ip,
            &record.src_workload,
            &mut record.src_ip_lists,
        ),
        (
            &record.dst_ip,
            &record.dst_workload,
            &mut record.dst_ip_lists,
        ),
    ] {
        if workload.is_empty()
            && lists.is_empty()
            && let Some(addr) = ip::from_bytes(ip_bytes)
        {
            lists.extend(
                ip_lists_containing(doc, addr)
                    .into_iter()
                    .map(str::to_string),
            );
        }
    }
    if record.policy_decision != PolicyDecision::Unknown as i32 {
        return;
    }
    let (client, server, port, _) = crate::edges::connection(record, &NO_SHARED_LABELS);
    fn endpoint<'a>(end: &crate::edges::End<'a>) -> Option<Endpoint<'a>> {
        ip::from_bytes(end.ip).map(|addr| {
            if end.workload.is_empty() {
                Endpoint::address(addr)
            } else {
                Endpoint::workload(addr, end.workload)
            }
        })
    }
    let (Some(src), Some(dst)) = (endpoint(&client), endpoint(&server)) else {
        return;
    };
    let decision = active.decider.decide(src, dst, record.protocol, port);
    record.policy_decision = PolicyDecision::from(decision) as i32;
    record.policy_version = active.version.version;
}

/// Follows the policy topic into a new [`PolicyHistory`] (empty without a key).
pub async fn follow(
    kafka: &KafkaConfig,
    group: &str,
    verifier: Option<PolicyVerifier>,
) -> Result<SharedPolicy, KafkaError> {
    let history: SharedPolicy = Arc::default();
    let Some(verifier) = verifier else {
        tracing::warn!(
            "no --policy-public-key: policy messages are not trusted, so policy_decision stays \
             `unknown` and the policy table stays empty"
        );
        return Ok(history);
    };
    let shared = history.clone();
    crate::follow::follow_topic(kafka, Topic::Policy, group, move |message| {
        let Some(bytes) = message.payload().filter(|b| !b.is_empty()) else {
            return;
        };
        if let Ok(mut h) = shared.write() {
            h.apply_bytes(&verifier, message.offset(), bytes);
        }
    })
    .await?;
    if let Ok(h) = history.read() {
        tracing::info!(
            versions = h.versions.len(),
            latest = h.latest().map(|v| v.version),
            "policy loaded for decisions"
        );
    }
    Ok(history)
}
