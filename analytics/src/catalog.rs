//! The lake as a DataFusion schema: every Delta table under `<lake>/<table>` that exists,
//! by name, through deltalake's own `TableProvider` (partition pruning from the Hive
//! partition columns, file statistics from the Delta log).
//!
//! Freshness: DataFusion asks the schema for each table a query names while it plans the
//! query; [`LakeSchema::table`] then moves the table to the log's latest version (an
//! incremental read of the new commits, cheap when nothing moved). So a commit made by
//! ingest is visible to the next query, with no restart, and a query sees one snapshot.
//! Tables that appear later (a writer creating `edges`) are picked up the same way.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};
use deltalake::DeltaTable;
use tokio::sync::Mutex;
use url::Url;

/// Where the lake lives: a local directory (the tables are its subdirectories).
#[derive(Clone, Debug)]
pub struct LakeLocation {
    root: PathBuf,
}

impl LakeLocation {
    /// A lake at `dir` (it may not exist yet: tables appear when ingest first commits).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let root: PathBuf = dir.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { root }
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The URL of table `name`.
    pub fn table_url(&self, name: &str) -> Result<Url> {
        let dir = self.root.join(name);
        Url::from_directory_path(&dir).map_err(|()| {
            DataFusionError::Configuration(format!(
                "lake directory {} is not an absolute path",
                dir.display()
            ))
        })
    }

    /// Whether table `name` has a Delta log (has been committed to at least once).
    pub fn has_table(&self, name: &str) -> bool {
        self.root.join(name).join("_delta_log").is_dir()
    }

    /// The lake tables that exist now, in the order of `bulkhead_schemas::lake::TABLES`.
    pub fn existing_tables(&self) -> Vec<&'static str> {
        bulkhead_schemas::lake::TABLES
            .iter()
            .map(|t| t.name)
            .filter(|name| self.has_table(name))
            .collect()
    }
}

/// One opened table: the Delta state and the provider built from it.
struct OpenTable {
    table: DeltaTable,
    provider: Arc<dyn TableProvider>,
}

/// The lake's tables as a DataFusion schema (registered as `datafusion.public`, so plain
/// names work: `SELECT * FROM flows`). Read-only: registering tables is refused.
pub struct LakeSchema {
    location: LakeLocation,
    open: Mutex<HashMap<&'static str, OpenTable>>,
    /// Used to register each table's object store with the shared runtime.
    session: std::sync::OnceLock<datafusion::execution::SessionState>,
}

impl std::fmt::Debug for LakeSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeSchema")
            .field("root", &self.location.root)
            .finish()
    }
}

impl LakeSchema {
    pub fn new(location: LakeLocation) -> Self {
        Self {
            location,
            open: Mutex::new(HashMap::new()),
            session: std::sync::OnceLock::new(),
        }
    }

    /// Gives the schema the session whose runtime (object stores) every query shares.
    pub fn attach(&self, state: datafusion::execution::SessionState) {
        let _ = self.session.set(state);
    }

    pub fn location(&self) -> &LakeLocation {
        &self.location
    }

    /// The provider of table `name` at the log's latest version, or `None` if the lake
    /// has no such table (yet).
    pub async fn latest(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(spec) = bulkhead_schemas::lake::table(name) else {
            return Ok(None);
        };
        if !self.location.has_table(spec.name) {
            return Ok(None);
        }
        let mut open = self.open.lock().await;
        if let Some(entry) = open.get_mut(spec.name) {
            let before = entry.table.version();
            entry
                .table
                .update_incremental(None)
                .await
                .map_err(|e| delta_error(spec.name, e))?;
            if entry.table.version() != before {
                tracing::debug!(table = spec.name, version = ?entry.table.version(), "new commits");
                metrics::counter!("bulkhead_analytics_table_reloads_total", "table" => spec.name)
                    .increment(1);
                entry.provider = entry.table.table_provider().await?;
            }
            return Ok(Some(entry.provider.clone()));
        }
        let url = self.location.table_url(spec.name)?;
        let table = deltalake::open_table(url)
            .await
            .map_err(|e| delta_error(spec.name, e))?;
        if let Some(session) = self.session.get() {
            table
                .update_datafusion_session(session)
                .map_err(|e| delta_error(spec.name, e))?;
        }
        let provider = table.table_provider().await?;
        open.insert(
            spec.name,
            OpenTable {
                table,
                provider: provider.clone(),
            },
        );
        Ok(Some(provider))
    }
}

fn delta_error(table: &str, e: deltalake::DeltaTableError) -> DataFusionError {
    DataFusionError::External(format!("lake table {table}: {e}").into())
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        self.location
            .existing_tables()
            .into_iter()
            .map(String::from)
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.latest(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        bulkhead_schemas::lake::table(name).is_some() && self.location.has_table(name)
    }
}
