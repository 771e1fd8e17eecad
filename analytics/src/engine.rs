//! The query engine: one DataFusion context over the lake (catalog `bulkhead`, schema
//! `lake`, the Bulkhead functions), read-only, and a fresh session per query that carries
//! the query's memory cap; results collected or streamed under the query's time limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use futures::{FutureExt as _, StreamExt as _};

use crate::catalog::{LakeLocation, LakeSchema};
use crate::limits::{Limits, QueryPool};

/// The catalog and schema the lake's tables are registered under.
pub const CATALOG: &str = "bulkhead";
pub const SCHEMA: &str = "lake";

/// Why a query failed, and so who must act: the author of the query (`Invalid`,
/// `ReadOnly`, `Memory`, `Timeout`) or the operator (`Internal`).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL does not parse, names something that does not exist, or fails on the data.
    #[error("{0}")]
    Invalid(String),
    /// A statement that would change something (DDL, DML, COPY, SET).
    #[error(
        "the lake is read-only here: {0}. Only SELECT, EXPLAIN, SHOW and DESCRIBE run; ingest writes the tables"
    )]
    ReadOnly(String),
    /// The query hit its memory cap or the shared pool.
    #[error("out of memory: {0}")]
    Memory(String),
    /// The query ran past its time limit.
    #[error(
        "the query was stopped after its time limit of {0:?} (--query-timeout); narrow it or raise the limit"
    )]
    Timeout(Duration),
    /// Not the query's fault (a lake file unreadable, a bug).
    #[error("{0}")]
    Internal(String),
}

impl QueryError {
    /// A short, stable code for metrics and API clients.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_query",
            Self::ReadOnly(_) => "read_only",
            Self::Memory(_) => "memory_limit",
            Self::Timeout(_) => "timeout",
            Self::Internal(_) => "internal",
        }
    }

    /// A panic inside DataFusion while it ran the query, as the error it should have been.
    /// DataFusion re-raises a panic of an operator's task in the task that reads the
    /// query's stream; caught there, the request fails cleanly instead.
    fn engine_panic(panic: Box<dyn std::any::Any + Send>) -> Self {
        let message = bulkhead_schemas::panic_message(&*panic).unwrap_or("no message");
        Self::Internal(format!(
            "the query engine failed while running this query ({message}); this is a defect in \
             DataFusion, not in the query: report it with the query, or rewrite the query"
        ))
    }

    /// Classifies a DataFusion error; `sql` lets a position be shown under the query.
    pub fn from_datafusion(e: DataFusionError, sql: &str) -> Self {
        let position = e.diagnostic().and_then(|d| d.span).map(|span| {
            let line = sql
                .lines()
                .nth(span.start.line.saturating_sub(1) as usize)
                .unwrap_or("");
            let width = if span.end.line == span.start.line {
                span.end.column.saturating_sub(span.start.column).max(1)
            } else {
                1
            } as usize;
            format!(
                "\n  at line {}, column {}:\n  {line}\n  {}{}",
                span.start.line,
                span.start.column,
                " ".repeat(span.start.column.saturating_sub(1) as usize),
                "^".repeat(width)
            )
        });
        let root = e.find_root();
        let message = format!("{}{}", root.strip_backtrace(), position.unwrap_or_default());
        if reading_a_file_failed(root) {
            return Self::Internal(format!("{message} ({UNREADABLE_FILE_HINT})"));
        }
        match root {
            DataFusionError::Plan(m)
                if m.starts_with("DDL not supported")
                    || m.starts_with("DML not supported")
                    || m.starts_with("Statement not supported") =>
            {
                Self::ReadOnly(m.clone())
            }
            DataFusionError::ResourcesExhausted(_) => Self::Memory(message),
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Execution(_)
            | DataFusionError::ArrowError(..)
            | DataFusionError::Configuration(_) => Self::Invalid(message),
            _ => Self::Internal(message),
        }
    }
}

/// What an operator can do about a lake file a query could not read: not every such error
/// names the file (a damaged page says only "Data corruption detected").
pub const UNREADABLE_FILE_HINT: &str = "a data file of the lake could not be read; `bulkhead lake check --table <table>` names the missing or damaged ones";

/// Whether `root` is a lake file that could not be read (missing, truncated, damaged),
/// not a mistake of the query: the operator must act, so it is not `Invalid`.
fn reading_a_file_failed(root: &DataFusionError) -> bool {
    use datafusion::arrow::error::ArrowError;
    match root {
        DataFusionError::ParquetError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::IoError(_) => true,
        DataFusionError::ArrowError(arrow, _) => matches!(
            **arrow,
            ArrowError::ParquetError(_) | ArrowError::IoError(..)
        ),
        _ => false,
    }
}

/// The query engine over one lake.
#[derive(Clone)]
pub struct Engine {
    base: SessionContext,
    lake: Arc<LakeSchema>,
    pool: Arc<dyn MemoryPool>,
    limits: Limits,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("lake", &self.lake.location().url().as_str())
            .field("limits", &self.limits)
            .finish()
    }
}

/// What a read-only session may run.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

impl Engine {
    /// An engine over the lake at `location` (tables appear as ingest creates them).
    pub fn new(location: LakeLocation, limits: Limits) -> Result<Self, String> {
        limits.validate()?;
        let pool = limits.shared_pool();
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .build_arc()
            .map_err(|e| format!("cannot start the query runtime: {e}"))?;
        // deltalake reads data files through the store the runtime has for `file://` (it
        // registers its own only where none is): for a local lake, the mapped one.
        if location.local_dir().is_some() && crate::mapped_files::enabled() {
            runtime.register_object_store(
                &url::Url::parse("file:///").expect("a valid URL"),
                Arc::new(crate::mapped_files::MappedLocalStore::new()),
            );
        }
        // DataFusion's own `DATAFUSION_*` variables (e.g. `DATAFUSION_EXECUTION_BATCH_SIZE`)
        // tune the engine; the lake's defaults below apply where they say nothing.
        let mut config = SessionConfig::from_env()
            .map_err(|e| format!("a DATAFUSION_* variable is invalid: {e}"))?
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(true);
        config.options_mut().sql_parser.collect_spans = true;
        // deltalake's scan reads a filter's columns even when the query does not return
        // them, so with parquet's predicate cache on every filtered scan copies its filter
        // columns into the cache: off, `WHERE src_workload IS NULL` over 50M flows ran in
        // half the time (505 → 253 ms), and no query measured got slower.
        if std::env::var_os("DATAFUSION_EXECUTION_PARQUET_MAX_PREDICATE_CACHE_SIZE").is_none() {
            config
                .options_mut()
                .execution
                .parquet
                .max_predicate_cache_size = Some(0);
        }
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features();
        // `BULKHEAD_RUN_GROUPED_AGGREGATE=0` leaves every aggregate to DataFusion's own
        // (to compare answers or timings).
        if std::env::var("BULKHEAD_RUN_GROUPED_AGGREGATE").as_deref() != Ok("0") {
            state = state.with_physical_optimizer_rule(Arc::new(
                crate::run_aggregate::RunGroupedPartialAggregate::default(),
            ));
        }
        let state = state.with_physical_optimizer_rule(Arc::new(crate::yielding::YieldingJoins));
        let base = SessionContext::new_with_state(state.build());
        crate::udf::register(&base);
        crate::output_caps::register(&base, limits.query_memory_bytes);
        base.add_analyzer_rule(Arc::new(crate::rules::StandardLabelColumns));
        base.add_optimizer_rule(Arc::new(crate::rules::PackIntegerGroupKeys));
        let lake = Arc::new(LakeSchema::new(location));
        lake.attach(base.state());
        base.catalog(CATALOG)
            .ok_or("the default catalog is missing")?
            .register_schema(SCHEMA, lake.clone())
            .map_err(|e| format!("cannot register the lake schema: {e}"))?;
        Ok(Self {
            base,
            lake,
            pool,
            limits,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn lake(&self) -> &LakeSchema {
        &self.lake
    }

    /// The lake tables that exist now.
    pub async fn tables(&self) -> Result<Vec<&'static str>, QueryError> {
        self.lake
            .existing_tables()
            .await
            .map_err(|e| QueryError::Internal(e.to_string()))
    }

    /// Whether the lake has table `name` now.
    pub async fn has_table(&self, name: &str) -> Result<bool, QueryError> {
        self.lake
            .has_table(name)
            .await
            .map_err(|e| QueryError::Internal(e.to_string()))
    }

    /// Bytes held by all running queries.
    pub fn memory_in_use(&self) -> usize {
        self.pool.reserved()
    }

    /// A session for one query: shares the catalog, functions and object stores, with its
    /// own memory cap inside the shared pool.
    pub fn session(&self) -> SessionContext {
        let mut runtime = (*self.base.runtime_env()).clone();
        runtime.memory_pool = Arc::new(QueryPool::new(
            self.pool.clone(),
            self.limits.query_memory_bytes,
        ));
        let state = SessionStateBuilder::new_from_existing(self.base.state())
            .with_runtime_env(Arc::new(runtime))
            .build();
        SessionContext::new_with_state(state)
    }

    /// Plans `sql` read-only in a fresh session.
    pub async fn plan(&self, sql: &str) -> Result<DataFrame, QueryError> {
        crate::sql_shape::check(sql).map_err(|e| self.failed(QueryError::Invalid(e)))?;
        let session = self.session();
        let deadline = self.limits.query_timeout;
        match tokio::time::timeout(deadline, session.sql_with_options(sql, read_only())).await {
            Ok(Ok(df)) => Ok(df),
            Ok(Err(e)) => Err(self.failed(QueryError::from_datafusion(e, sql))),
            Err(_) => Err(self.failed(QueryError::Timeout(deadline))),
        }
    }

    fn failed(&self, e: QueryError) -> QueryError {
        metrics::counter!("bulkhead_analytics_query_errors_total", "code" => e.code()).increment(1);
        e
    }

    /// Runs `sql` to completion under the limits.
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        let df = self.plan(sql).await?;
        self.collect_planned(df, sql).await
    }

    /// Runs a query planned by [`plan`](Self::plan) to completion under the limits.
    pub async fn collect_planned(
        &self,
        df: DataFrame,
        sql: &str,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        let started = Instant::now();
        let limit = self.limits.query_timeout;
        let run = std::panic::AssertUnwindSafe(df.collect()).catch_unwind();
        let result = match tokio::time::timeout(limit, run).await {
            Ok(Ok(Ok(batches))) => Ok(batches),
            Ok(Ok(Err(e))) => Err(self.failed(QueryError::from_datafusion(e, sql))),
            Ok(Err(panic)) => Err(self.failed(QueryError::engine_panic(panic))),
            Err(_) => Err(self.failed(QueryError::Timeout(limit))),
        };
        self.record(started, result.is_ok());
        result
    }

    fn record(&self, started: Instant, ok: bool) {
        metrics::counter!("bulkhead_analytics_queries_total", "outcome" => if ok { "ok" } else { "error" })
            .increment(1);
        metrics::histogram!("bulkhead_analytics_query_seconds").record(started.elapsed());
    }

    /// Runs `sql` as a stream of batches; the stream ends with an error once the time
    /// limit passes.
    pub async fn stream(&self, sql: &str) -> Result<SendableRecordBatchStream, QueryError> {
        let started = Instant::now();
        let df = self.plan(sql).await?;
        let stream = df
            .execute_stream()
            .await
            .map_err(|e| self.failed(QueryError::from_datafusion(e, sql)))?;
        Ok(self.with_deadline(stream, started))
    }

    /// Ends `stream` with a timeout error when the query's time runs out.
    pub fn with_deadline(
        &self,
        stream: SendableRecordBatchStream,
        started: Instant,
    ) -> SendableRecordBatchStream {
        let schema = stream.schema();
        let limit = self.limits.query_timeout;
        let deadline = tokio::time::Instant::from_std(started + limit);
        let engine = self.clone();
        let guarded = futures::stream::unfold(Some(stream), move |state| {
            let engine = engine.clone();
            async move {
                let mut stream = state?;
                let next = std::panic::AssertUnwindSafe(stream.next()).catch_unwind();
                match tokio::time::timeout_at(deadline, next).await {
                    Ok(Ok(Some(item))) => Some((item, Some(stream))),
                    Ok(Ok(None)) => {
                        engine.record(started, true);
                        None
                    }
                    Ok(Err(panic)) => {
                        engine.record(started, false);
                        let e = engine.failed(QueryError::engine_panic(panic));
                        Some((Err(DataFusionError::External(Box::new(e))), None))
                    }
                    Err(_) => {
                        engine.record(started, false);
                        let e = engine.failed(QueryError::Timeout(limit));
                        Some((Err(DataFusionError::External(Box::new(e))), None))
                    }
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, guarded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray as _;

    fn engine(limits: Limits) -> Engine {
        let dir = tempfile::tempdir().unwrap();
        Engine::new(LakeLocation::new(dir.keep()), limits).unwrap()
    }

    #[tokio::test]
    async fn a_local_lake_is_read_through_memory_maps() {
        // deltalake reads data files through the store the query's runtime has for
        // `file://`; DataFusion registers a plain LocalFileSystem there by default.
        let store = engine(Limits::default())
            .session()
            .runtime_env()
            .object_store(datafusion::execution::object_store::ObjectStoreUrl::local_filesystem())
            .unwrap();
        assert_eq!(store.to_string(), "MappedLocalStore");
    }

    #[tokio::test]
    async fn writes_are_refused_with_a_clear_error() {
        let engine = engine(Limits::default());
        for sql in [
            "CREATE TABLE t AS SELECT 1",
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/tmp/x'",
            "CREATE VIEW v AS SELECT 1",
            "COPY (SELECT 1) TO '/tmp/bulkhead-copy-test.parquet'",
            "INSERT INTO information_schema.tables VALUES (1)",
            "SET datafusion.execution.batch_size = 1",
            "DROP TABLE flows",
        ] {
            let err = engine.collect(sql).await.expect_err(sql);
            assert!(
                matches!(err, QueryError::ReadOnly(_) | QueryError::Invalid(_)),
                "{sql}: {err:?}"
            );
            if !sql.starts_with("INSERT") && !sql.starts_with("DROP") {
                assert!(matches!(err, QueryError::ReadOnly(_)), "{sql}: {err:?}");
                assert!(err.to_string().contains("read-only"), "{sql}: {err}");
            }
        }
        assert!(!std::path::Path::new("/tmp/bulkhead-copy-test.parquet").exists());
        engine.collect("SELECT 1").await.unwrap();
    }

    #[tokio::test]
    async fn errors_show_the_position() {
        let engine = engine(Limits::default());
        let err = engine
            .collect("SELECT nosuchcolumn FROM (SELECT 1 AS a)")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, QueryError::Invalid(_)), "{err:?}");
        assert!(text.contains("nosuchcolumn"), "{text}");
        assert!(text.contains("line 1, column 8"), "{text}");
        let err = engine.collect("SELEC 1").await.unwrap_err();
        assert!(err.to_string().contains("SELEC"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_memory_hungry_query_fails_alone() {
        let engine = engine(Limits {
            memory_bytes: 64 << 20,
            query_memory_bytes: 16 << 20,
            query_timeout: Duration::from_secs(60),
        });
        let hungry = "SELECT array_length(array_agg(value), 1) FROM range(100000000)";
        let small = "SELECT sum(value) FROM range(1000000)";
        let (h, s) = tokio::join!(engine.collect(hungry), async {
            // A few small queries while the hungry one grows.
            let mut results = Vec::new();
            for _ in 0..3 {
                results.push(engine.collect(small).await);
            }
            results
        });
        let err = h.expect_err("the hungry query must hit its memory cap");
        assert!(matches!(err, QueryError::Memory(_)), "{err:?}");
        assert!(err.to_string().contains("memory limit of 16 MiB"), "{err}");
        for r in s {
            r.expect("small queries keep running");
        }
        // Its aborted tasks release their reservations as they are dropped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while engine.memory_in_use() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            engine.memory_in_use(),
            0,
            "the failed query released its memory"
        );
    }

    #[tokio::test]
    async fn a_function_result_past_the_query_limit_is_a_memory_error() {
        let engine = engine(Limits {
            memory_bytes: 64 << 20,
            query_memory_bytes: 16 << 20,
            query_timeout: Duration::from_secs(60),
        });
        // 160 MB of text from a 30-byte query: refused before it is built.
        let err = engine
            .collect("SELECT length(repeat('x', 160000000))")
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::Memory(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("repeat(…) would build up to 152.6 MiB")
                && err.to_string().contains("memory limit of 16 MiB"),
            "{err}"
        );
        let ok = engine.collect("SELECT repeat('ab', 3) AS r").await.unwrap();
        assert_eq!(ok[0].column(0).as_string::<i32>().value(0), "ababab");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_query_times_out() {
        let engine = engine(Limits {
            query_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        let err = engine
            .collect("SELECT count(DISTINCT a.value + b.value) FROM range(100000) a CROSS JOIN range(100000) b")
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::Timeout(_)), "{err:?}");
        engine.collect("SELECT 1").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_that_makes_trillions_of_rows_is_stopped_at_the_limit_and_stops_working() {
        let engine = engine(Limits {
            query_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        // 10^12 pairs, each batch of `c` joined with a million rows of `a, b`: without a
        // yield per joined batch, the limit of 0.3 s fired after 15.6 s (debug build).
        let started = Instant::now();
        let err = engine
            .collect(
                "SELECT count(*) FROM range(1000) a, range(1000) b, range(1000000) c \
                 WHERE a.value + b.value + c.value > 0",
            )
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::Timeout(_)), "{err:?}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "stopped only after {took:?}");
        // And the stopped query's work ends with it: its tasks on this test's runtime are
        // aborted, which takes effect when they yield; a join that never yields would
        // stay alive, burning a thread.
        let runtime = tokio::runtime::Handle::current().metrics();
        let mut waited = Duration::ZERO;
        while runtime.num_alive_tasks() > 0 && waited < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert_eq!(
            runtime.num_alive_tasks(),
            0,
            "the stopped query's tasks run on"
        );
        engine.collect("SELECT 1").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_inside_datafusion_fails_the_query_not_the_server() {
        let engine = engine(Limits::default());
        // DataFusion 55.2 panics on this one ("partition not used yet", in a repartition
        // under a cross join whose build side runs out of memory); a fixed DataFusion
        // answers with the memory limit instead. Either way: an error, and the engine
        // goes on.
        let sql = "SELECT count(*) FROM range(20000) a, range(20000) b, range(20000) c \
                   WHERE a.value + b.value + c.value > 0";
        let err = engine.collect(sql).await.unwrap_err();
        assert!(
            matches!(err, QueryError::Internal(_) | QueryError::Memory(_)),
            "{err:?}"
        );
        let mut stream = engine.stream(sql).await.unwrap();
        let mut failed = false;
        while let Some(item) = stream.next().await {
            failed |= item.is_err();
        }
        assert!(failed, "the streamed query must end with its error");
        engine.collect("SELECT 1").await.unwrap();
    }
}
