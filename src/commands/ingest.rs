//! `bulkhead ingest`: consume flows from Kafka into the lake's tables, exactly once.

use bulkhead_ingest::{IngestArgs, IngestConfig};

use crate::config::Settings;

pub async fn run(settings: &Settings, args: IngestArgs) -> anyhow::Result<()> {
    let config = IngestConfig::from_args(&args)?;
    bulkhead_ingest::memory::keep_freed_memory_for(bulkhead_ingest::memory::KEEP_FREED_MEMORY);
    super::serve_metrics(&args.metrics_addr)?;
    let summary = bulkhead_ingest::run(config, &settings.kafka, super::shutdown_signal()).await?;
    eprintln!(
        "ingest stopped: {} rows in {} commits, {} dead letters, {} replayed messages skipped, \
         {} messages deleted from Kafka before they were read",
        summary.rows_written,
        summary.commits,
        summary.dead_letters,
        summary.duplicates_skipped,
        summary.messages_expired
    );
    Ok(())
}
