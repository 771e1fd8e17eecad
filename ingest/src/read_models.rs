//! The read models of the state topics, written as small Delta tables that are replaced
//! as a whole whenever their fold changed (at most once per commit interval):
//!
//! - `workloads` ← `bulkhead.inventory.v1` (latest inventory per host) + the newest
//!   verified policy (labels assigned by the control plane override the host's own;
//!   enforcement mode, quarantine);
//! - `status` ← `bulkhead.status.v1`: the latest heartbeat of every enforcer;
//! - `policy` ← `bulkhead.policy.v1`: every version whose signature verifies (the topic
//!   is compacted, so after compaction that is the versions still on the topic plus…
//!   nothing older: the table mirrors the topic).
//!
//! Replacing the content is idempotent: a restart re-folds the topics and writes the
//! same rows; two ingest processes write the same fold. No `txn` is needed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow_array::builder::{
    BooleanBuilder, Int32Builder, Int64Builder, ListBuilder, MapBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;
use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{KafkaConfig, KafkaError};
use bulkhead_schemas::lake::{policy_schema, status_schema, workloads_schema};
use bulkhead_schemas::proto::{EnforcerState, EnforcerStatus};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;
use tokio::sync::watch;
use url::Url;

use crate::enrich::SharedInventory;
use crate::policy::SharedPolicy;
use crate::telemetry;
use crate::writer::{LakeError, SnapshotTable};
use bulkhead_schemas::lake::table_url as lake_table_url;

/// The latest heartbeat of every enforcer.
#[derive(Debug, Default)]
pub struct StatusBoard {
    pub latest: BTreeMap<String, EnforcerStatus>,
    pub generation: u64,
}

pub type SharedStatus = Arc<RwLock<StatusBoard>>;

impl StatusBoard {
    /// Keeps `status` if it is the host's newest.
    pub fn apply(&mut self, status: EnforcerStatus) {
        let newer = self
            .latest
            .get(&status.host_id)
            .is_none_or(|old| old.at_unix_ns <= status.at_unix_ns);
        if newer && !status.host_id.is_empty() {
            self.latest.insert(status.host_id.clone(), status);
            self.generation += 1;
        }
    }
}

/// Follows the status topic into a new [`StatusBoard`].
pub async fn follow_status(kafka: &KafkaConfig, group: &str) -> Result<SharedStatus, KafkaError> {
    let board: SharedStatus = Arc::default();
    let shared = board.clone();
    crate::follow::follow_topic(kafka, Topic::Status, group, move |message| {
        let Some(bytes) = message.payload() else {
            return;
        };
        match EnforcerStatus::decode(bytes) {
            Ok(status) => {
                if let Ok(mut b) = shared.write() {
                    b.apply(status);
                }
            }
            Err(e) => tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                error = %e,
                "status message does not decode; ignored"
            ),
        }
    })
    .await?;
    Ok(board)
}

fn micros(unix_ns: u64) -> i64 {
    (unix_ns / 1_000).min(i64::MAX as u64) as i64
}

fn ts_builder(n: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC")
}

fn map_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

fn append_map(
    builder: &mut MapBuilder<StringBuilder, StringBuilder>,
    map: &BTreeMap<String, String>,
) -> Result<(), ArrowError> {
    for (k, v) in map {
        builder.keys().append_value(k);
        builder.values().append_value(v);
    }
    builder.append(!map.is_empty())
}

fn append_list(builder: &mut ListBuilder<StringBuilder>, items: &[String]) {
    for item in items {
        builder.values().append_value(item);
    }
    builder.append(!items.is_empty());
}

fn opt(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// The `workloads` rows: every host's latest inventory, with the newest policy's labels
/// (overriding the host's own), mode and quarantine.
pub fn workloads_batch(
    inventory: &crate::enrich::Inventory,
    policy: &crate::policy::PolicyHistory,
) -> Result<RecordBatch, ArrowError> {
    let n = inventory.latest.len();
    let doc = policy.latest().map(|v| &v.document);
    let mut id = StringBuilder::new();
    let mut hostname = StringBuilder::new();
    let mut os = StringBuilder::new();
    let mut agent = StringBuilder::new();
    let mut addresses = ListBuilder::new(StringBuilder::new());
    let mut listening = ListBuilder::new(StringBuilder::new());
    let mut labels = map_builder();
    let mut host_labels = map_builder();
    let mut mode = StringBuilder::new();
    let mut quarantined = BooleanBuilder::with_capacity(n);
    let mut observed = ts_builder(n);
    for (host_id, inv) in &inventory.latest {
        let assigned = doc.and_then(|d| d.workloads.iter().find(|w| &w.workload_id == host_id));
        id.append_value(host_id);
        hostname.append_option(opt(&inv.hostname));
        os.append_option(opt(&inv.os));
        agent.append_option(opt(&inv.agent_version));
        let addrs: Vec<String> = inv
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().cloned())
            .collect();
        append_list(&mut addresses, &addrs);
        let ports: Vec<String> = inv
            .listening
            .iter()
            .map(|l| {
                let proto = bulkhead_schemas::policy::protocol::name(l.protocol)
                    .map_or_else(|| l.protocol.to_string(), str::to_string);
                match opt(&l.process_name) {
                    Some(process) => format!("{proto}/{} {process}", l.port),
                    None => format!("{proto}/{}", l.port),
                }
            })
            .collect();
        append_list(&mut listening, &ports);
        let mut effective = inv.labels.clone();
        if let Some(w) = assigned {
            effective.extend(w.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        append_map(&mut labels, &effective)?;
        append_map(&mut host_labels, &inv.labels)?;
        mode.append_option(doc.map(|d| d.mode_of(host_id).as_str()));
        quarantined.append_value(assigned.is_some_and(|w| w.quarantined));
        observed.append_value(micros(inv.observed_unix_ns));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(hostname.finish()),
        Arc::new(os.finish()),
        Arc::new(agent.finish()),
        Arc::new(addresses.finish()),
        Arc::new(listening.finish()),
        Arc::new(labels.finish()),
        Arc::new(host_labels.finish()),
        Arc::new(mode.finish()),
        Arc::new(quarantined.finish()),
        Arc::new(observed.finish()),
    ];
    RecordBatch::try_new(workloads_schema(), columns)
}

fn state_text(state: i32) -> &'static str {
    match EnforcerState::try_from(state) {
        Ok(EnforcerState::Ok) => "ok",
        Ok(EnforcerState::Degraded) => "degraded",
        Ok(EnforcerState::Error) => "error",
        _ => "unspecified",
    }
}

fn mode_text(mode: i32) -> &'static str {
    use bulkhead_schemas::proto::EnforcementMode as M;
    match M::try_from(mode) {
        Ok(M::Idle) => "idle",
        Ok(M::VisibilityOnly) => "visibility_only",
        Ok(M::Selective) => "selective",
        Ok(M::Full) => "full",
        _ => "unspecified",
    }
}

/// The `status` rows: the latest heartbeat of every enforcer.
pub fn status_batch(board: &StatusBoard) -> Result<RecordBatch, ArrowError> {
    let n = board.latest.len();
    let mut host = StringBuilder::new();
    let mut at = ts_builder(n);
    let mut state = StringBuilder::new();
    let mut applied = Int64Builder::with_capacity(n);
    let mut mode = StringBuilder::new();
    let mut quarantined = BooleanBuilder::with_capacity(n);
    let mut rules = Int32Builder::with_capacity(n);
    let mut elements = Int32Builder::with_capacity(n);
    let mut error = StringBuilder::new();
    let mut rejected = Int64Builder::with_capacity(n);
    let mut dropped = Int64Builder::with_capacity(n);
    let mut potentially = Int64Builder::with_capacity(n);
    let mut apply_us = Int64Builder::with_capacity(n);
    let int = |v: u64| v.min(i64::MAX as u64) as i64;
    for s in board.latest.values() {
        host.append_value(&s.host_id);
        at.append_value(micros(s.at_unix_ns));
        state.append_value(state_text(s.state));
        applied.append_value(int(s.applied_version));
        mode.append_value(mode_text(s.mode));
        quarantined.append_value(s.quarantined);
        rules.append_value(s.rule_count.min(i32::MAX as u32) as i32);
        elements.append_value(s.set_elements.min(i32::MAX as u32) as i32);
        error.append_option(opt(&s.last_error));
        rejected.append_value(int(s.rejected_version));
        dropped.append_value(int(s.dropped_packets));
        potentially.append_value(int(s.potentially_blocked_packets));
        apply_us.append_value(int(s.apply_duration_us));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(host.finish()),
        Arc::new(at.finish()),
        Arc::new(state.finish()),
        Arc::new(applied.finish()),
        Arc::new(mode.finish()),
        Arc::new(quarantined.finish()),
        Arc::new(rules.finish()),
        Arc::new(elements.finish()),
        Arc::new(error.finish()),
        Arc::new(rejected.finish()),
        Arc::new(dropped.finish()),
        Arc::new(potentially.finish()),
        Arc::new(apply_us.finish()),
    ];
    RecordBatch::try_new(status_schema(), columns)
}

/// The `policy` rows: every verified version.
pub fn policy_batch(history: &crate::policy::PolicyHistory) -> Result<RecordBatch, ArrowError> {
    let mut version = Int64Builder::new();
    let mut parent = Int64Builder::new();
    let mut created = ts_builder(0);
    let mut by = StringBuilder::new();
    let mut note = StringBuilder::new();
    let mut sha = StringBuilder::new();
    let mut rulesets = Int32Builder::new();
    let mut rules = Int32Builder::new();
    let mut denies = Int32Builder::new();
    let mut document = StringBuilder::new();
    let count = |n: usize| n.min(i32::MAX as usize) as i32;
    for v in history.versions() {
        version.append_value(v.version.min(i64::MAX as u64) as i64);
        parent.append_value(v.parent_version.min(i64::MAX as u64) as i64);
        created.append_value(micros(v.created_unix_ns));
        by.append_value(&v.provisioned_by);
        note.append_option(opt(&v.note));
        sha.append_value(hex_text(&v.content_sha256));
        rulesets.append_value(count(v.document.rulesets.len()));
        rules.append_value(count(v.document.rules().count()));
        denies.append_value(count(v.document.deny_rules.len()));
        document.append_value(
            serde_json::to_string(&v.document).map_err(|e| ArrowError::ExternalError(e.into()))?,
        );
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(version.finish()),
        Arc::new(parent.finish()),
        Arc::new(created.finish()),
        Arc::new(by.finish()),
        Arc::new(note.finish()),
        Arc::new(sha.finish()),
        Arc::new(rulesets.finish()),
        Arc::new(rules.finish()),
        Arc::new(denies.finish()),
        Arc::new(document.finish()),
    ];
    RecordBatch::try_new(policy_schema(), columns)
}

fn hex_text(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The folds the read models are written from.
#[derive(Clone)]
pub struct Folds {
    pub inventory: SharedInventory,
    pub policy: SharedPolicy,
    pub status: SharedStatus,
}

struct Model {
    name: &'static str,
    table: SnapshotTable,
    written: Option<u64>,
}

/// Rewrites every read model whose fold changed, every `interval`, until `stop`; then
/// once more. A lake that refuses a write is retried at the next tick (the folds stay in
/// memory, so nothing is lost).
pub async fn write_loop(
    lake: Url,
    folds: Folds,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LakeError> {
    let mut models = Vec::new();
    for name in ["workloads", "status", "policy"] {
        models.push(Model {
            name,
            table: SnapshotTable::open(&lake_table_url(&lake, name)).await?,
            written: None,
        });
    }
    loop {
        let stopping = *stop.borrow();
        for model in &mut models {
            if let Err(e) = write_if_changed(model, &folds).await {
                tracing::error!(table = model.name, error = %e, "cannot write a read model; retrying at the next tick");
            }
        }
        if stopping {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

async fn write_if_changed(model: &mut Model, folds: &Folds) -> Result<(), LakeError> {
    let arrow = |source| LakeError::Arrow {
        url: model.table.url().clone(),
        source,
    };
    let poisoned = || arrow(ArrowError::ComputeError("a fold's lock is poisoned".into()));
    let (generation, batch) = match model.name {
        "workloads" => {
            let inv = folds.inventory.read().map_err(|_| poisoned())?;
            let policy = folds.policy.read().map_err(|_| poisoned())?;
            let generation = inv.generation.wrapping_mul(1_000_003) ^ policy.generation;
            if model.written == Some(generation) {
                return Ok(());
            }
            (generation, workloads_batch(&inv, &policy).map_err(arrow)?)
        }
        "status" => {
            let board = folds.status.read().map_err(|_| poisoned())?;
            if model.written == Some(board.generation) {
                return Ok(());
            }
            (board.generation, status_batch(&board).map_err(arrow)?)
        }
        _ => {
            let policy = folds.policy.read().map_err(|_| poisoned())?;
            if model.written == Some(policy.generation) {
                return Ok(());
            }
            (policy.generation, policy_batch(&policy).map_err(arrow)?)
        }
    };
    let rows = batch.num_rows();
    let version = model.table.replace(batch).await?;
    telemetry::read_model_committed(model.name, version, rows);
    model.written = Some(generation);
    Ok(())
}
