//! The polars side: an edges DataFrame (the `edges` table's columns) summed per
//! (source, destination, port, protocol) over the window.

use std::collections::BTreeMap;
use std::net::IpAddr;

use polars::prelude::*;

/// One end of an aggregated edge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    Workload(String),
    Address(IpAddr),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Workload(id) => f.write_str(id),
            End::Address(ip) => ip.fmt(f),
        }
    }
}

/// Traffic from one end to another on one service, summed over the window.
#[derive(Clone, Debug)]
pub struct EdgeSum {
    pub src: End,
    pub dst: End,
    pub port: u32,
    pub protocol: u32,
    pub process: Option<String>,
    pub flows: u64,
    pub bytes: u64,
    /// Microseconds since the Unix epoch.
    pub first_seen_us: i64,
    pub last_seen_us: i64,
}

/// One row to build an edges frame from (tests, the generator, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct EdgeRow {
    pub src_workload: Option<String>,
    pub src_ip: Option<String>,
    pub dst_workload: Option<String>,
    pub dst_ip: Option<String>,
    pub dst_port: i32,
    pub protocol: i32,
    pub process: Option<String>,
    pub flows: i64,
    pub packets: i64,
    pub bytes: i64,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
}

/// The columns the recommender reads, named and typed as in `schemas::lake::edges_schema`
/// (timestamps as microseconds; labels come from the label state, not the frame).
pub fn edges_frame(rows: &[EdgeRow]) -> PolarsResult<DataFrame> {
    let text = |f: fn(&EdgeRow) -> &Option<String>| -> Vec<Option<&str>> {
        rows.iter().map(|r| f(r).as_deref()).collect()
    };
    let int32 = |f: fn(&EdgeRow) -> i32| -> Vec<i32> { rows.iter().map(f).collect() };
    let int64 = |f: fn(&EdgeRow) -> i64| -> Vec<i64> { rows.iter().map(f).collect() };
    DataFrame::new_infer_height(vec![
        Column::new("src_workload".into(), text(|r| &r.src_workload)),
        Column::new("src_ip".into(), text(|r| &r.src_ip)),
        Column::new("dst_workload".into(), text(|r| &r.dst_workload)),
        Column::new("dst_ip".into(), text(|r| &r.dst_ip)),
        Column::new("dst_port".into(), int32(|r| r.dst_port)),
        Column::new("protocol".into(), int32(|r| r.protocol)),
        Column::new("process".into(), text(|r| &r.process)),
        Column::new("flows".into(), int64(|r| r.flows)),
        Column::new("packets".into(), int64(|r| r.packets)),
        Column::new("bytes".into(), int64(|r| r.bytes)),
        Column::new("first_seen".into(), int64(|r| r.first_seen_us)),
        Column::new("last_seen".into(), int64(|r| r.last_seen_us)),
    ])
}

/// Sums the edges per (source, destination, port, protocol): a source or destination is
/// its workload id when known, else its address.
pub fn aggregate(edges: LazyFrame) -> PolarsResult<Vec<EdgeSum>> {
    let end = |workload: &str, ip: &str, name: &str| {
        when(col(workload).is_not_null())
            .then(lit("w:") + col(workload))
            .otherwise(lit("a:") + col(ip))
            .alias(name)
    };
    let summed = edges
        .select([
            end("src_workload", "src_ip", "src"),
            end("dst_workload", "dst_ip", "dst"),
            col("dst_port").cast(DataType::Int32),
            col("protocol").cast(DataType::Int32),
            col("process"),
            col("flows").cast(DataType::Int64),
            col("bytes").cast(DataType::Int64),
            col("first_seen").cast(DataType::Int64),
            col("last_seen").cast(DataType::Int64),
        ])
        .filter(col("src").is_not_null().and(col("dst").is_not_null()))
        .group_by([col("src"), col("dst"), col("dst_port"), col("protocol")])
        .agg([
            col("process").drop_nulls().first().alias("process"),
            col("flows").sum(),
            col("bytes").sum(),
            col("first_seen").min(),
            col("last_seen").max(),
        ])
        .sort(["src", "dst", "dst_port", "protocol"], Default::default())
        .collect()?;
    let src = summed.column("src")?.str()?;
    let dst = summed.column("dst")?.str()?;
    let port = summed.column("dst_port")?.i32()?;
    let protocol = summed.column("protocol")?.i32()?;
    let process = summed.column("process")?.str()?;
    let flows = summed.column("flows")?.i64()?;
    let bytes = summed.column("bytes")?.i64()?;
    let first = summed.column("first_seen")?.i64()?;
    let last = summed.column("last_seen")?.i64()?;
    let parse_end = |text: &str| -> Option<End> {
        let (kind, value) = text.split_at(2);
        match kind {
            "w:" => Some(End::Workload(value.to_string())),
            _ => value.parse().ok().map(End::Address),
        }
    };
    let mut out = Vec::with_capacity(summed.height());
    for i in 0..summed.height() {
        let (Some(s), Some(d)) = (
            src.get(i).and_then(parse_end),
            dst.get(i).and_then(parse_end),
        ) else {
            continue;
        };
        out.push(EdgeSum {
            src: s,
            dst: d,
            port: port.get(i).unwrap_or(0).max(0) as u32,
            protocol: protocol.get(i).unwrap_or(0).max(0) as u32,
            process: process.get(i).map(str::to_string),
            flows: flows.get(i).unwrap_or(0).max(0) as u64,
            bytes: bytes.get(i).unwrap_or(0).max(0) as u64,
            first_seen_us: first.get(i).unwrap_or(0),
            last_seen_us: last.get(i).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Workload labels as a map per workload id.
pub type WorkloadLabels = BTreeMap<String, BTreeMap<String, String>>;

/// Lays `assigned` (labels the policy gives workloads, e.g. the draft's: what analysts
/// set) over `seen` (the labels the edges carried), key by key, as enrichment lays the
/// active policy's labels over what hosts declare.
pub fn lay_labels_over(seen: &mut WorkloadLabels, assigned: &WorkloadLabels) {
    for (workload, labels) in assigned.iter().filter(|(_, labels)| !labels.is_empty()) {
        seen.entry(workload.clone())
            .or_default()
            .extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}
