//! `bench query`: analyst queries with DataFusion (the analytics engine, over Delta) and
//! DuckDB (reading the same snapshot's Parquet files), alternating, median and ratio; and
//! the dependency map for many workloads served through the HTTP router.
//!
//! The flow lake comes from `bulkhead gen`'s estate through Kafka and `bulkhead ingest`
//! (when `--lake` has no flows table yet), then compacted with `bulkhead lake compact`; the
//! map's `edges` table is synthetic (one row per window and edge for N workloads), written
//! with deltalake in the lake's schema.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    Date32Builder, Int32Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use bulkhead_analytics::serve::{ServeConfig, Server};
use bulkhead_analytics::{Engine, LakeLocation, Limits};
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::{KafkaConfig, Producer};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use tower::ServiceExt as _;

use crate::stats::Summary;
use crate::workload::{Estate, FlowSpec};

/// The fixed analyst queries (the same text in both engines; `label` is a macro in DuckDB).
pub const QUERIES: &[(&str, &str)] = &[
    ("count", "SELECT count(*) FROM flows"),
    (
        "top_talkers",
        "SELECT src_ip, sum(bytes) AS bytes, count(*) AS flows FROM flows GROUP BY src_ip ORDER BY bytes DESC, src_ip LIMIT 10",
    ),
    (
        "apps_pairs",
        "SELECT label(src_labels, 'app') AS src_app, label(dst_labels, 'app') AS dst_app, count(*) AS flows, sum(bytes) AS bytes \
         FROM flows GROUP BY 1, 2 ORDER BY flows DESC, 1, 2 LIMIT 20",
    ),
    (
        "internet_peers",
        "SELECT src_ip, count(*) AS flows, sum(bytes) AS bytes FROM flows WHERE src_workload IS NULL \
         GROUP BY src_ip ORDER BY bytes DESC, src_ip LIMIT 20",
    ),
    (
        "last_hour_new",
        "SELECT src_ip, dst_ip, dst_port, count(*) AS flows FROM flows GROUP BY src_ip, dst_ip, dst_port \
         HAVING min(first_seen) >= (SELECT max(first_seen) FROM flows) - INTERVAL '1 hour' \
         ORDER BY flows DESC, src_ip, dst_ip, dst_port LIMIT 50",
    ),
    (
        "port_histogram",
        "SELECT dst_port, protocol, count(*) AS flows FROM flows GROUP BY 1, 2 ORDER BY flows DESC, 1, 2 LIMIT 20",
    ),
];

#[derive(Debug, Serialize)]
pub struct QueryRow {
    pub name: &'static str,
    pub datafusion_ms: Summary,
    pub duckdb_ms: Summary,
    /// DataFusion median / DuckDB median (below 1: DataFusion faster).
    pub ratio: f64,
    pub rows_equal: bool,
}

#[derive(Debug, Serialize)]
pub struct MapRow {
    pub workloads: usize,
    pub edge_rows: usize,
    pub nodes: usize,
    pub edges: usize,
    pub ms: Summary,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub flows: i64,
    pub files: usize,
    pub queries: Vec<QueryRow>,
    pub map: MapRow,
}

/// A DuckDB process that answers queries read from stdin with their time and rows.
struct DuckDb {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

const DUCKDB_SERVER: &str = r#"
import json, sys, time
import duckdb
files = json.loads(sys.stdin.readline())
con = duckdb.connect()
# Long queries draw a progress bar on stdout, which is the answer channel here.
con.execute("SET enable_progress_bar = false")
con.execute(f"CREATE VIEW flows AS SELECT * FROM read_parquet({json.dumps(files)})")
con.execute("CREATE MACRO label(m, k) AS m[k]")
print("ready", flush=True)
for line in sys.stdin:
    q = json.loads(line)
    t = time.perf_counter()
    rows = con.execute(q).fetchall()
    ms = (time.perf_counter() - t) * 1e3
    print(json.dumps({"ms": ms, "rows": [list(r) for r in rows]}, default=str), flush=True)
"#;

impl DuckDb {
    fn start(files: &[String]) -> Self {
        let mut child = Command::new("python3")
            .args(["-c", DUCKDB_SERVER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with duckdb (dev/setup installs it)");
        let stdin = child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{}", serde_json::to_string(files).expect("json")).expect("duckdb stdin");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).expect("duckdb ready line");
        assert_eq!(line.trim(), "ready", "duckdb did not start");
        Self { child, out }
    }

    fn run(&mut self, sql: &str) -> (f64, Vec<serde_json::Value>) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{}", serde_json::to_string(sql).expect("json")).expect("duckdb stdin");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("duckdb answer");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("duckdb answer {line:?} to {sql}: {e}"));
        let rows = v["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        (v["ms"].as_f64().unwrap_or(f64::NAN), rows)
    }
}

impl Drop for DuckDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn count_flows(engine: &Engine) -> i64 {
    if !engine.tables().await.unwrap().contains(&"flows") {
        return 0;
    }
    let batches = engine
        .collect("SELECT count(*) FROM flows")
        .await
        .expect("count");
    bulkhead_analytics::output::json_rows(&batches[0]).expect("rows")[0][0]
        .as_i64()
        .unwrap_or(0)
}

/// Publishes `records` synthetic flows and runs `bulkhead ingest` until the lake has them.
pub async fn build_flows(bulkhead: &str, kafka: &KafkaConfig, lake: &Path, records: u64) -> i64 {
    admin::ensure_topics(
        kafka,
        &[Topic::Flows, Topic::Inventory, Topic::FlowsDeadLetter],
        &TopicOptions {
            replication: 1,
            partitions: Some(2),
        },
    )
    .await
    .expect("creating the benchmark's topics");
    let estate = Estate::generate(42, 200);
    let producer = Producer::new(kafka).expect("producer");
    let now = bulkhead_schemas::now_unix_ns();
    for inventory in estate.inventories(now - 25 * 3_600_000_000_000) {
        producer
            .send(
                &kafka.topic(Topic::Inventory),
                inventory.host_id.as_bytes(),
                &inventory.encode_to_vec(),
            )
            .await
            .expect("inventory");
    }
    let spec = FlowSpec {
        seed: 42,
        records,
        start_unix_ns: now - 24 * 3_600_000_000_000,
        span_ns: 24 * 3_600_000_000_000,
        batch_records: 2_000,
    };
    let mut sent = 0i64;
    for batch in estate.flows(&spec) {
        sent += batch.records.len() as i64;
        producer
            .send(
                &kafka.topic(Topic::Flows),
                batch.host_id.as_bytes(),
                &batch.encode_to_vec(),
            )
            .await
            .expect("flows");
    }
    eprintln!("published {sent} flows; ingesting into {}", lake.display());
    let mut child = Command::new(bulkhead)
        .args(["ingest", "--lake"])
        .arg(lake)
        .args(["--metrics-addr", "", "--group", "bench-query"])
        .env("BULKHEAD_KAFKA", &kafka.brokers)
        .env("BULKHEAD_TOPIC_PREFIX", &kafka.topic_prefix)
        .env("BULKHEAD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bulkhead} ingest: {e}"));
    let engine = Engine::new(LakeLocation::new(lake), Limits::default()).expect("engine");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ingest exited early: {status}");
        }
        if count_flows(&engine).await >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    sent
}

/// A synthetic `edges` table: `workloads` hosts in apps of 10 and two envs, `rows` edges
/// over 24 hourly windows, a tenth of them potentially blocked.
pub async fn write_edges(lake: &Path, workloads: usize, rows: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let schema = bulkhead_schemas::lake::edges_schema();
    let day = 20_000i32;
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
    let labels = |b: &mut MapBuilder<StringBuilder, StringBuilder>, w: usize| {
        b.keys().append_value("app");
        b.values().append_value(format!("app{}", w / 10));
        b.keys().append_value("env");
        b.values().append_value(if w.is_multiple_of(2) {
            "prod"
        } else {
            "staging"
        });
        b.keys().append_value("role");
        b.values().append_value(["web", "api", "db"][w % 3]);
        b.append(true).expect("aligned");
    };
    for _ in 0..rows {
        let hour = rng.random_range(0..24i64);
        let start = (day as i64 * 86_400 + hour * 3_600) * 1_000_000;
        let (s, d) = (
            rng.random_range(0..workloads),
            rng.random_range(0..workloads),
        );
        date.append_value(day);
        ws.append_value(start);
        we.append_value(start + 3_600_000_000);
        sw.append_value(format!("w{s:06}"));
        sip.append_value(format!("10.{}.{}.{}", s >> 16, (s >> 8) & 255, s & 255));
        dw.append_value(format!("w{d:06}"));
        dip.append_value(format!("10.{}.{}.{}", d >> 16, (d >> 8) & 255, d & 255));
        labels(&mut sl, s);
        labels(&mut dl, d);
        port.append_value([443, 8080, 5432, 53][rng.random_range(0..4)]);
        proto.append_value(6);
        process.append_value("java");
        let n = rng.random_range(1..100);
        flows.append_value(n);
        packets.append_value(n * 10);
        bytes.append_value(n * 1_000);
        fs.append_value(start);
        ls.append_value(start + 1_000_000);
        decision.append_value(if rng.random_bool(0.1) {
            "potentially_blocked"
        } else {
            "allowed"
        });
    }
    let columns: Vec<ArrayRef> = vec![
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
        // Every edge as the server reported it.
        Arc::new(arrow_array::StringArray::from(vec!["dst"; rows])),
    ];
    let batch = RecordBatch::try_new(schema, columns).expect("edges batch");
    let path = lake.join("edges");
    std::fs::create_dir_all(&path).expect("edges dir");
    let table = deltalake::DeltaTable::try_from_url(
        url::Url::from_directory_path(&path).expect("absolute"),
    )
    .await
    .expect("edges table");
    table
        .write(vec![batch])
        .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
        .with_partition_columns(["date".to_string()])
        .await
        .expect("writing edges");
}

async fn delta_files(lake: &Path, table: &str) -> Vec<String> {
    let url = url::Url::from_directory_path(lake.join(table)).expect("absolute");
    let t = deltalake::open_table(url).await.expect("open");
    t.get_file_uris()
        .expect("files")
        .map(|u| {
            url::Url::parse(&u)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .map(|p| p.display().to_string())
                .unwrap_or(u)
        })
        .collect()
}

/// `bulkhead lake compact`, as an operator schedules it: ingest commits every few seconds,
/// so an uncompacted day is thousands of small files (a no-op when already compacted).
fn compact(bulkhead: &str, lake: &Path) {
    let t = Instant::now();
    let status = Command::new(bulkhead)
        .args(["lake", "compact", "--log", "warn", "--lake"])
        .arg(lake)
        .status()
        .unwrap_or_else(|e| panic!("starting {bulkhead} lake compact: {e}"));
    assert!(status.success(), "bulkhead lake compact: {status}");
    println!(
        "query: lake compacted in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Runs the benchmark over `lake` (building its flows first when missing).
pub async fn run(
    lake: PathBuf,
    bulkhead: &str,
    kafka: &KafkaConfig,
    records: u64,
    rounds: usize,
    map_workloads: usize,
    map_rows: usize,
) -> Report {
    std::fs::create_dir_all(&lake).expect("lake dir");
    let lake = std::path::absolute(&lake).expect("absolute lake path");
    let open = || {
        Engine::new(
            LakeLocation::new(&lake),
            Limits {
                memory_bytes: 8 << 30,
                query_memory_bytes: 4 << 30,
                query_timeout: Duration::from_secs(600),
            },
        )
        .expect("engine")
    };
    // A lake cached by an earlier run may predate the columns (a second engine opens the
    // rebuilt table: the first keeps the removed one's snapshot).
    let older = open();
    if older.has_table("flows").await.unwrap_or(false)
        && older
            .collect("SELECT src_app FROM flows LIMIT 0")
            .await
            .is_err()
    {
        println!(
            "query: {} predates the standard label columns: its flows are built anew",
            lake.display()
        );
        std::fs::remove_dir_all(lake.join("flows")).expect("remove the older flows table");
    }
    drop(older);
    let engine = open();
    let mut flows = count_flows(&engine).await;
    if flows == 0 {
        flows = build_flows(bulkhead, kafka, &lake, records).await;
    }
    compact(bulkhead, &lake);
    let files = delta_files(&lake, "flows").await;
    println!("query: {flows} flows in {} Parquet files", files.len());
    let mut duck = DuckDb::start(&files);
    let mut queries = Vec::new();
    for (name, sql) in QUERIES {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let mut rows_equal = true;
        for round in 0..rounds + 1 {
            let t = Instant::now();
            let batches = engine
                .collect(sql)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let (duck_ms, duck_rows) = duck.run(sql);
            if round == 0 {
                // Warm-up round (caches, JIT of the Python side); also checks the answers.
                let df_rows: Vec<serde_json::Value> = batches
                    .iter()
                    .flat_map(|b| bulkhead_analytics::output::json_rows(b).expect("rows"))
                    .collect();
                rows_equal = df_rows == duck_rows;
                continue;
            }
            ours.push(ms);
            theirs.push(duck_ms);
        }
        let (a, b) = (Summary::of(ours), Summary::of(theirs));
        let ratio = a.median / b.median;
        println!(
            "  {name:<16} DataFusion {:>9.2} ms  DuckDB {:>9.2} ms  ratio {ratio:.2}{}",
            a.median,
            b.median,
            if rows_equal { "" } else { "  (ANSWERS DIFFER)" }
        );
        queries.push(QueryRow {
            name,
            datafusion_ms: a,
            duckdb_ms: b,
            ratio,
            rows_equal,
        });
    }
    drop(duck);

    write_edges(&lake, map_workloads, map_rows).await;
    let app = Server::builder(
        engine,
        ServeConfig::local("127.0.0.1:0".parse().expect("addr")),
    )
    .router();
    let mut times = Vec::new();
    let (mut nodes, mut edges) = (0, 0);
    for round in 0..rounds + 1 {
        let request = axum::http::Request::get("/api/v1/map?group_by=app,env")
            .body(axum::body::Body::empty())
            .expect("request");
        let t = Instant::now();
        let response = app.clone().oneshot(request).await.expect("map");
        let body = axum::body::to_bytes(response.into_body(), 1 << 30)
            .await
            .expect("body");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let v: serde_json::Value = serde_json::from_slice(&body).expect("map json");
        nodes = v["nodes"].as_array().map_or(0, |a| a.len());
        edges = v["edges"].as_array().map_or(0, |a| a.len());
        if round > 0 {
            times.push(ms);
        }
    }
    let map = MapRow {
        workloads: map_workloads,
        edge_rows: map_rows,
        nodes,
        edges,
        ms: Summary::of(times),
    };
    println!(
        "  map ({} workloads, {} edge rows → {} nodes, {} edges): median {:.1} ms (target < 1000 ms)",
        map.workloads, map.edge_rows, map.nodes, map.edges, map.ms.median
    );
    Report {
        flows,
        files: files.len(),
        queries,
        map,
    }
}
