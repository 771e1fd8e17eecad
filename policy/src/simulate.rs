//! Simulation: replay observed flows against the draft and compare with the active
//! policy, per app. Flows come from the lake's `flows` table (polars scans the files
//! deltalake lists), one row per direction of a connection per reporting end; each
//! connection is counted once, from the server's record of its requests (or the client's
//! when the server is no workload).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bulkhead_schemas::policy::{Decider, Decision, Endpoint, PolicyDocument};
use polars::prelude::*;
use serde::Serialize;

/// Connections of one kind, counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub src_workload: Option<String>,
    pub src_ip: IpAddr,
    pub dst_workload: Option<String>,
    pub dst_ip: IpAddr,
    pub port: u32,
    pub protocol: u32,
    pub flows: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Example {
    pub src: String,
    pub dst: String,
    pub port: u32,
    pub protocol: u32,
    pub flows: u64,
    pub now: &'static str,
    pub draft: &'static str,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AppImpact {
    pub app: String,
    pub flows: u64,
    /// Allowed (or unjudged) now, blocked or potentially blocked under the draft.
    pub newly_blocked: u64,
    /// Potentially blocked or blocked now, allowed under the draft.
    pub newly_allowed: u64,
    pub examples: Vec<Example>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    pub flows: u64,
    pub newly_blocked: u64,
    pub newly_allowed: u64,
    /// Flows by the draft's decision.
    pub draft_decisions: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Simulation {
    pub per_app: Vec<AppImpact>,
    pub totals: Totals,
}

const EXAMPLES: usize = 5;

fn endpoint<'a>(workload: &'a Option<String>, ip: IpAddr) -> Endpoint<'a> {
    Endpoint {
        ip,
        workload: workload.as_deref(),
    }
}

fn restricted(d: Decision) -> bool {
    matches!(d, Decision::Blocked | Decision::PotentiallyBlocked)
}

/// Judges every flow under `active` (none: `unknown`) and `draft`.
pub fn simulate(
    active: Option<&PolicyDocument>,
    draft: &PolicyDocument,
    flows: &[FlowKey],
) -> Simulation {
    let now = active.map(Decider::new);
    let next = Decider::new(draft);
    // Looked up for every flow: a scan of the draft's workloads each time cost a third of
    // simulating an estate of thousands.
    let mut app_by_workload: HashMap<&str, Option<&str>> = HashMap::new();
    for w in &draft.workloads {
        app_by_workload
            .entry(&w.workload_id)
            .or_insert(w.labels.get("app").map(String::as_str));
    }
    let app_of = |workload: &Option<String>| -> Option<String> {
        let id = workload.as_deref()?;
        app_by_workload
            .get(id)
            .copied()
            .flatten()
            .map(str::to_string)
    };
    let mut apps: BTreeMap<String, AppImpact> = BTreeMap::new();
    let mut totals = Totals::default();
    for f in flows {
        let (src, dst) = (
            endpoint(&f.src_workload, f.src_ip),
            endpoint(&f.dst_workload, f.dst_ip),
        );
        let before = now.as_ref().map_or(Decision::Unknown, |d| {
            d.decide(src, dst, f.protocol, f.port)
        });
        let after = next.decide(src, dst, f.protocol, f.port);
        let app = app_of(&f.dst_workload)
            .or_else(|| app_of(&f.src_workload))
            .unwrap_or_else(|| "(unlabeled)".into());
        let impact = apps.entry(app.clone()).or_insert_with(|| AppImpact {
            app,
            ..Default::default()
        });
        impact.flows += f.flows;
        totals.flows += f.flows;
        *totals.draft_decisions.entry(after.as_str()).or_default() += f.flows;
        let changed = if !restricted(before) && restricted(after) {
            impact.newly_blocked += f.flows;
            totals.newly_blocked += f.flows;
            true
        } else if restricted(before) && after == Decision::Allowed {
            impact.newly_allowed += f.flows;
            totals.newly_allowed += f.flows;
            true
        } else {
            false
        };
        if changed && impact.examples.len() < EXAMPLES {
            let name = |w: &Option<String>, ip: IpAddr| w.clone().unwrap_or_else(|| ip.to_string());
            impact.examples.push(Example {
                src: name(&f.src_workload, f.src_ip),
                dst: name(&f.dst_workload, f.dst_ip),
                port: f.port,
                protocol: f.protocol,
                flows: f.flows,
                now: before.as_str(),
                draft: after.as_str(),
            });
        }
    }
    Simulation {
        per_app: apps.into_values().collect(),
        totals,
    }
}

/// Connections of the `flows` table first seen at or after `since_us`, counted once each
/// (see the module documentation) and grouped by endpoints and service.
pub async fn load_flows(lake: &url::Url, since_us: i64) -> anyhow::Result<Vec<FlowKey>> {
    let url = bulkhead_recommender::lake::table_url(lake, "flows");
    // Whole days before `since` cannot hold a flow first seen after it: skip their files
    // (an object-store lake then fetches only the days asked for).
    let since_date = chrono::DateTime::from_timestamp_micros(since_us)
        .map(|t| t.date_naive().format("%Y-%m-%d").to_string());
    let files = bulkhead_recommender::lake::table_files_where(&url, |path| {
        let date = path
            .split('/')
            .find_map(|segment| segment.strip_prefix("date="));
        match (date, since_date.as_deref()) {
            (Some(date), Some(since)) => date >= since,
            _ => true,
        }
    })
    .await?;
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let frames = files
        .iter()
        .map(|f| LazyFrame::scan_parquet(PlRefPath::new(f.as_str()), ScanArgsParquet::default()))
        .collect::<PolarsResult<Vec<_>>>()?;
    let flows = concat(frames, UnionArgs::default())?
        .filter(col("first_seen").cast(DataType::Int64).gt_eq(lit(since_us)));
    Ok(flow_keys(flows)?)
}

/// Groups a flows frame (the `flows` table's columns) into [`FlowKey`]s.
///
/// A flows row is one direction of a connection as one end saw it, so a connection has
/// up to four rows. Counted: the server's row of the requests (`local_is_server`, the
/// packets went to the reporting host), or — when the server is no workload — the
/// client's row of the requests (packets from the reporting host). Replies never count:
/// judged as connections they would run from the server to the client's ephemeral port.
pub fn flow_keys(flows: LazyFrame) -> PolarsResult<Vec<FlowKey>> {
    let server = col("local_is_server").fill_null(lit(false));
    let server_saw_request = server.clone().and(col("host_id").eq(col("dst_workload")));
    let client_saw_request = server
        .not()
        .and(col("host_id").eq(col("src_workload")))
        .and(col("dst_workload").is_null());
    let reporter = server_saw_request
        .or(client_saw_request)
        .fill_null(lit(false));
    let df = flows
        .filter(reporter)
        .group_by([
            col("src_workload"),
            col("src_ip"),
            col("dst_workload"),
            col("dst_ip"),
            col("dst_port"),
            col("protocol"),
        ])
        .agg([len().alias("flows")])
        .collect()?;
    let sw = df.column("src_workload")?.str()?;
    let si = df.column("src_ip")?.str()?;
    let dw = df.column("dst_workload")?.str()?;
    let di = df.column("dst_ip")?.str()?;
    let port = df.column("dst_port")?.cast(&DataType::Int64)?;
    let port = port.i64()?;
    let protocol = df.column("protocol")?.cast(&DataType::Int64)?;
    let protocol = protocol.i64()?;
    let count = df.column("flows")?.cast(&DataType::UInt64)?;
    let count = count.u64()?;
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let (Some(src_ip), Some(dst_ip)) = (
            si.get(i).and_then(|s| s.parse().ok()),
            di.get(i).and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        out.push(FlowKey {
            src_workload: sw.get(i).map(str::to_string),
            src_ip,
            dst_workload: dw.get(i).map(str::to_string),
            dst_ip,
            port: port.get(i).unwrap_or(0) as u32,
            protocol: protocol.get(i).unwrap_or(0) as u32,
            flows: count.get(i).unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One connection app-crm → db-crm:5432 seen by both ends in both directions, and one
    /// from app-crm to an outside server, seen by app-crm only: two connections.
    #[test]
    fn each_connection_counts_once_and_replies_never() {
        let df = df!(
            "host_id" => ["db-crm", "db-crm", "app-crm", "app-crm", "app-crm", "app-crm"],
            "src_workload" => [Some("app-crm"), Some("db-crm"), Some("app-crm"), Some("db-crm"), Some("app-crm"), None],
            "src_ip" => ["10.0.0.2", "10.0.0.3", "10.0.0.2", "10.0.0.3", "10.0.0.2", "192.0.2.9"],
            "dst_workload" => [Some("db-crm"), Some("app-crm"), Some("db-crm"), Some("app-crm"), None, Some("app-crm")],
            "dst_ip" => ["10.0.0.3", "10.0.0.2", "10.0.0.3", "10.0.0.2", "192.0.2.9", "10.0.0.2"],
            "src_port" => [40000i64, 5432, 40000, 5432, 40001, 443],
            "dst_port" => [5432i64, 40000, 5432, 40000, 443, 40001],
            "protocol" => [6i64, 6, 6, 6, 6, 6],
            "local_is_server" => [true, true, false, false, false, false],
        )
        .unwrap();
        let keys = flow_keys(df.lazy()).unwrap();
        let mut seen: Vec<(String, String, u32)> = keys
            .iter()
            .map(|k| (k.src_ip.to_string(), k.dst_ip.to_string(), k.port))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("10.0.0.2".to_string(), "10.0.0.3".to_string(), 5432),
                ("10.0.0.2".to_string(), "192.0.2.9".to_string(), 443),
            ]
        );
    }

    /// Flows count for the destination's application, else the source's, else
    /// "(unlabeled)"; a workload listed twice counts for its first entry's application.
    #[test]
    fn flows_count_for_the_application_of_their_ends() {
        let draft = PolicyDocument::from_yaml(
            r#"
workloads:
  - {workload_id: web, labels: {app: shop, role: web}, mode: full}
  - {workload_id: db, labels: {app: crm, role: db}, mode: full}
  - {workload_id: db, labels: {app: other}}
  - {workload_id: bare, mode: full}
"#,
            "draft",
        )
        .unwrap();
        let key = |src: Option<&str>, dst: Option<&str>, flows: u64| FlowKey {
            src_workload: src.map(str::to_string),
            src_ip: "10.0.0.1".parse().unwrap(),
            dst_workload: dst.map(str::to_string),
            dst_ip: "10.0.0.2".parse().unwrap(),
            port: 5432,
            protocol: 6,
            flows,
        };
        let flows = [
            key(Some("web"), Some("db"), 1),
            key(Some("web"), Some("bare"), 10),
            key(None, Some("db"), 100),
            key(Some("bare"), None, 1000),
            key(Some("unknown"), Some("nowhere"), 10000),
        ];
        let report = simulate(None, &draft, &flows);
        let per_app: Vec<(&str, u64)> = report
            .per_app
            .iter()
            .map(|a| (a.app.as_str(), a.flows))
            .collect();
        assert_eq!(
            per_app,
            [("(unlabeled)", 11000), ("crm", 101), ("shop", 10)]
        );
        assert_eq!(report.totals.flows, 11111);
    }
}
