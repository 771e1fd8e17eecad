//! The ingest loop.
//!
//! ```text
//!            ┌──────── recv (biased: shutdown > commit timer > commit landed > messages) ─┐
//!            ▼                                                                          │
//!  partition seen first ──▶ sync: read the partition's txn version from the table,     │
//!  (or after a conflict)    seek to version + 1 (the table is the truth, not the group) │
//!            │                                                                          │
//!            ▼                                                                          │
//!  offset < next: already in the lake, skip ── decode ──▶ rows into the partition's     │
//!                                               │         column builders             ──┤
//!                                               └─ bad ──▶ dead letter (acknowledged  ──┤
//!                                                          before the offset counts)    │
//!  size / time / shutdown ──▶ seal the buffers ──▶ committer thread: sort, encode, one  │
//!                            Delta commit = rows + one txn per partition (retried with  │
//!                            backoff; nothing acknowledged until it lands)              │
//!                            ──▶ landed: then group offsets ─────────────────────────────┘
//! ```
//!
//! The loop keeps reading while the committer writes (at most one commit in flight; the
//! next seal waits for it). Revoked partitions drop their buffered rows (the new owner
//! re-reads them from the table's offsets) once the commit in flight landed; a commit
//! that finds another writer's txn for one of its partitions drops that partition's rows
//! and re-syncs it, so a row is never written twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::{KafkaConfig, Producer};
use bulkhead_schemas::lake::SharedLabels;
use bulkhead_schemas::policy::{PolicyVerifier, parse_verifying_key};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::committer::{Commit, Committed, Committer, InFlight, Landing, Part, Sealed, landed};
use crate::config::IngestConfig;
use crate::dlq::{self, Source};
use crate::edges::EdgeAggregator;
use crate::flow_rows::FlowRows;
use crate::telemetry;
use crate::writer::LakeError;

/// Why ingest stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Kafka(#[from] bulkhead_kafka::KafkaError),
    #[error("kafka {operation}: {source}")]
    Consumer {
        operation: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("lake: {0} (nothing unwritten is acknowledged; a restart replays it)")]
    Lake(Box<LakeError>),
    #[error("building the flows batch (a bug in bulkhead-ingest): {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("a bug in bulkhead-ingest: {0}")]
    Internal(String),
    #[error("{0}")]
    Config(String),
}

impl From<LakeError> for IngestError {
    fn from(e: LakeError) -> Self {
        IngestError::Lake(Box::new(e))
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub rows_written: u64,
    pub commits: u64,
    pub dead_letters: u64,
    pub duplicates_skipped: u64,
    /// Messages Kafka deleted before they were read (see [`telemetry::expired`]).
    pub messages_expired: u64,
}

/// Partitions handed to or taken from this process, seen in the rebalance callbacks
/// (which run inside `recv`, so the loop sees them before the next message).
#[derive(Default)]
struct Rebalances {
    revoked: Vec<i32>,
    /// Assigned and still held: synced with the lake together before the next message,
    /// while no commit is in flight (a partition synced at its first message waited
    /// behind the commit in flight, stalling the loop once per partition at start-up).
    assigned: Vec<i32>,
}

struct IngestContext {
    rebalances: Arc<Mutex<Rebalances>>,
    in_flight: Arc<InFlight>,
}

/// How long a revoke waits for the commit in flight before letting the partitions go.
const REVOKE_WAITS_FOR_COMMIT: Duration = Duration::from_secs(60);

impl ClientContext for IngestContext {
    /// Lag per partition from librdkafka's statistics (high watermark − the group's
    /// committed offset, which ingest moves only after the lake commit): asking the broker
    /// for watermarks after each commit queued behind the consumer's long-polling fetches
    /// and stalled the loop for up to 0.7 s.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    telemetry::lag(*partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "partitions revoked");
            // Their sealed rows land before the next owner reads the tables' offsets.
            if !self.in_flight.wait_idle(REVOKE_WAITS_FOR_COMMIT) {
                tracing::warn!(
                    ?partitions,
                    "revoked while a commit is still in flight; the next owner's offset check keeps rows from being written twice"
                );
            }
            if let Ok(mut r) = self.rebalances.lock() {
                r.assigned.retain(|p| !partitions.contains(p));
                r.revoked.extend(partitions);
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "partitions assigned");
            if let Ok(mut r) = self.rebalances.lock() {
                r.assigned.extend(partitions);
            }
        }
    }
}

type FlowConsumer = StreamConsumer<IngestContext>;

/// One assigned partition: where it stands against the table, and its buffered rows.
struct PartitionState {
    /// The txn version of this partition in the table when we last synced or committed
    /// (None: nothing written yet). A commit expects the table still to say this.
    table_offset: Option<i64>,
    /// Next offset to accept.
    next: i64,
    /// Whether the consumer was already moved forward past replayed messages.
    seeked_forward: bool,
    /// After moving the consumer back to `next`, skip everything until `next` itself
    /// arrives (messages fetched before the seek may still be queued).
    exact: bool,
    /// Whether a message was accepted since the last sync (a later gap is then data
    /// Kafka no longer has, e.g. compaction, not a stale position).
    started: bool,
    /// The txn version of this partition in the `edges` table (committed after
    /// `flows`, so never ahead of it; behind it after a crash between the two commits,
    /// and then the messages in between are read again for the edges only).
    edges_offset: Option<i64>,
    flows: FlowRows,
    edges: EdgeAggregator,
    bytes: usize,
    /// Last offset the flows buffer covers (rows or dead letters).
    last_offset: Option<i64>,
    /// Last offset the edges buffer covers.
    edges_last: Option<i64>,
}

impl PartitionState {
    fn synced(table_offset: Option<i64>, edges_offset: Option<i64>) -> Self {
        let next = |o: Option<i64>| o.map_or(0, |o| o + 1);
        Self {
            table_offset,
            edges_offset,
            next: next(table_offset).min(next(edges_offset)),
            seeked_forward: false,
            exact: false,
            started: false,
            flows: FlowRows::default(),
            edges: EdgeAggregator::default(),
            bytes: 0,
            last_offset: None,
            edges_last: None,
        }
    }

    /// First offset not yet in the `flows` table.
    fn flows_from(&self) -> i64 {
        self.table_offset.map_or(0, |o| o + 1)
    }

    /// First offset not yet in the `edges` table.
    fn edges_from(&self) -> i64 {
        self.edges_offset.map_or(0, |o| o + 1)
    }

    fn buffered(&self) -> bool {
        self.last_offset.is_some() || self.edges_last.is_some()
    }
}

/// What to do with a message at `offset` given the partition's state.
#[derive(Debug, PartialEq, Eq)]
enum Position {
    /// The next offset (or a gap after reading started: data Kafka no longer has).
    Accept,
    /// Already in the lake; skip (and move the consumer forward, once).
    Replayed { seek_forward: bool },
    /// Fetched before a seek back: skip, `next` comes again.
    Stale,
    /// The consumer is ahead of the table: go back.
    Behind,
}

fn position(state: &PartitionState, offset: i64) -> Position {
    if offset < state.next {
        Position::Replayed {
            seek_forward: !state.seeked_forward,
        }
    } else if offset == state.next || state.started {
        Position::Accept
    } else if state.exact {
        Position::Stale
    } else if state.seeked_forward {
        Position::Accept
    } else {
        Position::Behind
    }
}

/// Consumes the flows topic into the `flows` table until `shutdown` completes, then
/// commits what is in flight.
pub async fn run(
    config: IngestConfig,
    kafka: &KafkaConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Summary, IngestError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let verifier = match &config.policy_public_key {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                IngestError::Config(format!("--policy-public-key {}: {e}", path.display()))
            })?;
            let key = parse_verifying_key(&text, &path.display().to_string())
                .map_err(|e| IngestError::Config(format!("--policy-public-key: {e}")))?;
            Some(PolicyVerifier::new([key]))
        }
        None => None,
    };
    admin::ensure_topics(
        kafka,
        &[
            Topic::Flows,
            Topic::Inventory,
            Topic::FlowsDeadLetter,
            Topic::Policy,
            Topic::Status,
        ],
        &TopicOptions::default(),
    )
    .await?;
    let inventory = crate::enrich::follow(kafka, &config.group_id).await?;
    let policy = crate::policy::follow(kafka, &config.group_id, verifier).await?;
    let status = crate::read_models::follow_status(kafka, &config.group_id).await?;
    let read_models = tokio::spawn(crate::read_models::write_loop(
        config.lake.clone(),
        crate::read_models::Folds {
            inventory: inventory.clone(),
            policy: policy.clone(),
            status,
        },
        config.commit_interval,
        stop_rx.clone(),
    ));
    let in_flight = Arc::new(InFlight::default());
    let topic = kafka.topic(Topic::Flows);
    let committer = Committer::start(
        crate::committer::Settings {
            flows_url: config.table_url("flows"),
            edges_url: config.table_url("edges"),
            topic: topic.clone(),
            retry_max: config.retry_max,
            stop: stop_rx.clone(),
        },
        in_flight.clone(),
    )
    .await?;
    let rebalances = Arc::new(Mutex::new(Rebalances::default()));
    let consumer = flow_consumer(kafka, &config, rebalances.clone(), in_flight)?;
    consumer
        .subscribe(&[topic.as_str()])
        .map_err(|source| IngestError::Consumer {
            operation: format!("subscribe to {topic}"),
            source,
        })?;
    tracing::info!(
        topic,
        group = config.group_id,
        table = %config.table_url("flows"),
        "ingesting flows"
    );
    let mut ingest = Ingest {
        dlq: Producer::new(kafka)?,
        dlq_topic: kafka.topic(Topic::FlowsDeadLetter),
        consumer_name: format!("ingest/{}", config.group_id),
        topic,
        config,
        committer,
        in_flight: None,
        newest_us: 0,
        partitions: BTreeMap::new(),
        group_offsets_owed: BTreeMap::new(),
        rebalances,
        buffered_since: None,
        summary: Summary::default(),
        stop: stop_rx.clone(),
        inventory,
        policy,
        policy_cache: Default::default(),
    };
    let mut stop = stop_rx;
    let mut group_offsets_tick = tokio::time::interval(Duration::from_secs(1));
    group_offsets_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = ingest
            .buffered_since
            .map(|since| tokio::time::Instant::from_std(since + ingest.config.commit_interval));
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            _ = sleep_until(deadline) => ingest.commit(&consumer, false).await?,
            _ = group_offsets_tick.tick(), if !ingest.group_offsets_owed.is_empty() => {
                ingest.commit_group_offsets(&consumer);
            }
            outcome = in_flight_landed(&mut ingest.in_flight) => {
                ingest.in_flight = None;
                ingest.committed(&consumer, outcome?);
            }
            message = consumer.recv() => {
                match message {
                    Ok(message) => {
                        let (partition, offset) = (message.partition(), message.offset());
                        let key = message.key().map(<[u8]>::to_vec);
                        let payload = message.payload().map(<[u8]>::to_vec);
                        drop(message);
                        ingest.on_message(&consumer, partition, offset, key, payload).await?;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error (librdkafka retries)");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
    tracing::info!("stopping: committing what is in flight");
    ingest.commit(&consumer, true).await?;
    let Ingest {
        committer, summary, ..
    } = ingest;
    committer.close();
    match read_models.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "read models not written at shutdown"),
        Err(e) => tracing::error!(error = %e, "read-model writer failed"),
    }
    Ok(summary)
}

/// The outcome of the commit in flight, once it landed (never, when none is).
async fn in_flight_landed(in_flight: &mut Option<Landing>) -> Result<Committed, IngestError> {
    match in_flight {
        Some(landing) => landed(landing).await,
        None => std::future::pending().await,
    }
}

fn internal(partition: i32) -> IngestError {
    IngestError::Internal(format!("partition {partition} state vanished"))
}

/// Runs a short blocking librdkafka call (metadata, watermarks) without stalling other
/// tasks on a multi-thread runtime; on a current-thread runtime it just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Completes once shutdown was asked for (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn flow_consumer(
    kafka: &KafkaConfig,
    config: &IngestConfig,
    rebalances: Arc<Mutex<Rebalances>>,
    in_flight: Arc<InFlight>,
) -> Result<FlowConsumer, IngestError> {
    let mut client_config = kafka.client_config();
    client_config
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", "5000")
        .set(
            "fetch.message.max.bytes",
            admin::MAX_MESSAGE_BYTES.to_string(),
        );
    kafka.apply_properties(&mut client_config);
    client_config
        .create_with_context(IngestContext {
            rebalances,
            in_flight,
        })
        .map_err(|source| IngestError::Consumer {
            operation: format!("create a consumer for {}", kafka.brokers),
            source,
        })
}

struct Ingest {
    config: IngestConfig,
    topic: String,
    committer: Committer,
    /// The outcome of the commit in flight (at most one).
    in_flight: Option<Landing>,
    /// Newest event time (first_seen, µs) seen: the edges' watermark plus the lateness.
    newest_us: i64,
    dlq: Producer,
    dlq_topic: String,
    consumer_name: String,
    partitions: BTreeMap<i32, PartitionState>,
    /// Group offsets (next offset per partition) the lake already covers but the group
    /// has not been told: a commit refused during a rebalance, or a partition taken over
    /// after its last rows were written by the previous owner. Paid on the next tick.
    group_offsets_owed: BTreeMap<i32, i64>,
    rebalances: Arc<Mutex<Rebalances>>,
    buffered_since: Option<Instant>,
    summary: Summary,
    stop: watch::Receiver<bool>,
    inventory: crate::enrich::SharedInventory,
    policy: crate::policy::SharedPolicy,
    policy_cache: crate::policy::PolicyCache,
}

impl Ingest {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn drop_revoked(&mut self) {
        let revoked = match self.rebalances.lock() {
            Ok(mut r) => std::mem::take(&mut r.revoked),
            Err(_) => Vec::new(),
        };
        for partition in revoked {
            if let Some(state) = self.partitions.remove(&partition)
                && state.buffered()
            {
                tracing::info!(
                    partition,
                    rows = state.flows.len(),
                    "partition revoked: dropping its uncommitted rows (the new owner reads them from the table's offsets)"
                );
            }
        }
        if self.partitions.values().all(|s| !s.buffered()) {
            self.buffered_since = None;
        }
    }

    /// Syncs the partitions assigned since the last message (see [`Rebalances::assigned`]).
    async fn sync_assigned(&mut self) -> Result<(), IngestError> {
        let assigned = match self.rebalances.lock() {
            Ok(mut r) => std::mem::take(&mut r.assigned),
            Err(_) => Vec::new(),
        };
        let new: Vec<i32> = assigned
            .into_iter()
            .filter(|p| !self.partitions.contains_key(p))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.sync(new).await
    }

    /// Reads the partitions' offsets from the tables and starts a fresh state for each.
    async fn sync(&mut self, partitions: Vec<i32>) -> Result<(), IngestError> {
        let offsets = self.committer.sync(partitions.clone()).await?;
        for (partition, (table_offset, edges_offset)) in partitions.into_iter().zip(offsets) {
            tracing::info!(
                partition,
                table_offset,
                edges_offset,
                "partition synced with the lake: resuming after the tables' last offsets"
            );
            self.partitions.insert(
                partition,
                PartitionState::synced(table_offset, edges_offset),
            );
            if let Some(last) = table_offset {
                self.group_offsets_owed.insert(partition, last + 1);
            }
        }
        Ok(())
    }

    /// Tells the group the offsets the lake covers (see `group_offsets_owed`), for the
    /// partitions this process still holds; kept owed if the group refuses (a rebalance
    /// in progress) and tried again on the next tick.
    fn commit_group_offsets(&mut self, consumer: &FlowConsumer) {
        self.group_offsets_owed
            .retain(|partition, _| self.partitions.contains_key(partition));
        if self.group_offsets_owed.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, next) in &self.group_offsets_owed {
            let _ = list.add_partition_offset(&self.topic, *partition, Offset::Offset(*next));
        }
        match consumer.commit(&list, rdkafka::consumer::CommitMode::Sync) {
            Ok(()) => self.group_offsets_owed.clear(),
            // The table is the truth; the group offset is a hint for tools and lag
            // monitors, so a refusal is retried, not fatal.
            Err(e) => tracing::debug!(error = %e, "group offsets not committed yet; retrying"),
        }
    }

    fn low_watermark(&self, consumer: &FlowConsumer, partition: i32) -> i64 {
        let marks =
            blocking(|| consumer.fetch_watermarks(&self.topic, partition, Duration::from_secs(10)));
        match marks {
            Ok((low, _)) => low,
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot read the low watermark; assuming 0");
                0
            }
        }
    }

    /// Offsets `from..to` of `partition` are gone from Kafka and will never be read.
    fn expired(&mut self, partition: i32, from: i64, to: i64) {
        telemetry::expired(partition, from, to);
        self.summary.messages_expired += (to - from) as u64;
    }

    /// Moves the consumer of `partition` to `to`; false if librdkafka refused.
    fn seek(&self, consumer: &FlowConsumer, partition: i32, to: Offset) -> bool {
        match consumer.seek(&self.topic, partition, to, Duration::from_secs(10)) {
            Ok(()) => true,
            Err(e) => {
                // Not fatal: the offset filter still keeps duplicates out, and a position
                // still behind is sought again at the next message.
                tracing::warn!(partition, ?to, error = %e, "seek failed");
                false
            }
        }
    }

    async fn on_message(
        &mut self,
        consumer: &FlowConsumer,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
    ) -> Result<(), IngestError> {
        self.drop_revoked();
        self.sync_assigned().await?;
        if !self.partitions.contains_key(&partition) {
            self.sync(vec![partition]).await?;
        }
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        match position(state, offset) {
            // More than a transaction marker's offset missing mid-stream: librdkafka
            // moved on from offsets the broker no longer has, or a reader deleted them.
            Position::Accept if state.started && offset > state.next + 1 => {
                let missing_from = state.next;
                let low = self.low_watermark(consumer, partition);
                if low > missing_from {
                    self.expired(partition, missing_from, low.min(offset));
                }
            }
            Position::Accept => {}
            Position::Replayed { seek_forward } => {
                telemetry::duplicate_skipped(partition, offset, state.next);
                self.summary.duplicates_skipped += 1;
                if seek_forward {
                    state.seeked_forward = true;
                    let to = Offset::Offset(state.next);
                    self.seek(consumer, partition, to);
                }
                return Ok(());
            }
            Position::Stale => return Ok(()),
            Position::Behind => {
                // The consumer starts past what the table holds (group offsets of a
                // replaced lake, or a first start): go back to the table's position, or
                // to the oldest offset Kafka still has.
                let low = self.low_watermark(consumer, partition);
                let state = self
                    .partitions
                    .get_mut(&partition)
                    .ok_or_else(|| internal(partition))?;
                let (next, new_lake) = (
                    state.next,
                    state.table_offset.is_none() && state.edges_offset.is_none(),
                );
                let target = next.max(low);
                state.next = target;
                if low > next {
                    if new_lake {
                        // A new lake never had the messages Kafka let go before it existed.
                        tracing::warn!(
                            partition,
                            offset = low,
                            "the lake has nothing of this partition yet: starting at the \
                             oldest offset Kafka still has"
                        );
                    } else {
                        self.expired(partition, next, low);
                    }
                }
                if offset != target {
                    // Skip what was fetched before the seek, until `target` comes. If the
                    // seek failed, nothing would come: the next message seeks again.
                    let sought = self.seek(consumer, partition, Offset::Offset(target));
                    if let Some(state) = self.partitions.get_mut(&partition) {
                        state.exact = sought;
                    }
                    return Ok(());
                }
            }
        }
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        state.exact = false;
        state.started = true;
        state.next = offset + 1;
        let size = payload.as_ref().map_or(0, Vec::len);
        telemetry::consumed(size);
        let (flows_from, edges_from) = (state.flows_from(), state.edges_from());
        match dlq::decode_message(payload.as_deref()) {
            Ok(mut batch) => {
                let shared = self.enrich(&mut batch);
                let state = self
                    .partitions
                    .get_mut(&partition)
                    .ok_or_else(|| internal(partition))?;
                if offset >= edges_from {
                    let added = state.edges.add_batch(
                        &batch,
                        &shared,
                        self.config.windowing,
                        &mut self.newest_us,
                    );
                    telemetry::edges_added(partition, offset, &added);
                    state.edges_last = Some(offset);
                }
                if offset >= flows_from {
                    state.flows.push(batch, shared).map_err(|e| {
                        IngestError::Internal(format!("a checked batch was refused: {e}"))
                    })?;
                    state.bytes += size;
                    state.last_offset = Some(offset);
                }
            }
            Err(rejection) => {
                // Already dead-lettered when the offset is only read again for the edges.
                if offset >= flows_from {
                    self.reject(
                        partition,
                        offset,
                        key.as_deref(),
                        payload.as_deref(),
                        &rejection,
                    )
                    .await?;
                }
                if let Some(state) = self.partitions.get_mut(&partition) {
                    if offset >= flows_from {
                        state.last_offset = Some(offset);
                    }
                    if offset >= edges_from {
                        state.edges_last = Some(offset);
                    }
                }
            }
        }
        self.buffered_since.get_or_insert_with(Instant::now);
        let (rows, bytes) = self.partitions.values().fold((0, 0), |(r, b), s| {
            (r + s.flows.len() + s.edges.len(), b + s.bytes)
        });
        telemetry::buffered(rows);
        if rows >= self.config.commit_flows || bytes >= self.config.commit_bytes {
            self.commit(consumer, false).await?;
        }
        Ok(())
    }

    /// Enriches a decoded batch: workloads from the inventory, and decisions from the
    /// policy; returns the labels of each record's ends.
    fn enrich(&mut self, batch: &mut bulkhead_schemas::proto::FlowBatch) -> Vec<SharedLabels> {
        let mut shared = Vec::with_capacity(batch.records.len());
        if let Ok(inventory) = self.inventory.read() {
            inventory.enrich(batch, &mut shared);
        }
        if let Ok(policy) = self.policy.read() {
            policy.decide(batch, &mut shared, &mut self.policy_cache);
        }
        shared
    }

    /// Counts, logs and dead-letters a refused message.
    async fn reject(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        rejection: &dlq::Rejection,
    ) -> Result<(), IngestError> {
        let source = Source {
            topic: &self.topic,
            partition,
            offset,
        };
        telemetry::dead_letter(
            &self.topic,
            partition,
            offset,
            rejection.kind,
            &rejection.reason,
        );
        let letter = dlq::dead_letter(
            &source,
            key,
            payload,
            rejection,
            &self.consumer_name,
            bulkhead_schemas::now_unix_ns(),
        );
        let dlq_key = source.key();
        self.send_dead_letter(&dlq_key, &letter.encode_to_vec())
            .await?;
        self.summary.dead_letters += 1;
        Ok(())
    }

    /// Sends a dead letter and waits for the broker's acknowledgement (its offset is
    /// only covered by a lake commit after that), retrying while the broker is away.
    async fn send_dead_letter(&mut self, key: &str, value: &[u8]) -> Result<(), IngestError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.dlq.send(&self.dlq_topic, key.as_bytes(), value).await {
                Ok(_) => return Ok(()),
                Err(e) if self.stopping() => return Err(e.into()),
                Err(e) => {
                    tracing::error!(error = %e, key, "cannot send a dead letter; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Seals every partition's buffers and hands them to the committer, once the commit
    /// in flight (if any) landed: one `flows` commit carrying each partition's last
    /// offset, then the edges of the same offsets in one `edges` commit. Returns without
    /// waiting for it, unless stopping.
    async fn commit(&mut self, consumer: &FlowConsumer, stopping: bool) -> Result<(), IngestError> {
        if let Some(mut landing) = self.in_flight.take() {
            let committed = landed(&mut landing).await?;
            self.committed(consumer, committed);
        }
        self.drop_revoked();
        self.buffered_since = None;
        let mut partitions = BTreeMap::new();
        let mut rows = 0;
        for (partition, state) in &mut self.partitions {
            let flows = state
                .last_offset
                .take()
                .map(|last| (std::mem::take(&mut state.flows), last));
            let edges = match state.edges_last.take() {
                Some(last) => Some((state.edges.finish(self.config.windowing)?, last)),
                None => None,
            };
            state.bytes = 0;
            if flows.is_some() || edges.is_some() {
                let sealed = Sealed {
                    flows: Part {
                        rows: flows,
                        expected: state.table_offset,
                    },
                    edges: Part {
                        rows: edges,
                        expected: state.edges_offset,
                    },
                };
                rows += sealed.rows();
                partitions.insert(*partition, sealed);
            }
        }
        telemetry::buffered(0);
        if rows == 0 {
            // Only dead letters: no lake commit (they are re-sent after a restart
            // before the next data commit — at least once on the DLQ).
            return Ok(());
        }
        let mut landing = self
            .committer
            .send(Commit {
                partitions,
                stopping,
            })
            .await?;
        if stopping {
            let committed = landed(&mut landing).await?;
            self.committed(consumer, committed);
        } else {
            self.in_flight = Some(landing);
        }
        Ok(())
    }

    /// A commit landed: the partitions' states follow the tables (those another writer
    /// took are dropped, to re-sync), and the group may move on.
    fn committed(&mut self, consumer: &FlowConsumer, committed: Committed) {
        self.summary.commits += committed.commits;
        self.summary.rows_written += committed.rows_written;
        for partition in &committed.lost {
            self.partitions.remove(partition);
        }
        for &(partition, last) in &committed.edges {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.edges_offset = Some(last);
            }
        }
        for &(partition, last) in &committed.flows {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.table_offset = Some(last);
                self.group_offsets_owed.insert(partition, last + 1);
            }
        }
        self.commit_group_offsets(consumer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_table_not_the_consumer() {
        let mut s = PartitionState::synced(Some(9), Some(9));
        assert_eq!(s.next, 10);
        assert_eq!(position(&s, 10), Position::Accept);
        assert_eq!(position(&s, 4), Position::Replayed { seek_forward: true });
        assert_eq!(position(&s, 15), Position::Behind);
        s.exact = true;
        assert_eq!(position(&s, 15), Position::Stale);
        assert_eq!(position(&s, 10), Position::Accept);
        s.seeked_forward = true;
        s.exact = false;
        assert_eq!(
            position(&s, 4),
            Position::Replayed {
                seek_forward: false
            }
        );
        s.started = true;
        assert_eq!(position(&s, 12), Position::Accept, "a gap once reading");
        let fresh = PartitionState::synced(None, None);
        assert_eq!(position(&fresh, 0), Position::Accept);
        assert_eq!(position(&fresh, 3), Position::Behind);
    }
}
