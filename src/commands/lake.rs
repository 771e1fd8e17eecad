//! `bulkhead lake …`: maintenance of the lake's Delta tables, safe while ingest runs.

use std::time::Duration;

use bulkhead_ingest::maintenance;
use bulkhead_schemas::lake::{lake_url, table_url};

/// Lake maintenance (each operation is one atomic Delta commit).
#[derive(Debug, clap::Subcommand)]
pub enum LakeCommand {
    /// Rewrite small files into large ones (Delta optimize); readers never see a row twice.
    Compact {
        #[command(flatten)]
        table: TableArgs,
        /// Target file size in MiB.
        #[arg(long, default_value_t = 256)]
        target_mib: u64,
    },
    /// Delete files that no snapshot younger than --retain-hours references.
    Vacuum {
        #[command(flatten)]
        table: TableArgs,
        /// Keep files needed by snapshots of the last this many hours (time travel and
        /// readers still on an old snapshot need them; Delta recommends 168).
        #[arg(long, default_value_t = 168.0)]
        retain_hours: f64,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop the partitions of the flows table older than --days days.
    Retain {
        #[command(flatten)]
        table: TableArgs,
        /// Keep this many days of flows (today included).
        #[arg(long)]
        days: u32,
    },
    /// Check that every data file the table references is there and its Parquet footer
    /// reads; exits 1 when one is not. --repair drops the missing ones from the table.
    Check {
        #[command(flatten)]
        table: TableArgs,
        /// Drop the missing files from the table (one commit; their rows are gone).
        /// Unreadable files are only reported: restore them, or move them away and
        /// repair.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct TableArgs {
    /// The lake (directory, file:// URL or s3://bucket/prefix), as given to `bulkhead ingest`.
    #[arg(long, env = "BULKHEAD_LAKE", value_name = "DIR|URL")]
    pub lake: String,
    /// The table.
    #[arg(long, default_value = "flows")]
    pub table: String,
}

impl TableArgs {
    fn url(&self) -> anyhow::Result<url::Url> {
        if bulkhead_schemas::lake::table(&self.table).is_none() {
            anyhow::bail!("--table {:?} is not a lake table", self.table);
        }
        let url = table_url(&lake_url(&self.lake)?, &self.table);
        // delta-rs's own message for this is two lines, the second a Rust debug dump.
        if let Ok(dir) = url.to_file_path()
            && !dir.is_dir()
        {
            anyhow::bail!(
                "--lake {}: no table {} there (no directory {}; ingest creates it on its first commit)",
                self.lake,
                self.table,
                dir.display()
            );
        }
        Ok(url)
    }
}

/// A spinner while `what` runs: a compaction of a large table takes minutes.
async fn with_spinner<T>(what: String, work: impl std::future::Future<Output = T>) -> T {
    let spinner = super::spinner(&what);
    let out = work.await;
    spinner.finish_and_clear();
    out
}

pub async fn run(command: LakeCommand) -> anyhow::Result<()> {
    match command {
        LakeCommand::Compact { table, target_mib } => {
            let url = table.url()?;
            let done = with_spinner(
                format!("compacting {url}"),
                maintenance::compact(&url, target_mib * 1024 * 1024),
            )
            .await?;
            println!(
                "{}: {} files compacted into {} in {} partitions",
                url, done.files_removed, done.files_added, done.partitions
            );
        }
        LakeCommand::Vacuum {
            table,
            retain_hours,
            dry_run,
        } => {
            if !(retain_hours.is_finite() && retain_hours >= 0.0) {
                anyhow::bail!("--retain-hours {retain_hours}: expected hours >= 0");
            }
            let url = table.url()?;
            let files = with_spinner(
                format!("vacuuming {url}"),
                maintenance::vacuum(
                    &url,
                    Duration::from_secs_f64(retain_hours * 3600.0),
                    dry_run,
                ),
            )
            .await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            println!("{url}: {verb} {} files", files.len());
        }
        LakeCommand::Retain { table, days } => {
            let url = table.url()?;
            let today = (bulkhead_schemas::now_unix_ns() / 86_400_000_000_000) as i32;
            let keep_from = today - days.saturating_sub(1) as i32;
            let removed = with_spinner(
                format!("dropping partitions of {url}"),
                maintenance::retain(&url, keep_from),
            )
            .await?;
            println!(
                "{url}: removed {removed} files of partitions before {}",
                maintenance::date_text(keep_from)
            );
        }
        LakeCommand::Check { table, repair } => {
            let url = table.url()?;
            let progress = super::progress(0, "footers");
            let found = maintenance::check(&url, repair, |done, total| {
                progress.set_length(total as u64);
                progress.set_position(done as u64);
            })
            .await?;
            progress.finish_and_clear();
            println!("{url}: {} data files", found.files);
            if !found.missing.is_empty() {
                let what = if found.repaired {
                    "dropped from the table; their rows are gone"
                } else {
                    "--repair drops them from the table"
                };
                println!("missing ({}, {what}):", found.missing.len());
                for path in &found.missing {
                    println!("  {path}");
                }
            }
            if !found.unreadable.is_empty() {
                println!(
                    "unreadable Parquet footer ({}; restore them, or move them away and run --repair):",
                    found.unreadable.len()
                );
                for bad in &found.unreadable {
                    println!("  {}: {}", bad.path, bad.problem);
                }
            }
            if !found.is_healthy() {
                anyhow::bail!(
                    "{url}: {} missing and {} unreadable data files",
                    found.missing.len(),
                    found.unreadable.len()
                );
            }
        }
    }
    Ok(())
}
