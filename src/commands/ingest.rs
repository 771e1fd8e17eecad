//! `bulkhead ingest`: consume flows from Kafka into the `flows` Delta table, exactly once.

use std::time::Duration;

use bulkhead_ingest::{IngestArgs, IngestConfig};

use crate::config::Settings;

/// How long ingest keeps freed memory for its next buffers (longer than a commit interval
/// of the defaults, so that each commit's buffers are reused by the next).
const KEEP_FREED_MEMORY: Duration = Duration::from_secs(60);

pub async fn run(settings: &Settings, args: IngestArgs) -> anyhow::Result<()> {
    let config = IngestConfig::from_args(&args)?;
    crate::keep_freed_memory_for(KEEP_FREED_MEMORY);
    super::serve_metrics(&args.metrics_addr);
    let summary = bulkhead_ingest::run(config, &settings.kafka, super::shutdown_signal()).await?;
    eprintln!(
        "ingest stopped: {} rows in {} commits, {} dead letters, {} replayed messages skipped",
        summary.rows_written, summary.commits, summary.dead_letters, summary.duplicates_skipped
    );
    Ok(())
}
