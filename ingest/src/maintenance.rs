//! Lake maintenance, safe while ingest runs: every operation is one Delta commit, so a
//! reader sees the table before or after it, never a row twice or a row missing.
//!
//! - [`compact`]: rewrites small files of a partition into larger ones (Delta `optimize`;
//!   the commit removes the old files and adds the new ones with `dataChange = false`).
//! - [`vacuum`]: deletes files no snapshot younger than the retention still references.
//! - [`retain`]: drops `flows` partitions older than N days (a metadata-only delete of
//!   whole date partitions).

use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use url::Url;

use crate::writer::{LakeError, ROW_GROUP_ROWS};

async fn open(url: &Url) -> Result<DeltaTable, LakeError> {
    deltalake::open_table(url.clone())
        .await
        .map_err(LakeError::delta(url))
}

/// What [`compact`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compaction {
    pub files_removed: u64,
    pub files_added: u64,
    pub partitions: u64,
}

/// Compacts small files into files of about `target_bytes`.
pub async fn compact(url: &Url, target_bytes: u64) -> Result<Compaction, LakeError> {
    let table = open(url).await?;
    let mut builder = table.optimize().with_writer_properties(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build(),
    );
    if let Some(target) = std::num::NonZeroU64::new(target_bytes) {
        builder = builder.with_target_size(target);
    }
    let (_, metrics) = builder.await.map_err(LakeError::delta(url))?;
    Ok(Compaction {
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        partitions: metrics.partitions_optimized,
    })
}

/// Deletes unreferenced files older than `retain`; with `dry_run`, only lists them.
pub async fn vacuum(url: &Url, retain: Duration, dry_run: bool) -> Result<Vec<String>, LakeError> {
    let table = open(url).await?;
    let retain = chrono::Duration::from_std(retain).map_err(|e| {
        LakeError::delta(url)(deltalake::DeltaTableError::Generic(format!(
            "retention {retain:?}: {e}"
        )))
    })?;
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(retain)
        .with_enforce_retention_duration(false)
        .with_dry_run(dry_run)
        .await
        .map_err(LakeError::delta(url))?;
    Ok(metrics.files_deleted)
}

/// Drops every `date` partition before `keep_from` (days since the Unix epoch).
pub async fn retain(url: &Url, keep_from_days: i32) -> Result<usize, LakeError> {
    let table = open(url).await?;
    let date = date_text(keep_from_days);
    let (_, metrics) = table
        .delete()
        .with_predicate(format!("date < DATE '{date}'"))
        .await
        .map_err(LakeError::delta(url))?;
    Ok(metrics.num_removed_files)
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
pub fn date_text(days: i32) -> String {
    let date = chrono::DateTime::from_timestamp(i64::from(days) * 86_400, 0)
        .map(|t| t.date_naive())
        .unwrap_or_default();
    date.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn day_numbers_format_as_dates() {
        assert_eq!(super::date_text(0), "1970-01-01");
        assert_eq!(super::date_text(20418), "2025-11-26");
    }
}
