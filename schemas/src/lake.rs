//! The lake's tables as Arrow schemas, and the columnar conversion of flow batches.
//!
//! Column types are the ones Delta Lake can store (signed integers, microsecond UTC
//! timestamps, strings, maps, lists), so that Spark, Trino, DuckDB, Polars and DataFusion
//! read the tables without casts. IP addresses are text; "unknown" is NULL, never "" or 0.
//!
//! [`FlowColumns`] appends [`FlowBatch`]es straight into Arrow column builders: no
//! intermediate copies of rows, and no allocation per row (addresses are formatted into
//! one reused buffer).

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Date32Builder, Int32Builder, Int64Builder, ListBuilder,
    PrimitiveBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::types::ArrowPrimitiveType;
use arrow_array::{ArrayRef, MapArray, RecordBatch, StructArray, UInt32Array};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow_select::take::take;

use crate::policy::STANDARD_LABEL_KEYS;
use crate::proto::{Direction, FlowBatch, FlowRecord, PolicyDecision};

/// A lake table: its name, schema and Hive-style partition columns.
#[derive(Clone, Copy, Debug)]
pub struct TableSpec {
    pub name: &'static str,
    pub partition_columns: &'static [&'static str],
    pub schema: fn() -> SchemaRef,
    pub description: &'static str,
}

/// Every lake table (the read models of the topics).
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "flows",
        partition_columns: &["date", "hour"],
        schema: flows_schema,
        description: "one row per evicted flow record, enriched with workloads, labels, DNS name and policy decision",
    },
    TableSpec {
        name: "edges",
        partition_columns: &["date"],
        schema: edges_schema,
        description: "the application-dependency map: per time window, source -> destination workload, port, protocol, process",
    },
    TableSpec {
        name: "workloads",
        partition_columns: &[],
        schema: workloads_schema,
        description: "hosts with their addresses, listening services and labels (from the inventory topic)",
    },
    TableSpec {
        name: "policy",
        partition_columns: &[],
        schema: policy_schema,
        description: "every provisioned policy version",
    },
    TableSpec {
        name: "recommendations",
        partition_columns: &[],
        schema: recommendations_schema,
        description: "candidate rules with their evidence",
    },
    TableSpec {
        name: "status",
        partition_columns: &[],
        schema: status_schema,
        description: "enforcer heartbeats: applied version, mode, rule count, errors",
    },
];

/// The spec of the table called `name`.
pub fn table(name: &str) -> Option<&'static TableSpec> {
    TABLES.iter().find(|t| t.name == name)
}

/// Object-store schemes a lake may live under (besides local directories and `file://`).
/// Credentials, region and endpoint come from the standard `AWS_*` environment variables
/// (`AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for S3-compatible servers).
pub const LAKE_OBJECT_STORE_SCHEMES: &[&str] = &["s3", "s3a"];

/// A `--lake` that cannot name a lake; says which and why.
#[derive(Debug, thiserror::Error)]
#[error("--lake {text:?}: {problem}")]
pub struct LakeUrlError {
    pub text: String,
    pub problem: String,
}

/// The lake root named by `--lake` as a directory URL (ending in `/`): a path (made
/// absolute against the working directory, without touching it), a `file://` URL, or an
/// object-store prefix such as `s3://bucket/lake`.
pub fn lake_url(text: &str) -> Result<url::Url, LakeUrlError> {
    let text = text.trim();
    let error = |problem: String| LakeUrlError {
        text: text.to_string(),
        problem,
    };
    if text.is_empty() {
        return Err(error(
            "empty: give a directory, a file:// URL or s3://bucket/prefix".into(),
        ));
    }
    let mut url = if text.contains("://") {
        let url = url::Url::parse(text).map_err(|e| error(format!("not a valid URL: {e}")))?;
        match url.scheme() {
            "file" => {}
            scheme if LAKE_OBJECT_STORE_SCHEMES.contains(&scheme) => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(error(format!(
                        "no bucket: expected {scheme}://bucket/prefix"
                    )));
                }
            }
            scheme => {
                return Err(error(format!(
                    "scheme {scheme:?} is not supported (local directories, file:// and {} are)",
                    LAKE_OBJECT_STORE_SCHEMES
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        url
    } else {
        let path = std::path::absolute(text).map_err(|e| error(e.to_string()))?;
        url::Url::from_directory_path(&path)
            .map_err(|()| error(format!("{} cannot be a directory URL", path.display())))?
    };
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// `<lake>/<name>/`: the URL of table `name` in the lake rooted at `lake`.
pub fn table_url(lake: &url::Url, name: &str) -> url::Url {
    let mut url = lake.clone();
    let path = format!("{}/{name}/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `map<string, string>` as arrow's `MapBuilder` produces it (and Parquet stores it).
pub fn labels_type() -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![
                Field::new("keys", DataType::Utf8, false),
                Field::new("values", DataType::Utf8, true),
            ])),
            false,
        )),
        false,
    )
}

/// `list<string>` as arrow's `ListBuilder` produces it.
pub fn string_list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn f(name: &str, data_type: DataType, nullable: bool) -> Field {
    Field::new(name, data_type, nullable)
}

/// The `flows` table. Partitioned by the UTC `date` and `hour` of `first_seen`.
pub fn flows_schema() -> SchemaRef {
    use DataType::*;
    let mut fields = vec![
        f("date", Date32, false),
        f("hour", Int32, false),
        f("host_id", Utf8, false),
        f("interface", Utf8, true),
        f("ifindex", Int32, false),
        f("direction", Utf8, false),
        f("ip_version", Int32, false),
        f("src_ip", Utf8, false),
        f("dst_ip", Utf8, false),
        f("src_port", Int32, false),
        f("dst_port", Int32, false),
        f("protocol", Int32, false),
        f("packets", Int64, false),
        f("bytes", Int64, false),
        f("tcp_flags", Int32, false),
        f("first_seen", ts(), false),
        f("last_seen", ts(), false),
        f("sampling_rate", Int32, false),
        f("pid", Int32, true),
        f("process_name", Utf8, true),
        f("executable", Utf8, true),
        f("cgroup_id", Int64, true),
        f("uid", Int32, true),
        f("closed", Boolean, false),
        f("local_is_server", Boolean, false),
        f("dns_name", Utf8, true),
        f("src_workload", Utf8, true),
        f("dst_workload", Utf8, true),
        f("src_labels", labels_type(), true),
        f("dst_labels", labels_type(), true),
        f("src_ip_lists", string_list_type(), true),
        f("dst_ip_lists", string_list_type(), true),
        f("policy_decision", Utf8, false),
        f("policy_version", Int64, true),
        f("agent_instance_id", Utf8, false),
        f("batch_seq", Int64, false),
    ];
    fields.extend(standard_label_columns().map(|name| f(&name, Utf8, true)));
    Arc::new(Schema::new(fields))
}

/// The `flows` columns holding each end's value of the standard label keys
/// ([`STANDARD_LABEL_KEYS`]), besides the full labels maps: `src_role`, `src_app`,
/// `src_env`, `src_loc`, then the same for `dst`. A column of a few distinct values reads
/// as a dictionary page and a few bits a row, where `label(src_labels, 'app')` must decode
/// every key and value of every map; the analytics engine answers `label(src_labels,
/// 'app')` from `src_app` when the table has it.
pub fn standard_label_columns() -> impl Iterator<Item = String> {
    ["src", "dst"]
        .into_iter()
        .flat_map(|end| STANDARD_LABEL_KEYS.map(|key| format!("{end}_{key}")))
}

/// The `flows` column holding the standard label `key` of the `end`'s map
/// (`src_labels` or `dst_labels`), if `key` is standard: `("src_labels", "app")` → `src_app`.
pub fn standard_label_column(map_column: &str, key: &str) -> Option<String> {
    let end = map_column.strip_suffix("_labels")?;
    ((end == "src" || end == "dst") && STANDARD_LABEL_KEYS.contains(&key))
        .then(|| format!("{end}_{key}"))
}

/// The `edges` table: the application-dependency map. Rows are partial aggregates per
/// (window, edge, ingest commit): readers `SUM(flows|packets|bytes)`, `MIN(first_seen)`,
/// `MAX(last_seen)` grouped by the key columns. `src_*` is the client, `dst_*` the server
/// (`dst_port` its port); a workload's address is NULL (the workload names it), an
/// unknown address has a NULL workload. `process` is the reporting end's process;
/// `reporter` is `dst` (the server's report, preferred) or `src` (the client's, when the
/// server is no known workload).
pub fn edges_schema() -> SchemaRef {
    use DataType::*;
    Arc::new(Schema::new(vec![
        f("date", Date32, false),
        f("window_start", ts(), false),
        f("window_end", ts(), false),
        f("src_workload", Utf8, true),
        f("src_ip", Utf8, true),
        f("dst_workload", Utf8, true),
        f("dst_ip", Utf8, true),
        f("src_labels", labels_type(), true),
        f("dst_labels", labels_type(), true),
        f("dst_port", Int32, false),
        f("protocol", Int32, false),
        f("process", Utf8, true),
        f("flows", Int64, false),
        f("packets", Int64, false),
        f("bytes", Int64, false),
        f("first_seen", ts(), false),
        f("last_seen", ts(), false),
        f("policy_decision", Utf8, false),
        f("reporter", Utf8, false),
    ]))
}

/// The `workloads` table: the latest inventory of each host and its effective labels.
pub fn workloads_schema() -> SchemaRef {
    use DataType::*;
    Arc::new(Schema::new(vec![
        f("workload_id", Utf8, false),
        f("hostname", Utf8, true),
        f("os", Utf8, true),
        f("agent_version", Utf8, true),
        f("addresses", string_list_type(), true),
        f("listening_ports", string_list_type(), true),
        f("labels", labels_type(), true),
        f("host_labels", labels_type(), true),
        f("enforcement_mode", Utf8, true),
        f("quarantined", Boolean, false),
        f("observed_at", ts(), false),
    ]))
}

/// The `policy` table: one row per provisioned version.
pub fn policy_schema() -> SchemaRef {
    use DataType::*;
    Arc::new(Schema::new(vec![
        f("version", Int64, false),
        f("parent_version", Int64, false),
        f("created_at", ts(), false),
        f("provisioned_by", Utf8, false),
        f("note", Utf8, true),
        f("content_sha256", Utf8, false),
        f("rulesets", Int32, false),
        f("rules", Int32, false),
        f("deny_rules", Int32, false),
        f("document_json", Utf8, false),
    ]))
}

/// The `recommendations` table.
pub fn recommendations_schema() -> SchemaRef {
    use DataType::*;
    Arc::new(Schema::new(vec![
        f("id", Utf8, false),
        f("kind", Utf8, false),
        f("ruleset", Utf8, false),
        f("scope", labels_type(), true),
        f("consumers", Utf8, false),
        f("providers", Utf8, false),
        f("services", Utf8, false),
        f("flows", Int64, false),
        f("bytes", Int64, false),
        f("support", Float64, false),
        f("confidence", Float64, false),
        f("rationale", Utf8, true),
        f("rule_json", Utf8, false),
        f("created_at", ts(), false),
        f("status", Utf8, false),
    ]))
}

/// The `status` table: enforcer heartbeats.
pub fn status_schema() -> SchemaRef {
    use DataType::*;
    Arc::new(Schema::new(vec![
        f("host_id", Utf8, false),
        f("at", ts(), false),
        f("state", Utf8, false),
        f("applied_version", Int64, false),
        f("mode", Utf8, false),
        f("quarantined", Boolean, false),
        f("rule_count", Int32, false),
        f("set_elements", Int32, false),
        f("last_error", Utf8, true),
        f("rejected_version", Int64, false),
        f("dropped_packets", Int64, false),
        f("potentially_blocked_packets", Int64, false),
        f("apply_duration_us", Int64, false),
    ]))
}

/// Text of a direction as the lake stores it.
pub fn direction_text(direction: i32) -> &'static str {
    match Direction::try_from(direction) {
        Ok(Direction::Ingress) => "ingress",
        Ok(Direction::Egress) => "egress",
        _ => "unspecified",
    }
}

/// Text of a policy decision as the lake stores it.
pub fn decision_text(decision: i32) -> &'static str {
    match PolicyDecision::try_from(decision) {
        Ok(PolicyDecision::Allowed) => "allowed",
        Ok(PolicyDecision::PotentiallyBlocked) => "potentially_blocked",
        Ok(PolicyDecision::Blocked) => "blocked",
        _ => "unknown",
    }
}

const NS_PER_US: u64 = 1_000;
const NS_PER_HOUR: i64 = 3_600 * 1_000_000_000;
const NS_PER_DAY: i64 = 24 * NS_PER_HOUR;

/// UTC date (days since epoch) and hour of a Unix-nanosecond instant: the partition of a
/// flow.
pub fn date_hour(unix_ns: u64) -> (i32, i32) {
    let ns = unix_ns.min(i64::MAX as u64) as i64;
    (
        ns.div_euclid(NS_PER_DAY) as i32,
        ns.div_euclid(NS_PER_HOUR).rem_euclid(24) as i32,
    )
}

fn micros(unix_ns: u64) -> i64 {
    (unix_ns / NS_PER_US).min(i64::MAX as u64) as i64
}

/// Column builders for the `flows` table. Append batches, then [`finish`](Self::finish)
/// into one `RecordBatch`; the builder is reset and can be reused.
pub struct FlowColumns {
    date: Date32Builder,
    hour: Int32Builder,
    host_id: StringBuilder,
    interface: StringBuilder,
    ifindex: Int32Builder,
    direction: StringBuilder,
    ip_version: Int32Builder,
    src_ip: StringBuilder,
    dst_ip: StringBuilder,
    src_port: Int32Builder,
    dst_port: Int32Builder,
    protocol: Int32Builder,
    packets: Int64Builder,
    bytes: Int64Builder,
    tcp_flags: Int32Builder,
    first_seen: TimestampMicrosecondBuilder,
    last_seen: TimestampMicrosecondBuilder,
    sampling_rate: Int32Builder,
    pid: Int32Builder,
    process_name: StringBuilder,
    executable: StringBuilder,
    cgroup_id: Int64Builder,
    uid: Int32Builder,
    closed: BooleanBuilder,
    local_is_server: BooleanBuilder,
    dns_name: StringBuilder,
    src_workload: StringBuilder,
    dst_workload: StringBuilder,
    src_ip_lists: ListBuilder<StringBuilder>,
    dst_ip_lists: ListBuilder<StringBuilder>,
    policy_decision: StringBuilder,
    policy_version: Int64Builder,
    agent_instance_id: StringBuilder,
    batch_seq: Int64Builder,
    /// `src_labels`, `dst_labels` and the [`standard_label_columns`].
    labels: LabelColumns,
    /// Reused buffer for formatting addresses.
    ip_text: String,
    rows: usize,
}

/// The label columns of a table's rows: `src_labels` and `dst_labels`, and for `flows`
/// the eight [`standard_label_columns`] too. Each row and end holds only a map number
/// until [`finish`](Self::finish), which builds the columns with arrow's `take` from
/// the maps' entries. A workload's map is shared by every row it is an end of, so its
/// keys, values and standard keys are worked out once per `finish`, not copied entry by
/// entry per row into ten builders (that was a third of building a `flows` row).
pub struct LabelColumns {
    /// Whether `finish` builds the standard label columns.
    standard_columns: bool,
    /// Every map's entries, one map after another.
    keys: StringBuilder,
    values: StringBuilder,
    /// Where each map's entries are in `keys` and `values`; map 0 is the empty map.
    maps: Vec<LabelMap>,
    /// The number in `maps` of each shared map, by address, with the map itself held so
    /// that its address names no other map before `finish`.
    shared: rustc_hash::FxHashMap<usize, (u32, Arc<Labels>)>,
    /// Each row's map number, at the source and the destination end.
    rows: [Vec<u32>; 2],
}

/// A map's entries in [`LabelColumns`]: `len` entries from `start`, and the entry of each
/// [`STANDARD_LABEL_KEYS`] key it has.
struct LabelMap {
    start: u32,
    len: u32,
    standard: [Option<u32>; 4],
}

const EMPTY_LABEL_MAP: LabelMap = LabelMap {
    start: 0,
    len: 0,
    standard: [None; 4],
};

/// The columns [`LabelColumns::finish`] builds.
pub struct LabelArrays {
    /// `src_labels`, `dst_labels`.
    pub maps: [ArrayRef; 2],
    /// The [`standard_label_columns`], in their order; none unless asked for.
    pub standard: Vec<ArrayRef>,
}

impl LabelColumns {
    /// Room for `rows` rows of `flows`: the two maps and the standard label columns.
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            standard_columns: true,
            keys: StringBuilder::new(),
            values: StringBuilder::new(),
            maps: vec![EMPTY_LABEL_MAP],
            shared: Default::default(),
            rows: [Vec::with_capacity(rows), Vec::with_capacity(rows)],
        }
    }

    /// Room for `rows` rows of a table with the two maps only (`edges`).
    pub fn maps_only(rows: usize) -> Self {
        Self {
            standard_columns: false,
            ..Self::with_capacity(rows)
        }
    }

    /// Appends a row's labels at `end` (0 source, 1 destination) that enrichment shares
    /// between rows: a map seen before, by address, is not copied again.
    pub fn append_shared(&mut self, end: usize, labels: &Arc<Labels>) {
        let address = Arc::as_ptr(labels) as usize;
        let map = match self.shared.get(&address) {
            Some(&(map, _)) => map,
            None => {
                let map = self.add_map(labels);
                self.shared.insert(address, (map, labels.clone()));
                map
            }
        };
        self.rows[end].push(map);
    }

    /// Appends a row's own labels at `end` (0 source, 1 destination).
    pub fn append_own(&mut self, end: usize, labels: &Labels) {
        let map = self.add_map(labels);
        self.rows[end].push(map);
    }

    /// Adds `labels`' entries; returns the map's number (0 for an empty map).
    fn add_map(&mut self, labels: &Labels) -> u32 {
        if labels.is_empty() {
            return 0;
        }
        let start = self.keys.len() as u32;
        let mut standard = [None; 4];
        for (entry, (key, value)) in (start..).zip(labels) {
            self.keys.append_value(key);
            self.values.append_value(value);
            if let Some(i) = STANDARD_LABEL_KEYS.iter().position(|k| k == key) {
                standard[i] = Some(entry);
            }
        }
        self.maps.push(LabelMap {
            start,
            len: labels.len() as u32,
            standard,
        });
        (self.maps.len() - 1) as u32
    }

    /// The columns of the rows appended since the last `finish`; the builder is reset.
    pub fn finish(&mut self) -> Result<LabelArrays, ArrowError> {
        // Reset first, so that an error leaves nothing of these rows behind either.
        let keys = self.keys.finish();
        let values = self.values.finish();
        let label_maps = std::mem::replace(&mut self.maps, vec![EMPTY_LABEL_MAP]);
        let rows_by_end = std::mem::take(&mut self.rows);
        self.shared.clear();
        let DataType::Map(entries_field, _) = labels_type() else {
            unreachable!("labels_type is a map")
        };
        let DataType::Struct(entry_fields) = entries_field.data_type().clone() else {
            unreachable!("a map's entries are a struct")
        };
        let map_column = |rows: &[u32]| -> Result<ArrayRef, ArrowError> {
            let entries: usize = rows
                .iter()
                .map(|&m| label_maps[m as usize].len as usize)
                .sum();
            if entries > i32::MAX as usize {
                return Err(ArrowError::ComputeError(format!(
                    "{entries} label map entries in one batch: more than a map column's offsets hold"
                )));
            }
            let mut entry_indices = Vec::with_capacity(entries);
            let mut offsets = Vec::with_capacity(rows.len() + 1);
            offsets.push(0i32);
            for &m in rows {
                let map = &label_maps[m as usize];
                entry_indices.extend(map.start..map.start + map.len);
                offsets.push(entry_indices.len() as i32);
            }
            let entry_indices = UInt32Array::from(entry_indices);
            let entries = StructArray::try_new(
                entry_fields.clone(),
                vec![
                    take(&keys, &entry_indices, None)?,
                    take(&values, &entry_indices, None)?,
                ],
                None,
            )?;
            // An empty map is NULL, as `MapBuilder::append(false)` leaves it.
            let nulls = NullBuffer::from_iter(rows.iter().map(|&m| m != 0));
            let nulls = (nulls.null_count() > 0).then_some(nulls);
            Ok(Arc::new(MapArray::try_new(
                entries_field.clone(),
                OffsetBuffer::new(offsets.into()),
                entries,
                nulls,
                false,
            )?))
        };
        let standard_column = |rows: &[u32], key: usize| {
            let value_indices: UInt32Array = rows
                .iter()
                .map(|&m| label_maps[m as usize].standard[key])
                .collect();
            take(&values, &value_indices, None)
        };
        let [src, dst] = &rows_by_end;
        let maps = [map_column(src)?, map_column(dst)?];
        let mut standard = vec![];
        if self.standard_columns {
            for rows in [src, dst] {
                for key in 0..STANDARD_LABEL_KEYS.len() {
                    standard.push(standard_column(rows, key)?);
                }
            }
        }
        Ok(LabelArrays { maps, standard })
    }
}

/// A record whose addresses are not 4 or 16 bytes long.
#[derive(Debug, thiserror::Error)]
#[error(
    "flow record {index} of batch {batch_seq} from host {host_id:?}: {field} has {len} bytes, not 4 (IPv4) or 16 (IPv6)"
)]
pub struct BadAddress {
    pub host_id: String,
    pub batch_seq: u64,
    pub index: usize,
    pub field: &'static str,
    pub len: usize,
}

/// A workload's labels.
pub type Labels = std::collections::BTreeMap<String, String>;

/// The labels enrichment found for a record's source and destination, shared with the
/// inventory that holds them rather than copied into every record (a copy of a label map
/// per record end was a fifth of ingest's decoding thread in allocations and frees).
pub type SharedLabels = [Option<Arc<Labels>>; 2];

/// A record's ends without shared labels.
pub static NO_SHARED_LABELS: SharedLabels = [None, None];

/// Checks that every address of `batch` is 4 or 16 bytes long (what the lake can store).
pub fn check_addresses(batch: &FlowBatch) -> Result<(), BadAddress> {
    for (index, record) in batch.records.iter().enumerate() {
        for (field, ip) in [("src_ip", &record.src_ip), ("dst_ip", &record.dst_ip)] {
            if ip.len() != 4 && ip.len() != 16 {
                return Err(BadAddress {
                    host_id: batch.host_id.clone(),
                    batch_seq: batch.batch_seq,
                    index,
                    field,
                    len: ip.len(),
                });
            }
        }
    }
    Ok(())
}

fn opt_str(builder: &mut StringBuilder, value: &str) {
    if value.is_empty() {
        builder.append_null();
    } else {
        builder.append_value(value);
    }
}

fn append_list(builder: &mut ListBuilder<StringBuilder>, items: &[String]) {
    if items.is_empty() {
        builder.append_null();
        return;
    }
    for item in items {
        builder.values().append_value(item);
    }
    builder.append(true);
}

/// A record to append to [`FlowColumns`]: the batch it came in (its host, agent and
/// sequence number) and the labels enrichment found for its ends.
#[derive(Clone, Copy)]
pub struct FlowRow<'a> {
    pub batch: &'a FlowBatch,
    pub record: &'a FlowRecord,
    pub shared: &'a SharedLabels,
}

impl<'a> FlowRow<'a> {
    /// Record `index` of `batch`, with `shared[index]` (none beyond `shared`).
    ///
    /// # Panics
    /// If `index` is not a record of `batch`.
    pub fn of(batch: &'a FlowBatch, index: usize, shared: &'a [SharedLabels]) -> Self {
        Self {
            batch,
            record: &batch.records[index],
            shared: shared.get(index).unwrap_or(&NO_SHARED_LABELS),
        }
    }
}

/// Rows [`FlowColumns::append_checked_rows`] appends column by column: few enough that
/// their records stay in the CPU's cache from the first column to the last.
pub const APPEND_CHUNK: usize = 256;

/// Appends `value` of each of `rows` (at most [`APPEND_CHUNK`]) to `builder`, as one slice.
fn append_each<T: ArrowPrimitiveType>(
    builder: &mut PrimitiveBuilder<T>,
    rows: &[FlowRow<'_>],
    value: impl Fn(&FlowRow<'_>) -> T::Native,
) {
    let mut values = [T::Native::default(); APPEND_CHUNK];
    for (slot, row) in values.iter_mut().zip(rows) {
        *slot = value(row);
    }
    builder.append_slice(&values[..rows.len()]);
}

/// Appends `value` of each of `rows`' records to `builder`, NULL where it is `None`.
fn append_each_option<T: ArrowPrimitiveType>(
    builder: &mut PrimitiveBuilder<T>,
    rows: &[FlowRow<'_>],
    value: impl Fn(&FlowRecord) -> Option<T::Native>,
) {
    for row in rows {
        builder.append_option(value(row.record));
    }
}

/// Appends `flag` of each of `rows`' records (at most [`APPEND_CHUNK`]) to `builder`, as
/// one slice.
fn append_each_flag(
    builder: &mut BooleanBuilder,
    rows: &[FlowRow<'_>],
    flag: impl Fn(&FlowRecord) -> bool,
) {
    let mut flags = [false; APPEND_CHUNK];
    for (slot, row) in flags.iter_mut().zip(rows) {
        *slot = flag(row.record);
    }
    builder.append_slice(&flags[..rows.len()]);
}

/// Appends a text field of each of `rows`' records to `builder`, NULL where empty.
fn append_each_text(
    builder: &mut StringBuilder,
    rows: &[FlowRow<'_>],
    text: impl Fn(&FlowRecord) -> &String,
) {
    for row in rows {
        opt_str(builder, text(row.record));
    }
}

impl Default for FlowColumns {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl FlowColumns {
    /// Builders with room for `rows` rows (strings get a guessed average length).
    pub fn with_capacity(rows: usize) -> Self {
        let s = |avg: usize| StringBuilder::with_capacity(rows, rows * avg);
        Self {
            date: Date32Builder::with_capacity(rows),
            hour: Int32Builder::with_capacity(rows),
            host_id: s(16),
            interface: s(8),
            ifindex: Int32Builder::with_capacity(rows),
            direction: s(7),
            ip_version: Int32Builder::with_capacity(rows),
            src_ip: s(14),
            dst_ip: s(14),
            src_port: Int32Builder::with_capacity(rows),
            dst_port: Int32Builder::with_capacity(rows),
            protocol: Int32Builder::with_capacity(rows),
            packets: Int64Builder::with_capacity(rows),
            bytes: Int64Builder::with_capacity(rows),
            tcp_flags: Int32Builder::with_capacity(rows),
            first_seen: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            last_seen: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            sampling_rate: Int32Builder::with_capacity(rows),
            pid: Int32Builder::with_capacity(rows),
            process_name: s(8),
            executable: s(16),
            cgroup_id: Int64Builder::with_capacity(rows),
            uid: Int32Builder::with_capacity(rows),
            closed: BooleanBuilder::with_capacity(rows),
            local_is_server: BooleanBuilder::with_capacity(rows),
            dns_name: s(8),
            src_workload: s(0),
            dst_workload: s(0),
            src_ip_lists: ListBuilder::new(StringBuilder::new()),
            dst_ip_lists: ListBuilder::new(StringBuilder::new()),
            policy_decision: s(7),
            policy_version: Int64Builder::with_capacity(rows),
            agent_instance_id: s(16),
            batch_seq: Int64Builder::with_capacity(rows),
            labels: LabelColumns::with_capacity(rows),
            ip_text: String::with_capacity(48),
            rows: 0,
        }
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends every record of `batch`. A record with a malformed address rejects the
    /// whole batch, before anything is appended, so the columns never hold half a batch.
    pub fn append_batch(&mut self, batch: &FlowBatch) -> Result<(), BadAddress> {
        self.append_enriched(batch, &[])
    }

    /// [`Self::append_batch`] with the labels enrichment found for the records' ends
    /// (`shared[i]` for record `i`; a record beyond `shared` has none): they stand for a
    /// record's own empty label maps.
    pub fn append_enriched(
        &mut self,
        batch: &FlowBatch,
        shared: &[SharedLabels],
    ) -> Result<(), BadAddress> {
        check_addresses(batch)?;
        let rows: Vec<FlowRow<'_>> = (0..batch.records.len())
            .map(|index| FlowRow::of(batch, index, shared))
            .collect();
        self.append_checked_rows(&rows);
        Ok(())
    }

    /// Appends `rows`, whose addresses were checked ([`check_addresses`]), in their
    /// order: rows can come from any batches in any order, e.g. the order they are
    /// written to a file in.
    ///
    /// Each chunk of [`APPEND_CHUNK`] rows is appended one column after another, so that
    /// the 44 columns' buffers are written one at a time, each as one sequential run;
    /// appended a row at a time, every row wrote a little into each of them, more
    /// streams than the CPU's prefetchers follow.
    pub fn append_checked_rows(&mut self, rows: &[FlowRow<'_>]) {
        for chunk in rows.chunks(APPEND_CHUNK) {
            self.append_chunk(chunk);
        }
    }

    fn append_chunk(&mut self, rows: &[FlowRow<'_>]) {
        let (mut dates, mut hours) = ([0; APPEND_CHUNK], [0; APPEND_CHUNK]);
        for ((date, hour), row) in dates.iter_mut().zip(&mut hours).zip(rows) {
            (*date, *hour) = date_hour(row.record.first_seen_unix_ns);
        }
        self.date.append_slice(&dates[..rows.len()]);
        self.hour.append_slice(&hours[..rows.len()]);
        for row in rows {
            let host_id = if row.record.host_id.is_empty() {
                &row.batch.host_id
            } else {
                &row.record.host_id
            };
            self.host_id.append_value(host_id);
        }
        append_each_text(&mut self.interface, rows, |r| &r.interface);
        append_each(&mut self.ifindex, rows, |row| row.record.ifindex as i32);
        for row in rows {
            self.direction
                .append_value(direction_text(row.record.direction));
        }
        append_each(&mut self.ip_version, rows, |row| {
            row.record.ip_version as i32
        });
        // In file order a source address repeats row after row: written once per run.
        let mut written: Option<&[u8]> = None;
        for row in rows {
            if written != Some(&row.record.src_ip) {
                crate::ip::write_text(&row.record.src_ip, &mut self.ip_text);
                written = Some(&row.record.src_ip);
            }
            self.src_ip.append_value(&self.ip_text);
        }
        for row in rows {
            crate::ip::write_text(&row.record.dst_ip, &mut self.ip_text);
            self.dst_ip.append_value(&self.ip_text);
        }
        append_each(&mut self.src_port, rows, |row| row.record.src_port as i32);
        append_each(&mut self.dst_port, rows, |row| row.record.dst_port as i32);
        append_each(&mut self.protocol, rows, |row| row.record.protocol as i32);
        append_each(&mut self.packets, rows, |row| {
            row.record.packets.min(i64::MAX as u64) as i64
        });
        append_each(&mut self.bytes, rows, |row| {
            row.record.bytes.min(i64::MAX as u64) as i64
        });
        append_each(&mut self.tcp_flags, rows, |row| row.record.tcp_flags as i32);
        append_each(&mut self.first_seen, rows, |row| {
            micros(row.record.first_seen_unix_ns)
        });
        append_each(&mut self.last_seen, rows, |row| {
            micros(row.record.last_seen_unix_ns)
        });
        append_each(&mut self.sampling_rate, rows, |row| {
            row.record.sampling_rate.max(1) as i32
        });
        append_each_option(&mut self.pid, rows, |r| {
            (r.pid != 0).then_some(r.pid as i32)
        });
        append_each_text(&mut self.process_name, rows, |r| &r.process_name);
        append_each_text(&mut self.executable, rows, |r| &r.executable);
        // cgroup ids are 64-bit kernfs ids; stored bit for bit in a signed column.
        append_each_option(&mut self.cgroup_id, rows, |r| {
            (r.cgroup_id != 0).then_some(r.cgroup_id as i64)
        });
        append_each_option(&mut self.uid, rows, |r| {
            (r.pid != 0).then_some(r.uid as i32)
        });
        append_each_flag(&mut self.closed, rows, |r| r.closed);
        append_each_flag(&mut self.local_is_server, rows, |r| r.local_is_server);
        append_each_text(&mut self.dns_name, rows, |r| &r.remote_dns_name);
        append_each_text(&mut self.src_workload, rows, |r| &r.src_workload);
        append_each_text(&mut self.dst_workload, rows, |r| &r.dst_workload);
        for end in 0..2 {
            for row in rows {
                match &row.shared[end] {
                    Some(labels) => self.labels.append_shared(end, labels),
                    None => {
                        let own = [&row.record.src_labels, &row.record.dst_labels][end];
                        self.labels.append_own(end, own)
                    }
                }
            }
        }
        for row in rows {
            append_list(&mut self.src_ip_lists, &row.record.src_ip_lists);
        }
        for row in rows {
            append_list(&mut self.dst_ip_lists, &row.record.dst_ip_lists);
        }
        for row in rows {
            self.policy_decision
                .append_value(decision_text(row.record.policy_decision));
        }
        append_each_option(&mut self.policy_version, rows, |r| {
            (r.policy_version != 0).then_some(r.policy_version as i64)
        });
        for row in rows {
            self.agent_instance_id
                .append_value(&row.batch.agent_instance_id);
        }
        append_each(&mut self.batch_seq, rows, |row| row.batch.batch_seq as i64);
        self.rows += rows.len();
    }

    /// The appended rows as a `RecordBatch` of [`flows_schema`]; the builders are reset.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        // Every builder is reset, even when the label columns fail.
        let labels = self.labels.finish();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.date.finish()),
            Arc::new(self.hour.finish()),
            Arc::new(self.host_id.finish()),
            Arc::new(self.interface.finish()),
            Arc::new(self.ifindex.finish()),
            Arc::new(self.direction.finish()),
            Arc::new(self.ip_version.finish()),
            Arc::new(self.src_ip.finish()),
            Arc::new(self.dst_ip.finish()),
            Arc::new(self.src_port.finish()),
            Arc::new(self.dst_port.finish()),
            Arc::new(self.protocol.finish()),
            Arc::new(self.packets.finish()),
            Arc::new(self.bytes.finish()),
            Arc::new(self.tcp_flags.finish()),
            Arc::new(self.first_seen.finish()),
            Arc::new(self.last_seen.finish()),
            Arc::new(self.sampling_rate.finish()),
            Arc::new(self.pid.finish()),
            Arc::new(self.process_name.finish()),
            Arc::new(self.executable.finish()),
            Arc::new(self.cgroup_id.finish()),
            Arc::new(self.uid.finish()),
            Arc::new(self.closed.finish()),
            Arc::new(self.local_is_server.finish()),
            Arc::new(self.dns_name.finish()),
            Arc::new(self.src_workload.finish()),
            Arc::new(self.dst_workload.finish()),
        ];
        let after_labels: [ArrayRef; 6] = [
            Arc::new(self.src_ip_lists.finish()),
            Arc::new(self.dst_ip_lists.finish()),
            Arc::new(self.policy_decision.finish()),
            Arc::new(self.policy_version.finish()),
            Arc::new(self.agent_instance_id.finish()),
            Arc::new(self.batch_seq.finish()),
        ];
        self.rows = 0;
        let labels = labels?;
        columns.extend(labels.maps);
        columns.extend(after_labels);
        columns.extend(labels.standard);
        RecordBatch::try_new(flows_schema(), columns)
    }
}

/// Converts flow batches into one `RecordBatch` of the `flows` schema.
pub fn flow_batches_to_arrow<'a>(
    batches: impl IntoIterator<Item = &'a FlowBatch>,
) -> Result<RecordBatch, FlowConversionError> {
    let batches: Vec<&FlowBatch> = batches.into_iter().collect();
    let rows = batches.iter().map(|b| b.records.len()).sum();
    let mut columns = FlowColumns::with_capacity(rows);
    for batch in batches {
        columns.append_batch(batch)?;
    }
    Ok(columns.finish()?)
}

/// Why flow batches could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum FlowConversionError {
    #[error(transparent)]
    BadAddress(#[from] BadAddress),
    #[error("building the Arrow batch failed (a bug in bulkhead-schemas): {0}")]
    Arrow(#[from] ArrowError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};

    #[test]
    fn lake_urls_name_directories_and_object_store_prefixes() {
        assert_eq!(lake_url("/var/lake").unwrap().as_str(), "file:///var/lake/");
        assert_eq!(
            lake_url("file:///tmp/x").unwrap().as_str(),
            "file:///tmp/x/"
        );
        let s3 = lake_url("s3://bucket/team/lake").unwrap();
        assert_eq!(s3.as_str(), "s3://bucket/team/lake/");
        assert_eq!(
            table_url(&s3, "flows").as_str(),
            "s3://bucket/team/lake/flows/"
        );
        assert_eq!(
            table_url(&lake_url("s3://bucket").unwrap(), "edges").as_str(),
            "s3://bucket/edges/"
        );
        for (bad, problem) in [
            ("", "empty"),
            ("gs://b/lake", "scheme \"gs\" is not supported"),
            ("s3:///lake", "no bucket"),
            ("s3://", "no bucket"),
        ] {
            let e = lake_url(bad).unwrap_err().to_string();
            assert!(e.contains(problem), "{bad:?}: {e}");
        }
    }

    fn record(i: u32) -> FlowRecord {
        FlowRecord {
            host_id: "h1".into(),
            interface: "eth0".into(),
            direction: Direction::Egress as i32,
            ip_version: 4,
            src_ip: vec![10, 0, 0, 1],
            dst_ip: vec![10, 0, 0, 2],
            src_port: 40000 + i,
            dst_port: 443,
            protocol: 6,
            packets: 3,
            bytes: 180,
            first_seen_unix_ns: 1_764_115_200_000_000_000 + u64::from(i), // 2025-11-26T00:00Z
            last_seen_unix_ns: 1_764_115_201_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn every_table_schema_builds_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for table in TABLES {
            let schema = (table.schema)();
            for column in table.partition_columns {
                assert!(
                    schema.field_with_name(column).is_ok(),
                    "{}.{column}",
                    table.name
                );
            }
            assert!(names.insert(table.name), "duplicate table {}", table.name);
        }
    }

    #[test]
    fn each_row_gets_its_own_addresses_as_text_in_runs_and_out_of_them() {
        let sources: [&[u8]; 6] = [
            &[10, 0, 0, 1],
            &[10, 0, 0, 1],
            &[192, 168, 100, 254],
            &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            &[10, 0, 0, 1],
            &[10, 0, 0, 1],
        ];
        let batch = FlowBatch {
            records: sources
                .iter()
                .enumerate()
                .map(|(i, src)| FlowRecord {
                    src_ip: src.to_vec(),
                    dst_ip: sources[5 - i].to_vec(),
                    ..record(i as u32)
                })
                .collect(),
            ..Default::default()
        };
        let rb = flow_batches_to_arrow(std::slice::from_ref(&batch)).unwrap();
        for (column, ends) in [
            ("src_ip", sources),
            ("dst_ip", {
                let mut reversed = sources;
                reversed.reverse();
                reversed
            }),
        ] {
            let texts = rb.column_by_name(column).unwrap().as_string::<i32>();
            for (row, bytes) in ends.iter().enumerate() {
                let expected = crate::ip::from_bytes(bytes).unwrap().to_string();
                assert_eq!(texts.value(row), expected, "{column} of row {row}");
            }
        }
    }

    #[test]
    fn converts_records_with_nulls_for_unknowns() {
        let mut with_process = record(1);
        with_process.pid = 42;
        with_process.process_name = "curl".into();
        with_process.src_labels.insert("app".into(), "crm".into());
        with_process.remote_dns_name = "api.example".into();
        let batch = FlowBatch {
            host_id: "h1".into(),
            agent_instance_id: "a".into(),
            batch_seq: 7,
            records: vec![record(0), with_process],
            ..Default::default()
        };
        let rb = flow_batches_to_arrow([&batch]).unwrap();
        assert_eq!(rb.num_rows(), 2);
        assert_eq!(rb.schema(), flows_schema());
        let col = |name: &str| rb.column_by_name(name).unwrap().clone();
        assert_eq!(col("src_ip").as_string::<i32>().value(0), "10.0.0.1");
        assert_eq!(
            col("date")
                .as_primitive::<arrow_array::types::Date32Type>()
                .value(0),
            20418
        );
        assert_eq!(col("hour").as_primitive::<Int32Type>().value(0), 0);
        assert!(col("pid").is_null(0));
        assert_eq!(col("pid").as_primitive::<Int32Type>().value(1), 42);
        assert!(col("process_name").is_null(0));
        assert!(col("dns_name").is_null(0), "no name: NULL");
        assert_eq!(col("dns_name").as_string::<i32>().value(1), "api.example");
        assert!(col("src_labels").is_null(0) && !col("src_labels").is_null(1));
        assert_eq!(
            col("src_app").as_string::<i32>().value(1),
            "crm",
            "standard key"
        );
        for column in ["src_app", "src_role", "dst_app"] {
            assert!(col(column).is_null(0), "{column}: no such label, NULL");
        }
        assert!(col("src_role").is_null(1) && col("dst_app").is_null(1));
        assert_eq!(col("batch_seq").as_primitive::<Int64Type>().value(1), 7);
        assert_eq!(
            col("policy_decision").as_string::<i32>().value(0),
            "unknown"
        );
    }

    #[test]
    fn standard_label_columns_are_named_by_end_and_key() {
        assert_eq!(
            standard_label_column("src_labels", "app").as_deref(),
            Some("src_app")
        );
        assert_eq!(
            standard_label_column("dst_labels", "loc").as_deref(),
            Some("dst_loc")
        );
        assert_eq!(
            standard_label_column("src_labels", "team"),
            None,
            "custom key"
        );
        assert_eq!(
            standard_label_column("labels", "app"),
            None,
            "not a flow end"
        );
        let schema = flows_schema();
        let mut columns = standard_label_columns();
        for end in ["src", "dst"] {
            for key in STANDARD_LABEL_KEYS {
                let column = standard_label_column(&format!("{end}_labels"), key).unwrap();
                assert!(schema.field_with_name(&column).is_ok(), "{column}");
                assert_eq!(columns.next(), Some(column), "builder order");
            }
        }
    }

    #[test]
    fn shared_label_maps_give_the_columns_their_own_copies_would() {
        let maps: Vec<Labels> = vec![
            [
                ("role", "web"),
                ("app", "crm"),
                ("env", "prod"),
                ("loc", "par"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            [("team", "blue"), ("app", "erp")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            [("zone", "dmz")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            Labels::new(),
        ];
        let shared: Vec<Arc<Labels>> = maps.iter().cloned().map(Arc::new).collect();
        // Every pair of maps, each map on many rows and at both ends.
        let pairs: Vec<(usize, usize)> = (0..3)
            .flat_map(|_| (0..maps.len()).flat_map(|s| (0..maps.len()).map(move |d| (s, d))))
            .collect();
        let records = |own: bool| -> Vec<FlowRecord> {
            pairs
                .iter()
                .enumerate()
                .map(|(i, &(s, d))| {
                    let mut r = record(i as u32);
                    if own {
                        r.src_labels = maps[s].clone();
                        r.dst_labels = maps[d].clone();
                    }
                    r
                })
                .collect()
        };
        let owned = FlowBatch {
            records: records(true),
            ..Default::default()
        };
        let bare = FlowBatch {
            records: records(false),
            ..Default::default()
        };
        let ends: Vec<SharedLabels> = pairs
            .iter()
            .map(|&(s, d)| [Some(shared[s].clone()), Some(shared[d].clone())])
            .collect();
        let mut columns = FlowColumns::default();
        columns.append_batch(&owned).unwrap();
        let expected = columns.finish().unwrap();
        // Twice through the same builder: what it worked out for a map before `finish`
        // must not leak into the next batch.
        for _ in 0..2 {
            columns.append_enriched(&bare, &ends).unwrap();
            assert_eq!(columns.finish().unwrap(), expected);
        }
    }

    /// The label columns as arrow's own builders make them, entry by entry.
    fn labels_built_by_arrow(ends: &[[&Labels; 2]]) -> (Vec<ArrayRef>, Vec<ArrayRef>) {
        use arrow_array::builder::MapBuilder;
        let mut maps = vec![];
        let mut standard = vec![];
        for end in 0..2 {
            let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
            let mut columns: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
            for row in ends {
                for (key, value) in row[end] {
                    map.keys().append_value(key);
                    map.values().append_value(value);
                }
                map.append(!row[end].is_empty()).unwrap();
                for (column, key) in columns.iter_mut().zip(STANDARD_LABEL_KEYS) {
                    column.append_option(row[end].get(key));
                }
            }
            maps.push(Arc::new(map.finish()) as ArrayRef);
            standard.extend(columns.iter_mut().map(|c| Arc::new(c.finish()) as ArrayRef));
        }
        (maps, standard)
    }

    #[test]
    fn label_columns_equal_what_arrows_builders_make_of_the_same_maps() {
        let role_app: Labels = [("app", "crm"), ("role", "web"), ("zone", "a")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let loc: Labels = [("loc", "par")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let empty = Labels::new();
        let shared = Arc::new(role_app.clone());
        let rows: Vec<[&Labels; 2]> = vec![
            [&role_app, &loc],
            [&empty, &role_app],
            [&loc, &empty],
            [&empty, &empty],
            [&role_app, &role_app],
        ];
        let batch = FlowBatch {
            records: (0..rows.len() as u32)
                .map(|i| {
                    let mut r = record(i);
                    r.src_labels = rows[i as usize][0].clone();
                    r.dst_labels = rows[i as usize][1].clone();
                    r
                })
                .collect(),
            ..Default::default()
        };
        // Row 4's ends share one map; the others carry their own.
        let ends: Vec<SharedLabels> = (0..rows.len())
            .map(|i| match i {
                4 => [Some(shared.clone()), Some(shared.clone())],
                _ => [None, None],
            })
            .collect();
        let mut columns = FlowColumns::default();
        columns.append_enriched(&batch, &ends).unwrap();
        let built = columns.finish().unwrap();
        let (maps, standard) = labels_built_by_arrow(&rows);
        for (name, expected) in ["src_labels", "dst_labels"].iter().zip(&maps) {
            let column = built.column_by_name(name).unwrap();
            assert_eq!(column.data_type(), &labels_type(), "{name}");
            assert_eq!(column, expected, "{name}");
        }
        for (name, expected) in standard_label_columns().zip(&standard) {
            assert_eq!(built.column_by_name(&name).unwrap(), expected, "{name}");
        }
        // Without the standard columns (the `edges` table), the same maps.
        let mut labels = LabelColumns::maps_only(0);
        for row in &rows {
            labels.append_own(0, row[0]);
            labels.append_shared(1, &Arc::new(row[1].clone()));
        }
        let arrays = labels.finish().unwrap();
        assert!(arrays.standard.is_empty());
        assert_eq!(arrays.maps.as_slice(), maps.as_slice());
    }

    #[test]
    fn shared_labels_stand_for_a_records_empty_label_maps() {
        let mut own = record(1);
        own.src_labels = [("app".to_string(), "own".to_string())].into();
        let batch = FlowBatch {
            records: vec![own, record(2), record(3)],
            ..Default::default()
        };
        let crm: Arc<Labels> = Arc::new([("app".to_string(), "crm".to_string())].into());
        // Record 0 keeps its own source labels, record 1 takes the shared ones of its
        // destination, record 2 is beyond `shared`.
        let shared: Vec<SharedLabels> = vec![[None, Some(crm.clone())], [None, Some(crm)]];
        let mut columns = FlowColumns::default();
        columns.append_enriched(&batch, &shared).unwrap();
        let rows = columns.finish().unwrap();
        let text = |name: &str, i: usize| {
            let column = rows.column_by_name(name).unwrap().as_string::<i32>();
            arrow_array::Array::is_valid(column, i).then(|| column.value(i).to_string())
        };
        assert_eq!(text("src_app", 0).as_deref(), Some("own"));
        assert_eq!(text("dst_app", 0).as_deref(), Some("crm"));
        assert_eq!(text("dst_app", 1).as_deref(), Some("crm"));
        assert_eq!(text("dst_app", 2), None);
        let dst_labels = rows.column_by_name("dst_labels").unwrap().as_map();
        assert_eq!(dst_labels.value_length(1), 1);
        assert_eq!(dst_labels.value_length(2), 0);
    }

    #[test]
    fn a_bad_address_rejects_the_whole_batch_and_names_it() {
        let mut bad = record(1);
        bad.dst_ip = vec![1, 2, 3];
        let batch = FlowBatch {
            host_id: "h9".into(),
            batch_seq: 3,
            records: vec![record(0), bad],
            ..Default::default()
        };
        let mut columns = FlowColumns::default();
        let err = columns.append_batch(&batch).unwrap_err();
        assert_eq!(columns.len(), 0, "nothing of the bad batch was appended");
        let message = err.to_string();
        assert!(
            message.contains("record 1") && message.contains("dst_ip") && message.contains("h9"),
            "{message}"
        );
    }

    #[test]
    fn partitions_are_utc_date_and_hour() {
        assert_eq!(date_hour(0), (0, 0));
        assert_eq!(
            date_hour(NS_PER_DAY as u64 + 5 * NS_PER_HOUR as u64 + 1),
            (1, 5)
        );
    }
}
