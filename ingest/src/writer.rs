//! The Delta writer: appends sorted, zstd-compressed Parquet to a lake table (`flows`,
//! `edges`) in one atomic commit that also records, per Kafka partition, the last offset
//! it covers (a Delta `txn` action: application id `bulkhead-ingest-<topic>-<partition>`,
//! version = that offset; each table keeps its own). The table, not the consumer group,
//! is the truth about what is written. [`SnapshotTable`] overwrites a small read model
//! (`workloads`, `status`, `policy`) as a whole.

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_row::{RowConverter, SortField};
use arrow_schema::ArrowError;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::operations::write::WriterStatsConfig;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::DeltaOperation;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use indexmap::IndexMap;
use url::Url;

/// Rows per Parquet row group (about 1M, as the issue asks).
pub const ROW_GROUP_ROWS: usize = 1_000_000;

/// From this many rows a commit's columns are gathered or built on two threads: ingest's
/// loop thread is idle part of the time while the committer works, so the second often
/// finds a core.
pub(crate) const PARALLEL_ROWS: usize = 65_536;

/// Columns `flows` rows are sorted by within a file, so that IP and port filters prune.
pub const SORT_COLUMNS: &[&str] = &["src_ip", "dst_ip", "dst_port"];

/// Columns `edges` rows are sorted by within a file.
pub const EDGE_SORT_COLUMNS: &[&str] = &["window_start", "dst_workload", "dst_port"];

/// Columns of `flows` and `edges` with (nearly) a distinct value per row: written without
/// a dictionary, which the Parquet writer would fill (hashing every value) only to give
/// up on it once it reaches its size limit.
const UNIQUE_VALUE_COLUMNS: &[&str] = &[
    "first_seen",
    "last_seen",
    "bytes",
    "packets",
    "src_port",
    "batch_seq",
];

/// How ingest encodes the files it appends: zstd, row groups of [`ROW_GROUP_ROWS`],
/// dictionaries for the columns that repeat. (`bulkhead lake compact` rewrites files with
/// dictionaries everywhere: it writes for readers, ingest for keeping up.)
fn append_writer_properties() -> WriterProperties {
    let builder = UNIQUE_VALUE_COLUMNS.iter().fold(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS)),
        |builder, column| builder.set_column_dictionary_enabled(ColumnPath::from(*column), false),
    );
    NO_STATISTICS_LEAVES
        .iter()
        .fold(builder, |builder, path| {
            builder.set_column_statistics_enabled(
                ColumnPath::from(path.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
                EnabledStatistics::None,
            )
        })
        .build()
}

/// The leaves of `flows`' label maps and IP-list lists: no query prunes on them (a
/// filter on a map entry or list item cannot use min/max), and comparing their eight or
/// so strings per row with a running min and max was ~7 % of writing a file. Filters on
/// labels prune through the standard label columns, which keep their statistics.
const NO_STATISTICS_LEAVES: &[&[&str]] = &[
    &["src_labels", "entries", "keys"],
    &["src_labels", "entries", "values"],
    &["dst_labels", "entries", "keys"],
    &["dst_labels", "entries", "values"],
    &["src_ip_lists", "list", "item"],
    &["dst_ip_lists", "list", "item"],
];

/// The Delta application id that records progress on one partition of a topic.
pub fn app_id(topic: &str, partition: i32) -> String {
    format!("bulkhead-ingest-{topic}-{partition}")
}

/// A lake operation that failed; retrying may help (disk full, permissions, a
/// concurrent writer).
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// Its message says `error` in full, so it gives no `source` (which would print
    /// twice in an error chain).
    #[error("Delta table {url}: {}", storage_reason(error))]
    Delta {
        url: Url,
        /// Boxed: `DeltaTableError` is large, and every `Result` of the lake carries it.
        error: Box<DeltaTableError>,
    },
    /// A commit's data files could not be written (full disk, no permission, store
    /// down); nothing was committed.
    #[error("writing data files of {url}: {reason}")]
    Files { url: Url, reason: String },
    #[error("sorting rows for {url}: {source}")]
    Arrow {
        url: Url,
        #[source]
        source: ArrowError,
    },
}

/// `error`'s text, without what delta-rs puts in front of a storage failure: "Failed to
/// parse parquet: External: " (its Parquet variant, meant for reading checkpoints, wraps
/// every error of a Parquet read or write) and "Failed to read delta log object: " (said
/// of a commit it could not write too). A full disk read as a parse or read error.
fn storage_reason(error: &DeltaTableError) -> String {
    match error {
        DeltaTableError::Parquet {
            source: ParquetError::External(cause),
        } => cause.to_string(),
        DeltaTableError::ObjectStore { source } => source.to_string(),
        other => other.to_string(),
    }
}

impl LakeError {
    /// Turns a Delta error on the table at `url` into a [`LakeError`] that names it.
    pub fn delta(url: &Url) -> impl Fn(DeltaTableError) -> LakeError + Copy + '_ {
        move |error| LakeError::Delta {
            url: url.clone(),
            error: Box::new(error),
        }
    }

    /// Writing data files of the table at `url` failed: the reason without delta-rs's
    /// "Failed to parse parquet" (see `storage_reason`).
    pub fn files(url: &Url, source: DeltaTableError) -> LakeError {
        let reason = match &source {
            DeltaTableError::Parquet { source: parquet }
                if !matches!(parquet, ParquetError::External(_)) =>
            {
                parquet.to_string()
            }
            _ => storage_reason(&source),
        };
        LakeError::Files {
            url: url.clone(),
            reason,
        }
    }

    /// Another writer committed progress for the same partitions since we read the
    /// table (e.g. after a rebalance): our buffer must be dropped and re-read.
    pub fn is_concurrent_transaction(&self) -> bool {
        matches!(
            self,
            LakeError::Delta { error, .. } if matches!(
                **error,
                DeltaTableError::Transaction {
                    source: deltalake::kernel::transaction::TransactionError::CommitConflict(
                        deltalake::kernel::transaction::CommitConflictError::ConcurrentTransaction
                    ),
                }
            )
        )
    }
}

/// What one append to an [`AppendTable`] committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The table version of the commit.
    pub version: i64,
    /// Data files the commit added, and their bytes (the sizes its `add` actions record).
    pub files: usize,
    pub bytes: u64,
}

/// The number and total size of the data files `actions` add.
fn added_files(actions: &[Action]) -> (usize, u64) {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Add(add) => Some(add.size.max(0) as u64),
            _ => None,
        })
        .fold((0, 0), |(files, bytes), size| (files + 1, bytes + size))
}

/// An append-only Delta table of the lake (`flows`, `edges`).
pub struct AppendTable {
    url: Url,
    table: DeltaTable,
    partition_columns: Vec<String>,
    sort_columns: &'static [&'static str],
    writer_properties: WriterProperties,
}

/// The `flows` table is an [`AppendTable`].
pub type FlowsTable = AppendTable;

impl AppendTable {
    /// Opens the `flows` table at `url` (see [`Self::open_named`]).
    pub async fn open(url: &Url) -> Result<Self, LakeError> {
        Self::open_named(url, "flows", SORT_COLUMNS).await
    }

    /// Opens the table `name` (a [`bulkhead_schemas::lake::TABLES`] entry) at `url`, or
    /// prepares to create it with the first commit; rows are sorted by `sort_columns`
    /// within a commit. Creates a local directory if it is missing.
    pub async fn open_named(
        url: &Url,
        name: &str,
        sort_columns: &'static [&'static str],
    ) -> Result<Self, LakeError> {
        let delta = LakeError::delta(url);
        let table = open_table(url).await.map_err(delta)?;
        let spec = bulkhead_schemas::lake::table(name)
            .ok_or_else(|| delta(DeltaTableError::Generic(format!("no {name} table spec"))))?;
        Ok(Self {
            url: url.clone(),
            table,
            partition_columns: spec
                .partition_columns
                .iter()
                .map(|c| c.to_string())
                .collect(),
            sort_columns,
            writer_properties: append_writer_properties(),
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The table version loaded (None before the first commit).
    pub fn version(&self) -> Option<i64> {
        self.table.version().map(|v| v as i64)
    }

    /// Loads the newest commit of the table (another writer's included).
    pub async fn refresh(&mut self) -> Result<(), LakeError> {
        let loaded = load_latest(&mut self.table).await;
        loaded.map_err(|source| self.delta_error(source))
    }

    /// The last offset of `topic`/`partition` recorded in the loaded snapshot.
    pub async fn committed_offset(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, LakeError> {
        let Ok(state) = self.table.snapshot() else {
            return Ok(None); // no table yet: nothing written
        };
        state
            .transaction_version(self.table.log_store().as_ref(), app_id(topic, partition))
            .await
            .map_err(|source| self.delta_error(source))
    }

    /// Appends `rows` (sorted here) and records `last_offsets` (partition, last offset
    /// included) of `topic` in the same atomic commit.
    pub async fn commit(
        &mut self,
        rows: RecordBatch,
        topic: &str,
        last_offsets: &[(i32, i64)],
    ) -> Result<Appended, LakeError> {
        self.commit_parts(vec![rows], topic, last_offsets).await
    }

    /// [`Self::commit`] of the rows of several batches of one schema (one per Kafka
    /// partition), sorted together into one batch: no copy of them is made on the way.
    pub async fn commit_parts(
        &mut self,
        parts: Vec<RecordBatch>,
        topic: &str,
        last_offsets: &[(i32, i64)],
    ) -> Result<Appended, LakeError> {
        let keys = self.file_order();
        let rows = sort_batches_by(&parts, &keys).map_err(|e| self.arrow_error(e))?;
        drop(parts);
        self.commit_sorted(vec![rows], topic, last_offsets).await
    }

    /// The columns rows are ordered by in a file: the table partition columns, then the
    /// sort columns.
    pub fn file_order(&self) -> Vec<&str> {
        self.partition_columns
            .iter()
            .map(String::as_str)
            .chain(self.sort_columns.iter().copied())
            .collect()
    }

    /// [`Self::commit`] of rows already in [`Self::file_order`], across `batches` in
    /// turn (e.g. halves built on two threads): each batch at least.
    pub async fn commit_sorted(
        &mut self,
        batches: Vec<RecordBatch>,
        topic: &str,
        last_offsets: &[(i32, i64)],
    ) -> Result<Appended, LakeError> {
        if batches.is_empty() {
            return Err(self.arrow_error(ArrowError::InvalidArgumentError(
                "a commit needs one batch at least (empty is allowed)".into(),
            )));
        }
        let batches: Vec<RecordBatch> = batches
            .into_iter()
            .map(|rows| self.fit_to_table(rows))
            .collect();
        let txns = last_offsets
            .iter()
            .map(|(partition, offset)| Transaction::new(app_id(topic, *partition), *offset))
            .collect();
        let properties = CommitProperties::default()
            .with_application_transactions(txns)
            .with_max_retries(5);
        if self.table.version().is_none() {
            self.create(batches[0].schema()).await?;
        }
        if self.writes_files_itself(&batches[0]) {
            return self.append_files(batches, properties).await;
        }
        // A table whose protocol or schema this writer does not handle itself is left to
        // delta-rs's own write.
        self.append_with_delta_rs(batches, properties).await
    }

    /// Appends sorted `batches` through delta-rs's `write` operation, which checks the
    /// table's protocol, invariants and schema itself.
    async fn append_with_delta_rs(
        &mut self,
        batches: Vec<RecordBatch>,
        properties: CommitProperties,
    ) -> Result<Appended, LakeError> {
        let written = self
            .table
            .clone()
            .write(batches)
            .with_save_mode(SaveMode::Append)
            .with_partition_columns(self.partition_columns.clone())
            .with_writer_properties(self.writer_properties.clone())
            .with_commit_properties(properties)
            .await
            .map_err(|source| self.delta_error(source))?;
        self.table = written;
        let version = self.table.version().unwrap_or(0);
        // `write` reports no sizes: its commit's `add` actions, read back, have them.
        let log_store = self.table.log_store();
        let commit = log_store
            .read_commit_entry(version)
            .await
            .map_err(|source| self.delta_error(source))?
            .unwrap_or_default();
        let actions = deltalake::logstore::get_actions(version, &commit)
            .map_err(|source| self.delta_error(source))?;
        let (files, bytes) = added_files(&actions);
        Ok(Appended {
            version: version as i64,
            files,
            bytes,
        })
    }

    /// Creates the table with the columns of `schema` (left as it is if another writer
    /// created it meanwhile).
    async fn create(&mut self, schema: arrow_schema::SchemaRef) -> Result<(), LakeError> {
        let columns: StructType = schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| self.arrow_error(e))?;
        self.table = CreateBuilder::new()
            .with_log_store(self.table.log_store())
            .with_columns(columns.fields().cloned())
            .with_partition_columns(self.partition_columns.clone())
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(|source| self.delta_error(source))?;
        Ok(())
    }

    /// Whether [`Self::append_files`] can write `rows`: the table exists, needs no
    /// reader or writer feature beyond plain Parquet (no column mapping, deletion vectors,
    /// constraints or generated columns), and `rows` has exactly its columns and types
    /// (nested fields may be named differently: arrow's map builder says `entries`/`keys`,
    /// the Delta schema `key_value`/`key`; Parquet stores them by position).
    fn writes_files_itself(&self, rows: &RecordBatch) -> bool {
        let Ok(state) = self.table.snapshot() else {
            return false;
        };
        let protocol = state.protocol();
        if protocol.min_reader_version() > 1 || protocol.min_writer_version() > 2 {
            return false;
        }
        // Column invariants (writer version 2) are checked by delta-rs's write only.
        let has_invariants = serde_json::to_string(state.schema().as_ref())
            .map_or(true, |schema| schema.contains("delta.invariants"));
        if has_invariants {
            return false;
        }
        let table_schema = state.snapshot().arrow_schema();
        table_schema.fields().len() == rows.num_columns()
            && table_schema.fields().iter().all(|field| {
                rows.schema()
                    .field_with_name(field.name())
                    .is_ok_and(|f| f.data_type().equals_datatype(field.data_type()))
            })
    }

    /// Hands `rows` (in file order) to `writer`, one contiguous slice per table partition.
    async fn write_partitions(
        &self,
        writer: &mut DeltaWriter,
        rows: &RecordBatch,
    ) -> Result<(), LakeError> {
        let partition_values: Vec<ArrayRef> = self
            .partition_columns
            .iter()
            .filter_map(|name| rows.column_by_name(name).cloned())
            .collect();
        let ranges = arrow_ord::partition::partition(&partition_values)
            .map_err(|e| self.arrow_error(e))?
            .ranges();
        for range in ranges {
            let values: IndexMap<String, _> = self
                .partition_columns
                .iter()
                .zip(&partition_values)
                .map(|(name, column)| {
                    ScalarExt::from_array(column.as_ref(), range.start)
                        .map(|value| (name.clone(), value))
                        .ok_or_else(|| {
                            self.delta_error(DeltaTableError::Generic(format!(
                                "partition column {name}: unsupported value"
                            )))
                        })
                })
                .collect::<Result<_, _>>()?;
            let slice = rows.slice(range.start, range.end - range.start);
            writer
                .write_partition(slice, &values)
                .await
                .map_err(|source| self.files_error(source))?;
        }
        Ok(())
    }

    /// Appends sorted `batches` by writing one Parquet file per table partition and
    /// committing their `add` actions with the offsets. The partition columns lead the
    /// order, so each table partition is one contiguous slice of each batch (a partition
    /// that continues into the next batch continues in the same file) and is encoded from
    /// it in place — delta-rs's own write would copy every column once more to split the
    /// rows by partition.
    async fn append_files(
        &mut self,
        batches: Vec<RecordBatch>,
        properties: CommitProperties,
    ) -> Result<Appended, LakeError> {
        let state = self
            .table
            .snapshot()
            .map_err(|source| self.delta_error(source))?;
        let stats = WriterStatsConfig::from_config(state.snapshot().table_configuration());
        let config = WriterConfig::new(
            batches[0].schema(),
            self.partition_columns.clone(),
            Some(self.writer_properties.clone()),
            None,
            Some(ROW_GROUP_ROWS),
            stats.num_indexed_cols,
            stats.stats_columns,
        );
        let store = self.table.log_store().object_store(None);
        let mut writer = DeltaWriter::new(store, config);
        for rows in &batches {
            self.write_partitions(&mut writer, rows).await?;
        }
        let adds = writer
            .close()
            .await
            .map_err(|source| self.files_error(source))?;
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!self.partition_columns.is_empty())
                .then(|| self.partition_columns.clone()),
            predicate: None,
        };
        let actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        let (files, bytes) = added_files(&actions);
        let committed = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(
                Some(state as &dyn TableReference),
                self.table.log_store(),
                operation,
            )
            .await
            .map_err(|source| self.delta_error(source))?;
        self.table.state = Some(committed.snapshot);
        Ok(Appended {
            version: committed.version as i64,
            files,
            bytes,
        })
    }

    fn delta_error(&self, source: DeltaTableError) -> LakeError {
        LakeError::delta(&self.url)(source)
    }

    fn files_error(&self, source: DeltaTableError) -> LakeError {
        LakeError::files(&self.url, source)
    }

    fn arrow_error(&self, source: ArrowError) -> LakeError {
        LakeError::Arrow {
            url: self.url.clone(),
            source,
        }
    }

    /// `rows` without the columns an existing table lacks. A table created by an earlier
    /// release keeps the schema it was created with (its files are not rewritten); the
    /// columns added since, such as `flows`' standard label columns, are left out of its
    /// commits, and readers see it as it always was.
    fn fit_to_table(&self, rows: RecordBatch) -> RecordBatch {
        let Ok(state) = self.table.snapshot() else {
            return rows; // the first commit creates the table with every column
        };
        let table_schema = state.schema();
        let keep: Vec<usize> = (0..rows.num_columns())
            .filter(|&i| table_schema.field(rows.schema().field(i).name()).is_some())
            .collect();
        if keep.len() == rows.num_columns() {
            return rows;
        }
        rows.project(&keep)
            .expect("indices of the batch's own columns")
    }

    /// The table, for readers (e.g. a DataFusion table provider).
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }
}

/// The table at `url` at its newest commit, or unloaded before its first; a local
/// directory is created if it is missing.
async fn open_table(url: &Url) -> Result<DeltaTable, DeltaTableError> {
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        std::fs::create_dir_all(&path).map_err(|e| {
            DeltaTableError::InvalidTableLocation(format!("cannot create {}: {e}", path.display()))
        })?;
    }
    let mut table = deltalake::DeltaTableBuilder::from_url(url.clone())?.build()?;
    load_latest(&mut table).await?;
    Ok(table)
}

/// Moves `table` to its newest commit; a table with no commit yet stays unloaded. Its
/// log is listed first: loading a table that has none makes the Delta kernel log an ERROR
/// ("No files in log segment") on every refresh until ingest's first commit.
async fn load_latest(table: &mut DeltaTable) -> Result<(), DeltaTableError> {
    if table.version().is_some() {
        return table.update_state().await;
    }
    if !table.log_store().is_delta_table_location().await? {
        return Ok(());
    }
    match table.load().await {
        Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Rows ordered by [`SORT_COLUMNS`].
pub fn sort_rows(rows: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    sort_rows_by(rows, SORT_COLUMNS)
}

/// Rows ordered by `sort_columns` (ascending, nulls first).
pub fn sort_rows_by(rows: &RecordBatch, sort_columns: &[&str]) -> Result<RecordBatch, ArrowError> {
    sort_batches_by(std::slice::from_ref(rows), sort_columns)
}

/// The rows of `batches` (one schema; at least one batch) as one batch ordered by
/// `sort_columns` (ascending, nulls first; equal keys keep their order).
///
/// The key columns are encoded once into arrow's byte-comparable row format and the
/// row positions sorted by those bytes: a multi-column sort then compares flat byte
/// strings instead of dispatching per column per comparison (several times faster than
/// `lexsort_to_indices` on the string keys here). The columns are then gathered straight
/// from the batches in that order (`interleave`), one copy, without concatenating first.
pub fn sort_batches_by(
    batches: &[RecordBatch],
    sort_columns: &[&str],
) -> Result<RecordBatch, ArrowError> {
    let Some(first) = batches.first() else {
        return Err(ArrowError::InvalidArgumentError("no batch to sort".into()));
    };
    let schema = first.schema();
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if batches.len() == 1 && total < 2 {
        return Ok(first.clone());
    }
    let key_columns = |rows: &RecordBatch| -> Result<Vec<ArrayRef>, ArrowError> {
        sort_columns
            .iter()
            .map(|name| {
                rows.column_by_name(name)
                    .cloned()
                    .ok_or_else(|| ArrowError::SchemaError(format!("no column {name} to sort by")))
            })
            .collect()
    };
    let keys = batches
        .iter()
        .map(key_columns)
        .collect::<Result<Vec<_>, _>>()?;
    let order = key_order(&keys)?;
    drop(keys);
    let positions: Vec<(usize, usize)> = batches
        .iter()
        .enumerate()
        .flat_map(|(batch, rows)| (0..rows.num_rows()).map(move |row| (batch, row)))
        .collect();
    let indices: Vec<(usize, usize)> = order.iter().map(|&i| positions[i as usize]).collect();
    let gather = |columns: std::ops::Range<usize>| {
        columns
            .map(|column| {
                let arrays: Vec<&dyn Array> = batches
                    .iter()
                    .map(|rows| rows.column(column).as_ref())
                    .collect();
                arrow_select::interleave::interleave(&arrays, &indices)
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let width = schema.fields().len();
    let columns = if total >= PARALLEL_ROWS {
        let half = width / 2;
        let (first, second) = on_two_threads(|| gather(0..half), || gather(half..width))?;
        let mut columns = first?;
        columns.extend(second?);
        columns
    } else {
        gather(0..width)?
    };
    RecordBatch::try_new(schema, columns)
}

/// The order of the rows whose sort keys are `keys` (one set of key columns per batch,
/// rows numbered across the batches in turn): ascending, nulls first, equal keys in
/// their numbering.
pub fn key_order(keys: &[Vec<ArrayRef>]) -> Result<Vec<u32>, ArrowError> {
    let Some(first) = keys.first() else {
        return Ok(vec![]);
    };
    let converter = RowConverter::new(
        first
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let total = keys.iter().map(|k| k.first().map_or(0, |c| c.len())).sum();
    let mut rows = converter.empty_rows(total, 0);
    for columns in keys {
        converter.append(&mut rows, columns)?;
    }
    let mut order: Vec<u32> = (0..total as u32).collect();
    order.sort_unstable_by(|a, b| {
        rows.row(*a as usize)
            .cmp(&rows.row(*b as usize))
            .then(a.cmp(b))
    });
    Ok(order)
}

/// Runs `first` on a helper thread and `second` on this one, and returns both results.
pub(crate) fn on_two_threads<A: Send, B>(
    first: impl FnOnce() -> A + Send,
    second: impl FnOnce() -> B,
) -> Result<(A, B), ArrowError> {
    let (first, second) = std::thread::scope(|scope| {
        let helper = scope.spawn(first);
        let second = second();
        (helper.join(), second)
    });
    let first = first.map_err(|_| ArrowError::ComputeError("a helper thread panicked".into()))?;
    Ok((first, second))
}

/// A small read-model table (`workloads`, `status`, `policy`) that holds the fold of a
/// topic: every write replaces the whole content in one commit. Replacing is idempotent,
/// so a replay or a second ingest process writing the same fold is harmless; readers see
/// the old or the new snapshot, never a mix.
pub struct SnapshotTable {
    url: Url,
    table: DeltaTable,
    writer_properties: WriterProperties,
}

impl SnapshotTable {
    /// Opens (or prepares to create) the read-model table at `url`.
    pub async fn open(url: &Url) -> Result<Self, LakeError> {
        let table = open_table(url).await.map_err(LakeError::delta(url))?;
        Ok(Self {
            url: url.clone(),
            table,
            writer_properties: WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build(),
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Replaces the table's content with `rows` in one commit; returns the new version.
    pub async fn replace(&mut self, rows: RecordBatch) -> Result<i64, LakeError> {
        let delta = LakeError::delta(&self.url);
        load_latest(&mut self.table).await.map_err(delta)?;
        let written = self
            .table
            .clone()
            .write(vec![rows])
            .with_save_mode(SaveMode::Overwrite)
            .with_writer_properties(self.writer_properties.clone())
            .with_commit_properties(CommitProperties::default().with_max_retries(5))
            .await
            .map_err(delta)?;
        self.table = written;
        Ok(self.table.version().map_or(0, |v| v as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, StringArray};
    use arrow_ord::sort::{SortColumn, lexsort_to_indices};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[test]
    fn a_full_disk_reads_as_one_not_as_a_parse_or_read_error() {
        let url = Url::parse("file:///lake/flows/").unwrap();
        let full = || std::io::Error::from_raw_os_error(28); // ENOSPC
        let store = || object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(full()),
        };
        let writing_parquet = DeltaTableError::Parquet {
            source: ParquetError::External(Box::new(store())),
        };
        let writing_the_log = DeltaTableError::ObjectStore { source: store() };
        let expected = format!("Generic LocalFileSystem error: {}", full());
        for error in [writing_parquet, writing_the_log] {
            assert_eq!(
                LakeError::delta(&url)(error).to_string(),
                format!("Delta table file:///lake/flows/: {expected}")
            );
        }
        let writing_files = DeltaTableError::Parquet {
            source: ParquetError::External(Box::new(store())),
        };
        assert_eq!(
            LakeError::files(&url, writing_files).to_string(),
            format!("writing data files of file:///lake/flows/: {expected}")
        );
        // A Parquet error of its own is still said as delta-rs says it.
        let parsing = DeltaTableError::Parquet {
            source: ParquetError::EOF("3 bytes".into()),
        };
        assert!(
            LakeError::delta(&url)(parsing)
                .to_string()
                .contains("Failed to parse parquet")
        );
    }

    #[test]
    fn rows_sort_like_lexsort_nulls_first_with_nested_columns_taken_along() {
        use arrow_array::builder::{ListBuilder, MapBuilder, StringBuilder};
        let ips = [
            "10.0.0.2",
            "10.0.0.10",
            "fd00::1",
            "10.0.0.2",
            "192.168.1.1",
        ];
        let n = 2_000;
        let src: StringArray = (0..n)
            .map(|i| (i % 7 != 0).then(|| ips[(i * 7919) % ips.len()]))
            .collect();
        let dst: StringArray = (0..n).map(|i| Some(ips[(i * 31) % ips.len()])).collect();
        let port: Int32Array = (0..n).map(|i| Some(((i * 104_729) % 5) as i32)).collect();
        let seq: Int32Array = (0..n).map(|i| Some(i as i32)).collect();
        let mut labels = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        let mut lists = ListBuilder::new(StringBuilder::new());
        for i in 0..n {
            for j in 0..i % 3 {
                labels.keys().append_value(format!("k{j}"));
                labels.values().append_value(format!("v{i}"));
            }
            labels.append(i % 5 != 0).unwrap();
            if i % 4 == 0 {
                lists.append_null();
            } else {
                lists.values().append_value(format!("list{i}"));
                lists.append(true);
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(src),
            Arc::new(dst),
            Arc::new(port),
            Arc::new(seq),
            Arc::new(labels.finish()),
            Arc::new(lists.finish()),
        ];
        let fields: Vec<arrow_schema::Field> =
            ["src_ip", "dst_ip", "dst_port", "seq", "labels", "lists"]
                .iter()
                .zip(&columns)
                .map(|(name, c)| arrow_schema::Field::new(*name, c.data_type().clone(), true))
                .collect();
        let batch =
            RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), columns).unwrap();
        let keys = ["src_ip", "dst_ip", "dst_port", "seq"];
        let sorted = sort_rows_by(&batch, &keys).unwrap();
        let reference = lexsort_to_indices(
            &batch.columns()[..4]
                .iter()
                .map(|c| SortColumn {
                    values: c.clone(),
                    options: None,
                })
                .collect::<Vec<_>>(),
            None,
        )
        .unwrap();
        let expected = arrow_select::take::take_record_batch(&batch, &reference).unwrap();
        assert_eq!(sorted, expected);
        // The same rows in three batches (as one per Kafka partition) sort to the same.
        let parts = [
            batch.slice(0, 700),
            batch.slice(700, 0),
            batch.slice(700, n - 700),
        ];
        assert_eq!(sort_batches_by(&parts, &keys).unwrap(), expected);
    }

    /// A `flows` table in a new directory (kept while the `TempDir` lives), not created yet.
    async fn new_table() -> (tempfile::TempDir, FlowsTable) {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path()).unwrap();
        let table = FlowsTable::open(&url).await.unwrap();
        (dir, table)
    }

    /// Flow rows over two hours (two table partitions), in no particular order.
    fn rows_over_two_hours(n: u64) -> RecordBatch {
        use bulkhead_schemas::proto::{FlowBatch, FlowRecord};
        let hour_ns = 3_600_000_000_000;
        let records = (0..n)
            .map(|i| FlowRecord {
                src_ip: vec![10, 0, (i % 3) as u8, (i * 7 % 11) as u8],
                dst_ip: vec![10, 1, 0, (i * 5 % 13) as u8],
                dst_port: [443, 22, 8080][(i % 3) as usize],
                protocol: 6,
                bytes: i * 100,
                packets: i,
                first_seen_unix_ns: 1_764_115_200_000_000_000 + (i % 2) * hour_ns + i * 1_000,
                last_seen_unix_ns: 1_764_115_200_000_000_000 + (i % 2) * hour_ns + i * 2_000,
                process_name: if i % 4 == 0 {
                    String::new()
                } else {
                    "nginx".into()
                },
                src_labels: [("app".to_string(), format!("app{}", i % 5))].into(),
                ..Default::default()
            })
            .collect();
        let batch = FlowBatch {
            host_id: "h1".into(),
            records,
            ..Default::default()
        };
        bulkhead_schemas::lake::flow_batches_to_arrow([&batch]).unwrap()
    }

    /// Each data file of the table: its partition (`date/hour`), stats (parsed) and path.
    fn data_files(
        table: &FlowsTable,
        dir: &std::path::Path,
    ) -> Vec<(String, serde_json::Value, std::path::PathBuf)> {
        let state = table.table().snapshot().unwrap();
        state
            .log_data()
            .iter()
            .map(|file| {
                let values = file.partition_values_map();
                let key = format!("{:?}/{:?}", values["date"], values["hour"]);
                let stats = serde_json::from_str(&file.stats().unwrap()).unwrap();
                (key, stats, dir.join(file.path().as_ref()))
            })
            .collect()
    }

    /// The size of every data file under `dir` (the log left out), by path.
    fn files_on_disk(dir: &std::path::Path) -> BTreeMap<std::path::PathBuf, u64> {
        let mut files = BTreeMap::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                if entry.file_type().unwrap().is_dir() {
                    if !path.ends_with("_delta_log") {
                        dirs.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    files.insert(path, entry.metadata().unwrap().len());
                }
            }
        }
        files
    }

    /// Each data file of the table by partition (`date/hour`): its stats (parsed) and rows.
    fn files_by_partition(
        table: &FlowsTable,
        dir: &std::path::Path,
    ) -> BTreeMap<String, Vec<(serde_json::Value, Vec<RecordBatch>)>> {
        let mut files = BTreeMap::<String, Vec<_>>::new();
        for (key, stats, path) in data_files(table, dir) {
            let reader =
                deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    std::fs::File::open(path).unwrap(),
                )
                .unwrap()
                .build()
                .unwrap();
            let batches = reader.collect::<Result<Vec<_>, _>>().unwrap();
            files.entry(key).or_default().push((stats, batches));
        }
        files
    }

    #[tokio::test]
    async fn the_first_commit_creates_the_table_and_writes_its_own_files() {
        let rows = rows_over_two_hours(1_000);
        let (dir, mut table) = new_table().await;
        let appended = table.commit(rows.clone(), "t", &[(0, 0)]).await.unwrap();
        assert_eq!(appended.version, 1, "created (0), then the rows (1)");
        assert_eq!(table.committed_offset("t", 0).await.unwrap(), Some(0));
        let commit =
            std::fs::read_to_string(dir.path().join("_delta_log/00000000000000000001.json"))
                .unwrap();
        assert_eq!(
            commit.matches("\"add\"").count(),
            2,
            "a file per hour: {commit}"
        );
        // The same table schema and partitioning as delta-rs's write would create.
        let other = tempfile::tempdir().unwrap();
        let by_delta_rs =
            deltalake::DeltaTableBuilder::from_url(Url::from_directory_path(other.path()).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .write(vec![rows])
                .with_partition_columns(table.partition_columns.clone())
                .await
                .unwrap();
        let (ours, theirs) = (
            table.table().snapshot().unwrap(),
            by_delta_rs.snapshot().unwrap(),
        );
        assert_eq!(ours.schema(), theirs.schema());
        assert_eq!(
            ours.metadata().partition_columns(),
            theirs.metadata().partition_columns()
        );
    }

    #[tokio::test]
    async fn label_maps_are_written_without_statistics_and_the_key_columns_with() {
        use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
        let (dir, mut table) = new_table().await;
        table
            .commit(rows_over_two_hours(200), "t", &[(0, 0)])
            .await
            .unwrap();
        let (_, _, file) = data_files(&table, dir.path()).remove(0);
        let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let stats = |path: &str| {
            group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == path)
                .unwrap_or_else(|| panic!("no column {path} in {file:?}"))
                .statistics()
                .is_some()
        };
        for leaf in NO_STATISTICS_LEAVES {
            assert!(!stats(&leaf.join(".")), "{leaf:?} has statistics");
        }
        for column in ["src_ip", "dst_ip", "dst_port", "src_app", "process_name"] {
            assert!(stats(column), "{column} has no statistics");
        }
    }

    #[tokio::test]
    async fn sorted_rows_in_two_batches_keep_one_file_per_partition() {
        let (dir, mut table) = new_table().await;
        let keys = table.file_order();
        let rows = sort_rows_by(&rows_over_two_hours(1_000), &keys).unwrap();
        // Split inside the first hour: it continues in the second batch.
        let halves = vec![rows.slice(0, 300), rows.slice(300, 700)];
        table.commit_sorted(halves, "t", &[(0, 4)]).await.unwrap();
        let files = files_by_partition(&table, dir.path());
        assert_eq!(files.len(), 2, "two hours");
        assert!(files.values().all(|f| f.len() == 1), "a file per hour");
        let records: u64 = files
            .values()
            .flatten()
            .map(|(stats, _)| stats["numRecords"].as_u64().unwrap())
            .sum();
        assert_eq!(records, 1_000);
        assert_eq!(table.committed_offset("t", 0).await.unwrap(), Some(4));
        let error = table
            .commit_sorted(vec![], "t", &[(0, 5)])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("one batch at least"), "{error}");
    }

    #[tokio::test]
    async fn a_table_with_column_invariants_is_written_by_delta_rs_which_checks_them() {
        let rows = rows_over_two_hours(100);
        let (_dir, mut table) = new_table().await;
        let columns: StructType = rows.schema().as_ref().try_into_kernel().unwrap();
        let fields = columns.fields().cloned().map(|field| {
            if field.name() == "bytes" {
                field.with_metadata([(
                    "delta.invariants",
                    r#"{"expression": {"expression": "bytes < 1000"}}"#,
                )])
            } else {
                field
            }
        });
        table.table = CreateBuilder::new()
            .with_log_store(table.table().log_store())
            .with_columns(fields)
            .with_partition_columns(table.partition_columns.clone())
            .await
            .unwrap();
        assert!(!table.writes_files_itself(&rows));
        let refused = table.commit(rows, "t", &[(0, 0)]).await;
        assert!(
            refused.is_err_and(|e| e.to_string().contains("90 rows failed validation")),
            "90 of the rows have bytes of 1,000 or more"
        );
        assert_eq!(table.committed_offset("t", 0).await.unwrap(), None);
    }

    #[tokio::test]
    async fn own_files_hold_what_delta_rs_would_write() {
        let rows = rows_over_two_hours(3_000);
        let (dir, mut table) = new_table().await;
        assert!(!table.writes_files_itself(&rows), "no table yet");
        // delta-rs's own write (as a table this writer does not handle itself gets).
        let sorted = sort_rows_by(&rows, SORT_COLUMNS).unwrap();
        let by_delta_rs = table
            .append_with_delta_rs(vec![sorted], CommitProperties::default())
            .await
            .unwrap();
        let first_files = files_on_disk(dir.path());
        assert_eq!(
            (by_delta_rs.files, by_delta_rs.bytes),
            (2, first_files.values().sum()),
            "what delta-rs's write added: {first_files:?}"
        );
        assert!(table.writes_files_itself(&rows));
        // The same rows again, through the own files this time.
        let own = table.commit(rows.clone(), "t", &[(0, 1)]).await.unwrap();
        assert_eq!(own.version, by_delta_rs.version + 1);
        let added: Vec<u64> = files_on_disk(dir.path())
            .into_iter()
            .filter(|(path, _)| !first_files.contains_key(path))
            .map(|(_, size)| size)
            .collect();
        assert_eq!(
            (own.files, own.bytes),
            (2, added.iter().sum()),
            "what the own write added: {added:?}"
        );
        assert_eq!(table.committed_offset("t", 0).await.unwrap(), Some(1));
        let files = files_by_partition(&table, dir.path());
        assert_eq!(
            files.len(),
            2,
            "one file per hour and commit: {:?}",
            files.keys()
        );
        for (partition, files) in &files {
            assert_eq!(files.len(), 2, "{partition}");
            let (delta_rs, own) = (&files[0], &files[1]);
            assert_eq!(delta_rs.0, own.0, "{partition}: stats");
            assert_eq!(own.0["numRecords"], 1_500, "{partition}");
            let rows = |batches: &[RecordBatch]| {
                arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap()
            };
            let (delta_rs, own) = (rows(&delta_rs.1), rows(&own.1));
            assert_eq!(delta_rs.schema(), own.schema(), "{partition}: file schema");
            assert_eq!(delta_rs, own, "{partition}: rows and their order");
        }
    }

    #[tokio::test]
    async fn a_table_created_without_newer_columns_keeps_its_schema() {
        use bulkhead_schemas::proto::{FlowBatch, FlowRecord};
        let record = |i: u64| FlowRecord {
            src_ip: vec![10, 0, 0, 1],
            dst_ip: vec![10, 0, 0, 2],
            first_seen_unix_ns: 1_764_115_200_000_000_000 + i,
            last_seen_unix_ns: 1_764_115_200_000_000_000 + i,
            src_labels: [("app".to_string(), "crm".to_string())].into(),
            ..Default::default()
        };
        let batch = FlowBatch {
            host_id: "h1".into(),
            records: vec![record(0), record(1)],
            ..Default::default()
        };
        let rows = bulkhead_schemas::lake::flow_batches_to_arrow([&batch]).unwrap();
        let (_dir, mut table) = new_table().await;
        // An earlier release's table: created from rows without the standard label columns.
        let standard: Vec<String> = bulkhead_schemas::lake::standard_label_columns().collect();
        let older: Vec<usize> = (0..rows.num_columns())
            .filter(|&i| !standard.contains(rows.schema().field(i).name()))
            .collect();
        table
            .commit(rows.project(&older).unwrap(), "t", &[(0, 0)])
            .await
            .unwrap();
        table.commit(rows.clone(), "t", &[(0, 1)]).await.unwrap();
        let state = table.table().snapshot().unwrap();
        for column in &standard {
            assert!(
                state.schema().field(column).is_none(),
                "{column}: schema kept"
            );
        }
        assert!(state.schema().field("src_labels").is_some());
        assert_eq!(table.committed_offset("t", 0).await.unwrap(), Some(1));
        let rows_written: i64 = state
            .log_data()
            .iter()
            .map(|f| f.num_records().unwrap_or(0) as i64)
            .sum();
        assert_eq!(rows_written, 4);
    }

    /// `third_party/parquet` looks string values up in a cache by their first and last
    /// eight bytes and compares values of up to 16 bytes as numbers (its `PATCHED.md`).
    /// Files written with the writer ingest uses must hold the same values and the same
    /// min/max statistics as the plain byte comparison gives, for values of every length:
    /// empty, with zero and 0xff bytes, prefixes of each other, longer ones equal in their
    /// first and last eight bytes, and enough distinct values to share cache slots.
    #[test]
    fn strings_and_their_statistics_come_back_exactly_from_the_patched_parquet_writer() {
        use arrow_array::BinaryArray;
        use deltalake::parquet::arrow::ArrowWriter;
        use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
        use deltalake::parquet::file::statistics::Statistics;

        let mut values: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\0".to_vec(),
            b"ab".to_vec(),
            b"\xff".to_vec(),
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0".to_vec(),
            b"0123456789abcdef".to_vec(),
            b"0123456789abcdeg".to_vec(),
            b"01234567-X-89abcdef".to_vec(),
            b"01234567-Y-89abcdef".to_vec(),
            b"01234567-Y-89abcdeg".to_vec(),
        ];
        // Distinct values of every length up to 40, more than the cache has slots.
        values.extend((0..2_000u32).map(|i| {
            let len = (i % 41) as usize;
            (0..len)
                .map(|k| (i.wrapping_mul(2_654_435_761) >> (k % 24)) as u8)
                .collect()
        }));
        // Every value several times, in runs and scattered, as sorted rows repeat them.
        let rows: Vec<&[u8]> = (0..4)
            .flat_map(|pass| {
                values
                    .iter()
                    .enumerate()
                    .flat_map(move |(i, v)| std::iter::repeat_n(v.as_slice(), 1 + (i + pass) % 3))
            })
            .collect();
        let binary = Arc::new(BinaryArray::from_iter_values(rows.iter().copied()));
        let texts: Vec<String> = rows.iter().map(|v| v.escape_ascii().to_string()).collect();
        let text = Arc::new(StringArray::from_iter_values(&texts));
        let batch =
            RecordBatch::try_from_iter([("binary", binary as ArrayRef), ("text", text)]).unwrap();
        let mut file = Vec::new();
        // Statistics whole (not cut to 64 bytes); small data pages, many per dictionary.
        let properties = WriterProperties::builder()
            .set_statistics_truncate_length(None)
            .set_data_page_row_count_limit(1_000)
            .set_write_batch_size(700)
            .build();
        let mut writer = ArrowWriter::try_new(&mut file, batch.schema(), Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let file = bytes::Bytes::from(file);

        let read: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file.clone())
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let read = arrow_select::concat::concat_batches(&batch.schema(), &read).unwrap();
        assert_eq!(read, batch);

        let reader = SerializedFileReader::new(file).unwrap();
        let column = |i: usize| reader.metadata().row_group(0).column(i).clone();
        match column(0).statistics() {
            Some(Statistics::ByteArray(stats)) => {
                assert_eq!(stats.min_opt().unwrap().data(), *rows.iter().min().unwrap());
                assert_eq!(stats.max_opt().unwrap().data(), *rows.iter().max().unwrap());
            }
            other => panic!("binary statistics: {other:?}"),
        }
        let (min, max) = (texts.iter().min().unwrap(), texts.iter().max().unwrap());
        match column(1).statistics() {
            Some(Statistics::ByteArray(stats)) => {
                assert_eq!(stats.min_opt().unwrap().data(), min.as_bytes());
                assert_eq!(stats.max_opt().unwrap().data(), max.as_bytes());
            }
            other => panic!("text statistics: {other:?}"),
        }
        assert!(
            column(0)
                .encodings()
                .any(|e| e == deltalake::parquet::basic::Encoding::RLE_DICTIONARY),
            "written with a dictionary"
        );
    }
}
