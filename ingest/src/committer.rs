//! The committer: writes sealed buffers to the lake on a thread of its own, so that the
//! ingest loop decodes and enriches the next rows while the previous ones are sorted,
//! encoded and committed — on two cores the two halves overlap instead of taking turns.
//!
//! It owns the `flows` and `edges` tables and serves requests in order: a [`Commit`]
//! (one Delta commit per table, each carrying one `txn` per Kafka partition, retried with
//! backoff until it lands) and a partition [`sync`](Committer::sync) (the tables' offsets),
//! so a sync always sees the commits sent before it. The loop keeps at most one commit in
//! flight: it waits for the outcome before sealing the next, which bounds the memory to
//! two buffers and keeps each commit's expected offsets current.
//!
//! A revoke waits for the commit in flight ([`InFlight::wait_idle`], from the consumer's
//! rebalance callback), so the rows of a revoked partition land before its next owner
//! reads the table's offsets — as when the loop committed inline.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;
use url::Url;

use crate::flow_rows::{FlowRows, sorted_flows};
use crate::run::IngestError;
use crate::telemetry;
use crate::writer::{AppendTable, EDGE_SORT_COLUMNS, FlowsTable, LakeError};

/// One table's share of a partition's commit: its rows with the last offset they cover
/// (cleared once they landed), and the txn version the table must still hold.
pub(crate) struct Part<R> {
    pub rows: Option<(R, i64)>,
    pub expected: Option<i64>,
}

/// One partition's buffers handed over at a commit: its `flows` rows as decoded batches
/// (the committer appends them to columns in file order) and its `edges`, sealed into a
/// batch by the loop (small next to the flows).
pub(crate) struct Sealed {
    pub flows: Part<FlowRows>,
    pub edges: Part<RecordBatch>,
}

impl Sealed {
    pub fn rows(&self) -> usize {
        self.flows.rows.as_ref().map_or(0, |(r, _)| r.len())
            + self.edges.rows.as_ref().map_or(0, |(r, _)| r.num_rows())
    }
}

/// What a commit did.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    /// Partitions whose `flows` txn moved, and to which offset.
    pub flows: Vec<(i32, i64)>,
    /// Partitions whose `edges` txn moved, and to which offset.
    pub edges: Vec<(i32, i64)>,
    /// Partitions another writer committed since we synced: their rows were dropped and
    /// the loop re-syncs them.
    pub lost: Vec<i32>,
    pub rows_written: u64,
    pub commits: u64,
}

/// A commit sent to the committer; its outcome arrives on `outcome`.
pub(crate) struct Commit {
    pub partitions: BTreeMap<i32, Sealed>,
    /// Shutting down: give up after a few attempts instead of retrying until it lands.
    pub stopping: bool,
}

/// Commits in flight, for the rebalance callback to wait on.
#[derive(Default)]
pub(crate) struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    fn start(&self) {
        if let Ok(mut n) = self.count.lock() {
            *n += 1;
        }
    }

    fn done(&self) {
        if let Ok(mut n) = self.count.lock() {
            *n = n.saturating_sub(1);
        }
        self.idle.notify_all();
    }

    /// Blocks until no commit is in flight, or `limit` passed (then false: the commit's
    /// own check of the tables' offsets still keeps rows from being written twice).
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let Ok(count) = self.count.lock() else {
            return false;
        };
        match self.idle.wait_timeout_while(count, limit, |n| *n > 0) {
            Ok((_, timeout)) => !timeout.timed_out(),
            Err(_) => false,
        }
    }
}

/// A partition's last offsets in `flows` and in `edges`.
type Offsets = (Option<i64>, Option<i64>);

enum Request {
    Commit(Commit, oneshot::Sender<Result<Committed, IngestError>>),
    Sync(Vec<i32>, oneshot::Sender<Result<Vec<Offsets>, IngestError>>),
}

/// The handle the ingest loop keeps.
pub(crate) struct Committer {
    requests: mpsc::Sender<Request>,
    in_flight: std::sync::Arc<InFlight>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the committer needs to know.
pub(crate) struct Settings {
    pub flows_url: Url,
    pub edges_url: Url,
    pub topic: String,
    pub retry_max: Duration,
    pub stop: watch::Receiver<bool>,
}

impl Committer {
    /// Opens both tables on the committer's thread (its own runtime: it keeps running
    /// while the loop's thread waits in a rebalance callback) and returns once they are.
    pub async fn start(
        settings: Settings,
        in_flight: std::sync::Arc<InFlight>,
    ) -> Result<Self, IngestError> {
        let (requests, mut inbox) = mpsc::channel::<Request>(2);
        let (opened_tx, opened) = oneshot::channel();
        let flight = in_flight.clone();
        let thread = std::thread::Builder::new()
            .name("lake-committer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = opened_tx.send(Err(IngestError::Internal(format!(
                            "cannot start the committer's runtime: {e}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut tables = match Tables::open(settings).await {
                        Ok(tables) => {
                            let _ = opened_tx.send(Ok(()));
                            tables
                        }
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return;
                        }
                    };
                    while let Some(request) = inbox.recv().await {
                        match request {
                            Request::Commit(commit, reply) => {
                                let outcome = tables.commit(commit).await;
                                let _ = reply.send(outcome);
                                flight.done();
                            }
                            Request::Sync(partitions, reply) => {
                                let _ = reply.send(tables.sync(&partitions).await);
                            }
                        }
                    }
                });
            })
            .map_err(|e| IngestError::Internal(format!("cannot start the committer: {e}")))?;
        opened.await.map_err(|_| gone())??;
        Ok(Self {
            requests,
            in_flight,
            thread: Some(thread),
        })
    }

    /// Sends a commit; its outcome comes on the returned receiver.
    pub async fn send(&self, commit: Commit) -> Result<Landing, IngestError> {
        let (reply, outcome) = oneshot::channel();
        self.in_flight.start();
        if self
            .requests
            .send(Request::Commit(commit, reply))
            .await
            .is_err()
        {
            self.in_flight.done();
            return Err(gone());
        }
        Ok(outcome)
    }

    /// The last offsets of each of `partitions` in `flows` and in `edges` (in that order),
    /// after every commit sent before.
    pub async fn sync(&self, partitions: Vec<i32>) -> Result<Vec<Offsets>, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Sync(partitions, reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Lets the thread finish (after the requests already sent) and joins it.
    pub fn close(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn gone() -> IngestError {
    IngestError::Internal("the lake committer stopped".into())
}

/// The answer to a sent commit.
pub(crate) type Landing = oneshot::Receiver<Result<Committed, IngestError>>;

/// Waits for a sent commit's outcome.
pub(crate) async fn landed(landing: &mut Landing) -> Result<Committed, IngestError> {
    landing.await.unwrap_or_else(|_| Err(gone()))
}

/// The tables and what a commit attempt needs, on the committer's thread.
struct Tables {
    flows: FlowsTable,
    edges: AppendTable,
    topic: String,
    retry_max: Duration,
    stop: watch::Receiver<bool>,
}

impl Tables {
    async fn open(settings: Settings) -> Result<Self, IngestError> {
        Ok(Self {
            flows: FlowsTable::open(&settings.flows_url).await?,
            edges: AppendTable::open_named(&settings.edges_url, "edges", EDGE_SORT_COLUMNS).await?,
            topic: settings.topic,
            retry_max: settings.retry_max,
            stop: settings.stop,
        })
    }

    /// Loads both tables' newest commits (another writer's included).
    async fn refresh(&mut self) -> Result<(), IngestError> {
        self.flows.refresh().await?;
        self.edges.refresh().await?;
        Ok(())
    }

    /// The loaded tables' last offsets of `partition`.
    async fn offsets(&self, partition: i32) -> Result<Offsets, IngestError> {
        let flows = self.flows.committed_offset(&self.topic, partition).await?;
        let edges = self.edges.committed_offset(&self.topic, partition).await?;
        Ok((flows, edges))
    }

    async fn sync(&mut self, partitions: &[i32]) -> Result<Vec<Offsets>, IngestError> {
        self.refresh().await?;
        let mut offsets = Vec::with_capacity(partitions.len());
        for partition in partitions {
            offsets.push(self.offsets(*partition).await?);
        }
        Ok(offsets)
    }

    /// Commits the sealed batches, retrying until both tables have them (or, when
    /// stopping, a few times).
    async fn commit(&mut self, commit: Commit) -> Result<Committed, IngestError> {
        let mut pending = commit.partitions;
        let mut committed = Committed::default();
        let mut backoff = Duration::from_millis(250);
        let mut attempts = 0;
        loop {
            attempts += 1;
            // Not `attempt`: delta-rs records its own retry count as `attempt` on the
            // current span, which then printed twice or three times.
            let span = tracing::info_span!(
                "commit",
                partitions = pending.len(),
                rows = pending.values().map(Sealed::rows).sum::<usize>(),
                commit_attempt = attempts
            );
            match self
                .try_commit(&mut pending, &mut committed)
                .instrument(span)
                .await
            {
                Ok(()) => return Ok(committed),
                Err(e) => {
                    let asked_to_stop = *self.stop.borrow();
                    if (commit.stopping && attempts >= 3) || (!commit.stopping && asked_to_stop) {
                        return Err(e);
                    }
                    telemetry::commit_failed(&e, backoff);
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s), if !commit.stopping => {}
                    }
                    backoff = (backoff * 2).min(self.retry_max);
                }
            }
        }
    }

    /// One attempt: re-checks that no other writer moved our partitions, commits the
    /// `flows` part (once: a retry after it landed only does the edges), then the edges.
    async fn try_commit(
        &mut self,
        pending: &mut BTreeMap<i32, Sealed>,
        committed: &mut Committed,
    ) -> Result<(), IngestError> {
        let started = Instant::now();
        // Another writer (a process that held the partition before a rebalance) may
        // have committed since we synced: drop what it already wrote.
        self.refresh().await?;
        let mut lost = Vec::new();
        for (partition, p) in pending.iter() {
            let (flows, edges) = self.offsets(*partition).await?;
            if flows != p.flows.expected || edges != p.edges.expected {
                tracing::warn!(
                    partition,
                    expected_flows = p.flows.expected,
                    table_flows = flows,
                    expected_edges = p.edges.expected,
                    table_edges = edges,
                    "another writer committed this partition: dropping our rows and re-syncing"
                );
                lost.push(*partition);
            }
        }
        for partition in lost {
            pending.remove(&partition);
            committed.lost.push(partition);
        }
        let (rows, offsets) = pending_part(pending, |p| &p.flows);
        let row_count: usize = rows.iter().map(|rows| rows.len()).sum();
        if row_count > 0 {
            let batches = sorted_flows(&rows).map_err(|e| {
                IngestError::Internal(format!("building the flows of a commit: {e}"))
            })?;
            let appended = self
                .flows
                .commit_sorted(batches, &self.topic, &offsets)
                .await
                .inspect_err(warn_if_concurrent)?;
            telemetry::committed(appended, row_count, offsets.len(), started.elapsed());
            committed.commits += 1;
            committed.rows_written += row_count as u64;
            land(pending, &offsets, |p| &mut p.flows);
            committed.flows.extend(offsets);
        }
        let (rows, offsets) = pending_part(pending, |p| &p.edges);
        if !offsets.is_empty() {
            let started = Instant::now();
            let row_count: usize = rows.iter().map(|rows| rows.num_rows()).sum();
            let rows = rows.into_iter().cloned().collect();
            // Written even with no rows, so that the txn records how far the edges go.
            let appended = self
                .edges
                .commit_parts(rows, &self.topic, &offsets)
                .await
                .inspect_err(warn_if_concurrent)?;
            telemetry::edges_committed(appended, row_count, offsets.len(), started.elapsed());
            land(pending, &offsets, |p| &mut p.edges);
            committed.edges.extend(offsets);
        }
        Ok(())
    }
}

/// One table's rows of every pending partition, with each partition's last offset (left
/// in place: a part is cleared only once its commit landed).
fn pending_part<R>(
    pending: &BTreeMap<i32, Sealed>,
    part: fn(&Sealed) -> &Part<R>,
) -> (Vec<&R>, Vec<(i32, i64)>) {
    pending
        .iter()
        .filter_map(|(partition, p)| {
            let (rows, last) = part(p).rows.as_ref()?;
            Some((rows, (*partition, *last)))
        })
        .unzip()
}

/// One table's part of `offsets`' partitions landed: cleared, and the table at that offset.
fn land<R>(
    pending: &mut BTreeMap<i32, Sealed>,
    offsets: &[(i32, i64)],
    part: fn(&mut Sealed) -> &mut Part<R>,
) {
    for &(partition, last) in offsets {
        if let Some(part) = pending.get_mut(&partition).map(part) {
            part.rows = None;
            part.expected = Some(last);
        }
    }
}

fn warn_if_concurrent(e: &LakeError) {
    if e.is_concurrent_transaction() {
        // Another writer committed these partitions meanwhile: the next attempt
        // re-reads the table and drops what it covered.
        tracing::warn!("concurrent commit on the same partitions; re-checking");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_revoke_waits_for_the_commit_in_flight() {
        let in_flight = Arc::new(InFlight::default());
        assert!(
            in_flight.wait_idle(Duration::ZERO),
            "idle when nothing was sent"
        );
        in_flight.start();
        assert!(
            !in_flight.wait_idle(Duration::from_millis(20)),
            "gives up after the limit while a commit is in flight"
        );
        let committer = in_flight.clone();
        let landed = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            committer.done();
        });
        let started = Instant::now();
        assert!(in_flight.wait_idle(Duration::from_secs(10)));
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "returned before it landed"
        );
        landed.join().unwrap();
    }
}
