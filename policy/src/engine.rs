//! The engine: the single writer of `bulkhead.control.v1`. It rebuilds the state by
//! replaying the topic on start, checks each change against the state before publishing
//! it, applies it once the broker acknowledged it, and publishes every new signed
//! version to the compacted `bulkhead.policy.v1` (key `global`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::{Consumer, ConsumerOptions};
use bulkhead_kafka::{KafkaConfig, Producer};
use bulkhead_recommender::Recommendation;
use bulkhead_schemas::policy::PolicySigner;
use bulkhead_schemas::proto::{self, control_event::Event};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;
use rdkafka::Message as _;
use tokio::sync::{Mutex, RwLock};

use crate::state::{
    ControlError, INVENTORY_ACTOR, LABEL_RULE_ACTOR, PolicyState, Provisioned, is_automatic,
};

/// The policy key used on the compacted policy topic.
pub const POLICY_KEY: &[u8] = b"global";

/// Reads the signing key, or creates one (mode 0600) on first start and says so.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<PolicySigner> {
    if path.exists() {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the policy signing key {}", path.display()))?;
        return Ok(PolicySigner::from_pkcs8_pem(
            &pem,
            &path.display().to_string(),
        )?);
    }
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let signer = PolicySigner::generate();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the policy signing key {}", path.display()))?;
    file.write_all(signer.to_pkcs8_pem().as_bytes())?;
    let public = path.with_extension("pub.pem");
    std::fs::write(&public, signer.public_key_pem())
        .with_context(|| format!("cannot write {}", public.display()))?;
    tracing::warn!(
        key = %path.display(),
        public_key = %public.display(),
        key_id = signer.key_id(),
        "no policy signing key: generated a new one; give {} to every enforcer (--policy-key)",
        public.display()
    );
    eprintln!(
        "generated a new policy signing key {} (key id {}); enforcers must trust {}",
        path.display(),
        signer.key_id(),
        public.display()
    );
    Ok(signer)
}

/// Where the engine keeps its key and finds its inputs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub kafka: KafkaConfig,
    pub key_file: PathBuf,
    /// The lake (for simulation and the recommendations table).
    pub lake: Option<url::Url>,
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Refused(#[from] ControlError),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("publishing to Kafka failed: {0}")]
    Kafka(String),
}

pub struct Engine {
    pub config: EngineConfig,
    signer: PolicySigner,
    producer: Producer,
    state: RwLock<PolicyState>,
    /// One change at a time: the order of the topic is the order of the state.
    writer: Mutex<()>,
    pub recommendations: RwLock<Vec<Recommendation>>,
}

fn new_event_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Engine {
    /// Creates the topics, loads (or creates) the key and replays the control topic.
    pub async fn start(config: EngineConfig) -> anyhow::Result<Self> {
        admin::ensure_topics(
            &config.kafka,
            &[Topic::Control, Topic::Policy, Topic::Recommendations],
            &TopicOptions::default(),
        )
        .await
        .context("cannot create the control, policy and recommendations topics")?;
        let signer = load_or_create_key(&config.key_file)?;
        let producer = Producer::new(&config.kafka)?;
        let (state, events) = replay(&config.kafka, &signer).await?;
        tracing::info!(
            events,
            versions = state.versions.len(),
            "policy state rebuilt from the control topic"
        );
        Ok(Self {
            config,
            signer,
            producer,
            state: RwLock::new(state),
            writer: Mutex::new(()),
            recommendations: RwLock::new(Vec::new()),
        })
    }

    pub fn signer(&self) -> &PolicySigner {
        &self.signer
    }

    pub async fn state(&self) -> tokio::sync::RwLockReadGuard<'_, PolicyState> {
        self.state.read().await
    }

    /// The labels the draft gives each workload: what analysts and label rules set,
    /// before it is provisioned.
    pub async fn draft_labels(&self) -> bulkhead_recommender::WorkloadLabels {
        self.state()
            .await
            .draft
            .workloads
            .iter()
            .map(|w| (w.workload_id.clone(), w.labels.clone()))
            .collect()
    }

    /// Checks, publishes and applies `changes` in order, attributed to `actor` with
    /// `reason`. A `PolicyProvisioned` with version 0 is completed with the next version
    /// and the draft's hash. Stops at the first refused change; the ones before it stay applied.
    pub async fn submit(
        &self,
        actor: &str,
        reason: &str,
        changes: Vec<Event>,
    ) -> Result<Vec<Provisioned>, EngineError> {
        if actor.trim().is_empty() {
            return Err(EngineError::BadInput(
                "\"actor\" is required: every change says who made it".into(),
            ));
        }
        let _turn = self.writer.lock().await;
        let mut produced = Vec::new();
        for change in changes {
            let change = self.complete(change).await;
            let event = proto::ControlEvent {
                schema_version: bulkhead_schemas::SCHEMA_VERSION,
                event_id: new_event_id(),
                at_unix_ns: bulkhead_schemas::now_unix_ns(),
                actor: actor.to_string(),
                reason: reason.to_string(),
                event: Some(change),
            };
            // Check on a copy first: a refused change is never published.
            let mut trial = self.state.read().await.clone();
            let old_versions = trial.versions.len();
            trial.apply(&event, &self.signer)?;
            let key = event_key(&event);
            self.producer
                .send(
                    &self.config.kafka.topic(Topic::Control),
                    key.as_bytes(),
                    &event.encode_to_vec(),
                )
                .await
                .map_err(|e| EngineError::Kafka(e.to_string()))?;
            let new = trial.versions[old_versions..].to_vec();
            for p in &new {
                self.producer
                    .send(
                        &self.config.kafka.topic(Topic::Policy),
                        POLICY_KEY,
                        &p.signed_bytes(),
                    )
                    .await
                    .map_err(|e| EngineError::Kafka(e.to_string()))?;
            }
            *self.state.write().await = trial;
            produced.extend(new);
        }
        Ok(produced)
    }

    /// Labels every workload from its inventory: first the labels the host provides,
    /// then the label rules in ascending priority (a later rule wins per key). A label a
    /// person set or removed stays as they left it; automatic ones follow the inventory.
    /// Each change is attributed to its source (`inventory`, `label-rule:<id>`). Returns
    /// how many labels changed. Recommendations are written in these labels, so a policy
    /// without them would apply to nobody.
    pub async fn adopt_inventory(
        &self,
        inventory: &[bulkhead_recommender::lake::WorkloadInventory],
    ) -> Result<usize, EngineError> {
        let by_source: BTreeMap<String, Vec<Event>> = {
            let state = self.state.read().await;
            let mut rules: Vec<&proto::LabelRule> = state.label_rules.values().collect();
            rules.sort_by_key(|r| r.priority);
            let mut out: BTreeMap<String, Vec<Event>> = BTreeMap::new();
            for w in inventory {
                let mut wanted: BTreeMap<&str, (&str, String)> = w
                    .host_labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), (v.as_str(), INVENTORY_ACTOR.to_string())))
                    .collect();
                for rule in rules.iter().filter(|r| label_rule_matches(r, w)) {
                    for label in &rule.assign {
                        let source = format!("{LABEL_RULE_ACTOR}{}", rule.id);
                        wanted.insert(&label.key, (&label.value, source));
                    }
                }
                let have = state
                    .draft
                    .workloads
                    .iter()
                    .find(|d| d.workload_id == w.workload_id);
                for (key, (value, source)) in wanted {
                    let origin = state
                        .label_origin
                        .get(&(w.workload_id.clone(), key.to_string()));
                    if origin.is_some_and(|actor| !is_automatic(actor))
                        || have
                            .and_then(|d| d.labels.get(key))
                            .is_some_and(|v| v == value)
                    {
                        continue;
                    }
                    out.entry(source).or_default().push(Event::LabelAssigned(
                        proto::LabelAssigned {
                            workload_id: w.workload_id.clone(),
                            label: Some(proto::Label {
                                key: key.to_string(),
                                value: value.to_string(),
                            }),
                        },
                    ));
                }
            }
            out
        };
        let mut n = 0;
        for (source, changes) in by_source {
            n += changes.len();
            self.submit(&source, "labelled from inventory", changes)
                .await?;
        }
        Ok(n)
    }

    /// Loads the current recommendations from the lake's `recommendations` table (none
    /// without a lake or before the recommender first wrote it).
    pub async fn load_recommendations(&self) -> anyhow::Result<usize> {
        let Some(lake) = &self.config.lake else {
            return Ok(0);
        };
        let url = bulkhead_recommender::lake::table_url(lake, "recommendations");
        let Ok(files) = bulkhead_recommender::lake::table_files(&url).await else {
            tracing::info!(%url, "no recommendations table yet");
            return Ok(0);
        };
        let mut items = Vec::new();
        for file in files {
            use polars::prelude::{LazyFrame, PlRefPath, ScanArgsParquet, col};
            let df =
                LazyFrame::scan_parquet(PlRefPath::new(file.as_str()), ScanArgsParquet::default())?
                    .select([col("rule_json")])
                    .collect()?;
            let texts = df.column("rule_json")?.str()?;
            for text in (0..texts.len()).filter_map(|i| texts.get(i)) {
                let item: Recommendation = serde_json::from_str(text).with_context(|| {
                    format!("{file}: a recommendations row is not a recommendation")
                })?;
                items.push(item);
            }
        }
        let n = items.len();
        *self.recommendations.write().await = items;
        Ok(n)
    }

    /// Fills in what only the state knows (the provisioned version's number and hash).
    async fn complete(&self, change: Event) -> Event {
        match change {
            Event::PolicyProvisioned(p) if p.version == 0 => {
                let state = self.state.read().await;
                Event::PolicyProvisioned(proto::PolicyProvisioned {
                    version: state.active().map_or(1, |a| a.version.version + 1),
                    content_sha256: state.draft.content_sha256().to_vec(),
                })
            }
            other => other,
        }
    }
}

/// The Kafka key: the id of the object changed.
fn event_key(event: &proto::ControlEvent) -> String {
    match &event.event {
        Some(Event::LabelAssigned(e)) => e.workload_id.clone(),
        Some(Event::LabelRemoved(e)) => e.workload_id.clone(),
        Some(Event::EnforcementModeSet(e)) => e.workload_id.clone(),
        Some(Event::QuarantineSet(e)) => e.workload_id.clone(),
        Some(Event::QuarantineLifted(e)) => e.workload_id.clone(),
        Some(Event::RuleDrafted(e)) => e.ruleset.clone(),
        Some(Event::RuleEdited(e)) => e.ruleset.clone(),
        Some(Event::RuleDeleted(e)) => e.ruleset.clone(),
        Some(Event::RecommendationAccepted(e)) => e.recommendation_id.clone(),
        Some(Event::RecommendationRejected(e)) => e.recommendation_id.clone(),
        _ => "policy".into(),
    }
}

/// Folds the control topic from its start to its current end. Refused events (a forged
/// or replayed one written by someone else) are logged and skipped, as the live engine
/// would have refused them.
pub async fn replay(
    kafka: &KafkaConfig,
    signer: &PolicySigner,
) -> anyhow::Result<(PolicyState, usize)> {
    let topic = kafka.topic(Topic::Control);
    let consumer = Consumer::new(
        kafka,
        &ConsumerOptions::group(format!("bulkhead-policy-replay-{}", new_event_id())),
    )?;
    let marks = consumer.watermarks(&topic, Duration::from_secs(10))?;
    let mut state = PolicyState::default();
    let mut events = 0;
    for (partition, (low, high)) in marks {
        if high <= low {
            continue;
        }
        consumer.assign(&[((topic.clone(), partition), low)].into_iter().collect())?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .context("timed out replaying the control topic")??;
            let offset = message.offset();
            match message.payload().map(proto::ControlEvent::decode) {
                Some(Ok(event)) => match state.apply(&event, signer) {
                    Ok(()) => events += 1,
                    Err(e) => {
                        tracing::warn!(offset, error = %e, "control event refused during replay")
                    }
                },
                _ => tracing::warn!(offset, "undecodable control event skipped"),
            }
            if offset + 1 >= high {
                break;
            }
        }
    }
    Ok((state, events))
}

/// Whether every condition of `rule` holds for the workload (an empty condition holds).
fn label_rule_matches(
    rule: &proto::LabelRule,
    w: &bulkhead_recommender::lake::WorkloadInventory,
) -> bool {
    let hostname = rule.hostname_glob.is_empty()
        || glob::Pattern::new(&rule.hostname_glob).is_ok_and(|p| p.matches(&w.hostname));
    let host_label = rule
        .host_label
        .as_ref()
        .is_none_or(|l| l.key.is_empty() || w.host_labels.get(&l.key) == Some(&l.value));
    let address = rule.address_cidr.is_empty()
        || rule
            .address_cidr
            .parse::<ipnet::IpNet>()
            .is_ok_and(|net| w.addresses.iter().any(|a| net.contains(a)));
    hostname && host_label && address
}
