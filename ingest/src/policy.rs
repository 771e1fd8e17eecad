//! The policy as ingest knows it: every version on `bulkhead.policy.v1` whose Ed25519
//! signature verifies with the key given by `--policy-public-key` (others are refused,
//! counted and logged). A flow is judged against the version that was active at its
//! `first_seen` — the newest version created at or before it — and the mode that version
//! gives the host; before any version the decision is `unknown`.
//!
//! Without a key nothing is trusted: no decisions (`unknown`), no `policy` rows, and
//! ingest says so when it starts.
//!
//! The policy is also the authority on labels (enforcers resolve rules with its labels
//! alone): a workload the active version labels gets those labels in `flows` and `edges`,
//! over the ones its host declares in its inventory.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{KafkaConfig, KafkaError};
use bulkhead_schemas::ip;
use bulkhead_schemas::lake::{Labels, NO_SHARED_LABELS, SharedLabels};
use bulkhead_schemas::policy::{Decider, DecisionMemo, Endpoint, PolicyVerifier, PolicyVersion};
use bulkhead_schemas::proto::{FlowBatch, FlowRecord, PolicyDecision};
use bulkhead_schemas::topics::Topic;
use rustc_hash::FxHashMap;

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

    /// Judges each record by the version active at its `first_seen`: fills
    /// `policy_decision`, `policy_version` and the IP lists of addresses that are no
    /// workload (a decision the collector already made is kept), and gives each end whose
    /// workload that version labels the labels the policy has for it: the version's over
    /// the ones its host declares (`shared[i]`, from [`crate::enrich::Inventory::enrich`]),
    /// as the `workloads` table's `labels` column has them. An end without inventory
    /// labels (an unknown address, or labels the collector filled) is left as it is.
    pub fn decide(
        &self,
        batch: &mut FlowBatch,
        shared: &mut [SharedLabels],
        cache: &mut PolicyCache,
    ) {
        if self.versions.is_empty() {
            return;
        }
        let mut shared = shared.iter_mut();
        for record in &mut batch.records {
            let ends = shared.next();
            let Some(active) = self.active_at(record.first_seen_unix_ns) else {
                continue;
            };
            if let Some([src, dst]) = ends {
                for (workload, labels) in [(&record.src_workload, src), (&record.dst_workload, dst)]
                {
                    let assigned = active.decider.labels_of(workload);
                    if let (Some(declared), Some(assigned)) =
                        (labels.as_ref(), assigned.filter(|a| !a.is_empty()))
                    {
                        *labels = Some(cache.merged(declared, assigned));
                    }
                }
            }
            judge(active, record, cache.memo(active));
        }
    }
}

/// What [`PolicyHistory::decide`] keeps between batches: the merged label maps it made,
/// one per host label map and assignment (rows share them as they share the
/// inventory's, so building the label columns copies each distinct map once, not once per
/// row), and each version's decisions by class of connection ([`DecisionMemo`]: judging
/// a flow against the rules cost more than all of enrichment).
#[derive(Default)]
pub struct PolicyCache {
    /// (the host's map, the assignment) by address → (the host's map, held so that its
    /// address names no other map, and the merged map). Assignments belong to versions,
    /// which live as long as ingest.
    merged: FxHashMap<(usize, usize), (Arc<Labels>, Arc<Labels>)>,
    /// By version number.
    memos: FxHashMap<u64, DecisionMemo<'static>>,
}

/// Merged maps kept before the cache starts again (hosts × versions stay far below).
const MERGED_MAPS_KEPT: usize = 65_536;

/// Versions whose decisions are remembered at once: flows are judged by the version of
/// their time, the newest one or, around a provision, the two newest (each memo may take
/// ~40 MB under a scan).
const MEMOS_KEPT: usize = 2;

impl PolicyCache {
    fn merged(&mut self, declared: &Arc<Labels>, assigned: &'static Labels) -> Arc<Labels> {
        if self.merged.len() >= MERGED_MAPS_KEPT {
            self.merged.clear();
        }
        let key = (
            Arc::as_ptr(declared) as usize,
            assigned as *const Labels as usize,
        );
        let (_, merged) = self.merged.entry(key).or_insert_with(|| {
            let mut labels = (**declared).clone();
            labels.extend(assigned.iter().map(|(k, v)| (k.clone(), v.clone())));
            (declared.clone(), Arc::new(labels))
        });
        merged.clone()
    }

    fn memo(&mut self, active: &Active) -> &mut DecisionMemo<'static> {
        let version = active.version.version;
        if self.memos.len() >= MEMOS_KEPT && !self.memos.contains_key(&version) {
            self.memos.clear();
        }
        self.memos
            .entry(version)
            .or_insert_with(|| active.decider.memo())
    }
}

fn judge(active: &Active, record: &mut FlowRecord, memo: &mut DecisionMemo<'static>) {
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
                memo.ip_lists_containing(addr)
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
    let decision = memo.decide(&active.decider, src, dst, record.protocol, port);
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

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_schemas::policy::PolicyDocument;

    const NS: u64 = 1_000_000_000;

    fn version(number: u64, created_s: u64, workloads: &str) -> PolicyVersion {
        let doc = PolicyDocument::load(&format!("workloads:\n{workloads}"), "test").unwrap();
        let mut version = PolicyVersion::new(number, number - 1, "test", "", doc);
        version.created_unix_ns = created_s * NS;
        version
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_active_version_labels_its_workloads_over_what_their_hosts_declare() {
        let mut history = PolicyHistory::default();
        history.insert(version(
            1,
            100,
            "  - {workload_id: web-1, labels: {app: crm, env: prod}}\n",
        ));
        history.insert(version(
            2,
            200,
            "  - {workload_id: web-1, labels: {env: staging}}\n",
        ));
        let declared = Arc::new(labels(&[("env", "dev"), ("role", "web")]));
        let record = |at_s: u64, dst: &str| FlowRecord {
            first_seen_unix_ns: at_s * NS,
            src_workload: "web-1".into(),
            dst_workload: dst.into(),
            ..Default::default()
        };
        let mut batch = FlowBatch {
            records: vec![
                record(50, ""),
                record(150, "db-1"),
                record(250, ""),
                record(260, ""),
            ],
            ..Default::default()
        };
        let mut shared: Vec<SharedLabels> = vec![
            [Some(declared.clone()), None],
            [Some(declared.clone()), Some(declared.clone())],
            [Some(declared.clone()), None],
            [Some(declared.clone()), None],
        ];
        history.decide(&mut batch, &mut shared, &mut PolicyCache::default());
        let of = |end: &Option<Arc<Labels>>| end.as_deref().cloned().unwrap_or_default();
        assert_eq!(
            of(&shared[0][0]),
            *declared,
            "before any version: the host's own"
        );
        assert_eq!(
            of(&shared[1][0]),
            labels(&[("app", "crm"), ("env", "prod"), ("role", "web")]),
            "version 1's labels over the host's"
        );
        assert!(
            Arc::ptr_eq(shared[1][1].as_ref().unwrap(), &declared),
            "a workload the version does not label keeps its host's map"
        );
        assert_eq!(
            of(&shared[2][0]),
            labels(&[("env", "staging"), ("role", "web")]),
            "version 2 is a whole document: version 1's app label is gone"
        );
        assert!(
            Arc::ptr_eq(
                shared[2][0].as_ref().unwrap(),
                shared[3][0].as_ref().unwrap()
            ),
            "one merged map per host map and version, shared by its rows"
        );
        assert!(
            shared[0][1].is_none(),
            "an end without inventory labels stays so"
        );
    }
}
