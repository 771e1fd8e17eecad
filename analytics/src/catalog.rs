//! The lake as a DataFusion schema: every Delta table under `<lake>/<table>` that exists,
//! by name, scanned by [`LakeTable`] (partition pruning on the partition columns, file
//! statistics from the Delta log), or by deltalake's own `TableProvider` for a table that
//! uses a reader feature `LakeTable` leaves to it.
//!
//! Freshness: DataFusion asks the schema for each table a query names while it plans the
//! query; [`LakeSchema::table`] then moves the table to the log's latest version (an
//! incremental read of the new commits, cheap when nothing moved). So a commit made by
//! ingest is visible to the next query, with no restart, and a query sees one snapshot.
//! Tables that appear later (a writer creating `edges`) are picked up the same way.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};
use deltalake::DeltaTable;
use tokio::sync::Mutex;
use url::Url;

use crate::lake_scan::LakeTable;

/// Where the lake lives: a local directory or an object-store prefix (`s3://bucket/lake/`);
/// the tables are its children.
#[derive(Clone, Debug)]
pub struct LakeLocation {
    /// A directory URL, ending in '/'.
    root: Url,
}

impl LakeLocation {
    /// A lake at local directory `dir` (it may not exist yet: tables appear when ingest
    /// first commits); a relative path is taken against the working directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir: PathBuf = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let root = Url::from_directory_path(&dir)
            .unwrap_or_else(|()| Url::parse("file:///").expect("a valid URL"));
        Self { root }
    }

    /// The lake named by `--lake`: a directory, a `file://` URL or `s3://bucket/prefix`.
    pub fn parse(text: &str) -> std::result::Result<Self, bulkhead_schemas::lake::LakeUrlError> {
        bulkhead_schemas::lake::lake_url(text).map(|root| Self { root })
    }

    pub fn url(&self) -> &Url {
        &self.root
    }

    /// The directory, for a local lake.
    pub fn local_dir(&self) -> Option<PathBuf> {
        (self.root.scheme() == "file")
            .then(|| self.root.to_file_path().ok())
            .flatten()
    }

    /// The URL of table `name`.
    pub fn table_url(&self, name: &str) -> Url {
        bulkhead_schemas::lake::table_url(&self.root, name)
    }

    /// Whether table `name` has a Delta log (has been committed to at least once). Local
    /// lakes answer from the file system; object stores by listing the table's log.
    pub async fn has_table(&self, name: &str) -> Result<bool> {
        if let Some(exists) = self.has_local_table(name) {
            return Ok(exists);
        }
        let url = self.table_url(name);
        let store = deltalake::DeltaTableBuilder::from_url(url)
            .and_then(|b| b.build_storage())
            .map_err(|e| delta_error(name, e))?;
        store
            .is_delta_table_location()
            .await
            .map_err(|e| delta_error(name, e))
    }

    /// For a local lake, whether table `name` has a Delta log (`None`: not local).
    fn has_local_table(&self, name: &str) -> Option<bool> {
        self.local_dir()
            .map(|dir| dir.join(name).join("_delta_log").is_dir())
    }

    /// The lake tables that exist now, in the order of `bulkhead_schemas::lake::TABLES`.
    pub async fn existing_tables(&self) -> Result<Vec<&'static str>> {
        let mut out = Vec::new();
        for spec in bulkhead_schemas::lake::TABLES {
            if self.has_table(spec.name).await? {
                out.push(spec.name);
            }
        }
        Ok(out)
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
    /// Tables known to exist, for DataFusion's synchronous listing (`SHOW TABLES`, Flight
    /// SQL `GetTables`). Local lakes list their directory instead; an object-store lake's
    /// set grows as [`Self::latest`] or [`Self::existing_tables`] find tables.
    known: std::sync::RwLock<BTreeSet<&'static str>>,
    /// Used to register each table's object store with the shared runtime.
    session: std::sync::OnceLock<datafusion::execution::SessionState>,
}

impl std::fmt::Debug for LakeSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeSchema")
            .field("root", &self.location.root.as_str())
            .finish()
    }
}

impl LakeSchema {
    pub fn new(location: LakeLocation) -> Self {
        Self {
            location,
            open: Mutex::new(HashMap::new()),
            known: Default::default(),
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

    /// Whether the lake has table `name` now (remembered for listings).
    pub async fn has_table(&self, name: &str) -> Result<bool> {
        let Some(spec) = bulkhead_schemas::lake::table(name) else {
            return Ok(false);
        };
        let exists = self.location.has_table(spec.name).await?;
        if exists {
            self.remember(spec.name);
        }
        Ok(exists)
    }

    /// The lake tables that exist now (see [`LakeLocation::existing_tables`]).
    pub async fn existing_tables(&self) -> Result<Vec<&'static str>> {
        let tables = self.location.existing_tables().await?;
        for name in &tables {
            self.remember(name);
        }
        Ok(tables)
    }

    fn remember(&self, name: &'static str) {
        if let Ok(mut known) = self.known.write() {
            known.insert(name);
        }
    }

    /// Tables to list without waiting: the directory's for a local lake, else those found.
    fn listed_tables(&self) -> Vec<&'static str> {
        match self.location.local_dir() {
            Some(_) => bulkhead_schemas::lake::TABLES
                .iter()
                .map(|t| t.name)
                .filter(|name| self.location.has_local_table(name) == Some(true))
                .collect(),
            None => self
                .known
                .read()
                .map(|k| k.iter().copied().collect())
                .unwrap_or_default(),
        }
    }

    /// The provider of table `name` at the log's latest version, or `None` if the lake
    /// has no such table (yet).
    pub async fn latest(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(spec) = bulkhead_schemas::lake::table(name) else {
            return Ok(None);
        };
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
                entry.provider = provider(spec.name, &entry.table).await?;
            }
            return Ok(Some(entry.provider.clone()));
        }
        if !self.has_table(spec.name).await? {
            return Ok(None);
        }
        let url = self.location.table_url(spec.name);
        let table = deltalake::open_table(url)
            .await
            .map_err(|e| delta_error(spec.name, e))?;
        if let Some(session) = self.session.get() {
            table
                .update_datafusion_session(session)
                .map_err(|e| delta_error(spec.name, e))?;
        }
        let provider = provider(spec.name, &table).await?;
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

/// The provider of `table` at its loaded version: [`LakeTable`]'s scan where it can read
/// the table, else deltalake's (`BULKHEAD_LAKE_SCAN=0`: always deltalake's, to compare).
async fn provider(name: &'static str, table: &DeltaTable) -> Result<Arc<dyn TableProvider>> {
    let delta = table.table_provider().await?;
    if std::env::var("BULKHEAD_LAKE_SCAN").as_deref() == Ok("0") {
        return Ok(delta);
    }
    Ok(match LakeTable::try_new(name, table, delta.schema())? {
        Some(lake) => Arc::new(lake),
        None => delta,
    })
}

fn delta_error(table: &str, e: deltalake::DeltaTableError) -> DataFusionError {
    DataFusionError::External(format!("lake table {table}: {e}").into())
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        self.listed_tables().into_iter().map(String::from).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.latest(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.listed_tables().contains(&name)
    }
}
