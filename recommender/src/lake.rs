//! Reading the lake's `edges` table (deltalake lists the live files, polars scans them)
//! and writing the `recommendations` table.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use arrow_array::builder::{
    Float64Builder, Int64Builder, MapBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use deltalake::DeltaTable;
use deltalake::logstore::object_store::ObjectStoreExt as _;
use deltalake::protocol::SaveMode;
use futures::StreamExt as _;
use polars::prelude::{
    DataType, LazyFrame, PlRefPath, PolarsResult, ScanArgsParquet, SortMultipleOptions, UnionArgs,
    col, concat, lit,
};
use url::Url;

use crate::{Recommendation, WorkloadLabels};

pub use bulkhead_schemas::lake::table_url;

/// The parquet files of a Delta table's current version, as local paths (see
/// [`table_files_where`]).
pub async fn table_files(url: &Url) -> anyhow::Result<Vec<String>> {
    table_files_where(url, |_| true).await
}

/// The parquet files of a Delta table's current version whose path in the table
/// (`date=2026-11-26/hour=5/part-….parquet`) passes `keep`, as local paths.
///
/// polars reads local files only, so a table in an object store is read through a local
/// cache (under the system's temporary directory): Delta data files never change once
/// written, so a file fetched once stays valid, and cached files no longer in the table
/// (compacted, vacuumed) are removed.
pub async fn table_files_where(
    url: &Url,
    keep: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<String>> {
    let table = deltalake::open_table(url.clone()).await.with_context(|| {
        format!("cannot open the Delta table at {url} (has ingest written it yet?)")
    })?;
    let uris: Vec<String> = table
        .get_file_uris()
        .with_context(|| format!("cannot list the files of {url}"))?
        .collect();
    if url.scheme() == "file" {
        return Ok(uris
            .into_iter()
            .map(|uri| {
                uri.strip_prefix("file://")
                    .map(str::to_string)
                    .unwrap_or(uri)
            })
            .filter(|path| keep(path))
            .collect());
    }
    let table_root = url.as_str().trim_end_matches('/');
    let live: Vec<String> = uris
        .iter()
        .map(|uri| {
            uri.strip_prefix(table_root)
                .unwrap_or(uri)
                .trim_start_matches('/')
                .to_string()
        })
        .collect();
    let cache = cache_dir(url);
    prune_cache(&cache, &live);
    let wanted: Vec<(String, std::path::PathBuf)> = live
        .iter()
        .filter(|path| keep(path))
        .map(|relative| (relative.clone(), cache.join(relative)))
        .collect();
    let store = table.object_store();
    futures::stream::iter(
        wanted
            .into_iter()
            .map(|(relative, local)| fetch_to_cache(store.clone(), url.clone(), relative, local)),
    )
    .buffered(8)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect()
}

/// Fetches `relative` (a file of the table at `url`) to `local` unless it is there.
async fn fetch_to_cache(
    store: deltalake::logstore::ObjectStoreRef,
    url: Url,
    relative: String,
    local: std::path::PathBuf,
) -> anyhow::Result<String> {
    if !local.exists() {
        let location = deltalake::Path::parse(&relative)
            .with_context(|| format!("{url}: bad file path {relative}"))?;
        let fetch = async { store.get(&location).await?.bytes().await };
        let bytes = fetch
            .await
            .with_context(|| format!("cannot fetch {url}{relative}"))?;
        write_atomically(&local, &bytes)?;
    }
    Ok(local.to_string_lossy().into_owned())
}

/// `<tmp>/bulkhead-lake-cache/<scheme>[@<endpoint>]/<bucket>/<path>`: one table's cached
/// files (the endpoint, when `AWS_ENDPOINT_URL` names one, keeps two servers' buckets of
/// the same name apart).
fn cache_dir(url: &Url) -> std::path::PathBuf {
    let mut dir = std::env::temp_dir().join("bulkhead-lake-cache");
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .and_then(|e| Url::parse(&e).ok())
        .and_then(|e| Some(format!("{}_{}", e.host_str()?, e.port_or_known_default()?)));
    dir.push(match endpoint {
        Some(endpoint) => format!("{}@{endpoint}", url.scheme()),
        None => url.scheme().to_string(),
    });
    dir.push(url.host_str().unwrap_or("_"));
    for segment in url.path_segments().into_iter().flatten() {
        if !segment.is_empty() && segment != ".." {
            dir.push(segment);
        }
    }
    dir
}

/// Writes `bytes` to `path` through a temporary sibling, so that a reader never sees a
/// half-written file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let parent = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".{}.partial", std::process::id()));
    std::fs::write(&partial, bytes)
        .with_context(|| format!("cannot write {}", std::path::Path::new(&partial).display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Removes cached files of the table that its current version no longer has.
fn prune_cache(cache: &std::path::Path, live: &[String]) {
    let live: std::collections::HashSet<std::path::PathBuf> =
        live.iter().map(|relative| cache.join(relative)).collect();
    let mut pending = vec![cache.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if !live.contains(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// The `edges` rows last seen at or after `since_us` (microseconds since the epoch), and
/// the newest labels each workload had in them.
///
/// The label maps are read file by file and left out of the concatenated rows: Parquet
/// writers name a map's entry fields differently (`keys`/`values` from the first commit's
/// Arrow schema, `key`/`value` after delta-rs casts to the table schema), and polars
/// refuses to stack the two struct types.
pub async fn load_edges(lake: &Url, since_us: i64) -> anyhow::Result<(LazyFrame, WorkloadLabels)> {
    let url = table_url(lake, "edges");
    let files = table_files(&url).await?;
    anyhow::ensure!(
        !files.is_empty(),
        "the edges table at {url} has no data files yet"
    );
    let recent = col("last_seen").cast(DataType::Int64).gt_eq(lit(since_us));
    let mut newest: BTreeMap<String, (i64, BTreeMap<String, String>)> = BTreeMap::new();
    let mut frames = Vec::with_capacity(files.len());
    for file in &files {
        let frame =
            LazyFrame::scan_parquet(PlRefPath::new(file.as_str()), ScanArgsParquet::default())
                .with_context(|| format!("cannot scan {file}"))?
                .filter(recent.clone());
        for (id, (t, labels)) in labels_of(frame.clone())
            .with_context(|| format!("cannot read workload labels from {file}"))?
        {
            if newest.get(&id).is_none_or(|(seen, _)| *seen < t) {
                newest.insert(id, (t, labels));
            }
        }
        frames.push(frame.drop(polars::prelude::cols(["src_labels", "dst_labels"])));
    }
    let edges = concat(frames, UnionArgs::default())?;
    let labels = newest.into_iter().map(|(id, (_, l))| (id, l)).collect();
    Ok((edges, labels))
}

/// A workload's labels and when (`last_seen`) an edge carried them.
type SeenLabels = (i64, BTreeMap<String, String>);

/// The newest labels of every workload in one file's edges (source and destination
/// sides), with when they were seen.
fn labels_of(edges: LazyFrame) -> PolarsResult<BTreeMap<String, SeenLabels>> {
    let mut out = BTreeMap::new();
    for (workload, labels) in [
        ("src_workload", "src_labels"),
        ("dst_workload", "dst_labels"),
    ] {
        let df = edges
            .clone()
            .select([
                col(workload).alias("w"),
                col(labels).alias("l"),
                col("last_seen").cast(DataType::Int64).alias("t"),
            ])
            .filter(col("w").is_not_null())
            .sort(
                ["t"],
                SortMultipleOptions::default().with_order_descending(true),
            )
            .collect()?;
        let ids = df.column("w")?.str()?;
        let times = df.column("t")?.i64()?;
        let lists = df.column("l")?.list()?;
        for i in 0..df.height() {
            let Some(id) = ids.get(i) else { continue };
            let t = times.get(i).unwrap_or(i64::MIN);
            if out.get(id).is_some_and(|(seen, _): &SeenLabels| *seen >= t) {
                continue;
            }
            let mut map = BTreeMap::new();
            if let Some(entries) = lists.get_as_series(i) {
                let entries = entries.struct_()?;
                let keys = entries
                    .field_by_name("keys")
                    .or_else(|_| entries.field_by_name("key"))?;
                let values = entries
                    .field_by_name("values")
                    .or_else(|_| entries.field_by_name("value"))?;
                let (keys, values) = (keys.str()?, values.str()?);
                for j in 0..keys.len() {
                    if let (Some(k), Some(v)) = (keys.get(j), values.get(j)) {
                        map.insert(k.to_string(), v.to_string());
                    }
                }
            }
            out.insert(id.to_string(), (t, map));
        }
    }
    Ok(out)
}

/// What the `workloads` read model says of one workload: its newest inventory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadInventory {
    pub workload_id: String,
    pub hostname: String,
    pub addresses: Vec<std::net::IpAddr>,
    /// Labels the host provides itself.
    pub host_labels: BTreeMap<String, String>,
}

/// The newest inventory of every workload in the lake's `workloads` table (empty before
/// ingest wrote it). Files are read one by one: writers name a map's entry fields
/// differently (`keys`/`values` or `key`/`value`), so entries are taken by position.
pub async fn inventory(lake: &Url) -> anyhow::Result<Vec<WorkloadInventory>> {
    let url = table_url(lake, "workloads");
    let Ok(files) = table_files(&url).await else {
        return Ok(Vec::new());
    };
    let mut newest: BTreeMap<String, (i64, WorkloadInventory)> = BTreeMap::new();
    for file in &files {
        let df = LazyFrame::scan_parquet(PlRefPath::new(file.as_str()), ScanArgsParquet::default())
            .and_then(|f| {
                f.select([
                    col("workload_id"),
                    col("hostname"),
                    col("addresses"),
                    col("host_labels"),
                    col("observed_at").cast(DataType::Int64),
                ])
                .collect()
            })
            .with_context(|| format!("cannot read {file}"))?;
        let ids = df.column("workload_id")?.str()?;
        let hostnames = df.column("hostname")?.str()?;
        let addresses = df.column("addresses")?.list()?;
        let labels = df.column("host_labels")?.list()?;
        let times = df.column("observed_at")?.i64()?;
        for i in 0..df.height() {
            let (Some(id), t) = (ids.get(i), times.get(i).unwrap_or(i64::MIN)) else {
                continue;
            };
            if newest.get(id).is_some_and(|(seen, _)| *seen >= t) {
                continue;
            }
            let mut record = WorkloadInventory {
                workload_id: id.to_string(),
                hostname: hostnames.get(i).unwrap_or_default().to_string(),
                ..Default::default()
            };
            if let Some(list) = addresses.get_as_series(i) {
                let list = list.str()?;
                record.addresses = (0..list.len())
                    .filter_map(|j| list.get(j)?.parse().ok())
                    .collect();
            }
            if let Some(entries) = labels.get_as_series(i) {
                let fields = entries.struct_()?.fields_as_series();
                if let [keys, values, ..] = fields.as_slice() {
                    let (keys, values) = (keys.str()?, values.str()?);
                    for j in 0..keys.len() {
                        if let (Some(k), Some(v)) = (keys.get(j), values.get(j)) {
                            record.host_labels.insert(k.to_string(), v.to_string());
                        }
                    }
                }
            }
            newest.insert(id.to_string(), (t, record));
        }
    }
    Ok(newest.into_values().map(|(_, r)| r).collect())
}

/// The `recommendations` table's rows for `items` (status `pending`).
pub fn recommendations_batch(items: &[Recommendation]) -> anyhow::Result<RecordBatch> {
    let schema = bulkhead_schemas::lake::recommendations_schema();
    let mut id = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut ruleset = StringBuilder::new();
    let mut scope = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut consumers = StringBuilder::new();
    let mut providers = StringBuilder::new();
    let mut services = StringBuilder::new();
    let mut flows = Int64Builder::new();
    let mut bytes = Int64Builder::new();
    let mut support = Float64Builder::new();
    let mut confidence = Float64Builder::new();
    let mut rationale = StringBuilder::new();
    let mut rule_json = StringBuilder::new();
    let mut created = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut status = StringBuilder::new();
    let join = |actors: &[bulkhead_schemas::policy::Actor]| {
        actors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    for r in items {
        id.append_value(&r.id);
        kind.append_value(r.kind.as_str());
        ruleset.append_value(&r.ruleset);
        for label in &r.scope {
            scope.keys().append_value(&label.key);
            scope.values().append_value(&label.value);
        }
        scope.append(true)?;
        consumers.append_value(join(&r.rule.consumers));
        providers.append_value(join(&r.rule.providers));
        services.append_value(
            r.rule
                .services
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        flows.append_value(r.evidence.flows as i64);
        bytes.append_value(r.evidence.bytes as i64);
        support.append_value(r.evidence.support);
        confidence.append_value(r.confidence);
        rationale.append_value(&r.rationale);
        rule_json.append_value(serde_json::to_string(r)?);
        created.append_value((r.created_unix_ns / 1000) as i64);
        status.append_value("pending");
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(kind.finish()),
        Arc::new(ruleset.finish()),
        Arc::new(scope.finish()),
        Arc::new(consumers.finish()),
        Arc::new(providers.finish()),
        Arc::new(services.finish()),
        Arc::new(flows.finish()),
        Arc::new(bytes.finish()),
        Arc::new(support.finish()),
        Arc::new(confidence.finish()),
        Arc::new(rationale.finish()),
        Arc::new(rule_json.finish()),
        Arc::new(created.finish()),
        Arc::new(status.finish()),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Replaces the `recommendations` table's content with `items` (each run is the current
/// set of candidates; accepted/rejected state lives in the control events).
pub async fn write_recommendations(lake: &Url, items: &[Recommendation]) -> anyhow::Result<i64> {
    let url = table_url(lake, "recommendations");
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let batch = recommendations_batch(items)?;
    let table = DeltaTable::try_from_url(url.clone())
        .await
        .with_context(|| format!("cannot open {url}"))?;
    let table = table
        .write(vec![batch])
        .with_save_mode(SaveMode::Overwrite)
        .await
        .with_context(|| format!("cannot write the recommendations table at {url}"))?;
    Ok(table.version().unwrap_or(0) as i64)
}
