//! `bulkhead ingest` end to end: synthetic flows through the real broker into a real
//! Delta table, read back with DataFusion (deltalake's table provider) and with DuckDB
//! (the Parquet files of the latest snapshot), across SIGKILLs and bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray as _;
use arrow_array::types::Int64Type;
use bulkhead_bench::workload::{Estate, FlowSpec};
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{Consumer, ConsumerOptions, KafkaConfig, Producer, require_kafka};
use bulkhead_schemas::proto::{DeadLetter, FlowBatch};
use bulkhead_schemas::topics::Topic;
use datafusion::prelude::SessionContext;
use prost::Message as _;
use rand::Rng as _;

/// (host_id, agent_instance_id, batch_seq) → rows: identifies every batch, so a count per
/// key shows both loss and duplication.
type BatchCounts = BTreeMap<(String, String, i64), i64>;

struct Expected {
    rows: i64,
    bytes: i64,
    packets: i64,
    batches: BatchCounts,
}

fn synthetic(seed: u64, records: u64, batch_records: usize) -> (Vec<FlowBatch>, Expected) {
    let estate = Estate::generate(seed, 30);
    let spec = FlowSpec {
        seed,
        records,
        start_unix_ns: 1_764_115_200_000_000_000,
        span_ns: 3 * 3_600 * 1_000_000_000,
        batch_records,
    };
    let batches: Vec<FlowBatch> = estate.flows(&spec).collect();
    let expected = expected_of(&batches);
    assert_eq!(
        expected.rows as u64, records,
        "generator made {records} records"
    );
    (batches, expected)
}

/// What the lake holds once it holds exactly `batches`.
fn expected_of<'a>(batches: impl IntoIterator<Item = &'a FlowBatch>) -> Expected {
    let mut expected = Expected {
        rows: 0,
        bytes: 0,
        packets: 0,
        batches: BTreeMap::new(),
    };
    for batch in batches {
        for r in &batch.records {
            expected.rows += 1;
            expected.bytes += r.bytes as i64;
            expected.packets += r.packets as i64;
            *expected
                .batches
                .entry((
                    r.host_id.clone(),
                    batch.agent_instance_id.clone(),
                    batch.batch_seq as i64,
                ))
                .or_default() += 1;
        }
    }
    expected
}

async fn topics(config: &KafkaConfig, partitions: i32) {
    admin::ensure_topics(
        config,
        &[Topic::Flows, Topic::Inventory, Topic::FlowsDeadLetter],
        &TopicOptions {
            replication: 1,
            partitions: Some(partitions),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("creating topics under {}: {e}", config.topic_prefix));
}

async fn publish(producer: &Producer, config: &KafkaConfig, batches: &[FlowBatch]) {
    let topic = config.topic(Topic::Flows);
    for batch in batches {
        producer
            .send(&topic, batch.host_id.as_bytes(), &batch.encode_to_vec())
            .await
            .unwrap_or_else(|e| panic!("producing batch {} to {topic}: {e}", batch.batch_seq));
    }
}

/// A running `bulkhead ingest` child; its log goes to a file shown on failure.
struct Ingest {
    child: Child,
    log: PathBuf,
}

fn start_ingest(config: &KafkaConfig, lake: &Path, run: usize, extra: &[&str]) -> Ingest {
    let log = lake.with_file_name(format!(
        "{}-ingest-{run}.log",
        lake.file_name().unwrap().to_string_lossy()
    ));
    spawn_ingest(config, lake.as_os_str(), log, extra, &[])
}

/// `bulkhead ingest --lake <lake>` in group `ingest-test` (unless `extra` names another),
/// logging to `log`, with `env` added.
fn spawn_ingest(
    config: &KafkaConfig,
    lake: &std::ffi::OsStr,
    log: PathBuf,
    extra: &[&str],
    env: &[(&str, String)],
) -> Ingest {
    let file = std::fs::File::create(&log).unwrap();
    let group = if extra.contains(&"--group") {
        &[][..]
    } else {
        &["--group", "ingest-test"][..]
    };
    let metrics = if extra.contains(&"--metrics-addr") {
        &[][..]
    } else {
        &["--metrics-addr", ""][..]
    };
    let child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["ingest", "--lake"])
        .arg(lake)
        .args(metrics)
        .args(group)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("BULKHEAD_KAFKA", &config.brokers)
        .env("BULKHEAD_TOPIC_PREFIX", &config.topic_prefix)
        .env_remove("BULKHEAD_CONFIG")
        .env("BULKHEAD_LOG", "warn,bulkhead_ingest=info,bulkhead=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting bulkhead ingest: {e}"));
    Ingest { child, log }
}

impl Ingest {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("ingest exited early ({status}):\n{}", self.log_tail());
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the process must stop cleanly.
    fn stop(mut self) -> String {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "ingest exit {status}:\n{}",
                    self.log_tail()
                );
                return std::fs::read_to_string(&self.log).unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "ingest ignored SIGTERM:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the table says, through DataFusion over deltalake's table provider.
struct LakeView {
    rows: i64,
    bytes: i64,
    packets: i64,
    batches: BatchCounts,
    files: Vec<String>,
}

async fn read_lake(lake: &Path) -> Option<LakeView> {
    let url = url::Url::from_directory_path(lake.join("flows")).unwrap();
    let table = match deltalake::open_table(url).await {
        Ok(table) => table,
        Err(e) => {
            eprintln!("lake at {} not readable (yet): {e}", lake.display());
            return None;
        }
    };
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .unwrap_or_else(|e| panic!("registering the lake with DataFusion: {e}"));
    let provider = table
        .table_provider()
        .await
        .unwrap_or_else(|e| panic!("table provider for {}: {e}", lake.display()));
    ctx.register_table("flows", provider).unwrap();
    let query = |sql: &'static str| {
        let ctx = ctx.clone();
        async move {
            let batches: Vec<RecordBatch> = ctx
                .sql(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            batches
        }
    };
    let totals = query(
        "SELECT count(*) AS n, coalesce(sum(bytes), 0) AS b, coalesce(sum(packets), 0) AS p FROM flows",
    )
    .await;
    let int = |b: &RecordBatch, c: usize| b.column(c).as_primitive::<Int64Type>().value(0);
    let (rows, bytes, packets) = (int(&totals[0], 0), int(&totals[0], 1), int(&totals[0], 2));
    let mut batches = BTreeMap::new();
    for b in
        query("SELECT host_id, agent_instance_id, batch_seq, count(*) FROM flows GROUP BY 1, 2, 3")
            .await
    {
        for i in 0..b.num_rows() {
            let text = |c: usize| {
                let col = arrow_cast::cast(b.column(c), &arrow_schema::DataType::Utf8).unwrap();
                col.as_string::<i32>().value(i).to_string()
            };
            batches.insert(
                (
                    text(0),
                    text(1),
                    b.column(2).as_primitive::<Int64Type>().value(i),
                ),
                b.column(3).as_primitive::<Int64Type>().value(i),
            );
        }
    }
    let files = table.get_file_uris().unwrap().collect();
    Some(LakeView {
        rows,
        bytes,
        packets,
        batches,
        files,
    })
}

/// (address, workload, has labels) → rows, for both ends of every flow.
async fn workloads_by_ip(lake: &Path) -> BTreeMap<(String, Option<String>, bool), i64> {
    let url = url::Url::from_directory_path(lake.join("flows")).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("flows", table.table_provider().await.unwrap())
        .unwrap();
    let sql = "SELECT src_ip AS ip, src_workload AS w, src_labels IS NOT NULL AS l FROM flows \
               UNION ALL SELECT dst_ip, dst_workload, dst_labels IS NOT NULL FROM flows";
    let batches = ctx
        .sql(&format!(
            "SELECT ip, w, l, count(*) FROM ({sql}) GROUP BY 1, 2, 3"
        ))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = BTreeMap::new();
    for b in batches {
        let text = |c: usize| arrow_cast::cast(b.column(c), &arrow_schema::DataType::Utf8).unwrap();
        let (ip, w) = (text(0), text(1));
        let (ip, w) = (ip.as_string::<i32>(), w.as_string::<i32>());
        let l = b.column(2).as_boolean();
        for i in 0..b.num_rows() {
            let workload = (!arrow_array::Array::is_null(w, i)).then(|| w.value(i).to_string());
            out.insert(
                (ip.value(i).to_string(), workload, l.value(i)),
                b.column(3).as_primitive::<Int64Type>().value(i),
            );
        }
    }
    out
}

/// An edge key → (flows, bytes, packets).
type EdgeSums = BTreeMap<String, (i64, i64, i64)>;

async fn sums(ctx: &SessionContext, sql: &str) -> EdgeSums {
    let batches = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = BTreeMap::new();
    for b in batches {
        let key = arrow_cast::cast(b.column(0), &arrow_schema::DataType::Utf8).unwrap();
        let int = |c: usize| {
            arrow_cast::cast(b.column(c), &arrow_schema::DataType::Int64)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        };
        let (f, by, p) = (int(1), int(2), int(3));
        for i in 0..b.num_rows() {
            out.insert(
                key.as_string::<i32>().value(i).to_string(),
                (f.value(i), by.value(i), p.value(i)),
            );
        }
    }
    out
}

/// The `edges` table summed per key (its rows are partial aggregates), and the same
/// aggregation done by DataFusion over `flows`: 1-minute windows of `first_seen`, each
/// connection counted once — from the server's report, or the client's when the server
/// is no known workload (the synthetic flows carry only client → server records).
async fn edges_and_flows_grouped(lake: &Path) -> (EdgeSums, EdgeSums) {
    let ctx = SessionContext::new();
    for name in ["flows", "edges"] {
        let url = url::Url::from_directory_path(lake.join(name)).unwrap();
        let table = deltalake::open_table(url)
            .await
            .unwrap_or_else(|e| panic!("opening {name} in {}: {e}", lake.display()));
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table(name, table.table_provider().await.unwrap())
            .unwrap();
    }
    let key = |window: &str, process: &str| {
        format!(
            "concat_ws('|', CAST(to_unixtime({window}) AS BIGINT), coalesce(src_workload, src_ip), \
             coalesce(dst_workload, dst_ip), dst_port, protocol, coalesce({process}, '-'), policy_decision)"
        )
    };
    let edges = sums(
        &ctx,
        &format!(
            "SELECT {} AS k, sum(flows), sum(bytes), sum(packets) FROM edges GROUP BY 1",
            key("window_start", "process")
        ),
    )
    .await;
    let flows = sums(
        &ctx,
        &format!(
            "SELECT {} AS k, count(*), sum(bytes), sum(packets) FROM flows \
             WHERE local_is_server OR dst_workload IS NULL GROUP BY 1",
            key(
                "date_bin(INTERVAL '60 seconds', first_seen, TIMESTAMP '1970-01-01T00:00:00Z')",
                "process_name"
            )
        ),
    )
    .await;
    (edges, flows)
}

/// Edges equal the GROUP BY over flows; with the inventory known (`workloads_known`),
/// they count fewer flows than `flows` has rows (both ends reported the connections
/// between workloads, and count once).
async fn assert_edges_match_flows(lake: &Path, expected: &Expected, workloads_known: bool) {
    let (edges, flows) = edges_and_flows_grouped(lake).await;
    let differ: Vec<_> = flows
        .iter()
        .filter(|(k, v)| edges.get(*k) != Some(v))
        .take(5)
        .map(|(k, v)| (k.clone(), *v, edges.get(k).copied()))
        .collect();
    assert!(
        differ.is_empty(),
        "edges differ from flows grouped (key, flows, edges): {differ:?}"
    );
    assert_eq!(edges.len(), flows.len(), "edges with no flows behind them");
    let connections: i64 = edges.values().map(|v| v.0).sum();
    if !workloads_known {
        assert_eq!(
            connections, expected.rows,
            "no workload known: every report counts"
        );
        return;
    }
    assert!(
        connections > 0 && connections < expected.rows,
        "{connections} connections in edges for {} flow records: both-end reports must count once",
        expected.rows
    );
}

/// Waits until the table holds `rows` rows (or panics with the ingest log).
async fn wait_for_rows(lake: &Path, rows: i64, ingest: &mut Ingest, within: Duration) -> LakeView {
    let deadline = Instant::now() + within;
    loop {
        ingest.assert_running();
        if let Some(view) = read_lake(lake).await
            && view.rows >= rows
        {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the lake did not reach {rows} rows within {within:?}:\n{}",
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn assert_exact(view: &LakeView, expected: &Expected) {
    assert_eq!(view.rows, expected.rows, "row count");
    assert_eq!(view.bytes, expected.bytes, "sum of bytes");
    assert_eq!(view.packets, expected.packets, "sum of packets");
    let wrong: Vec<_> = expected
        .batches
        .iter()
        .filter(|(k, n)| view.batches.get(*k) != Some(n))
        .take(5)
        .map(|(k, n)| (k.clone(), *n, view.batches.get(k).copied()))
        .collect();
    assert!(
        wrong.is_empty(),
        "batches lost or doubled (key, expected, found): {wrong:?}"
    );
    assert_eq!(
        view.batches.len(),
        expected.batches.len(),
        "unexpected batches"
    );
}

/// Count and sums through DuckDB reading the snapshot's Parquet files.
fn duckdb_totals(files: &[String]) -> (i64, i64, i64) {
    let paths: Vec<String> = files
        .iter()
        .map(|u| {
            url::Url::parse(u)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| u.clone())
        })
        .collect();
    let script = r#"
import json, sys
import duckdb
files = json.loads(sys.stdin.read())
con = duckdb.connect()
row = con.execute("SELECT count(*), sum(bytes), sum(packets) FROM read_parquet(?)", [files]).fetchall()[0]
print(json.dumps([int(row[0]), int(row[1]), int(row[2])]))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 (with duckdb, installed by dev/setup): {e}"));
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&paths).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "duckdb over {} files failed (dev/setup installs duckdb): {}",
        paths.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "duckdb output {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (v[0], v[1], v[2])
}

/// Publishes `batches`, `per_send` at a time with `pause` between, in the background
/// (ingest is killed and restarted meanwhile).
fn spawn_producer(
    config: &KafkaConfig,
    batches: Vec<FlowBatch>,
    per_send: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let config = config.clone();
    tokio::spawn(async move {
        let producer = Producer::new(&config).unwrap();
        for chunk in batches.chunks(per_send) {
            publish(&producer, &config, chunk).await;
            tokio::time::sleep(pause).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_writes_every_flow_once_and_datafusion_and_duckdb_agree() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-round-trip");
    topics(&config, 4).await;
    let (batches, expected) = synthetic(21, 60_000, 1_000);
    let producer = Producer::new(&config).unwrap();
    // The estate's inventory, observed before the flows: enrichment resolves addresses.
    let estate = Estate::generate(21, 30);
    bulkhead_bench::ingest::publish_inventory(&producer, &config, &estate)
        .await
        .unwrap();
    publish(&producer, &config, &batches).await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut ingest = start_ingest(&config, &lake, 0, &["--commit-interval-secs", "1"]);
    let view = wait_for_rows(
        &lake.join(""),
        expected.rows,
        &mut ingest,
        Duration::from_secs(180),
    )
    .await;
    // Nothing more arrives later (no duplicate commit).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view_later = read_lake(&lake).await.unwrap();
    assert_eq!(
        view_later.rows, view.rows,
        "rows appeared after the count was reached"
    );
    assert_exact(&view_later, &expected);
    assert_edges_match_flows(&lake, &expected, true).await;
    assert_eq!(
        duckdb_totals(&view_later.files),
        (expected.rows, expected.bytes, expected.packets),
        "duckdb reading the snapshot's Parquet files"
    );
    // Sorted within a file, zstd, partitioned by date and hour.
    assert!(
        view_later
            .files
            .iter()
            .all(|f| f.contains("/date=") && f.contains("/hour=")),
        "{:?}",
        &view_later.files[..3.min(view_later.files.len())]
    );
    // Enrichment: every estate address carries its host and labels, others stay IPs.
    let owners: BTreeMap<String, String> = estate
        .hosts
        .iter()
        .flat_map(|h| {
            [
                (h.ipv4.to_string(), h.id.clone()),
                (h.ipv6.to_string(), h.id.clone()),
            ]
        })
        .collect();
    let ends = workloads_by_ip(&lake).await;
    let mut enriched = 0;
    for ((ip, workload, labelled), rows) in &ends {
        match owners.get(ip) {
            Some(host) => {
                assert_eq!(workload.as_ref(), Some(host), "{ip}: {rows} rows");
                assert!(labelled, "{ip} has no labels");
                enriched += rows;
            }
            None => assert!(
                workload.is_none() && !labelled,
                "{ip} is no host's: {workload:?}"
            ),
        }
    }
    assert!(
        enriched > expected.rows / 2,
        "only {enriched} flow ends enriched"
    );
    let log = ingest.stop();
    assert!(log.contains("ingest stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_and_restart_neither_loses_nor_doubles() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-sigkill");
    topics(&config, 3).await;
    let (batches, expected) = synthetic(33, 120_000, 500);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    // Producer keeps publishing while ingest is killed and restarted.
    let producing = spawn_producer(&config, batches, 20, Duration::from_millis(100));
    // Small commits, and a short session so that the next process gets the partitions
    // of a killed one quickly.
    let fast = [
        "--commit-interval-secs",
        "0.3",
        "--commit-flows",
        "3000",
        "-X",
        "session.timeout.ms=6000",
    ];
    let mut rng = rand::rng();
    let mut rows = 0;
    let mut kills = 0;
    for run in 0..4 {
        let mut ingest = start_ingest(&config, &lake, run, &fast);
        // Kill at a random point after this process has committed something.
        let deadline = Instant::now() + Duration::from_secs(90);
        while read_lake(&lake).await.map_or(0, |v| v.rows) <= rows {
            ingest.assert_running();
            assert!(
                Instant::now() < deadline,
                "run {run} committed nothing:\n{}",
                ingest.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wait = rng.random_range(0..1_500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        ingest.assert_running();
        ingest.kill();
        rows = read_lake(&lake).await.map_or(0, |v| v.rows);
        eprintln!("run {run}: killed {wait} ms after a commit, with {rows} rows in the lake");
        assert!(rows <= expected.rows, "more rows than produced: {rows}");
        if rows == expected.rows {
            break;
        }
        kills += 1;
    }
    assert!(
        kills >= 2,
        "ingest finished before it could be killed mid-stream twice"
    );
    producing.await.unwrap();
    let mut ingest = start_ingest(&config, &lake, 9, &fast);
    wait_for_rows(&lake, expected.rows, &mut ingest, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = read_lake(&lake).await.unwrap();
    assert_exact(&view, &expected);
    assert_edges_match_flows(&lake, &expected, false).await;
    let log = ingest.stop();
    assert!(log.contains("ingest stopped"), "{log}");
}

/// [`start_ingest`] with its metrics served on a free local port; returns that address.
fn start_ingest_with_metrics(
    config: &KafkaConfig,
    lake: &Path,
    extra: &[&str],
) -> (Ingest, String) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .to_string();
    let mut args = extra.to_vec();
    args.extend(["--metrics-addr", &addr]);
    (start_ingest(config, lake, 0, &args), addr)
}

/// Every series of the Prometheus page at `addr` (`name{labels}` as printed) and its value.
fn scrape(addr: &str) -> std::io::Result<BTreeMap<String, f64>> {
    use std::io::{Read as _, Write as _};
    let mut http = std::net::TcpStream::connect(addr)?;
    http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut page = String::new();
    http.read_to_string(&mut page)?;
    Ok(page
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// The metrics of `ingest` at `addr` once `ready` holds of them (librdkafka's statistics,
/// hence the lag, come every 5 s).
fn wait_for_metrics(
    addr: &str,
    ingest: &mut Ingest,
    ready: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ingest.assert_running();
        let metrics = scrape(addr).unwrap_or_default();
        if ready(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "metrics at {addr} never got there: {metrics:#?}\n{}",
            ingest.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The number and total size of the Parquet files under `dir`.
fn parquet_files(dir: &Path) -> (f64, f64) {
    let sizes: Vec<u64> = walk(dir)
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "parquet"))
        .filter(|path| !path.components().any(|c| c.as_os_str() == "_delta_log"))
        .map(|path| std::fs::metadata(path).unwrap().len())
        .collect();
    (sizes.len() as f64, sizes.iter().sum::<u64>() as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_go_to_the_dlq_good_ones_flow_and_the_metrics_count_both() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-dlq");
    topics(&config, 1).await;
    let (batches, expected) = synthetic(44, 5_000, 500);
    let producer = Producer::new(&config).unwrap();
    let topic = config.topic(Topic::Flows);
    let good = batches[0].encode_to_vec();
    let mut future = batches[1].clone();
    future.schema_version = 2;
    let mut bad_address = batches[2].clone();
    bad_address.records[0].dst_ip = vec![1, 2, 3];
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("decode", b"\xff\xfe garbage, not protobuf".to_vec()),
        ("decode", good[..good.len() / 2].to_vec()),
        ("schema_version", future.encode_to_vec()),
        ("invalid", bad_address.encode_to_vec()),
    ];
    // Bad messages between good ones, on the one partition.
    let mut expected_dead = Vec::new();
    let mut good_batches = batches.iter();
    for (kind, payload) in &bad {
        publish(
            &producer,
            &config,
            good_batches
                .by_ref()
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .as_slice(),
        )
        .await;
        let d = producer.send(&topic, b"bad-host", payload).await.unwrap();
        expected_dead.push((format!("{topic}/{}/{}", d.partition, d.offset), *kind));
    }
    let rest: Vec<FlowBatch> = good_batches.cloned().collect();
    publish(&producer, &config, &rest).await;

    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let (mut ingest, metrics_addr) =
        start_ingest_with_metrics(&config, &lake, &["--commit-interval-secs", "0.5"]);
    let view = wait_for_rows(&lake, expected.rows, &mut ingest, Duration::from_secs(120)).await;
    assert_exact(&view, &expected);

    let consumer = Consumer::new(&config, &ConsumerOptions::group("dlq-reader")).unwrap();
    consumer
        .subscribe(&[config.topic(Topic::FlowsDeadLetter).as_str()])
        .unwrap();
    let mut dead = Vec::new();
    while dead.len() < expected_dead.len() {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("dead letters so far {dead:?}:\n{}", ingest.log_tail()))
            .unwrap();
        let letter = DeadLetter::decode(message.payload().unwrap()).unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        assert_eq!(
            key,
            format!(
                "{}/{}/{}",
                letter.source_topic, letter.source_partition, letter.source_offset
            )
        );
        assert!(!letter.reason.is_empty());
        dead.push((key, letter.error_kind, letter.payload));
    }
    for ((key, kind), (got_key, got_kind, payload)) in expected_dead.iter().zip(&dead) {
        assert_eq!((key, *kind), (got_key, got_kind.as_str()));
        assert!(
            bad.iter().any(|(_, p)| p == payload),
            "payload kept byte for byte"
        );
    }

    // The metrics say what happened: every message consumed, the rows and the files that
    // landed (bytes as on disk), each dead letter by its reason, and no lag once the group
    // offsets follow the lake.
    let lag = r#"bulkhead_ingest_lag_messages{partition="0"}"#;
    let metrics = wait_for_metrics(&metrics_addr, &mut ingest, |m| m.get(lag) == Some(&0.0));
    let metric = |series: &str| metrics.get(series).copied().unwrap_or(f64::NAN);
    let messages = (batches.len() + bad.len()) as f64;
    assert_eq!(metric("bulkhead_ingest_messages_consumed_total"), messages);
    assert_eq!(
        metric("bulkhead_ingest_rows_written_total"),
        expected.rows as f64
    );
    for (reason, count) in [("decode", 2.0), ("schema_version", 1.0), ("invalid", 1.0)] {
        let series = format!(r#"bulkhead_ingest_dead_letters_total{{reason="{reason}"}}"#);
        assert_eq!(metric(&series), count, "{series}");
    }
    for table in ["flows", "edges"] {
        let (files, bytes) = parquet_files(&lake.join(table));
        assert!(files > 0.0, "{table} has data files");
        let series =
            |name: &str| format!(r#"bulkhead_ingest_written_{name}_total{{table="{table}"}}"#);
        assert_eq!(metric(&series("files")), files, "{table}");
        assert_eq!(metric(&series("bytes")), bytes, "{table}");
    }
    let commits = metric(r#"bulkhead_ingest_commits_total{result="ok"}"#);
    assert!(commits >= 1.0, "{metrics:#?}");
    assert_eq!(
        metric("bulkhead_ingest_commit_duration_seconds_count"),
        commits
    );
    ingest.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_later_than_the_lateness_still_land_in_their_window_and_are_counted() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-late");
    topics(&config, 1).await;
    // Five hours apart: once the newer round is in, every window of the older one ended
    // long before the watermark (the newest flow minus the 300 s lateness).
    let (older, newer) = two_rounds();
    let producer = Producer::new(&config).unwrap();
    // The rounds' estate: with its workloads known, a client's report of a connection the
    // server reports too is skipped in the edges.
    bulkhead_bench::ingest::publish_inventory(&producer, &config, &Estate::generate(77, 30))
        .await
        .unwrap();
    publish(&producer, &config, &newer).await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let (mut ingest, metrics_addr) = start_ingest_with_metrics(
        &config,
        &lake,
        &[
            "--commit-interval-secs",
            "0.5",
            "--edge-lateness-secs",
            "300",
        ],
    );
    let counter = |m: &BTreeMap<String, f64>, name: &str| m.get(name).copied().unwrap_or(0.0);
    // Every flows commit is followed by one of the edges, which the comparison below needs.
    let landed = |rows: f64| {
        move |m: &BTreeMap<String, f64>| {
            counter(m, "bulkhead_ingest_rows_written_total") == rows
                && counter(m, "bulkhead_ingest_edge_commits_total")
                    == counter(m, r#"bulkhead_ingest_commits_total{result="ok"}"#)
        }
    };
    let before = wait_for_metrics(&metrics_addr, &mut ingest, landed(3_000.0));
    publish(&producer, &config, &older).await;
    let after = wait_for_metrics(&metrics_addr, &mut ingest, landed(6_000.0));

    // Each record of the older round that counts in the edges was late: all but the
    // client reports of connections whose server reports them itself.
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    let skipped = delta("bulkhead_ingest_client_reports_skipped_total");
    let late = delta("bulkhead_ingest_late_flows_total");
    assert!(late > 0.0, "{after:#?}");
    assert_eq!(late, 3_000.0 - skipped, "{after:#?}");
    assert!(
        ingest
            .log_tail()
            .contains("flows later than the edge lateness"),
        "{}",
        ingest.log_tail()
    );

    // None was dropped: every flow is in `flows` once, and the edges of the late ones are
    // in their own (old) windows, equal to the flows grouped by edge.
    let expected = expected_of(newer.iter().chain(&older));
    assert_exact(&read_lake(&lake).await.unwrap(), &expected);
    assert_edges_match_flows(&lake, &expected, true).await;
    let old_windows = lake_sql(
        &lake,
        &["edges"],
        "SELECT count(*) FROM edges WHERE window_end <= TIMESTAMP '2025-11-26T00:10:00Z'",
    )
    .await;
    assert_ne!(old_windows, cells(&[&["0"]]), "the older round's windows");
    ingest.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_partitions_across_rebalances_without_loss_or_duplicates() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-rebalance");
    topics(&config, 6).await;
    let (batches, expected) = synthetic(55, 90_000, 500);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let producing = spawn_producer(&config, batches, 3, Duration::from_millis(400));
    let fast = [
        "--commit-interval-secs",
        "0.5",
        "--commit-flows",
        "5000",
        "-X",
        "session.timeout.ms=6000",
    ];
    // One process, then a second joins (partitions move to it), then the first is
    // killed (its partitions move back), then a third joins and the second stops.
    let mut a = start_ingest(&config, &lake, 0, &fast);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut b = start_ingest(&config, &lake, 1, &fast);
    let committed = |ingest: &Ingest| {
        std::fs::read_to_string(&ingest.log)
            .unwrap_or_default()
            .contains("committed flows to the lake")
    };
    // Both write while they share the partitions (cooperative rebalancing hands some of
    // a's partitions to b).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(committed(&a) && committed(&b)) {
        a.assert_running();
        b.assert_running();
        assert!(
            Instant::now() < deadline,
            "a and b did not both commit:\n{}\n---\n{}",
            a.log_tail(),
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !producing.is_finished(),
        "the producer was too fast for a mid-stream handover"
    );
    a.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = start_ingest(&config, &lake, 2, &fast);
    tokio::time::sleep(Duration::from_secs(4)).await;
    b.assert_running();
    b.stop();
    producing.await.unwrap();
    let mut c = c;
    wait_for_rows(&lake, expected.rows, &mut c, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = read_lake(&lake).await.unwrap();
    assert_exact(&view, &expected);
    assert_edges_match_flows(&lake, &expected, false).await;
    // The group's offsets catch up with the lake too (a lag monitor shows zero), even
    // for partitions whose last rows an earlier owner wrote while the group rebalanced.
    let topic = config.topic(Topic::Flows);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bulkhead_bench::ingest::caught_up(&config, "ingest-test", &topic).unwrap() {
        c.assert_running();
        assert!(
            Instant::now() < deadline,
            "group offsets still lag the lake:\n{}",
            c.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.stop();
}

/// Deletes the flows topic's records of partition 0 before `offset`, as retention does.
async fn delete_records_before(config: &KafkaConfig, offset: i64) {
    use bulkhead_kafka::rdkafka::admin::{AdminClient, AdminOptions};
    use bulkhead_kafka::rdkafka::client::DefaultClientContext;
    use bulkhead_kafka::rdkafka::{Offset, TopicPartitionList};
    let admin: AdminClient<DefaultClientContext> = config.create(config.client_config()).unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&config.topic(Topic::Flows), 0, Offset::Offset(offset))
        .unwrap();
    let done = admin
        .delete_records(&list, &AdminOptions::new())
        .await
        .unwrap_or_else(|e| panic!("deleting records before {offset}: {e}"));
    for entry in done.elements() {
        assert!(
            entry.error().is_ok(),
            "deleting records: {:?}",
            entry.error()
        );
        assert_eq!(entry.offset(), Offset::Offset(offset), "new low watermark");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_kafka_deleted_before_ingest_read_them_are_reported_and_the_rest_lands() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-expired");
    topics(&config, 1).await;
    // 50 batches on one partition: offsets 0..50.
    let (mut batches, _) = synthetic(66, 10_000, 100);
    batches.truncate(50);
    assert_eq!(batches.len(), 50);
    let kept = [5..10, 20..30, 40..50];
    // What the lake holds once the first `n` kept ranges landed.
    let landed = |n: usize| expected_of(kept[..n].iter().flat_map(|r| &batches[r.clone()]));
    let producer = Producer::new(&config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let fast = ["--commit-interval-secs", "0.3"];

    // 1. Offsets 0..5 are gone before the lake exists: a new lake starts at 5, which is
    //    no loss of the lake's. Offsets 5..10 land; ingest stops.
    publish(&producer, &config, &batches[..10]).await;
    delete_records_before(&config, 5).await;
    let mut ingest = start_ingest(&config, &lake, 0, &fast);
    wait_for_rows(&lake, landed(1).rows, &mut ingest, Duration::from_secs(60)).await;
    let log = ingest.stop();
    assert!(
        log.contains("the lake has nothing of this partition yet"),
        "{log}"
    );
    assert!(!log.contains("before ingest read them"), "{log}");
    assert!(
        log.contains(", 0 messages deleted from Kafka before they were read"),
        "{log}"
    );

    // 2. While it is down, offsets 10..20 are deleted before it reads them (retention):
    //    the restarted ingest resumes at 20 and says that 10 messages never arrived.
    publish(&producer, &config, &batches[10..30]).await;
    delete_records_before(&config, 20).await;
    let mut ingest = start_ingest(&config, &lake, 1, &fast);
    wait_for_rows(&lake, landed(2).rows, &mut ingest, Duration::from_secs(60)).await;

    // 3. While it runs but is frozen, offsets 30..40 come and go: after it thaws,
    //    librdkafka skips to 40 and ingest reports the gap.
    let pid = ingest.child.id() as i32;
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Longer than a fetch's wait (fetch.wait.max.ms, 500 ms): the fetch in flight when
    // it froze has returned empty, so no deleted message waits in its socket.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    publish(&producer, &config, &batches[30..50]).await;
    delete_records_before(&config, 40).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let view = wait_for_rows(&lake, landed(3).rows, &mut ingest, Duration::from_secs(60)).await;
    let log = ingest.stop();

    assert_exact(&view, &landed(kept.len()));
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("before ingest read them"))
        .collect();
    assert_eq!(reports.len(), 2, "one report per gap:\n{log}");
    for (report, (from, to)) in reports.iter().zip([(10, 20), (30, 40)]) {
        for field in [
            format!("from_offset={from}"),
            format!("to_offset={to}"),
            "messages=10".into(),
        ] {
            assert!(report.contains(&field), "{field} missing: {report}");
        }
    }
    assert!(
        log.contains(", 20 messages deleted from Kafka before they were read"),
        "the second run's summary counts both gaps:\n{log}"
    );
}

fn bulkhead_lake(args: &[&str], lake: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("lake")
        .args(args)
        .arg("--lake")
        .arg(lake)
        .env_remove("BULKHEAD_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("bulkhead lake {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "bulkhead lake {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_ingest_never_shows_a_row_twice_then_retention_and_vacuum() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-compact");
    topics(&config, 2).await;
    let (batches, expected) = synthetic(66, 40_000, 400);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let producing = spawn_producer(&config, batches, 2, Duration::from_millis(150));
    let mut ingest = start_ingest(
        &config,
        &lake,
        0,
        &["--commit-interval-secs", "0.3", "--commit-flows", "2000"],
    );
    let mut compactions = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rows = 0;
    while !producing.is_finished() || rows < expected.rows {
        assert!(
            Instant::now() < deadline,
            "{rows} rows after 60 s:\n{}",
            ingest.log_tail()
        );
        ingest.assert_running();
        if lake.join("flows/_delta_log").exists() {
            bulkhead_lake(&["compact"], &lake);
            compactions += 1;
        }
        if let Some(view) = read_lake(&lake).await {
            let doubled: Vec<_> = view
                .batches
                .iter()
                .filter(|(k, n)| expected.batches.get(*k).is_none_or(|e| *n > e))
                .take(3)
                .collect();
            assert!(
                doubled.is_empty(),
                "rows seen twice during compaction: {doubled:?}"
            );
            rows = view.rows;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(compactions > 0, "compaction never ran");
    producing.await.unwrap();
    wait_for_rows(&lake, expected.rows, &mut ingest, Duration::from_secs(120)).await;
    let before = read_lake(&lake).await.unwrap().files.len();
    let text = bulkhead_lake(&["compact"], &lake);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = read_lake(&lake).await.unwrap();
    assert_exact(&view, &expected);
    assert!(
        view.files.len() <= before,
        "{text}: {before} -> {}",
        view.files.len()
    );
    ingest.stop();
    // Every file the compacted table references is there and reads; the command says so
    // in a line, without the Delta kernel's own info logs.
    let text = bulkhead_lake(&["check"], &lake);
    assert!(
        text.contains(&format!("{} data files", view.files.len())),
        "{text}"
    );
    assert!(!text.contains("INFO"), "{text}");

    // Retention: the synthetic flows are from 2025-11-26, long before "the last day".
    let text = bulkhead_lake(&["retain", "--days", "1"], &lake);
    assert!(text.contains("removed"), "{text}");
    assert_eq!(read_lake(&lake).await.unwrap().rows, 0, "{text}");
    let text = bulkhead_lake(&["vacuum", "--retain-hours", "0"], &lake);
    assert!(text.contains("deleted"), "{text}");
    let parquet_left = walk(&lake.join("flows"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert_eq!(parquet_left, 0, "vacuum left Parquet files: {text}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

const HOUR_NS: u64 = 3_600 * 1_000_000_000;
/// 2025-11-26T00:00Z.
const NOV_26_NS: u64 = 1_764_115_200_000_000_000;

/// Two rounds of 3,000 flows in batches of 500: the first in hour 0 of 2025-11-26, the
/// second in hour 5 (a partition directory the first did not create); estate seed 77.
fn two_rounds() -> (Vec<FlowBatch>, Vec<FlowBatch>) {
    let estate = Estate::generate(77, 30);
    let round = |seed: u64, start_unix_ns: u64| -> Vec<FlowBatch> {
        estate
            .flows(&FlowSpec {
                seed,
                records: 3_000,
                start_unix_ns,
                span_ns: HOUR_NS / 6,
                batch_records: 500,
            })
            .collect()
    };
    (round(1, NOV_26_NS), round(2, NOV_26_NS + 5 * HOUR_NS))
}

/// Waits until ingest's log has each of `failed` (a commit that failed), then checks that
/// it keeps running and the table keeps its `rows` (nothing half-written).
async fn wait_until_stuck(ingest: &mut Ingest, failed: &[&str], lake: &Path, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&ingest.log).unwrap_or_default();
        if failed.iter().all(|text| log.contains(text)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no commit error with {failed:?} logged:\n{}",
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    ingest.assert_running();
    assert_eq!(
        read_lake(lake).await.unwrap().rows,
        rows,
        "nothing half-written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_that_refuses_writes_stops_progress_loses_nothing_and_recovers() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-lake-down");
    topics(&config, 1).await;
    let (first, second) = two_rounds();
    let producer = Producer::new(&config).unwrap();
    publish(&producer, &config, &first).await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut ingest = start_ingest(
        &config,
        &lake,
        0,
        &["--commit-interval-secs", "0.3", "--retry-max-secs", "0.5"],
    );
    wait_for_rows(&lake, 3_000, &mut ingest, Duration::from_secs(90)).await;
    // A file where the next partition's directory must go: every write there fails.
    let blocker = lake.join("flows/date=2025-11-26/hour=5");
    std::fs::write(&blocker, b"not a directory").unwrap();
    publish(&producer, &config, &second).await;
    wait_until_stuck(&mut ingest, &["cannot commit to the lake"], &lake, 3_000).await;
    let log = std::fs::read_to_string(&ingest.log).unwrap();
    assert!(
        log.contains("hour=5"),
        "the error names the path:\n{}",
        ingest.log_tail()
    );
    // The lake comes back: the retried commit lands, exactly once.
    std::fs::remove_file(&blocker).unwrap();
    wait_for_rows(&lake, 6_000, &mut ingest, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = read_lake(&lake).await.unwrap();
    assert_eq!(view.rows, 6_000);
    let expected_batches = first.len() + second.len();
    assert_eq!(view.batches.len(), expected_batches);
    ingest.stop();
}

/// A real filesystem of `mib` MiB (tmpfs, mounted on a new directory; root only) that a
/// test can fill up; unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (said loudly) when not root; under CI that is a failure instead.
    fn mount(mib: u32) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let why = "mounting a small tmpfs needs root";
            assert!(
                !bulkhead_bench::lab::required(),
                "{why}, and this run requires it"
            );
            eprintln!("\n*** SKIPPED: {why}. Run dev/test as root.\n");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let size = format!("size={mib}m");
        let mountpoint = dir.path().to_str().unwrap();
        bulkhead_bench::lab::run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &size,
            "bulkhead-test",
            mountpoint,
        ]);
        Some(Self { dir })
    }

    /// Takes every free byte with one file, which is returned.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let error = loop {
            if let Err(e) = file.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(
            error.raw_os_error(),
            Some(libc::ENOSPC),
            "filling the disk: {error}"
        );
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A lake on a disk that fills up: the commit whose files do not fit fails with the
/// system's reason, ingest keeps running and retrying, the table stays as it was, and once
/// there is room the commit lands exactly once, leaving no part of the files it could not
/// write behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_progress_with_the_reason_and_the_commit_lands_once_there_is_room() {
    let kafka = require_kafka!();
    let Some(disk) = SmallDisk::mount(32) else {
        return;
    };
    let config = kafka.config("ingest-disk-full");
    topics(&config, 1).await;
    let (first, second) = two_rounds();
    let producer = Producer::new(&config).unwrap();
    publish(&producer, &config, &first).await;
    let lake = disk.dir.path().join("lake");
    let logs = tempfile::tempdir().unwrap();
    let mut ingest = spawn_ingest(
        &config,
        lake.as_os_str(),
        logs.path().join("ingest.log"),
        &["--commit-interval-secs", "0.3", "--retry-max-secs", "0.5"],
        &[],
    );
    wait_for_rows(&lake, 3_000, &mut ingest, Duration::from_secs(90)).await;
    let filler = disk.fill();
    publish(&producer, &config, &second).await;
    let failed = ["cannot commit to the lake", "No space left on device"];
    wait_until_stuck(&mut ingest, &failed, &lake, 3_000).await;
    let text = std::fs::read_to_string(&ingest.log).unwrap();
    assert!(
        text.contains("writing data files of file://") && !text.contains("panicked"),
        "the error names the table and the reason, and nothing reads as a crash:\n{}",
        ingest.log_tail()
    );
    std::fs::remove_file(&filler).unwrap();
    wait_for_rows(&lake, 6_000, &mut ingest, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = read_lake(&lake).await.unwrap();
    assert_exact(&view, &expected_of(first.iter().chain(&second)));
    let referenced: Vec<String> = view
        .files
        .iter()
        .map(|uri| uri.rsplit('/').next().unwrap().to_string())
        .collect();
    let unreferenced: Vec<PathBuf> = walk(&lake.join("flows"))
        .into_iter()
        .filter(|p| !p.starts_with(lake.join("flows/_delta_log")))
        .filter(|p| !referenced.iter().any(|name| p.ends_with(name)))
        .collect();
    assert!(
        unreferenced.is_empty(),
        "files of failed attempts left on the disk: {unreferenced:?}"
    );
    ingest.stop();
}

#[test]
fn bad_ingest_settings_are_refused_before_anything_starts() {
    for (args, needle) in [
        (vec!["--lake", "gs://bucket/lake"], "\"gs\""),
        (
            vec!["--lake", "/tmp/l", "--commit-flows", "0"],
            "--commit-flows",
        ),
        (
            vec!["--lake", "/tmp/l", "--commit-interval-secs", "0"],
            "--commit-interval-secs",
        ),
        (
            vec!["--lake", "/tmp/l", "--metrics-addr", "localhost"],
            "--metrics-addr \"localhost\"",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("ingest")
            .args(&args)
            // A broker that is not there: validation must fail before any connection.
            .env("BULKHEAD_KAFKA", "127.0.0.1:1")
            .env_remove("BULKHEAD_CONFIG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
}

/// Runs `sql` over the lake tables `tables` with DataFusion; rows as text cells.
async fn lake_sql(lake: &Path, tables: &[&str], sql: &str) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    for name in tables {
        let url = url::Url::from_directory_path(lake.join(name)).unwrap();
        let table = deltalake::open_table(url)
            .await
            .unwrap_or_else(|e| panic!("opening {name} in {}: {e}", lake.display()));
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table(*name, table.table_provider().await.unwrap())
            .unwrap();
    }
    let batches = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| {
                arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &Default::default())
                    .unwrap()
            })
            .collect();
        for i in 0..b.num_rows() {
            rows.push(cols.iter().map(|c| c.value(i).to_string()).collect());
        }
    }
    rows
}

/// Waits until `sql` (over `tables`) returns `want`.
async fn wait_for_sql(
    lake: &Path,
    tables: &[&str],
    sql: &str,
    want: Vec<Vec<String>>,
    ingest: &mut Ingest,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        ingest.assert_running();
        let ready = tables
            .iter()
            .all(|t| lake.join(t).join("_delta_log").exists());
        if ready {
            let got = lake_sql(lake, tables, sql).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql}: {got:?}, expected {want:?}:\n{}",
                ingest.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{tables:?} never appeared:\n{}",
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn cells(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect()
}

/// The test policy: every host of `estate` with its labels (the rogue host relabelled),
/// full enforcement, one rule `crm` web → api on tcp/8080, and the `internet` IP list.
fn test_policy(estate: &Estate) -> bulkhead_schemas::policy::PolicyDocument {
    let mut yaml = String::from(
        "ip_lists:\n  - {name: internet, cidrs: [0.0.0.0/0, '::/0'], exclusions: [10.0.0.0/8, 'fd00::/8']}\n\
         rulesets:\n  - name: crm\n    scope: [app=crm]\n    rules:\n      - id: web-to-api\n\
         \x20       consumers: [{labels: [role=web]}]\n        providers: [{labels: [role=api]}]\n\
         \x20       services: [tcp/8080]\ndefault_mode: full\nworkloads:\n",
    );
    for host in &estate.hosts {
        let mut labels = host.labels.clone();
        let mut mode = String::new();
        if labels["role"] == "rogue" {
            labels.insert("env".into(), "override".into());
            mode = ", mode: visibility_only".into();
        }
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        yaml.push_str(&format!(
            "  - {{workload_id: {}, labels: {{{}}}{mode}}}\n",
            host.id,
            labels.join(", ")
        ));
    }
    bulkhead_schemas::policy::PolicyDocument::load(&yaml, "test policy")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_decisions_and_ip_lists_come_from_verified_policy_only() {
    use bulkhead_schemas::policy::{PolicySigner, PolicyVersion};
    use bulkhead_schemas::proto::{EnforcementMode, EnforcerState, EnforcerStatus};
    let kafka = require_kafka!();
    let config = kafka.config("ingest-read-models");
    topics(&config, 2).await;
    admin::ensure_topics(
        &config,
        &[Topic::Policy, Topic::Status],
        &TopicOptions::default(),
    )
    .await
    .unwrap();
    let producer = Producer::new(&config).unwrap();
    let estate = Estate::generate(88, 12);
    bulkhead_bench::ingest::publish_inventory(&producer, &config, &estate)
        .await
        .unwrap();
    for (i, host) in estate.hosts.iter().take(2).enumerate() {
        for at in [1_u64, 2] {
            let status = EnforcerStatus {
                schema_version: 1,
                host_id: host.id.clone(),
                at_unix_ns: 1_764_115_000_000_000_000 + at,
                state: EnforcerState::Ok as i32,
                applied_version: at + i as u64,
                mode: EnforcementMode::Full as i32,
                rule_count: 7,
                ..Default::default()
            };
            producer
                .send(
                    &config.topic(Topic::Status),
                    host.id.as_bytes(),
                    &status.encode_to_vec(),
                )
                .await
                .unwrap();
        }
    }
    // Flows over one hour; version 1 (trusted key) is created half-way through, version
    // 2 (same content, another key: forged) a minute later and must change nothing.
    let start = 1_764_115_200_000_000_000_u64;
    let created_s = start / 1_000_000_000 + 1_800;
    let doc = test_policy(&estate);
    let trusted = PolicySigner::generate();
    let forger = PolicySigner::generate();
    for (version, signer, at) in [(1, &trusted, created_s), (2, &forger, created_s + 60)] {
        let mut v = PolicyVersion::new(version, version - 1, "test", "n", doc.clone());
        v.created_unix_ns = at * 1_000_000_000;
        producer
            .send(
                &config.topic(Topic::Policy),
                b"global",
                &signer.sign(&v).encode_to_vec(),
            )
            .await
            .unwrap();
    }
    let batches: Vec<FlowBatch> = estate
        .flows(&FlowSpec {
            seed: 88,
            records: 6_000,
            start_unix_ns: start,
            span_ns: 3_600 * 1_000_000_000,
            batch_records: 300,
        })
        .collect();
    publish(&producer, &config, &batches).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("policy.pub.pem");
    std::fs::write(&key, trusted.public_key_pem()).unwrap();
    let lake = dir.path().join("lake");
    let mut ingest = start_ingest(
        &config,
        &lake,
        0,
        &[
            "--commit-interval-secs",
            "0.5",
            "--policy-public-key",
            key.to_str().unwrap(),
        ],
    );
    wait_for_rows(&lake, 6_000, &mut ingest, Duration::from_secs(120)).await;
    let rogue = &estate
        .hosts
        .iter()
        .find(|h| h.labels["role"] == "rogue")
        .unwrap()
        .id;
    wait_for_sql(
        &lake,
        &["workloads"],
        &format!(
            "SELECT count(*), count(hostname), sum(CASE WHEN workload_id = '{rogue}' AND labels['env'] = 'override' \
             AND host_labels['env'] = 'prod' AND enforcement_mode = 'visibility_only' THEN 1 ELSE 0 END), \
             sum(CASE WHEN enforcement_mode = 'full' THEN 1 ELSE 0 END) FROM workloads"
        ),
        cells(&[&["12", "12", "1", "11"]]),
        &mut ingest,
    )
    .await;
    wait_for_sql(
        &lake,
        &["status"],
        "SELECT host_id, applied_version, mode, state, rule_count FROM status ORDER BY host_id",
        estate
            .hosts
            .iter()
            .take(2)
            .enumerate()
            .map(|(i, h)| {
                vec![
                    h.id.clone(),
                    (2 + i).to_string(),
                    "full".into(),
                    "ok".into(),
                    "7".into(),
                ]
            })
            .collect(),
        &mut ingest,
    )
    .await;
    wait_for_sql(
        &lake,
        &["policy"],
        "SELECT version, provisioned_by, length(content_sha256) FROM policy",
        cells(&[&["1", "test", "64"]]),
        &mut ingest,
    )
    .await;
    // Decisions: `unknown` before version 1, decided against version 1 after.
    let before = format!("to_unixtime(first_seen) < {created_s}");
    let q = |sql: String| {
        let lake = lake.clone();
        async move { lake_sql(&lake, &["flows", "edges"], &sql).await }
    };
    assert_eq!(
        q(format!(
            "SELECT count(*) FROM flows WHERE {before} AND (policy_decision <> 'unknown' \
             OR policy_version IS NOT NULL OR src_ip_lists IS NOT NULL)"
        ))
        .await,
        cells(&[&["0"]]),
        "nothing decided before the first version"
    );
    assert_eq!(
        q(format!(
            "SELECT count(*) FROM flows WHERE NOT ({before}) AND (policy_decision = 'unknown' \
             OR policy_version <> 1)"
        ))
        .await,
        cells(&[&["0"]]),
        "everything decided against version 1 after it (the forged version 2 is ignored)"
    );
    assert_eq!(
        q(format!(
            "SELECT src_labels['app'], dst_labels['app'], policy_decision, count(*) > 0 FROM flows \
             WHERE NOT ({before}) AND dst_port = 8080 AND src_labels['role'] = 'web' \
             GROUP BY 1, 2, 3 ORDER BY 1, 2"
        ))
        .await,
        cells(&[
            &["billing", "billing", "blocked", "true"],
            &["billing", "crm", "blocked", "true"],
            &["crm", "billing", "blocked", "true"],
            &["crm", "crm", "allowed", "true"],
        ]),
        "web -> api is allowed by the crm rule only; full mode blocks the rest"
    );
    assert_eq!(
        q(format!(
            "SELECT count(*) > 0, sum(CASE WHEN array_has(src_ip_lists, 'internet') THEN 0 ELSE 1 END) \
             FROM flows WHERE src_workload IS NULL AND NOT ({before})"
        ))
        .await,
        cells(&[&["true", "0"]]),
        "internet clients are in the internet IP list"
    );
    assert_eq!(
        q("SELECT DISTINCT policy_decision FROM edges ORDER BY 1".into()).await,
        cells(&[
            &["allowed"],
            &["blocked"],
            &["potentially_blocked"],
            &["unknown"]
        ]),
        "edges carry the decisions"
    );
    // Labels: the host's own before version 1; after it, version 1's (the rogue host's
    // env is overridden there), in the maps, the standard columns and the edges.
    let rogue_env =
        |end: &str| format!("CASE WHEN src_workload = '{rogue}' THEN src_{end} ELSE dst_{end} END");
    assert_eq!(
        q(format!(
            "SELECT CASE WHEN {before} THEN 'before' ELSE 'after' END, {}, {}, count(*) > 0 \
             FROM flows WHERE src_workload = '{rogue}' OR dst_workload = '{rogue}' \
             GROUP BY 1, 2, 3 ORDER BY 1",
            rogue_env("env"),
            rogue_env("labels['env']"),
        ))
        .await,
        cells(&[
            &["after", "override", "override", "true"],
            &["before", "prod", "prod", "true"]
        ]),
        "flows carry the policy's labels once it is active"
    );
    assert_eq!(
        q(format!(
            "SELECT DISTINCT CASE WHEN to_unixtime(window_start) < {created_s} THEN 'before' \
             ELSE 'after' END, {} FROM edges \
             WHERE src_workload = '{rogue}' OR dst_workload = '{rogue}' ORDER BY 1",
            rogue_env("labels['env']"),
        ))
        .await,
        cells(&[&["after", "override"], &["before", "prod"]]),
        "and so do the edges"
    );
    let log = ingest.stop();
    assert!(
        log.contains("policy message refused") && log.contains("not a trusted policy key"),
        "the forged version is refused and said so:\n{log}"
    );
}

/// A local S3-compatible server (moto's server mode, from PyPI; dev/setup installs it)
/// holding one bucket. Killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start(bucket: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server (PyPI moto[server], installed by dev/setup): {e}")
            });
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')",
            server.endpoint
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "creating bucket {bucket}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    /// The standard variables that point S3 clients (object_store, delta-rs) at it.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: requests hang as in an outage.
    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bulkhead <args>` with `env` and returns stdout (panics with stderr on failure).
fn bulkhead_with_env(args: &[&str], env: &[(&str, String)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("BULKHEAD_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("bulkhead {args:?}: {e}"));
    assert!(
        out.status.success(),
        "bulkhead {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bulkhead sql --lake <lake> --format json <sql>`: the rows as JSON objects.
fn sql_rows(lake: &str, sql: &str, env: &[(&str, String)]) -> Vec<serde_json::Value> {
    bulkhead_with_env(&["sql", "--lake", lake, "--format", "json", sql], env)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// Answers a user compares between two lakes: totals, batches, the dependency map.
const SAME_ANSWER_QUERIES: &[&str] = &[
    "SELECT count(*) AS n, sum(bytes) AS b, sum(packets) AS p, \
     count(DISTINCT concat_ws('|', host_id, agent_instance_id, batch_seq)) AS batches FROM flows",
    "SELECT src_workload, dst_workload, dst_port, sum(flows) AS f, sum(bytes) AS b FROM edges \
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    "SELECT policy_decision, count(*) AS n FROM flows GROUP BY 1 ORDER BY 1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_on_s3_works_like_a_directory_through_kills_and_an_outage() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-s3");
    topics(&config, 3).await;
    let (batches, expected) = synthetic(77, 60_000, 500);
    let estate = Estate::generate(77, 30);
    let producer = Producer::new(&config).unwrap();
    bulkhead_bench::ingest::publish_inventory(&producer, &config, &estate)
        .await
        .unwrap();
    let s3 = S3Server::start("bulkhead-lake");
    let env = s3.env();
    let s3_lake = "s3://bulkhead-lake/team/lake";
    let dir = tempfile::tempdir().unwrap();
    let local_lake = dir.path().join("lake");
    let producing = spawn_producer(&config, batches, 10, Duration::from_millis(100));
    let fast = [
        "--commit-interval-secs",
        "0.5",
        "--commit-flows",
        "4000",
        "-X",
        "session.timeout.ms=6000",
    ];
    // The reference: the same topic into a directory, by a group of its own.
    let mut local = spawn_ingest(
        &config,
        local_lake.as_os_str(),
        dir.path().join("local-ingest.log"),
        &[&fast[..], &["--group", "ingest-s3-local"]].concat(),
        &[],
    );
    let s3_ingest = |run: usize| {
        spawn_ingest(
            &config,
            s3_lake.as_ref(),
            dir.path().join(format!("s3-ingest-{run}.log")),
            &[&fast[..], &["--group", "ingest-s3"]].concat(),
            &env,
        )
    };
    let s3_rows = || -> i64 {
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["sql", "--lake", s3_lake, "--format", "csv"])
            .arg("SELECT count(*) FROM flows")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    };
    // Kill the S3 ingest after its first commits, then freeze the server for a while
    // under the restarted one: progress stops, nothing acknowledged is lost.
    let mut ingest = s3_ingest(0);
    let deadline = Instant::now() + Duration::from_secs(90);
    while s3_rows() == 0 {
        ingest.assert_running();
        assert!(
            Instant::now() < deadline,
            "nothing committed to S3:\n{}",
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ingest.kill();
    let before_outage = s3_rows();
    eprintln!("killed with {before_outage} rows in the S3 lake");
    let mut ingest = s3_ingest(1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    s3.signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(5)).await;
    ingest.assert_running();
    s3.signal(libc::SIGCONT);
    producing.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        ingest.assert_running();
        local.assert_running();
        let rows = s3_rows();
        assert!(rows <= expected.rows, "{rows} rows: more than produced");
        if rows == expected.rows
            && read_lake(&local_lake)
                .await
                .is_some_and(|v| v.rows == expected.rows)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the S3 lake has {rows} of {} rows:\n{}",
            expected.rows,
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Both lakes give the same answers, and the right ones.
    let local_lake_arg = local_lake.to_str().unwrap();
    for sql in SAME_ANSWER_QUERIES {
        assert_eq!(
            sql_rows(s3_lake, sql, &env),
            sql_rows(local_lake_arg, sql, &[]),
            "{sql}"
        );
    }
    let totals = &sql_rows(s3_lake, SAME_ANSWER_QUERIES[0], &env)[0];
    assert_eq!(
        (
            totals["n"].as_i64(),
            totals["b"].as_i64(),
            totals["p"].as_i64()
        ),
        (
            Some(expected.rows),
            Some(expected.bytes),
            Some(expected.packets)
        ),
        "{totals}"
    );
    assert_eq!(
        totals["batches"].as_i64(),
        Some(expected.batches.len() as i64)
    );
    // Maintenance and the recommender work on S3 too; compaction changes no answer.
    let compacted = bulkhead_with_env(&["lake", "compact", "--lake", s3_lake], &env);
    eprintln!("{compacted}");
    assert_eq!(
        sql_rows(s3_lake, SAME_ANSWER_QUERIES[0], &env)[0],
        *totals,
        "after compaction"
    );
    // Every footer reads over S3's range requests; the command fails on a bad file.
    let checked = bulkhead_with_env(&["lake", "check", "--lake", s3_lake], &env);
    assert!(checked.contains(" data files"), "{checked}");
    let recommend = |lake: &str, env: &[(&str, String)]| {
        let text = bulkhead_with_env(
            &[
                "recommend",
                "--lake",
                lake,
                "--since",
                "100000d",
                "--dry-run",
                "--json",
            ],
            env,
        );
        let items: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let mut rules: Vec<String> = items.iter().map(|i| i["rule"].to_string()).collect();
        rules.sort();
        rules
    };
    let from_s3 = recommend(s3_lake, &env);
    assert!(!from_s3.is_empty(), "no recommendations from the S3 lake");
    assert_eq!(
        from_s3,
        recommend(local_lake_arg, &[]),
        "recommendations differ"
    );
    ingest.stop();
    local.stop();
}
