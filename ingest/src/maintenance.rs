//! Lake maintenance, safe while ingest runs: every operation is one Delta commit, so a
//! reader sees the table before or after it, never a row twice or a row missing.
//!
//! - [`compact`]: rewrites small files of a partition into larger ones (Delta `optimize`;
//!   the commit removes the old files and adds the new ones with `dataChange = false`).
//! - [`vacuum`]: deletes files no snapshot younger than the retention still references.
//! - [`retain`]: drops `flows` partitions older than N days (a metadata-only delete of
//!   whole date partitions).
//! - [`check`]: finds data files the table references that are missing or whose Parquet
//!   footer does not read; with `repair`, drops the missing ones from the table.

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

/// A data file the table references, and why it cannot serve its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFile {
    /// Relative to the table's root, as the Delta log names it.
    pub path: String,
    pub problem: String,
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Data files the table references.
    pub files: usize,
    /// Referenced but not in the store (every query reading them fails).
    pub missing: Vec<String>,
    /// Whether `missing` were dropped from the table (`repair`).
    pub repaired: bool,
    /// In the store, but their Parquet footer does not read.
    pub unreadable: Vec<BadFile>,
}

impl Check {
    pub fn is_healthy(&self) -> bool {
        (self.missing.is_empty() || self.repaired) && self.unreadable.is_empty()
    }
}

/// How many footers are read at once (object stores answer each after a round trip).
const FOOTERS_IN_FLIGHT: usize = 16;

/// Checks every data file of the table at `url`: missing ones (delta-rs's filesystem
/// check; with `repair`, one commit drops them from the table and their rows are gone)
/// and ones whose Parquet footer does not read. Those are only reported: a read can fail
/// for a moment, and the file's rows may still be recoverable. `read` is called after
/// each footer read, with the count so far and the total.
pub async fn check(
    url: &Url,
    repair: bool,
    read: impl Fn(usize, usize),
) -> Result<Check, LakeError> {
    use futures::StreamExt as _;

    let table = open(url).await?;
    let files: Vec<(deltalake::Path, u64)> = table
        .snapshot()
        .map_err(LakeError::delta(url))?
        .log_data()
        .into_iter()
        .map(|add| (add.object_store_path(), add.size().max(0) as u64))
        .collect();
    let (table, metrics) = table
        .filesystem_check()
        .with_dry_run(!repair)
        .await
        .map_err(LakeError::delta(url))?;
    let missing = metrics.files_removed;
    let store = table.log_store().object_store(None);
    let present: Vec<_> = files
        .iter()
        .filter(|(path, _)| !missing.iter().any(|m| m == path.as_ref()))
        .collect();
    let total = present.len();
    let mut done = 0;
    let mut unreadable = Vec::new();
    let mut footers = futures::stream::iter(present)
        .map(|(path, size)| {
            let store = store.clone();
            async move { (path, read_footer(store.as_ref(), path, *size).await) }
        })
        .buffer_unordered(FOOTERS_IN_FLIGHT);
    while let Some((path, footer)) = footers.next().await {
        done += 1;
        read(done, total);
        if let Err(e) = footer {
            unreadable.push(BadFile {
                path: path.to_string(),
                problem: e,
            });
        }
    }
    unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Check {
        files: files.len(),
        missing,
        repaired: repair,
        unreadable,
    })
}

/// Reads and parses the Parquet footer of the `size`-byte file at `path`: the end of the
/// file first, more if the metadata is longer.
async fn read_footer(
    store: &dyn deltalake::ObjectStore,
    path: &deltalake::Path,
    size: u64,
) -> Result<(), String> {
    use deltalake::parquet::errors::ParquetError;
    use deltalake::parquet::file::metadata::ParquetMetaDataReader;
    use object_store::ObjectStoreExt as _;
    let mut suffix = size.min(64 * 1024);
    loop {
        // A range past the end is an error on some stores, a short read on others.
        let bytes = match store.get_range(path, size - suffix..size).await {
            Ok(bytes) if bytes.len() as u64 == suffix => bytes,
            other => {
                return Err(match store.head(path).await {
                    Ok(meta) if meta.size != size => format!(
                        "the file has {} bytes, the table says {size} (truncated or replaced)",
                        meta.size
                    ),
                    _ => match other {
                        Err(e) => e.to_string(),
                        Ok(bytes) => format!("read {} of {suffix} bytes", bytes.len()),
                    },
                });
            }
        };
        let mut reader = ParquetMetaDataReader::new();
        match reader.try_parse_sized(&bytes, size) {
            Ok(()) => return reader.finish().map(drop).map_err(|e| e.to_string()),
            Err(ParquetError::NeedMoreData(needed))
                if needed as u64 > suffix && needed as u64 <= size =>
            {
                suffix = needed as u64;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
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
