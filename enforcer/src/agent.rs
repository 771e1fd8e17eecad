//! The enforcer's lifecycle:
//!
//! ```text
//!  start ──▶ catch up ──────────────────────▶ enforce ──(SIGINT/SIGTERM)──▶ stopped
//!            read policy + inventory topics   each new policy or membership    (the table
//!            to their end, then apply once    change: verify → compile →       stays in
//!                                             apply; heartbeat status          force)
//! ```
//!
//! The ruleset in force only ever changes by a complete, atomic `nft` transaction built
//! from a verified policy; a rejected policy or a failed apply leaves it as it was and is
//! reported in the status.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::rdkafka::consumer::Consumer as _;
use bulkhead_kafka::{Consumer, ConsumerOptions, KafkaConfig, Offsets, Producer};
use bulkhead_schemas::policy::{PolicyError, PolicyVersion};
use bulkhead_schemas::proto::{self, EnforcerState, EnforcerStatus, HostInventory};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;

use crate::EnforcerError;
use crate::compile::{Membership, compile};
use crate::config::EnforcerConfig;
use crate::ranges::AddrRange;
use crate::render::{Rendered, counters, render};
use crate::telemetry;

/// What is in force on the host.
#[derive(Clone, Debug)]
struct Applied {
    version: u64,
    content_sha256: [u8; 32],
    mode: proto::EnforcementMode,
    quarantined: bool,
    rules: usize,
    set_elements: usize,
    at_unix_ns: u64,
    took: Duration,
    /// The batch as applied, to skip identical re-applies.
    batch_json: String,
}

/// The enforcer's state between messages.
pub struct Enforcer {
    config: EnforcerConfig,
    kafka: KafkaConfig,
    instance_id: String,
    membership: Membership,
    /// The newest verified policy (in force unless its apply failed).
    current: Option<PolicyVersion>,
    applied: Option<Applied>,
    /// Lowest version acceptable, from the state file (refuses rollback after restart).
    floor: u64,
    control_plane: Vec<AddrRange>,
    /// Last refused policy message; cleared when a newer valid version is accepted.
    policy_error: Option<(String, u64)>,
    /// Last failed apply; cleared by a successful apply.
    apply_error: Option<(String, u64)>,
    rejected_version: u64,
    /// Counters of tables replaced since start (each apply starts fresh counters).
    dropped_before: u64,
    potentially_blocked_before: u64,
}

/// The state file: the last applied version, so a restart refuses anything older.
#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    applied_version: u64,
    content_sha256: String,
}

impl Enforcer {
    pub fn new(config: EnforcerConfig, kafka: KafkaConfig) -> Self {
        let floor = std::fs::read_to_string(Self::state_path(&config))
            .ok()
            .and_then(|text| serde_json::from_str::<StateFile>(&text).ok())
            .map_or(0, |s| s.applied_version);
        let instance_id = format!("{:016x}", rand::random::<u64>());
        Self {
            config,
            kafka,
            instance_id,
            membership: Membership::default(),
            current: None,
            applied: None,
            floor,
            control_plane: Vec::new(),
            policy_error: None,
            apply_error: None,
            rejected_version: 0,
            dropped_before: 0,
            potentially_blocked_before: 0,
        }
    }

    fn state_path(config: &EnforcerConfig) -> std::path::PathBuf {
        let safe: String = config
            .host_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        config.state_dir.join(format!("enforcer-{safe}.json"))
    }

    fn persist(&self, applied: &Applied) {
        let path = Self::state_path(&self.config);
        let state = StateFile {
            applied_version: applied.version,
            content_sha256: hex::encode(applied.content_sha256),
        };
        let tmp = path.with_extension("json.tmp");
        let result = std::fs::create_dir_all(&self.config.state_dir)
            .and_then(|()| {
                std::fs::write(&tmp, serde_json::to_vec(&state).expect("state serializes"))
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot persist the applied version; a restart will accept any signed version again");
        }
    }

    /// The most recent of the policy and apply errors.
    fn last_error(&self) -> Option<&(String, u64)> {
        match (&self.policy_error, &self.apply_error) {
            (Some(p), Some(a)) => Some(if p.1 >= a.1 { p } else { a }),
            (p, a) => p.as_ref().or(a.as_ref()),
        }
    }

    /// Verifies a message from the policy topic; keeps it as current if it is good. After
    /// a restart nothing below the persisted version is accepted (the same version is, so
    /// that the table is reconciled).
    fn on_policy(&mut self, payload: &[u8]) -> bool {
        let applied = self.current.as_ref().map(|p| p.version);
        let verified = self
            .config
            .verifier
            .verify_bytes(payload, applied)
            .and_then(|version| {
                if applied.is_none() && version.version < self.floor {
                    Err(PolicyError::Stale {
                        version: version.version,
                        applied: self.floor,
                    })
                } else {
                    Ok(version)
                }
            });
        match verified {
            Ok(version) => {
                self.current = Some(version);
                self.policy_error = None;
                true
            }
            Err(e) => {
                let reason = match &e {
                    PolicyError::Unsigned => "unsigned",
                    PolicyError::UnknownKey { .. } => "unknown_key",
                    PolicyError::BadSignature { .. } => "bad_signature",
                    PolicyError::Stale { .. } => "stale",
                    PolicyError::Invalid(_) => "invalid",
                    PolicyError::UnsupportedSchemaVersion { .. } => "schema_version",
                    PolicyError::Malformed(_) | PolicyError::Parse { .. } => "malformed",
                };
                if let Ok(signed) = proto::SignedPolicy::decode(payload)
                    && let Ok(v) = proto::PolicyVersion::decode(signed.payload.as_slice())
                {
                    self.rejected_version = self.rejected_version.max(v.version);
                }
                telemetry::policy_rejected(&self.config.host_id, reason, &e);
                self.policy_error = Some((
                    format!("policy refused: {e}"),
                    bulkhead_schemas::now_unix_ns(),
                ));
                false
            }
        }
    }

    fn on_inventory(&mut self, key: Option<&[u8]>, payload: Option<&[u8]>) -> bool {
        match payload {
            // A tombstone: the host left the estate.
            None => key
                .map(String::from_utf8_lossy)
                .is_some_and(|id| self.membership.set(&id, Vec::new())),
            Some(bytes) => match HostInventory::decode(bytes) {
                Ok(inventory) => self.membership.set_from_inventory(&inventory),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable inventory message ignored");
                    false
                }
            },
        }
    }

    /// The nftables batch for the current policy (None before any valid policy).
    pub fn rendered(&self) -> Option<Rendered> {
        let policy = self.current.as_ref()?;
        Some(render(&compile(
            policy,
            &self.config.host_id,
            &self.membership,
            &self.control_plane,
        )))
    }

    /// Applies the current policy if what it renders differs from what is in force.
    async fn reconcile(&mut self) {
        let Some(policy) = self.current.clone() else {
            return;
        };
        let host_policy = compile(
            &policy,
            &self.config.host_id,
            &self.membership,
            &self.control_plane,
        );
        let rendered = render(&host_policy);
        let batch_json = serde_json::to_string(&rendered.batch).expect("nftables batch serializes");
        if self
            .applied
            .as_ref()
            .is_some_and(|a| a.batch_json == batch_json && a.version == policy.version)
        {
            return;
        }
        // Keep the counts of the table about to be replaced.
        let nft = self.config.nft.clone();
        if let Ok(Ok(counts)) = tokio::task::spawn_blocking(move || nft.counters()).await {
            let (dropped, potentially) = summarize(&counts);
            self.dropped_before += dropped;
            self.potentially_blocked_before += potentially;
        }
        let started = Instant::now();
        let nft = self.config.nft.clone();
        let batch = rendered.batch;
        let result = tokio::task::spawn_blocking(move || nft.apply(&batch)).await;
        let took = started.elapsed();
        match result {
            Ok(Ok(())) => {
                let mode = proto::EnforcementMode::from(host_policy.mode);
                telemetry::applied(
                    &self.config.host_id,
                    policy.version,
                    host_policy.mode.as_str(),
                    rendered.rules,
                    rendered.set_elements,
                    took,
                );
                let applied = Applied {
                    version: policy.version,
                    content_sha256: policy.content_sha256,
                    mode,
                    quarantined: host_policy.quarantined,
                    rules: rendered.rules,
                    set_elements: rendered.set_elements,
                    at_unix_ns: bulkhead_schemas::now_unix_ns(),
                    took,
                    batch_json,
                };
                self.persist(&applied);
                self.applied = Some(applied);
                self.apply_error = None;
            }
            Ok(Err(e)) => {
                telemetry::apply_failed(&self.config.host_id, policy.version, &e);
                self.apply_error = Some((
                    format!("applying version {} failed: {e}", policy.version),
                    bulkhead_schemas::now_unix_ns(),
                ));
            }
            Err(e) => {
                self.apply_error = Some((
                    format!("apply task failed: {e}"),
                    bulkhead_schemas::now_unix_ns(),
                ))
            }
        }
    }

    async fn status(&self) -> EnforcerStatus {
        let nft = self.config.nft.clone();
        let counts = tokio::task::spawn_blocking(move || nft.counters())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let (dropped, potentially) = summarize(&counts);
        let state = match (&self.applied, self.last_error()) {
            (None, _) => EnforcerState::Error,
            (Some(a), _)
                if self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.version != a.version) =>
            {
                EnforcerState::Degraded
            }
            (Some(a), Some(_)) if self.rejected_version > a.version => EnforcerState::Degraded,
            (Some(_), _) => EnforcerState::Ok,
        };
        let applied = self.applied.as_ref();
        EnforcerStatus {
            schema_version: bulkhead_schemas::SCHEMA_VERSION,
            host_id: self.config.host_id.clone(),
            agent_instance_id: self.instance_id.clone(),
            at_unix_ns: bulkhead_schemas::now_unix_ns(),
            heartbeat_interval_s: self.config.heartbeat.as_secs() as u32,
            state: state as i32,
            applied_version: applied.map_or(0, |a| a.version),
            applied_content_sha256: applied.map_or_else(Vec::new, |a| a.content_sha256.to_vec()),
            mode: applied.map_or(proto::EnforcementMode::Unspecified, |a| a.mode) as i32,
            quarantined: applied.is_some_and(|a| a.quarantined),
            rule_count: applied.map_or(0, |a| a.rules as u32),
            set_elements: applied.map_or(0, |a| a.set_elements as u32),
            applied_unix_ns: applied.map_or(0, |a| a.at_unix_ns),
            apply_duration_us: applied.map_or(0, |a| a.took.as_micros() as u64),
            last_error: self
                .last_error()
                .map(|(m, _)| m.clone())
                .unwrap_or_default(),
            last_error_unix_ns: self.last_error().map_or(0, |(_, at)| *at),
            rejected_version: self.rejected_version,
            dropped_packets: self.dropped_before + dropped,
            potentially_blocked_packets: self.potentially_blocked_before + potentially,
            counters: counts
                .iter()
                .map(|(rule, (packets, bytes))| proto::RuleCounter {
                    rule: rule.clone(),
                    packets: *packets,
                    bytes: *bytes,
                })
                .collect(),
        }
    }

    /// Brokers (bootstrap and advertised) and configured control-plane addresses.
    async fn refresh_control_plane(&mut self, consumer: &Consumer) {
        let mut hosts: Vec<String> = self
            .kafka
            .brokers
            .split(',')
            .map(|b| b.trim().to_string())
            .collect();
        let timeout = Duration::from_secs(5);
        if let Ok(metadata) =
            tokio::task::block_in_place(|| consumer.inner().fetch_metadata(None, timeout))
        {
            hosts.extend(
                metadata
                    .brokers()
                    .iter()
                    .map(|b| format!("{}:{}", b.host(), b.port())),
            );
        }
        let mut ranges: Vec<AddrRange> = self
            .config
            .control_plane
            .iter()
            .map(AddrRange::from_net)
            .collect();
        for host in hosts {
            match tokio::net::lookup_host(host.as_str()).await {
                Ok(addrs) => ranges.extend(addrs.map(|a| AddrRange::from_ip(a.ip()))),
                Err(e) => {
                    tracing::warn!(broker = %host, error = %e, "cannot resolve a broker; it is not in the control-plane set")
                }
            }
        }
        self.control_plane = crate::ranges::merge(ranges);
    }
}

/// (dropped, potentially blocked) packets from the table's counters.
fn summarize(counts: &BTreeMap<String, (u64, u64)>) -> (u64, u64) {
    let get = |name: &str| counts.get(name).map_or(0, |c| c.0);
    (
        get(counters::DEFAULT_DENY) + get(counters::DENY_BOUNDARY) + get(counters::QUARANTINE),
        get(counters::POTENTIALLY_BLOCKED),
    )
}

fn consumer_config(kafka: &KafkaConfig) -> KafkaConfig {
    let mut config = kafka.clone();
    // Policy must take effect within a second: don't let the broker hold fetches long.
    config
        .properties
        .entry("fetch.wait.max.ms".into())
        .or_insert_with(|| "50".into());
    config
}

/// Reads the policy and inventory topics from their beginning up to their current end.
async fn catch_up(
    enforcer: &mut Enforcer,
    consumer: &Consumer,
    policy_topic: &str,
    inventory_topic: &str,
) -> Result<(), EnforcerError> {
    let mut start = Offsets::new();
    let mut remaining: HashMap<(String, i32), i64> = HashMap::new();
    for topic in [policy_topic, inventory_topic] {
        let marks =
            tokio::task::block_in_place(|| consumer.watermarks(topic, Duration::from_secs(30)))?;
        for (partition, (low, high)) in marks {
            start.insert((topic.to_string(), partition), low);
            if high > low {
                remaining.insert((topic.to_string(), partition), high);
            }
        }
    }
    consumer.assign(&start)?;
    while !remaining.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| {
                EnforcerError::Kafka(bulkhead_kafka::KafkaError::Config(
                    "no message for 30 s while catching up".into(),
                ))
            })??;
        let key = (message.topic().to_string(), message.partition());
        if message.topic() == policy_topic {
            if let Some(payload) = message.payload() {
                enforcer.on_policy(payload);
            }
        } else {
            enforcer.on_inventory(message.key(), message.payload());
        }
        if remaining
            .get(&key)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&key);
        }
    }
    Ok(())
}

/// Connects, catches up, and returns the enforcer with the current policy (not applied).
pub async fn prepare(
    config: EnforcerConfig,
    kafka: &KafkaConfig,
) -> Result<(Enforcer, Consumer), EnforcerError> {
    let consumer_kafka = consumer_config(kafka);
    let consumer = Consumer::new(
        &consumer_kafka,
        &ConsumerOptions::group(format!("bulkhead-enforcer-{}", config.host_id)),
    )?;
    let mut enforcer = Enforcer::new(config, kafka.clone());
    enforcer.refresh_control_plane(&consumer).await;
    let (policy_topic, inventory_topic) =
        (kafka.topic(Topic::Policy), kafka.topic(Topic::Inventory));
    catch_up(&mut enforcer, &consumer, &policy_topic, &inventory_topic).await?;
    Ok((enforcer, consumer))
}

/// Runs until `shutdown` completes. The table stays in force afterwards (`--remove`
/// removes it).
pub async fn run(
    config: EnforcerConfig,
    kafka: &KafkaConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EnforcerError> {
    let producer = Producer::new(kafka)?;
    let status_topic = kafka.topic(Topic::Status);
    let policy_topic = kafka.topic(Topic::Policy);
    let heartbeat = config.heartbeat;
    let (mut enforcer, consumer) = prepare(config, kafka).await?;
    tracing::info!(host_id = %enforcer.config.host_id, control_plane = enforcer.control_plane.len(), "caught up with policy and inventory");
    enforcer.reconcile().await;

    let publish = |status: EnforcerStatus| {
        let producer = producer.clone();
        let topic = status_topic.clone();
        async move {
            if let Err(e) = producer
                .send(&topic, status.host_id.as_bytes(), &status.encode_to_vec())
                .await
            {
                telemetry::status_failed(&e);
            }
        }
    };
    publish(enforcer.status().await).await;

    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = ticker.tick() => {
                enforcer.refresh_control_plane(&consumer).await;
                enforcer.reconcile().await;
                tokio::spawn(publish(enforcer.status().await));
            }
            message = consumer.recv() => {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka receive error; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let changed = if message.topic() == policy_topic {
                    // A refusal changes the status too: report it now.
                    message.payload().is_some_and(|p| enforcer.on_policy(p)) || enforcer.policy_error.is_some()
                } else {
                    enforcer.on_inventory(message.key(), message.payload())
                };
                drop(message);
                if changed {
                    enforcer.reconcile().await;
                    // Report changes now, not at the next heartbeat.
                    tokio::spawn(publish(enforcer.status().await));
                }
            }
        }
    }
    tracing::info!(
        "stopping; the bulkhead table stays in force (bulkhead enforce --remove removes it)"
    );
    publish(enforcer.status().await).await;
    producer.flush(Duration::from_secs(5))?;
    Ok(())
}
