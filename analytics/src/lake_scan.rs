//! The scan of a lake table: DataFusion's Parquet reader over the files of a Delta
//! snapshot, with the Delta partition columns (`date`, `hour`) as DataFusion partition
//! columns.
//!
//! deltalake's own provider reads the same files through the same Parquet reader, then
//! passes every batch through an adapter of its own (per-file transforms that add the
//! partition values, plus a file-id column built for each batch): about a tenth of the CPU
//! of a whole-table aggregate. [`LakeTable`] hands DataFusion the file list instead: the
//! files a query's filters cannot rule out (partition values exactly, the log's min/max
//! statistics otherwise), each with its partition values and row count, so that
//! `count(*)` is answered from the log and filters still reach the Parquet reader (row
//! groups, pages, rows).
//!
//! Only tables of reader version 1 are read this way (no column mapping, no deletion
//! vectors — the lake's tables, as ingest writes them); any other table is left to
//! deltalake's provider, which knows those features.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, TimestampNanosecondType};
use arrow_array::{ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{DataType, FieldRef, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{Column, DFSchema, ScalarValue, Statistics};
use datafusion::config::TableParquetOptions;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::{PruningPredicateBuilder, PruningStatistics};
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use deltalake::DeltaTable;
use deltalake::delta_datafusion::engine::AsObjectStoreUrl as _;
use deltalake::kernel::EagerSnapshot;
use url::Url;

/// A lake table at one snapshot, scanned by DataFusion's Parquet reader.
pub struct LakeTable {
    name: &'static str,
    /// The table's columns as deltalake presents them (partition columns where the Delta
    /// schema has them).
    schema: SchemaRef,
    /// DataFusion's view of the same columns: the file columns, then the partition columns.
    scan_schema: TableSchema,
    /// For each column of `schema`, its index in `scan_schema`.
    scan_index: Vec<usize>,
    store: ObjectStoreUrl,
    /// Every file of the snapshot, in the log's order (the order of `snapshot`'s pruning
    /// statistics), with its partition values and row count.
    files: Vec<PartitionedFile>,
    /// The partition values of `files`, one row per file, to evaluate partition filters.
    partition_values: RecordBatch,
    snapshot: EagerSnapshot,
}

impl std::fmt::Debug for LakeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeTable")
            .field("name", &self.name)
            .field("files", &self.files.len())
            .finish()
    }
}

impl LakeTable {
    /// The scan of `table` at its loaded version, with deltalake's column types
    /// (`schema`, from its provider); `None` when the table uses a reader feature (column
    /// mapping, deletion vectors…) that only deltalake's provider applies.
    pub fn try_new(
        name: &'static str,
        table: &DeltaTable,
        schema: SchemaRef,
    ) -> Result<Option<Self>> {
        let state = table.snapshot().map_err(|e| delta_error(name, e))?;
        let snapshot = state.snapshot().clone();
        if snapshot.protocol().min_reader_version() > 1 {
            return Ok(None);
        }
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let partition_fields: Vec<FieldRef> = partition_columns
            .iter()
            .map(|c| Ok(Arc::new(schema.field_with_name(c)?.clone())))
            .collect::<Result<_>>()?;
        let file_fields: Vec<FieldRef> = schema
            .fields()
            .iter()
            .filter(|f| !partition_columns.contains(f.name()))
            .cloned()
            .collect();
        let file_schema =
            Arc::new(Schema::new(file_fields).with_metadata(schema.metadata().clone()));
        let scan_schema = TableSchema::builder(file_schema)
            .with_table_partition_cols(partition_fields.clone())
            .build();
        let scan_index = schema
            .fields()
            .iter()
            .map(|f| scan_schema.table_schema().index_of(f.name()))
            .collect::<std::result::Result<_, _>>()?;

        let root = table.log_store().root_url().clone();
        // The store deltalake registers for the table (`update_datafusion_session`).
        let store = root.as_object_store_url();
        let mut files = Vec::new();
        let log = snapshot.try_log_data().map_err(|e| delta_error(name, e))?;
        for file in log.iter() {
            let url = file_url(&root, &file.path()).ok_or_else(|| {
                DataFusionError::External(
                    format!(
                        "lake table {name}: data file path {:?} is not a valid URL",
                        file.path()
                    )
                    .into(),
                )
            })?;
            let location = object_store::path::Path::from_url_path(url.path())
                .map_err(|e| DataFusionError::External(format!("lake table {name}: {e}").into()))?;
            let mut partitioned = PartitionedFile::new_from_meta(object_store::ObjectMeta {
                location,
                last_modified: chrono::DateTime::<chrono::Utc>::from_timestamp_millis(
                    file.modification_time(),
                )
                .unwrap_or_default(),
                size: file.size().max(0) as u64,
                e_tag: None,
                version: None,
            });
            let values = file.partition_values_map();
            for field in &partition_fields {
                let value = match values.get(field.name()).cloned().flatten() {
                    Some(text) => ScalarValue::try_from_string(text, field.data_type())?,
                    None => ScalarValue::try_new_null(field.data_type())?,
                };
                partitioned.partition_values.push(value);
            }
            let statistics = Statistics {
                num_rows: file
                    .num_records()
                    .map_or(Precision::Absent, Precision::Exact),
                total_byte_size: Precision::Inexact(file.size().max(0) as usize),
                column_statistics: Statistics::unknown_column(scan_schema.file_schema()),
            };
            files.push(partitioned.with_statistics(Arc::new(statistics)));
        }
        // `iter_to_array` refuses an empty iterator: a table whose files were all removed.
        let columns = partition_fields
            .iter()
            .enumerate()
            .map(|(i, field)| {
                if files.is_empty() {
                    Ok(arrow_array::new_empty_array(field.data_type()))
                } else {
                    ScalarValue::iter_to_array(files.iter().map(|f| f.partition_values[i].clone()))
                }
            })
            .collect::<Result<_>>()?;
        let partition_values = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(partition_fields)),
            columns,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(files.len())),
        )?;
        Ok(Some(Self {
            name,
            schema,
            scan_schema,
            scan_index,
            store,
            files,
            partition_values,
            snapshot,
        }))
    }

    /// Which files a query with `filters` (`predicate`: all of them, planned) must read:
    /// those whose partition values pass the filters on partition columns, and whose log
    /// statistics do not rule out `predicate`.
    fn files_to_read(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        predicate: Option<&Arc<dyn PhysicalExpr>>,
    ) -> Vec<bool> {
        let mut keep = vec![true; self.files.len()];
        let partition_schema = self.partition_values.schema();
        let partition_filters: Vec<Expr> = filters
            .iter()
            // A volatile filter (`random() < 0.5`) decides per row, not per file.
            .filter(|f| {
                !f.is_volatile()
                    && f.column_refs()
                        .iter()
                        .all(|c| partition_schema.field_with_name(&c.name).is_ok())
            })
            .cloned()
            .collect();
        // A filter that cannot be evaluated here keeps every file: DataFusion applies the
        // filters again above the scan.
        if let Some(filter) = conjunction(partition_filters)
            && let Ok(passes) = self.evaluate_on_partitions(state, filter)
        {
            for (keep, passes) in keep.iter_mut().zip(passes.iter()) {
                *keep &= passes == Some(true);
            }
        }
        if let Some(predicate) = predicate
            && let Some(pruning) = PruningPredicateBuilder::new()
                .with_file_schema(self.scan_schema.table_schema().clone())
                .build(predicate.clone())
        {
            let statistics = LogStatistics {
                snapshot: &self.snapshot,
                schema: self.scan_schema.table_schema(),
            };
            match pruning.prune(&statistics) {
                Ok(passes) if passes.len() == keep.len() => {
                    for (keep, passes) in keep.iter_mut().zip(passes) {
                        *keep &= passes;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(table = self.name, error = %e, "file statistics not used")
                }
            }
        }
        keep
    }

    fn evaluate_on_partitions(&self, state: &dyn Session, filter: Expr) -> Result<BooleanArray> {
        let schema = DFSchema::try_from(self.partition_values.schema().as_ref().clone())?;
        let predicate = state.create_physical_expr(filter, &schema)?;
        let result = predicate
            .evaluate(&self.partition_values)?
            .into_array(self.partition_values.num_rows())?;
        Ok(result
            .as_boolean_opt()
            .cloned()
            .unwrap_or_else(|| BooleanArray::from(vec![true; self.partition_values.num_rows()])))
    }
}

#[async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters prune files and reach the Parquet reader, which may not apply all of
        // them to every row: DataFusion applies them again above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(filter) => {
                let schema = DFSchema::try_from(self.scan_schema.table_schema().as_ref().clone())?;
                Some(state.create_physical_expr(filter, &schema)?)
            }
            None => None,
        };
        let keep = self.files_to_read(state, filters, predicate.as_ref());
        let files: Vec<PartitionedFile> = self
            .files
            .iter()
            .zip(keep)
            .filter_map(|(file, keep)| keep.then(|| file.clone()))
            .collect();
        metrics::counter!("bulkhead_analytics_files_scanned_total", "table" => self.name)
            .increment(files.len() as u64);
        let projection: Vec<usize> = match projection {
            Some(columns) => columns.iter().map(|&i| self.scan_index[i]).collect(),
            None => self.scan_index.clone(),
        };

        let runtime = state.runtime_env();
        let store = runtime.object_store(&self.store)?;
        let reader = CachedParquetFileReaderFactory::new(
            store,
            runtime.cache_manager.get_file_metadata_cache(),
        );
        let options = TableParquetOptions {
            global: state.config_options().execution.parquet.clone(),
            ..Default::default()
        };
        let mut source = ParquetSource::new(self.scan_schema.clone())
            .with_table_parquet_options(options)
            .with_parquet_file_reader_factory(Arc::new(reader));
        if let Some(predicate) = predicate {
            // As deltalake's provider does: filters are evaluated while decoding, so the
            // other columns are decoded only for the rows that pass.
            source = source.with_predicate(predicate).with_pushdown_filters(true);
        }
        let (file_groups, statistics) = datafusion_datasource::compute_all_files_statistics(
            vec![FileGroup::new(files)],
            self.scan_schema.table_schema().clone(),
            true,
            false,
        )?;
        let config = FileScanConfigBuilder::new(self.store.clone(), Arc::new(source))
            .with_file_groups(file_groups)
            .with_statistics(statistics)
            .with_projection_indices(Some(projection))?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The URL of data file `path` (relative to the table root, or absolute) of the table at
/// `root` (a directory URL).
fn file_url(root: &Url, path: &str) -> Option<Url> {
    match Url::parse(path) {
        Ok(url) => Some(url),
        Err(_) => root.join(path).ok(),
    }
}

fn delta_error(table: &str, e: deltalake::DeltaTableError) -> DataFusionError {
    DataFusionError::External(format!("lake table {table}: {e}").into())
}

/// The Delta log's per-file statistics, in the scan's column types. delta-rs writes
/// timestamp statistics truncated to the millisecond, so a maximum is raised to the last
/// instant of its millisecond (a minimum truncated down is still a lower bound).
struct LogStatistics<'a> {
    snapshot: &'a EagerSnapshot,
    schema: &'a SchemaRef,
}

impl LogStatistics<'_> {
    fn typed(&self, column: &Column, values: ArrayRef) -> Option<ArrayRef> {
        let field = self.schema.field_with_name(&column.name).ok()?;
        if values.data_type() == field.data_type() {
            return Some(values);
        }
        datafusion::arrow::compute::cast(&values, field.data_type()).ok()
    }
}

impl PruningStatistics for LogStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.typed(column, self.snapshot.min_values(column)?)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        let values = self.typed(column, self.snapshot.max_values(column)?)?;
        Some(match values.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, zone) => Arc::new(
                values
                    .as_primitive::<TimestampMicrosecondType>()
                    .unary::<_, TimestampMicrosecondType>(|v| v.saturating_add(999))
                    .with_timezone_opt(zone.clone()),
            ),
            DataType::Timestamp(TimeUnit::Nanosecond, zone) => Arc::new(
                values
                    .as_primitive::<TimestampNanosecondType>()
                    .unary::<_, TimestampNanosecondType>(|v| v.saturating_add(999_999))
                    .with_timezone_opt(zone.clone()),
            ),
            _ => values,
        })
    }

    fn num_containers(&self) -> usize {
        self.snapshot.num_containers()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.snapshot.null_counts(column)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.snapshot.row_counts()
    }

    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        self.snapshot.contained(column, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        Date32Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow_schema::Field;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;
    use deltalake::protocol::SaveMode;

    /// First-seen of the test rows: 2026-11-20 10:00:00.123456 UTC, and one hour later.
    const T0_US: i64 = 1_795_169_400_123_456;
    const HOUR_US: i64 = 3_600_000_000;

    fn batch(date: i32, hour: i32, first_seen: &[i64], src_ip: &[&str]) -> RecordBatch {
        let n = first_seen.len();
        let schema = Arc::new(Schema::new(vec![
            Field::new("date", DataType::Date32, false),
            Field::new("hour", DataType::Int32, false),
            Field::new(
                "first_seen",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("src_ip", DataType::Utf8, true),
            Field::new("bytes", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Date32Array::from(vec![date; n])),
                Arc::new(Int32Array::from(vec![hour; n])),
                Arc::new(TimestampMicrosecondArray::from(first_seen.to_vec()).with_timezone("UTC")),
                Arc::new(StringArray::from(src_ip.to_vec())),
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| 100 + i))),
            ],
        )
        .unwrap()
    }

    /// A `flows`-like table of three commits (three files, two hours); extra table
    /// configuration from `configuration`.
    async fn table(dir: &std::path::Path, configuration: &[(&str, &str)]) -> DeltaTable {
        let url = Url::from_directory_path(dir).unwrap();
        let mut table = DeltaTable::try_from_url(url).await.unwrap();
        let date = 20_412; // 2025-11-20 in days; the value only has to be one date
        let commits = [
            batch(date, 10, &[T0_US, T0_US + 1], &["10.0.0.1", "10.0.0.2"]),
            batch(date, 10, &[T0_US + 5], &["10.0.0.3"]),
            batch(date, 11, &[T0_US + HOUR_US], &["192.0.2.9"]),
        ];
        for (i, commit) in commits.into_iter().enumerate() {
            let mut write = table
                .write(vec![commit])
                .with_save_mode(SaveMode::Append)
                .with_partition_columns(["date".to_string(), "hour".to_string()]);
            if i == 0 {
                write = write.with_configuration(
                    configuration
                        .iter()
                        .map(|(k, v)| (k.to_string(), Some(v.to_string()))),
                );
            }
            table = write.await.unwrap();
        }
        table
    }

    /// A session with the table as `ours` (a [`LakeTable`]) and `theirs` (deltalake's).
    async fn session(table: &DeltaTable) -> SessionContext {
        let ctx = SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        let theirs = table.table_provider().await.unwrap();
        let ours = LakeTable::try_new("flows", table, theirs.schema())
            .unwrap()
            .expect("a reader-v1 table");
        ctx.register_table("ours", Arc::new(ours)).unwrap();
        ctx.register_table("theirs", theirs).unwrap();
        ctx
    }

    async fn plan(ctx: &SessionContext, sql: &str) -> String {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        displayable(plan.as_ref()).indent(true).to_string()
    }

    async fn answer(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn answers_equal_deltalakes_provider() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(dir.path(), &[]).await;
        let ctx = session(&table).await;
        // The columns in the Delta schema's order, partition columns included.
        assert_eq!(
            ctx.table("ours").await.unwrap().schema().as_arrow(),
            ctx.table("theirs").await.unwrap().schema().as_arrow()
        );
        // The last instant of the first file: the log's maximum is truncated to the
        // millisecond, so a filter at that instant must not drop the file.
        let last_of_first = format!("to_timestamp_micros({})", T0_US + 5);
        for query in [
            "SELECT * FROM {t} ORDER BY first_seen".to_string(),
            "SELECT count(*), sum(bytes) FROM {t}".to_string(),
            "SELECT hour, src_ip FROM {t} WHERE date = DATE '2025-11-20' AND hour = 11".to_string(),
            "SELECT src_ip, date FROM {t} WHERE hour > 10 OR src_ip = '10.0.0.2' ORDER BY 1"
                .to_string(),
            format!("SELECT src_ip FROM {{t}} WHERE first_seen >= {last_of_first} ORDER BY 1"),
            "SELECT count(*) FROM {t} WHERE src_ip = '10.0.0.3'".to_string(),
            "SELECT count(*) FROM {t} WHERE date = DATE '1999-01-01'".to_string(),
        ] {
            // Aliased: column names carry the table's name.
            let ours = answer(&ctx, &query.replace("{t}", "ours AS t")).await;
            let theirs = answer(&ctx, &query.replace("{t}", "theirs AS t")).await;
            assert_eq!(ours, theirs, "{query}");
            assert!(
                ours.lines().count() > 4 || query.contains("count"),
                "{query}: {ours}"
            );
        }
        let at_the_edge = answer(
            &ctx,
            &format!("SELECT count(*) AS n FROM ours WHERE first_seen >= {last_of_first}"),
        )
        .await;
        assert!(at_the_edge.contains("| 2 |"), "{at_the_edge}");
    }

    #[tokio::test]
    async fn filters_prune_files_and_count_is_answered_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(dir.path(), &[]).await;
        let ctx = session(&table).await;
        let files_read = |plan: &str| plan.matches(".parquet").count();
        assert_eq!(
            files_read(&plan(&ctx, "SELECT sum(bytes) FROM ours").await),
            3
        );
        // Partition values exactly; the log's min/max for other columns.
        assert_eq!(
            files_read(&plan(&ctx, "SELECT sum(bytes) FROM ours WHERE hour = 11").await),
            1
        );
        assert_eq!(
            files_read(
                &plan(
                    &ctx,
                    "SELECT sum(bytes) FROM ours WHERE src_ip = '10.0.0.3'"
                )
                .await
            ),
            1
        );
        let nothing = plan(
            &ctx,
            "SELECT sum(bytes) FROM ours WHERE date = DATE '1999-01-01'",
        )
        .await;
        assert_eq!(files_read(&nothing), 0, "{nothing}");
        // Row counts from the log: count(*) reads no file.
        let count = plan(&ctx, "SELECT count(*) FROM ours").await;
        assert!(!count.contains("DataSourceExec"), "{count}");
        assert!(
            answer(&ctx, "SELECT count(*) AS n FROM ours")
                .await
                .contains("| 4 |")
        );
    }

    #[tokio::test]
    async fn a_table_whose_files_were_all_removed_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (table, _) = table(dir.path(), &[]).await.delete().await.unwrap();
        let ctx = session(&table).await;
        let rows = answer(
            &ctx,
            "SELECT count(*) AS n, sum(bytes) AS b FROM ours WHERE hour = 10",
        )
        .await;
        assert!(rows.contains("| 0 |"), "{rows}");
    }

    #[tokio::test]
    async fn a_table_with_deletion_vectors_is_left_to_deltalake() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(dir.path(), &[("delta.enableDeletionVectors", "true")]).await;
        let schema = table.table_provider().await.unwrap().schema();
        assert!(
            LakeTable::try_new("flows", &table, schema)
                .unwrap()
                .is_none()
        );
    }
}
