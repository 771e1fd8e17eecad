//! What ingest reports: one function per event, each logging and counting together.
//! Metric names follow `bulkhead_ingest_<thing>_<unit>[_total]`; tags stay low-cardinality
//! (partition numbers, a reason from a fixed list).

use std::time::Duration;

use crate::dlq::RejectKind;
use crate::writer::Appended;

/// Every metric this crate emits (the explicit registry; docs list these).
pub const METRICS: &[&str] = &[
    "bulkhead_ingest_messages_consumed_total",
    "bulkhead_ingest_consumed_bytes_total",
    "bulkhead_ingest_rows_written_total",
    "bulkhead_ingest_written_files_total",
    "bulkhead_ingest_written_bytes_total",
    "bulkhead_ingest_commits_total",
    "bulkhead_ingest_commit_duration_seconds",
    "bulkhead_ingest_dead_letters_total",
    "bulkhead_ingest_duplicates_skipped_total",
    "bulkhead_ingest_expired_messages_total",
    "bulkhead_ingest_lake_retries_total",
    "bulkhead_ingest_lag_messages",
    "bulkhead_ingest_buffered_rows",
    "bulkhead_ingest_edge_rows_written_total",
    "bulkhead_ingest_edge_commits_total",
    "bulkhead_ingest_edge_commit_duration_seconds",
    "bulkhead_ingest_late_flows_total",
    "bulkhead_ingest_client_reports_skipped_total",
    "bulkhead_ingest_read_model_commits_total",
    "bulkhead_ingest_policy_versions_rejected_total",
];

pub fn consumed(bytes: usize) {
    metrics::counter!("bulkhead_ingest_messages_consumed_total").increment(1);
    metrics::counter!("bulkhead_ingest_consumed_bytes_total").increment(bytes as u64);
}

pub fn buffered(rows: usize) {
    metrics::gauge!("bulkhead_ingest_buffered_rows").set(rows as f64);
}

pub fn dead_letter(topic: &str, partition: i32, offset: i64, kind: RejectKind, reason: &str) {
    tracing::warn!(
        topic,
        partition,
        offset,
        kind = kind.as_str(),
        reason,
        "flow message refused; sent to the dead-letter topic"
    );
    metrics::counter!("bulkhead_ingest_dead_letters_total", "reason" => kind.as_str()).increment(1);
}

pub fn duplicate_skipped(partition: i32, offset: i64, next: i64) {
    tracing::debug!(
        partition,
        offset,
        next,
        "skipping a message already in the lake"
    );
    metrics::counter!("bulkhead_ingest_duplicates_skipped_total").increment(1);
}

/// Offsets `from..to` of `partition` were deleted from Kafka (retention, or records
/// deleted by an operator) before ingest read them: they can never reach the lake.
pub fn expired(partition: i32, from: i64, to: i64) {
    tracing::error!(
        partition,
        from_offset = from,
        to_offset = to,
        messages = to - from,
        "messages deleted from Kafka (retention or deleted records) before ingest read them: \
         they are not in the lake"
    );
    metrics::counter!("bulkhead_ingest_expired_messages_total").increment((to - from) as u64);
}

pub fn committed(appended: Appended, rows: usize, partitions: usize, took: Duration) {
    tracing::info!(
        version = appended.version,
        rows,
        files = appended.files,
        bytes = appended.bytes,
        partitions,
        took_ms = took.as_millis() as u64,
        "committed flows to the lake"
    );
    metrics::counter!("bulkhead_ingest_commits_total", "result" => "ok").increment(1);
    metrics::counter!("bulkhead_ingest_rows_written_total").increment(rows as u64);
    written("flows", appended);
    metrics::histogram!("bulkhead_ingest_commit_duration_seconds").record(took.as_secs_f64());
}

/// The data files a commit to `table` added: what the lake grows by, and how many small
/// files `bulkhead lake compact` will have to merge.
fn written(table: &'static str, appended: Appended) {
    metrics::counter!("bulkhead_ingest_written_files_total", "table" => table)
        .increment(appended.files as u64);
    metrics::counter!("bulkhead_ingest_written_bytes_total", "table" => table)
        .increment(appended.bytes);
}

/// How often late flows are logged (counted always): a backlog replayed out of order can
/// make every message late, and a log line per message drowned the rest.
const LATE_LOG_EVERY: Duration = Duration::from_secs(10);

pub fn edges_added(partition: i32, offset: i64, added: &crate::edges::Added) {
    if added.late > 0 {
        metrics::counter!("bulkhead_ingest_late_flows_total").increment(added.late as u64);
        static LATE: std::sync::Mutex<(Option<std::time::Instant>, usize)> =
            std::sync::Mutex::new((None, 0));
        if let Ok(mut late) = LATE.lock() {
            let (logged, count) = &mut *late;
            *count += added.late;
            if logged.is_none_or(|at| at.elapsed() >= LATE_LOG_EVERY) {
                tracing::info!(
                    partition,
                    offset,
                    late = *count,
                    "flows later than the edge lateness (since the last such line): they land in \
                     their own window, in the commit that covers them"
                );
                *logged = Some(std::time::Instant::now());
                *count = 0;
            }
        }
    }
    metrics::counter!("bulkhead_ingest_client_reports_skipped_total")
        .increment(added.skipped_client_reports as u64);
}

pub fn edges_committed(appended: Appended, rows: usize, partitions: usize, took: Duration) {
    tracing::info!(
        version = appended.version,
        rows,
        files = appended.files,
        bytes = appended.bytes,
        partitions,
        took_ms = took.as_millis() as u64,
        "committed edges to the lake"
    );
    metrics::counter!("bulkhead_ingest_edge_commits_total").increment(1);
    metrics::counter!("bulkhead_ingest_edge_rows_written_total").increment(rows as u64);
    written("edges", appended);
    metrics::histogram!("bulkhead_ingest_edge_commit_duration_seconds").record(took.as_secs_f64());
}

pub fn read_model_committed(table: &str, version: i64, rows: usize) {
    tracing::info!(table, version, rows, "read model replaced");
    metrics::counter!("bulkhead_ingest_read_model_commits_total", "table" => table.to_string())
        .increment(1);
}

pub fn policy_rejected(offset: i64, reason: &str) {
    tracing::warn!(
        offset,
        reason,
        "policy message refused: not used for decisions nor the policy table"
    );
    metrics::counter!("bulkhead_ingest_policy_versions_rejected_total").increment(1);
}

pub fn commit_failed(error: &dyn std::fmt::Display, retry_in: Duration) {
    tracing::error!(
        error = %error,
        retry_in_ms = retry_in.as_millis() as u64,
        "cannot commit to the lake; nothing is acknowledged, retrying"
    );
    metrics::counter!("bulkhead_ingest_commits_total", "result" => "error").increment(1);
    metrics::counter!("bulkhead_ingest_lake_retries_total").increment(1);
}

pub fn lag(partition: i32, messages: i64) {
    metrics::gauge!("bulkhead_ingest_lag_messages", "partition" => partition.to_string())
        .set(messages.max(0) as f64);
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_names_are_unique_and_follow_the_convention() {
        let mut seen = std::collections::HashSet::new();
        for name in super::METRICS {
            assert!(seen.insert(name), "duplicate metric {name}");
            assert!(name.starts_with("bulkhead_ingest_"), "{name}");
            let counter = name.ends_with("_total");
            let unit = ["_seconds", "_messages", "_rows", "_bytes_total", "_total"]
                .iter()
                .any(|u| name.ends_with(u));
            assert!(counter || unit, "{name} has no unit");
        }
    }
}
