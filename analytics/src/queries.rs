//! The console's questions as SQL: the Explorer (filtered, aggregated flows), the
//! dependency map (edges grouped by label keys) and the workload list. Requests are
//! checked first — every value is parsed (addresses, networks, times) or checked against
//! what the lake knows (label keys) before it is quoted into SQL, so a bad request is a
//! [`BadRequest`] naming the field, never a SQL error.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::Deserialize;

/// A request the API refuses, with the reason (→ HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

pub use bulkhead_schemas::policy::STANDARD_LABEL_KEYS;

/// Policy decisions as the lake stores them.
pub const DECISIONS: &[&str] = &["allowed", "potentially_blocked", "blocked", "unknown"];

/// A SQL string literal.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Whether `key` is a well-formed label key (letters, digits, `_`, `-`, `.`, `/`).
pub fn valid_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 63
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

/// One side's filter in an Explorer request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Filter {
    /// `key=value`
    Label(String),
    Ip(String),
    Cidr(String),
    /// A workload (host) id.
    Workload(String),
}

/// Include / exclude filters of one side (sources or destinations).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Side {
    #[serde(default)]
    pub include: Vec<Filter>,
    #[serde(default)]
    pub exclude: Vec<Filter>,
}

/// `POST /api/v1/explorer`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplorerRequest {
    #[serde(default)]
    pub sources: Side,
    #[serde(default)]
    pub destinations: Side,
    /// `tcp/443`, `udp/53`, `tcp/8000-8100`, or a bare port (any protocol).
    #[serde(default)]
    pub services: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    #[serde(default)]
    pub decisions: Vec<String>,
    pub limit: Option<usize>,
}

/// The rows an API call may return, and the default.
#[derive(Clone, Copy, Debug)]
pub struct RowLimits {
    pub default: usize,
    pub max: usize,
}

impl RowLimits {
    /// Checks a requested limit.
    pub fn check(&self, requested: Option<usize>) -> Result<usize, BadRequest> {
        match requested {
            None => Ok(self.default),
            Some(0) => Err(bad("limit must be at least 1")),
            Some(n) if n > self.max => Err(bad(format!(
                "limit {n} is over the maximum of {} rows; page with a narrower filter or use Flight SQL for bulk reads",
                self.max
            ))),
            Some(n) => Ok(n),
        }
    }
}

fn filter_sql(
    side: &str,
    filter: &Filter,
    known_keys: &BTreeSet<String>,
) -> Result<String, BadRequest> {
    let p = if side == "sources" { "src" } else { "dst" };
    match filter {
        Filter::Label(text) => {
            let (key, value) = text.split_once('=').ok_or_else(|| {
                bad(format!(
                    "{side}: label filter {text:?} is not key=value (e.g. app=crm)"
                ))
            })?;
            let key = key.trim();
            if !valid_label_key(key) {
                return Err(bad(format!("{side}: label key {key:?} is not a valid key")));
            }
            if !known_keys.contains(key) {
                return Err(bad(format!(
                    "{side}: unknown label key {key:?} (known: {})",
                    known_keys.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            Ok(format!(
                "label({p}_labels, {}) = {}",
                quote(key),
                quote(value.trim())
            ))
        }
        Filter::Ip(text) => {
            let ip: IpAddr = text
                .trim()
                .parse()
                .map_err(|_| bad(format!("{side}: {text:?} is not an IP address")))?;
            Ok(format!("{p}_ip = {}", quote(&ip.to_string())))
        }
        Filter::Cidr(text) => {
            let net: IpNet = text.trim().parse().map_err(|_| {
                bad(format!(
                    "{side}: {text:?} is not a network in CIDR notation (e.g. 10.0.0.0/8)"
                ))
            })?;
            Ok(format!("ip_in_cidr({p}_ip, {})", quote(&net.to_string())))
        }
        Filter::Workload(id) => {
            if id.trim().is_empty() {
                return Err(bad(format!("{side}: empty workload id")));
            }
            Ok(format!("{p}_workload = {}", quote(id.trim())))
        }
    }
}

fn side_sql(
    name: &str,
    side: &Side,
    known_keys: &BTreeSet<String>,
    out: &mut Vec<String>,
) -> Result<(), BadRequest> {
    let any = |filters: &[Filter]| -> Result<String, BadRequest> {
        let parts = filters
            .iter()
            .map(|f| filter_sql(name, f, known_keys).map(|c| format!("coalesce({c}, false)")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!("({})", parts.join(" OR ")))
    };
    if !side.include.is_empty() {
        out.push(any(&side.include)?);
    }
    if !side.exclude.is_empty() {
        out.push(format!("NOT {}", any(&side.exclude)?));
    }
    Ok(())
}

fn protocol_number(name: &str) -> Option<i32> {
    match name.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "icmpv6" => Some(58),
        "sctp" => Some(132),
        _ => None,
    }
}

/// A service `tcp/443`, `udp/53`, `tcp/8000-8100` or `443` as a SQL condition.
pub fn service_sql(text: &str) -> Result<String, BadRequest> {
    let problem = || {
        bad(format!(
            "services: {text:?} is not proto/port (e.g. tcp/443, udp/53, tcp/8000-8100, 443)"
        ))
    };
    let (proto, ports) = match text.trim().split_once('/') {
        Some((proto, ports)) => (
            Some(protocol_number(proto.trim()).ok_or_else(problem)?),
            ports,
        ),
        None => (None, text.trim()),
    };
    let port = |p: &str| -> Result<u16, BadRequest> { p.trim().parse().map_err(|_| problem()) };
    let ports = match ports.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(problem());
            }
            format!("dst_port BETWEEN {lo} AND {hi}")
        }
        None => format!("dst_port = {}", port(ports)?),
    };
    Ok(match proto {
        Some(p) => format!("(protocol = {p} AND {ports})"),
        None => format!("({ports})"),
    })
}

/// A time range, checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl TimeRange {
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, BadRequest> {
        let one = |name: &str, v: Option<&str>| -> Result<Option<DateTime<Utc>>, BadRequest> {
            match v.map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => DateTime::parse_from_rfc3339(v)
                    .map(|t| Some(t.with_timezone(&Utc)))
                    .map_err(|e| {
                        bad(format!(
                            "{name}: {v:?} is not an RFC 3339 time (e.g. 2026-11-26T10:00:00Z): {e}"
                        ))
                    }),
            }
        };
        let range = Self {
            from: one("from", from)?,
            to: one("to", to)?,
        };
        if let (Some(f), Some(t)) = (range.from, range.to)
            && f > t
        {
            return Err(bad(format!("from ({f}) is after to ({t})")));
        }
        Ok(range)
    }

    /// Conditions on a table with `date` partitions and `start`/`end` timestamps: the
    /// `date` terms let Delta prune whole partitions.
    pub fn conditions(&self, start: &str, end: &str, out: &mut Vec<String>) {
        let ts = |t: &DateTime<Utc>| quote(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        if let Some(from) = &self.from {
            out.push(format!(
                "date >= DATE {}",
                quote(&from.date_naive().to_string())
            ));
            out.push(format!("{end} >= TIMESTAMP {}", ts(from)));
        }
        if let Some(to) = &self.to {
            out.push(format!(
                "date <= DATE {}",
                quote(&to.date_naive().to_string())
            ));
            out.push(format!("{start} < TIMESTAMP {}", ts(to)));
        }
    }
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join("\n  AND "))
    }
}

/// Protocol number as its name (`tcp`, `udp`, …) in SQL.
const PROTOCOL_NAME: &str = "CASE protocol WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' \
     WHEN 58 THEN 'icmpv6' WHEN 132 THEN 'sctp' ELSE CAST(protocol AS VARCHAR) END";

/// The Explorer's SQL over `flows`, asking for one row more than `limit` (to tell
/// whether the result was truncated).
pub fn explorer_sql(
    request: &ExplorerRequest,
    known_keys: &BTreeSet<String>,
    limit: usize,
) -> Result<String, BadRequest> {
    let mut conditions = Vec::new();
    side_sql("sources", &request.sources, known_keys, &mut conditions)?;
    side_sql(
        "destinations",
        &request.destinations,
        known_keys,
        &mut conditions,
    )?;
    if !request.services.is_empty() {
        let services = request
            .services
            .iter()
            .map(|s| service_sql(s))
            .collect::<Result<Vec<_>, _>>()?;
        conditions.push(format!("({})", services.join(" OR ")));
    }
    if !request.decisions.is_empty() {
        for d in &request.decisions {
            if !DECISIONS.contains(&d.as_str()) {
                return Err(bad(format!(
                    "decisions: {d:?} is not one of {}",
                    DECISIONS.join(", ")
                )));
            }
        }
        let list: Vec<String> = request.decisions.iter().map(|d| quote(d)).collect();
        conditions.push(format!("policy_decision IN ({})", list.join(", ")));
    }
    TimeRange::parse(request.from.as_deref(), request.to.as_deref())?.conditions(
        "first_seen",
        "last_seen",
        &mut conditions,
    );
    Ok(format!(
        "SELECT coalesce(src_workload, src_ip) AS src, coalesce(dst_workload, dst_ip) AS dst, \
         dst_port AS port, {PROTOCOL_NAME} AS protocol, process_name AS process, \
         count(*) AS flows, sum(bytes) AS bytes, min(first_seen) AS first_seen, \
         max(last_seen) AS last_seen, policy_decision AS decision\n\
         FROM flows\n{}\n\
         GROUP BY 1, 2, 3, 4, 5, 10\n\
         ORDER BY 7 DESC, 6 DESC, 1, 2, 3\n\
         LIMIT {}",
        where_clause(&conditions),
        limit + 1
    ))
}

/// `GET /api/v1/map` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapRequest {
    /// Comma-separated label keys, e.g. `app,env` (default `app`).
    pub group_by: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The checked group-by keys of a map request.
pub fn group_keys(
    request: &MapRequest,
    known_keys: &BTreeSet<String>,
) -> Result<Vec<String>, BadRequest> {
    let text = request.group_by.as_deref().unwrap_or("app");
    let mut keys = Vec::new();
    for key in text.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        if !valid_label_key(key) {
            return Err(bad(format!("group_by: {key:?} is not a valid label key")));
        }
        if !known_keys.contains(key) {
            return Err(bad(format!(
                "group_by: unknown label key {key:?} (known: {})",
                known_keys.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }
    if keys.is_empty() {
        return Err(bad("group_by: give at least one label key, e.g. app,env"));
    }
    if keys.len() > 4 {
        return Err(bad("group_by: at most 4 label keys"));
    }
    Ok(keys)
}

/// SQL for the node id of one side of an edge: `app=crm,env=prod` for a labelled
/// workload (`-` for a missing key), `unlabeled` for a workload with none of the keys,
/// the address for a private address without a workload, `internet` otherwise.
fn node_sql(p: &str, keys: &[String]) -> String {
    let values: Vec<String> = keys
        .iter()
        .map(|k| format!("label({p}_labels, {})", quote(k)))
        .collect();
    let id_parts: Vec<String> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| format!("{} || coalesce({v}, '-')", quote(&format!("{k}="))))
        .collect();
    let any_key: Vec<String> = values.iter().map(|v| format!("{v} IS NOT NULL")).collect();
    format!(
        "CASE WHEN {p}_workload IS NOT NULL AND ({any}) THEN concat_ws(',', {ids}) \
              WHEN {p}_workload IS NOT NULL THEN 'unlabeled' \
              WHEN {p}_ip IS NULL THEN 'unknown' \
              WHEN coalesce(is_private_ip({p}_ip), false) THEN {p}_ip \
              ELSE 'internet' END",
        any = any_key.join(" OR "),
        ids = id_parts.join(", ")
    )
}

/// The map's two queries over `edges`: aggregated edges between nodes, and the number of
/// workloads per node.
pub fn map_sql(keys: &[String], range: &TimeRange) -> (String, String) {
    let mut conditions = Vec::new();
    range.conditions("window_start", "window_end", &mut conditions);
    let base = format!(
        "WITH e AS (SELECT {src} AS source, {dst} AS target, src_workload, dst_workload, \
         dst_port, protocol, flows, bytes, policy_decision FROM edges {where_})",
        src = node_sql("src", keys),
        dst = node_sql("dst", keys),
        where_ = where_clause(&conditions)
    );
    let decision = |d: &str| {
        format!(
            "CAST(coalesce(sum(CASE WHEN policy_decision = {} THEN flows ELSE 0 END), 0) AS BIGINT) AS {d}",
            quote(d)
        )
    };
    let edges = format!(
        "{base}\nSELECT source, target, dst_port, {PROTOCOL_NAME} AS protocol, \
         CAST(sum(flows) AS BIGINT) AS flows, CAST(sum(bytes) AS BIGINT) AS bytes, {} \
         FROM e GROUP BY source, target, dst_port, protocol ORDER BY source, target, dst_port, protocol",
        DECISIONS
            .iter()
            .map(|d| decision(d))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let nodes = format!(
        "{base}\nSELECT node, CAST(count(DISTINCT w) AS BIGINT) AS workloads FROM \
         (SELECT source AS node, src_workload AS w FROM e UNION ALL SELECT target, dst_workload FROM e) \
         GROUP BY node ORDER BY node"
    );
    (edges, nodes)
}

/// The kind of a map node, from its id.
pub fn node_kind(id: &str) -> &'static str {
    match id {
        "internet" => "internet",
        "unlabeled" => "unlabeled",
        "unknown" => "ip",
        _ if id.contains('=') => "group",
        _ => "ip",
    }
}

/// The labels a group node stands for (`-` = the key is missing).
pub fn node_labels(id: &str) -> BTreeMap<String, String> {
    if node_kind(id) != "group" {
        return BTreeMap::new();
    }
    id.split(',')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(_, v)| *v != "-")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The latest inventory of each workload.
pub const WORKLOADS_SQL: &str = "SELECT workload_id, hostname, addresses, labels, enforcement_mode, quarantined \
     FROM (SELECT *, row_number() OVER (PARTITION BY workload_id ORDER BY observed_at DESC) AS rn FROM workloads) \
     WHERE rn = 1 ORDER BY workload_id";

/// The latest heartbeat of each enforcer.
pub const STATUS_SQL: &str = "SELECT host_id, at, CAST(to_unixtime(now()) - to_unixtime(at) AS BIGINT) AS age_s, \
     applied_version, rule_count, last_error, mode \
     FROM (SELECT *, row_number() OVER (PARTITION BY host_id ORDER BY at DESC) AS rn FROM status) \
     WHERE rn = 1";

/// Label keys present in the workloads (or edges) table.
pub const WORKLOAD_LABEL_KEYS_SQL: &str =
    "SELECT DISTINCT k FROM (SELECT unnest(map_keys(labels)) AS k FROM workloads)";
pub const EDGE_LABEL_KEYS_SQL: &str = "SELECT DISTINCT k FROM (SELECT unnest(map_keys(src_labels)) AS k FROM edges \
     UNION ALL SELECT unnest(map_keys(dst_labels)) FROM edges)";

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> BTreeSet<String> {
        STANDARD_LABEL_KEYS.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn services_parse_or_name_the_problem() {
        assert_eq!(
            service_sql("tcp/443").unwrap(),
            "(protocol = 6 AND dst_port = 443)"
        );
        assert_eq!(
            service_sql("udp/1000-2000").unwrap(),
            "(protocol = 17 AND dst_port BETWEEN 1000 AND 2000)"
        );
        assert_eq!(service_sql("53").unwrap(), "(dst_port = 53)");
        for bad in ["tcp/", "xyz/1", "tcp/70000", "tcp/9-1", "tcp/1;DROP"] {
            let e = service_sql(bad).unwrap_err();
            assert!(e.0.contains(bad), "{e}");
        }
    }

    #[test]
    fn explorer_values_are_checked_before_quoting() {
        let request: ExplorerRequest = serde_json::from_value(serde_json::json!({
            "sources": {"include": [{"label": "app=o'brien"}], "exclude": [{"cidr": "10.9.0.0/16"}]},
            "destinations": {"include": [{"ip": "10.0.0.1"}, {"workload": "web-1"}]},
            "services": ["tcp/443"], "decisions": ["blocked"],
            "from": "2026-11-26T10:00:00Z", "to": "2026-11-26T11:00:00+00:00"
        }))
        .unwrap();
        let sql = explorer_sql(&request, &keys(), 10).unwrap();
        assert!(
            sql.contains("label(src_labels, 'app') = 'o''brien'"),
            "{sql}"
        );
        assert!(
            sql.contains("NOT (coalesce(ip_in_cidr(src_ip, '10.9.0.0/16'), false))"),
            "{sql}"
        );
        assert!(sql.contains("date >= DATE '2026-11-26'"), "{sql}");
        assert!(sql.contains("LIMIT 11"), "{sql}");

        let bad = |v: serde_json::Value| {
            let r: ExplorerRequest = serde_json::from_value(v).unwrap();
            explorer_sql(&r, &keys(), 10).unwrap_err().0
        };
        assert!(
            bad(serde_json::json!({"sources": {"include": [{"label": "nosuch=x"}]}}))
                .contains("unknown label key \"nosuch\"")
        );
        assert!(
            bad(serde_json::json!({"sources": {"include": [{"label": "app"}]}}))
                .contains("not key=value")
        );
        assert!(
            bad(serde_json::json!({"destinations": {"include": [{"ip": "10.0.0.256"}]}}))
                .contains("not an IP address")
        );
        assert!(
            bad(serde_json::json!({"destinations": {"include": [{"cidr": "10.0.0.0/33"}]}}))
                .contains("CIDR")
        );
        assert!(
            bad(serde_json::json!({"decisions": ["maybe"]})).contains("\"maybe\" is not one of")
        );
        assert!(bad(serde_json::json!({"from": "yesterday"})).contains("RFC 3339"));
        assert!(
            bad(serde_json::json!({"from": "2026-11-27T00:00:00Z", "to": "2026-11-26T00:00:00Z"}))
                .contains("after")
        );
    }

    #[test]
    fn limits_and_group_keys() {
        let limits = RowLimits {
            default: 1000,
            max: 100_000,
        };
        assert_eq!(limits.check(None).unwrap(), 1000);
        assert!(
            limits
                .check(Some(10_000_000))
                .unwrap_err()
                .0
                .contains("over the maximum")
        );
        assert!(limits.check(Some(0)).is_err());
        let req = |g: &str| MapRequest {
            group_by: Some(g.into()),
            ..Default::default()
        };
        assert_eq!(
            group_keys(&req("app, env,app"), &keys()).unwrap(),
            ["app", "env"]
        );
        assert!(
            group_keys(&req("colour"), &keys())
                .unwrap_err()
                .0
                .contains("unknown label key")
        );
        assert!(group_keys(&req(""), &keys()).is_err());
        assert_eq!(node_kind("app=crm,env=-"), "group");
        assert_eq!(
            node_labels("app=crm,env=-"),
            BTreeMap::from([("app".into(), "crm".into())])
        );
        assert_eq!(node_kind("10.0.0.1"), "ip");
        assert_eq!(node_kind("internet"), "internet");
    }
}
