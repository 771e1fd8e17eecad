//! `bulkhead serve` over a small real lake (Delta tables `edges`, `workloads`, `status`
//! written with deltalake in the lake's schemas): HTTP endpoints, bad input → 4xx with a
//! message, new commits visible without a restart, the bearer token on mounted routers,
//! and a real Flight SQL client (Python ADBC) over TCP.

use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, Int32Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use axum::http::StatusCode;
use bulkhead_analytics::serve::{ServeConfig, Server};
use bulkhead_analytics::{Engine, LakeLocation, Limits};
use serde_json::{Value, json};

mod common;
use common::{Workload, assert_error, call, call_json, status_batch, write_table};

const HOSTS: usize = 6;
const NOW_US: i64 = 1_764_151_200_000_000; // 2025-11-26T10:00:00Z

fn host(i: usize) -> String {
    format!("host-{i}")
}

fn app(i: usize) -> &'static str {
    if i < 3 { "crm" } else { "billing" }
}

fn labels(b: &mut MapBuilder<StringBuilder, StringBuilder>, i: usize) {
    for (k, v) in [("app", app(i)), ("env", "prod")] {
        b.keys().append_value(k);
        b.values().append_value(v);
    }
    b.append(true).unwrap();
}

/// Edges: every host i talks to host (i+1) % HOSTS on 5432 (allowed), host 0 scans host 5
/// on 23 (potentially blocked), and an internet client reaches host 1 on 443.
fn edges_batch() -> RecordBatch {
    let mut rows = Vec::new();
    for i in 0..HOSTS {
        let j = (i + 1) % HOSTS;
        rows.push((
            Some(i),
            format!("10.0.0.{i}"),
            Some(j),
            format!("10.0.0.{j}"),
            5432,
            10,
            "allowed",
        ));
    }
    rows.push((
        Some(0),
        "10.0.0.0".into(),
        Some(5),
        "10.0.0.5".into(),
        23,
        3,
        "potentially_blocked",
    ));
    rows.push((
        None,
        "198.51.100.7".into(),
        Some(1),
        "10.0.0.1".into(),
        443,
        5,
        "allowed",
    ));
    let mut date = Date32Builder::new();
    let mut ws = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut we = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut sw, mut sip, mut dw, mut dip) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut sl = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut dl = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let (mut port, mut proto) = (Int32Builder::new(), Int32Builder::new());
    let mut process = StringBuilder::new();
    let (mut flows, mut packets, mut bytes) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    let mut fs = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut ls = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut decision = StringBuilder::new();
    for (s, s_ip, d, d_ip, p, n, dec) in &rows {
        date.append_value((NOW_US / 86_400_000_000) as i32);
        ws.append_value(NOW_US - 3_600_000_000);
        we.append_value(NOW_US);
        match s {
            Some(i) => {
                sw.append_value(host(*i));
                labels(&mut sl, *i);
            }
            None => {
                sw.append_null();
                sl.append(false).unwrap();
            }
        }
        sip.append_value(s_ip);
        match d {
            Some(i) => {
                dw.append_value(host(*i));
                labels(&mut dl, *i);
            }
            None => {
                dw.append_null();
                dl.append(false).unwrap();
            }
        }
        dip.append_value(d_ip);
        port.append_value(*p);
        proto.append_value(6);
        process.append_value("postgres");
        flows.append_value(*n);
        packets.append_value(n * 10);
        bytes.append_value(n * 1000);
        fs.append_value(NOW_US - 3_000_000_000);
        ls.append_value(NOW_US - 1_000_000_000);
        decision.append_value(dec);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(date.finish()),
        Arc::new(ws.finish()),
        Arc::new(we.finish()),
        Arc::new(sw.finish()),
        Arc::new(sip.finish()),
        Arc::new(dw.finish()),
        Arc::new(dip.finish()),
        Arc::new(sl.finish()),
        Arc::new(dl.finish()),
        Arc::new(port.finish()),
        Arc::new(proto.finish()),
        Arc::new(process.finish()),
        Arc::new(flows.finish()),
        Arc::new(packets.finish()),
        Arc::new(bytes.finish()),
        Arc::new(fs.finish()),
        Arc::new(ls.finish()),
        Arc::new(decision.finish()),
    ];
    // Every edge as the server reported it.
    let rows = columns[0].len();
    columns.push(Arc::new(arrow_array::StringArray::from(vec!["dst"; rows])));
    RecordBatch::try_new(bulkhead_schemas::lake::edges_schema(), columns).unwrap()
}

fn workloads_batch() -> RecordBatch {
    let workloads: Vec<Workload> = (0..HOSTS)
        .map(|i| Workload {
            id: host(i),
            hostname: format!("{}-{i}.example", app(i)),
            addresses: vec![format!("10.0.0.{i}")],
            port: "tcp/5432".into(),
            labels: [("app", app(i)), ("env", "prod")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        })
        .collect();
    common::workloads_batch(&workloads, NOW_US)
}

async fn lake() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_table(dir.path(), "edges", edges_batch()).await;
    write_table(dir.path(), "workloads", workloads_batch()).await;
    write_table(
        dir.path(),
        "status",
        status_batch(&["host-0", "host-1"], NOW_US, 3),
    )
    .await;
    write_table(
        dir.path(),
        "status",
        status_batch(&["host-0"], NOW_US - 60_000_000, 2),
    )
    .await;
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_bad_input() {
    let dir = lake().await;
    let engine = Engine::new(LakeLocation::new(dir.path()), Limits::default()).unwrap();
    let app = Server::builder(engine, ServeConfig::local("127.0.0.1:0".parse().unwrap())).router();

    let (s, v) = call_json(&app, "GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["tables"], json!(["edges", "workloads", "status"]));
    let (s, v) = call_json(&app, "GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["paths"]["/api/v1/map"].is_object());

    let (s, v) = call_json(&app, "POST", "/api/v1/query", Some(json!({"sql": "SELECT sum(flows) AS n, label(src_labels, 'app') AS app FROM edges GROUP BY 2 ORDER BY 2"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows"], json!([[30, "billing"], [33, "crm"], [5, null]]));
    let (s, v) = call_json(
        &app,
        "POST",
        "/api/v1/query",
        Some(json!({"sql": "SELECT count(*) AS n FROM edges"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows"], json!([[HOSTS + 2]]));
    let (s, text) = call(&app, "POST", "/api/v1/query", Some(r#"{"sql": "SELECT dst_port FROM edges ORDER BY dst_port", "limit": 3, "stream": true}"#), None).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[1], json!([23]));
    assert_eq!(lines[4]["truncated"], json!(true));

    for (body, status, needle) in [
        (Some("{not json"), 400, "request body"),
        (Some(r#"{"sql": "SELEC 1"}"#), 400, "SELEC"),
        (
            Some(r#"{"sql": "SELECT nosuch FROM edges"}"#),
            400,
            "nosuch",
        ),
        (
            Some(r#"{"sql": "SELECT 1", "limit": 100000000}"#),
            400,
            "over the maximum",
        ),
        (
            Some(r#"{"sql": "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'"}"#),
            403,
            "read-only",
        ),
        (None, 400, "JSON body"),
    ] {
        let (s, text) = call(&app, "POST", "/api/v1/query", body, None).await;
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{body:?}: {e}: {text}"));
        assert_error(s, &v, status, needle, &format!("query {body:?}"));
    }
    // Queries that would crash the server rather than fail: a chain of operators that
    // overflows the planner's stack, and a function result larger than the query's memory.
    for (sql, status, needle) in [
        (
            format!("SELECT 1{}", " + 1".repeat(20_000)),
            400,
            "nests operators 20000 deep",
        ),
        (
            "SELECT repeat('x', 1000000000000)".to_string(),
            422,
            "repeat(…) would build up to",
        ),
    ] {
        let body = json!({ "sql": sql }).to_string();
        let (s, text) = call(&app, "POST", "/api/v1/query", Some(&body), None).await;
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_error(s, &v, status, needle, &format!("query {}…", &sql[..30]));
    }
    let (s, v) = call_json(
        &app,
        "POST",
        "/api/v1/query",
        Some(json!({"sql": "SELECT 1 AS one"})),
    )
    .await;
    assert_eq!(
        (s, &v["rows"]),
        (StatusCode::OK, &json!([[1]])),
        "still serving: {v}"
    );

    let (s, v) = call_json(&app, "GET", "/api/v1/map?group_by=app", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let node = |id: &str| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .cloned()
    };
    assert_eq!(node("app=crm").unwrap()["workloads"], json!(3), "{v}");
    assert_eq!(node("internet").unwrap()["kind"], json!("internet"), "{v}");
    let edges = v["edges"].as_array().unwrap();
    let scan = edges.iter().find(|e| e["port"] == json!(23)).unwrap();
    assert_eq!(scan["source"], "app=crm");
    assert_eq!(scan["target"], "app=billing");
    assert_eq!(scan["decisions"]["potentially_blocked"], json!(3));
    let total: i64 = edges.iter().map(|e| e["flows"].as_i64().unwrap()).sum();
    assert_eq!(total, 10 * HOSTS as i64 + 3 + 5);
    for (uri, needle) in [
        ("/api/v1/map?group_by=colour", "unknown label key"),
        ("/api/v1/map?group_by=app&from=yesterday", "RFC 3339"),
        ("/api/v1/map?grop_by=app", "grop_by"),
    ] {
        let (s, v) = call_json(&app, "GET", uri, None).await;
        assert_error(s, &v, 400, needle, uri);
    }
    let (s, v) = call_json(
        &app,
        "GET",
        "/api/v1/map?group_by=app&from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["edges"], json!([]));

    let (s, v) = call_json(&app, "GET", "/api/v1/workloads", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), HOSTS);
    assert_eq!(list[0]["id"], "host-0");
    assert_eq!(
        list[0]["enforcer"]["applied_version"],
        json!(3),
        "the latest heartbeat"
    );
    assert_eq!(list[0]["labels"], json!({"app": "crm", "env": "prod"}));
    assert_eq!(list[5]["enforcer"], Value::Null);

    // A new commit shows up in the next request, without a restart.
    write_table(dir.path(), "status", status_batch(&["host-5"], NOW_US, 4)).await;
    let (_, v) = call_json(&app, "GET", "/api/v1/workloads", None).await;
    assert_eq!(v[5]["enforcer"]["applied_version"], json!(4), "{v}");

    let (s, v) = call_json(&app, "POST", "/api/v1/explorer", Some(json!({}))).await;
    assert_error(s, &v, 404, "no flows table", "explorer without flows");
    let (s, v) = call_json(
        &app,
        "POST",
        "/api/v1/explorer",
        Some(json!({"sources": {"include": [{"label": "colour=red"}]}})),
    )
    .await;
    assert_error(s, &v, 400, "unknown label key", "explorer bad key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_mounted_routers_and_flight_sql_works_with_adbc() {
    let dir = lake().await;
    let engine = Engine::new(LakeLocation::new(dir.path()), Limits::default()).unwrap();
    let mut config = ServeConfig::local("127.0.0.1:0".parse().unwrap());
    config.flight_listen = Some("127.0.0.1:0".parse().unwrap());
    config.token = Some("s3cret".into());
    let extra = axum::Router::new().route(
        "/api/v1/recommendations",
        axum::routing::get(|| async { axum::Json(json!([{"id": "r1"}])) }),
    );
    let builder = Server::builder(engine, config).merge(extra);
    let app = builder.router();
    for uri in ["/api/v1/recommendations", "/api/v1/workloads", "/metrics"] {
        let (s, _) = call(&app, "GET", uri, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}");
        let (s, _) = call(&app, "GET", uri, None, Some("wrong")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}");
        let (s, text) = call(&app, "GET", uri, None, Some("s3cret")).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {text}");
    }
    let (s, _) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = builder
        .start(async move {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    let flight = running.flight_addr.unwrap();
    let script = r#"
import json, sys
import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions
uri = sys.argv[1]
out = {}
conn = flight_sql.connect(uri, db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer s3cret"})
cur = conn.cursor()
cur.execute("SELECT count(*) AS n FROM edges")
out["count"] = cur.fetchone()[0]
cur.execute("SELECT count(*) AS n FROM edges WHERE dst_port = $1", parameters=(5432,))
out["prepared"] = cur.fetchone()[0]
# ADBC's GetObjects comes back without schemas from datafusion-flight-sql-server 0.4.19
# (its GetDbSchemas needs a catalog filter); information_schema lists the tables.
cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'lake' ORDER BY 1")
out["tables"] = [r[0] for r in cur.fetchall()]
try:
    cur.execute("CREATE TABLE x AS SELECT 1")
    out["write"] = "accepted"
except Exception as e:
    out["write"] = str(e)
try:
    cur.execute("SELECT 1" + " + 1" * 20000)
    out["deep"] = "accepted"
except Exception as e:
    out["deep"] = str(e)
cur.execute("SELECT count(*) AS n FROM edges")
out["after_deep"] = cur.fetchone()[0]
cur.close(); conn.close()
try:
    bad = flight_sql.connect(uri, db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer wrong"})
    c = bad.cursor()
    c.execute("SELECT 1")
    out["bad_token"] = "accepted"
except Exception as e:
    out["bad_token"] = str(e)
print(json.dumps(out))
"#;
    let output = tokio::process::Command::new("python3")
        .args(["-c", script, &format!("grpc://{flight}")])
        .output()
        .await
        .unwrap_or_else(|e| panic!("python3 with adbc-driver-flightsql (dev/setup): {e}"));
    let _ = stop_tx.send(());
    running.wait().await.unwrap();
    assert!(
        output.status.success(),
        "ADBC client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(v["count"], json!(HOSTS + 2), "{v}");
    assert_eq!(v["prepared"], json!(HOSTS), "{v}");
    for t in ["edges", "workloads", "status"] {
        assert!(v["tables"].as_array().unwrap().contains(&json!(t)), "{v}");
    }
    let write = v["write"].as_str().unwrap();
    assert!(
        write.contains("not supported"),
        "a write must be refused: {write}"
    );
    let deep = v["deep"].as_str().unwrap();
    assert!(deep.contains("nests operators 20000 deep"), "{deep}");
    assert_eq!(v["after_deep"], json!(HOSTS + 2), "{v}");
    let bad = v["bad_token"].as_str().unwrap();
    assert!(
        bad.to_lowercase().contains("unauthenticated") || bad.contains("token"),
        "{bad}"
    );
}

/// A lake file that is gone or truncated is the operator's to fix, not the query's: the
/// error is `Internal` (HTTP 500, not 400) and points at `bulkhead lake check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_lake_file_is_an_internal_error_that_points_at_lake_check() {
    use bulkhead_analytics::QueryError;
    let dir = lake().await;
    let edges = url::Url::from_directory_path(dir.path().join("edges")).unwrap();
    let files: Vec<std::path::PathBuf> = deltalake::open_table(edges)
        .await
        .unwrap()
        .get_file_uris()
        .unwrap()
        .map(|uri| std::path::PathBuf::from(uri.strip_prefix("file://").unwrap_or(&uri)))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let engine = Engine::new(LakeLocation::new(dir.path()), Limits::default()).unwrap();
    let sql = "SELECT sum(flows) FROM edges";
    engine.collect(sql).await.unwrap();
    let whole = std::fs::read(&files[0]).unwrap();
    for damage in ["truncated", "deleted"] {
        match damage {
            "truncated" => std::fs::write(&files[0], &whole[..whole.len() / 2]).unwrap(),
            _ => std::fs::remove_file(&files[0]).unwrap(),
        }
        let engine = Engine::new(LakeLocation::new(dir.path()), Limits::default()).unwrap();
        let err = engine.collect(sql).await.unwrap_err();
        assert!(matches!(err, QueryError::Internal(_)), "{damage}: {err:?}");
        assert!(
            err.to_string().contains("bulkhead lake check"),
            "{damage}: {err}"
        );
    }
}
