//! The ingest loop.
//!
//! ```text
//!            ┌──────────── recv (biased: shutdown > commit timer > messages) ────────────┐
//!            ▼                                                                          │
//!  partition seen first ──▶ sync: read the partition's txn version from the table,     │
//!  (or after a conflict)    seek to version + 1 (the table is the truth, not the group) │
//!            │                                                                          │
//!            ▼                                                                          │
//!  offset < next: already in the lake, skip ── decode ──▶ rows into the partition's     │
//!                                               │         column builders             ──┤
//!                                               └─ bad ──▶ dead letter (acknowledged  ──┤
//!                                                          before the offset counts)    │
//!  size / time / shutdown ──▶ commit: one Delta commit = rows + one txn per partition   │
//!                            (retried with backoff; nothing acknowledged until it      │
//!                             lands) ──▶ then group offsets ─────────────────────────────┘
//! ```
//!
//! Revoked partitions drop their buffered rows (the new owner re-reads them from the
//! table's offsets); a commit that finds another writer's txn for one of its partitions
//! drops that partition's rows and re-syncs it, so a row is never written twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::{KafkaConfig, Producer};
use bulkhead_schemas::lake::{FlowColumns, flows_schema};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::config::IngestConfig;
use crate::dlq::{self, Source};
use crate::telemetry;
use crate::writer::{FlowsTable, LakeError};

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
}

/// Partitions handed to or taken from this process, seen in the rebalance callbacks
/// (which run inside `recv`, so the loop sees them before the next message).
#[derive(Default)]
struct Rebalances {
    revoked: Vec<i32>,
}

struct IngestContext {
    rebalances: Arc<Mutex<Rebalances>>,
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "partitions revoked");
            if let Ok(mut r) = self.rebalances.lock() {
                r.revoked.extend(partitions);
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "partitions assigned");
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
    columns: FlowColumns,
    rows: usize,
    bytes: usize,
    /// Last offset the buffer covers (rows or dead letters).
    last_offset: Option<i64>,
}

impl PartitionState {
    fn synced(table_offset: Option<i64>) -> Self {
        Self {
            table_offset,
            next: table_offset.map_or(0, |o| o + 1),
            seeked_forward: false,
            exact: false,
            started: false,
            columns: FlowColumns::default(),
            rows: 0,
            bytes: 0,
            last_offset: None,
        }
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
    admin::ensure_topics(
        kafka,
        &[Topic::Flows, Topic::Inventory, Topic::FlowsDeadLetter],
        &TopicOptions::default(),
    )
    .await?;
    let inventory = crate::enrich::follow(kafka, &config.group_id).await?;
    let table = FlowsTable::open(&config.table_url("flows")).await?;
    let rebalances = Arc::new(Mutex::new(Rebalances::default()));
    let consumer = flow_consumer(kafka, &config, rebalances.clone())?;
    let topic = kafka.topic(Topic::Flows);
    consumer
        .subscribe(&[topic.as_str()])
        .map_err(|source| IngestError::Consumer {
            operation: format!("subscribe to {topic}"),
            source,
        })?;
    tracing::info!(
        topic,
        group = config.group_id,
        table = %table.url(),
        "ingesting flows"
    );
    let mut ingest = Ingest {
        dlq: Producer::new(kafka)?,
        dlq_topic: kafka.topic(Topic::FlowsDeadLetter),
        consumer_name: format!("ingest/{}", config.group_id),
        topic,
        config,
        table,
        partitions: BTreeMap::new(),
        rebalances,
        buffered_since: None,
        summary: Summary::default(),
        stop: stop_rx.clone(),
        inventory,
    };
    let mut stop = stop_rx;
    loop {
        let deadline = ingest
            .buffered_since
            .map(|since| tokio::time::Instant::from_std(since + ingest.config.commit_interval));
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            _ = sleep_until(deadline) => ingest.commit(&consumer, false).await?,
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
    Ok(ingest.summary)
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
) -> Result<FlowConsumer, IngestError> {
    let mut client_config = kafka.client_config();
    client_config
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "fetch.message.max.bytes",
            admin::MAX_MESSAGE_BYTES.to_string(),
        );
    kafka.apply_properties(&mut client_config);
    client_config
        .create_with_context(IngestContext { rebalances })
        .map_err(|source| IngestError::Consumer {
            operation: format!("create a consumer for {}", kafka.brokers),
            source,
        })
}

struct Ingest {
    config: IngestConfig,
    topic: String,
    table: FlowsTable,
    dlq: Producer,
    dlq_topic: String,
    consumer_name: String,
    partitions: BTreeMap<i32, PartitionState>,
    rebalances: Arc<Mutex<Rebalances>>,
    buffered_since: Option<Instant>,
    summary: Summary,
    stop: watch::Receiver<bool>,
    inventory: crate::enrich::SharedInventory,
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
                && state.last_offset.is_some()
            {
                tracing::info!(
                    partition,
                    rows = state.rows,
                    "partition revoked: dropping its uncommitted rows (the new owner reads them from the table's offsets)"
                );
            }
        }
        if self.partitions.values().all(|s| s.last_offset.is_none()) {
            self.buffered_since = None;
        }
    }

    /// Reads the partition's offset from the table and starts a fresh state.
    async fn sync(&mut self, partition: i32) -> Result<(), IngestError> {
        self.table.refresh().await?;
        let table_offset = self.table.committed_offset(&self.topic, partition).await?;
        tracing::info!(
            partition,
            table_offset,
            "partition synced with the lake: resuming after the table's last offset"
        );
        self.partitions
            .insert(partition, PartitionState::synced(table_offset));
        Ok(())
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

    fn seek(&self, consumer: &FlowConsumer, partition: i32, to: Offset) {
        if let Err(e) = consumer.seek(&self.topic, partition, to, Duration::from_secs(10)) {
            // Not fatal: the offset filter still keeps duplicates out; a stale position
            // is corrected at the next sync.
            tracing::warn!(partition, ?to, error = %e, "seek failed");
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
        if !self.partitions.contains_key(&partition) {
            self.sync(partition).await?;
        }
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        match position(state, offset) {
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
                let target = state.next.max(low);
                state.next = target;
                if offset != target {
                    state.exact = true;
                    self.seek(consumer, partition, Offset::Offset(target));
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
        let inventory = &self.inventory;
        let enrich = |batch: &mut bulkhead_schemas::proto::FlowBatch| {
            if let Ok(inventory) = inventory.read() {
                inventory.enrich(batch);
            }
        };
        match dlq::append_message(payload.as_deref(), &mut state.columns, enrich) {
            Ok(rows) => {
                state.rows += rows;
                state.bytes += size;
                state.last_offset = Some(offset);
            }
            Err(rejection) => {
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
                    key.as_deref(),
                    payload.as_deref(),
                    &rejection,
                    &self.consumer_name,
                    bulkhead_schemas::now_unix_ns(),
                );
                let dlq_key = source.key();
                self.send_dead_letter(&dlq_key, &letter.encode_to_vec())
                    .await?;
                self.summary.dead_letters += 1;
                if let Some(state) = self.partitions.get_mut(&partition) {
                    state.last_offset = Some(offset);
                }
            }
        }
        self.buffered_since.get_or_insert_with(Instant::now);
        let (rows, bytes) = self
            .partitions
            .values()
            .fold((0, 0), |(r, b), s| (r + s.rows, b + s.bytes));
        telemetry::buffered(rows);
        if rows >= self.config.commit_flows || bytes >= self.config.commit_bytes {
            self.commit(consumer, false).await?;
        }
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

    /// Writes every buffered row in one Delta commit carrying each partition's last
    /// offset, retrying until it lands (or, when stopping, a few times), then commits
    /// the group offsets.
    async fn commit(&mut self, consumer: &FlowConsumer, stopping: bool) -> Result<(), IngestError> {
        self.drop_revoked();
        self.buffered_since = None;
        let mut pending: BTreeMap<i32, (RecordBatch, i64, Option<i64>)> = BTreeMap::new();
        for (partition, state) in &mut self.partitions {
            if let Some(last) = state.last_offset.take() {
                let rows = state.columns.finish()?;
                pending.insert(*partition, (rows, last, state.table_offset));
                state.rows = 0;
                state.bytes = 0;
            }
        }
        if pending.values().all(|(rows, _, _)| rows.num_rows() == 0) {
            // Only dead letters: no lake commit (they are re-sent after a restart
            // before the next data commit — at least once on the DLQ).
            telemetry::buffered(0);
            return Ok(());
        }
        let mut backoff = Duration::from_millis(250);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let span = tracing::info_span!(
                "commit",
                partitions = pending.len(),
                rows = pending
                    .values()
                    .map(|(r, _, _)| r.num_rows())
                    .sum::<usize>(),
                attempt = attempts
            );
            match self.try_commit(&mut pending).instrument(span).await {
                Ok(()) => break,
                Err(e) => {
                    let asked_to_stop = self.stopping();
                    if (stopping && attempts >= 3) || (!stopping && asked_to_stop) {
                        return Err(e);
                    }
                    telemetry::commit_failed(&e, backoff);
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut stop), if !stopping => {}
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
        // The lake holds the rows: now the group may move on.
        let mut list = TopicPartitionList::new();
        for (partition, (_, last, _)) in &pending {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.table_offset = Some(*last);
            }
            let _ = list.add_partition_offset(&self.topic, *partition, Offset::Offset(last + 1));
        }
        if let Err(e) = consumer.commit(&list, rdkafka::consumer::CommitMode::Sync) {
            // The table is the truth; the group offset is only a hint for tools.
            tracing::warn!(error = %e, "committing group offsets failed (the lake has the data)");
        }
        self.report_lag(consumer, &pending);
        telemetry::buffered(0);
        Ok(())
    }

    async fn try_commit(
        &mut self,
        pending: &mut BTreeMap<i32, (RecordBatch, i64, Option<i64>)>,
    ) -> Result<(), IngestError> {
        let started = Instant::now();
        // Another writer (a process that held the partition before a rebalance) may
        // have committed since we synced: drop what it already wrote.
        self.table.refresh().await?;
        let mut lost = Vec::new();
        for (partition, (_, _, expected)) in pending.iter() {
            let now = self.table.committed_offset(&self.topic, *partition).await?;
            if now != *expected {
                tracing::warn!(
                    partition,
                    expected,
                    table = now,
                    "another writer committed this partition: dropping our rows and re-syncing"
                );
                lost.push(*partition);
            }
        }
        for partition in lost {
            pending.remove(&partition);
            self.partitions.remove(&partition);
        }
        if pending.is_empty() {
            return Ok(());
        }
        let batches: Vec<RecordBatch> = pending.values().map(|(rows, _, _)| rows.clone()).collect();
        let rows = arrow_select::concat::concat_batches(&flows_schema(), &batches)?;
        let offsets: Vec<(i32, i64)> = pending
            .iter()
            .map(|(p, (_, last, _))| (*p, *last))
            .collect();
        let row_count = rows.num_rows();
        match self.table.commit(rows, &self.topic, &offsets).await {
            Ok(version) => {
                telemetry::committed(version, row_count, offsets.len(), started.elapsed());
                self.summary.commits += 1;
                self.summary.rows_written += row_count as u64;
                Ok(())
            }
            Err(e) => {
                if e.is_concurrent_transaction() {
                    // Another writer committed these partitions meanwhile: the next
                    // attempt re-reads the table and drops what it covered.
                    tracing::warn!("concurrent commit on the same partitions; re-checking");
                }
                Err(e.into())
            }
        }
    }

    fn report_lag(
        &self,
        consumer: &FlowConsumer,
        pending: &BTreeMap<i32, (RecordBatch, i64, Option<i64>)>,
    ) {
        for (partition, (_, last, _)) in pending {
            let marks = blocking(|| {
                consumer.fetch_watermarks(&self.topic, *partition, Duration::from_millis(500))
            });
            if let Ok((_, high)) = marks {
                telemetry::lag(*partition, high - (last + 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_table_not_the_consumer() {
        let mut s = PartitionState::synced(Some(9));
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
        let fresh = PartitionState::synced(None);
        assert_eq!(position(&fresh, 0), Position::Accept);
        assert_eq!(position(&fresh, 3), Position::Behind);
    }
}
