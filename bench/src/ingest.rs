//! Ingest benchmarks, each beside its baseline in the same run:
//!
//! - **throughput**: N synthetic flows (plus the estate's inventory) already on a real
//!   Kafka topic; a `bulkhead ingest` child process decodes, enriches, aggregates the
//!   edges and writes `flows` + `edges` until its consumer group's committed offsets reach
//!   the end of the topic. Baseline: a straightforward Python pipeline
//!   (`bench/python/ingest_baseline.py`: confluent-kafka + protobuf + pyarrow, one core)
//!   doing the same job on the same topic — decode, enrich from the inventory, aggregate
//!   edges per window, write zstd Parquet.
//! - **freshness**: under a steady produce rate, a probe batch every 100 ms; a poller
//!   asks DataFusion (over deltalake's table provider) for the newest probe visible in
//!   `flows`; latency = visible − produced, p50/p99; and the process's flows per CPU
//!   second over that minute (steady state, where the throughput rounds time a fresh
//!   process). The estate runs under its signed policy there, as a deployment does: ingest
//!   judges every flow and labels its ends from the policy. (The throughput rounds run
//!   without one: the Python baseline has no policy step.)
//! - **peak memory**: `VmHWM` of the ingest process, read from `/proc/<pid>/status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
use bulkhead_kafka::rdkafka::{Offset, TopicPartitionList};
use bulkhead_kafka::{KafkaConfig, Producer};
use bulkhead_schemas::proto::{FlowBatch, FlowRecord};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;

use crate::stats::Summary;
use crate::workload::{Estate, FlowSpec};

type BoxError = Box<dyn std::error::Error>;

/// What the ingest benchmarks measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IngestReport {
    pub partitions: i32,
    pub throughput: Throughput,
    pub rust_flows_per_sec: Summary,
    pub python_flows_per_sec: Summary,
    /// Median over median.
    pub ratio: f64,
    pub rust_flows_per_cpu_sec: Summary,
    pub freshness_rate_flows_per_sec: u64,
    pub freshness: Freshness,
    pub scaling: Vec<ScalingRow>,
}

fn fresh_config(kafka: &str, name: &str) -> KafkaConfig {
    let mut config = KafkaConfig::with_brokers(kafka);
    let nanos = bulkhead_schemas::now_unix_ns();
    config.topic_prefix = format!("bench.{name}.{}.{nanos}.", std::process::id());
    config
}

async fn produce(
    producer: &Producer,
    config: &KafkaConfig,
    batches: impl Iterator<Item = FlowBatch>,
) -> Result<u64, BoxError> {
    let topic = config.topic(Topic::Flows);
    let mut sends = futures::stream::FuturesUnordered::new();
    let mut records = 0;
    use futures::StreamExt as _;
    for batch in batches {
        records += batch.records.len() as u64;
        let key = batch.host_id.clone();
        let value = batch.encode_to_vec();
        let (topic, producer) = (topic.clone(), producer);
        sends.push(async move { producer.send(&topic, key.as_bytes(), &value).await });
        if sends.len() >= 256 {
            sends.next().await.transpose()?;
        }
    }
    while let Some(result) = sends.next().await {
        result?;
    }
    Ok(records)
}

async fn setup_topics(config: &KafkaConfig, partitions: i32) -> Result<(), BoxError> {
    admin::ensure_topics(
        config,
        &[
            Topic::Flows,
            Topic::Inventory,
            Topic::FlowsDeadLetter,
            Topic::Policy,
            Topic::Status,
        ],
        &TopicOptions {
            replication: 1,
            partitions: Some(partitions),
        },
    )
    .await?;
    Ok(())
}

/// When the estate's inventory is observed: before any of its flows.
pub const INVENTORY_OBSERVED_UNIX_NS: u64 = 1_764_115_000_000_000_000;

/// The backlog the throughput and scaling runs drain: a 200-host estate and `flows` of
/// its flows over ten minutes, in batches of 1,000.
pub fn backlog(seed: u64, flows: u64) -> (Estate, FlowSpec) {
    backlog_of(seed, flows, BACKLOG_HOSTS)
}

/// Hosts of the backlog's estate.
pub const BACKLOG_HOSTS: usize = 200;

/// [`backlog`] from an estate of `hosts` hosts.
pub fn backlog_of(seed: u64, flows: u64, hosts: usize) -> (Estate, FlowSpec) {
    let spec = FlowSpec {
        seed,
        records: flows,
        start_unix_ns: 1_764_115_200_000_000_000,
        span_ns: 600 * 1_000_000_000,
        batch_records: 1_000,
    };
    (Estate::generate(seed, hosts), spec)
}

/// Publishes the estate's inventory, observed before any of its flows.
pub async fn publish_inventory(
    producer: &Producer,
    config: &KafkaConfig,
    estate: &Estate,
) -> Result<(), BoxError> {
    for inventory in estate.inventories(INVENTORY_OBSERVED_UNIX_NS) {
        producer
            .send(
                &config.topic(Topic::Inventory),
                inventory.host_id.as_bytes(),
                &inventory.encode_to_vec(),
            )
            .await?;
    }
    Ok(())
}

/// A `bulkhead ingest` child with its log in a file.
struct IngestChild {
    child: Child,
    log: PathBuf,
}

impl IngestChild {
    fn start(
        bulkhead: &str,
        config: &KafkaConfig,
        lake: &Path,
        group: &str,
        extra: &[&str],
    ) -> Result<Self, BoxError> {
        Self::start_logged(
            bulkhead,
            config,
            lake,
            group,
            extra,
            lake.with_extension("log"),
        )
    }

    fn start_logged(
        bulkhead: &str,
        config: &KafkaConfig,
        lake: &Path,
        group: &str,
        extra: &[&str],
        log: PathBuf,
    ) -> Result<Self, BoxError> {
        let child = Command::new(bulkhead)
            .args(["ingest", "--lake"])
            .arg(lake)
            .args(["--metrics-addr", "", "--group", group])
            .args(extra)
            .env("BULKHEAD_KAFKA", &config.brokers)
            .env("BULKHEAD_TOPIC_PREFIX", &config.topic_prefix)
            .env_remove("BULKHEAD_CONFIG")
            .env("BULKHEAD_LOG", "warn,bulkhead_ingest=info")
            // Plain text: the benchmarks read the log (`committed_flows`).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| format!("starting {bulkhead} ingest: {e}"))?;
        Ok(Self { child, log })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Flows the child has committed to `flows` so far, from its "committed flows to the
    /// lake" log lines.
    fn committed_flows(&self) -> u64 {
        committed_flows(&self.log_text())
    }

    fn check_running(&mut self) -> Result<(), BoxError> {
        if let Some(status) = self.child.try_wait()? {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            return Err(format!("ingest exited ({status}): {}", tail.join("\n")).into());
        }
        Ok(())
    }

    /// (peak resident MiB, CPU seconds) of the child, from /proc.
    fn usage(&self) -> (f64, f64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm_kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at ") ".
        let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after ") ".
        let hz = 100.0; // USER_HZ on Linux
        (hwm_kib / 1024.0, (ticks(11) + ticks(12)) / hz)
    }

    fn stop(mut self) -> Result<(), BoxError> {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err("ingest ignored SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for IngestChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `group` has committed every partition of `topic` up to its high watermark.
/// Whether consumer group `group` has committed every partition of `topic` up to its
/// high watermark (the lag a Kafka monitor shows is zero).
pub fn caught_up(config: &KafkaConfig, group: &str, topic: &str) -> Result<bool, BoxError> {
    let mut client = config.client_config();
    client.set("group.id", group);
    let consumer: BaseConsumer = client.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = match consumer.committed_offsets(list, Duration::from_secs(10)) {
        Ok(committed) => committed,
        // A fresh broker's group coordinator is still loading: not caught up yet.
        Err(e) if coordinator_not_ready(&e) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    for p in partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let at = committed
            .find_partition(topic, p)
            .map(|e| e.offset())
            .unwrap_or(Offset::Invalid);
        let done = match at {
            Offset::Offset(o) => o >= high,
            _ => high == 0,
        };
        if !done {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The Python baseline's result.
#[derive(serde::Deserialize)]
struct PythonResult {
    flows: u64,
    seconds: f64,
}

/// The `bench` crate's directory, where the Python baseline lives: cargo's at run time
/// when set (tests and their children), else the one compiled in, else `bench/` under the
/// working directory. A target directory shared by two checkouts can hold a build whose
/// compiled-in path names the other, since removed, checkout.
fn bench_dir() -> PathBuf {
    let compiled = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        Some(compiled.clone()),
        std::env::current_dir().ok().map(|dir| dir.join("bench")),
    ]
    .into_iter()
    .flatten()
    .find(|dir| dir.join("python/ingest_baseline.py").is_file())
    .unwrap_or(compiled)
}

fn python_baseline(
    config: &KafkaConfig,
    flows: u64,
    out: &Path,
    window_secs: u64,
) -> Result<PythonResult, BoxError> {
    let bench_dir = bench_dir();
    let script = bench_dir.join("python/ingest_baseline.py");
    let proto = bench_dir.join("../schemas/proto");
    let output = Command::new("python3")
        .arg(&script)
        .args(["--brokers", &config.brokers])
        .args(["--flows-topic", &config.topic(Topic::Flows)])
        .args(["--inventory-topic", &config.topic(Topic::Inventory)])
        .args(["--expect", &flows.to_string()])
        .args(["--window-secs", &window_secs.to_string()])
        .arg("--proto")
        .arg(&proto)
        .arg("--out")
        .arg(out)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("python3 {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "the Python baseline failed ({}); dev/setup installs confluent-kafka, protobuf, grpcio-tools and pyarrow",
            output.status
        )
        .into());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(last).map_err(|e| format!("python output {last:?}: {e}"))?)
}

/// Throughput of `bulkhead ingest` vs. the Python pipeline on the same topic (unless
/// `with_python` is false).
pub async fn throughput(
    bulkhead: &str,
    kafka: &str,
    flows: u64,
    partitions: i32,
    rounds: usize,
    with_python: bool,
    work: &Path,
) -> Result<Throughput, BoxError> {
    let config = fresh_config(kafka, "ingest");
    setup_topics(&config, partitions).await?;
    let producer = Producer::new(&config)?;
    let (estate, spec) = backlog(5, flows);
    publish_inventory(&producer, &config, &estate).await?;
    let produced = produce(&producer, &config, estate.flows(&spec)).await?;
    println!(
        "ingest: {produced} flows on {} ({partitions} partitions), {rounds} rounds alternating with Python",
        config.topic(Topic::Flows)
    );
    let mut out = Throughput {
        flows: produced,
        ..Default::default()
    };
    let topic = config.topic(Topic::Flows);
    for round in 0..rounds {
        // Each round reads the whole topic again: its own consumer group and lake.
        let lake = work.join(format!("lake-throughput-{round}"));
        let group = format!("bench-ingest-{round}");
        let started = Instant::now();
        let mut child = IngestChild::start(
            bulkhead,
            &config,
            &lake,
            &group,
            &["--commit-interval-secs", "1", "--commit-flows", "500000"],
        )?;
        let mut startup = None;
        let mut usage;
        loop {
            child.check_running()?;
            if startup.is_none() && child.log_text().contains("ingesting flows") {
                startup = Some(started.elapsed());
            }
            usage = child.usage();
            if caught_up(&config, &group, &topic)? {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rust = started.elapsed();
        child.stop()?;
        let _ = std::fs::remove_dir_all(&lake);
        let startup = startup.unwrap_or_default();
        let rate = produced as f64 / (rust - startup).as_secs_f64();
        println!(
            "ingest: rust {:.2} s (start-up {:.2} s), {rate:.0} flows/s; cpu {:.2} s; peak {:.0} MiB",
            rust.as_secs_f64(),
            startup.as_secs_f64(),
            usage.1,
            usage.0
        );
        out.rust_flows_per_sec.push(rate);
        out.rust_flows_per_cpu_sec
            .push(produced as f64 / usage.1.max(1e-9));
        out.startup_secs.push(startup.as_secs_f64());
        out.peak_rss_mib = out.peak_rss_mib.max(usage.0);
        if !with_python {
            continue;
        }
        let python = python_baseline(&config, produced, &work.join("python-out"), 60)?;
        if python.flows != produced {
            return Err(format!("python read {} flows of {produced}", python.flows).into());
        }
        let rate = python.flows as f64 / python.seconds;
        println!("ingest: python {:.2} s, {rate:.0} flows/s", python.seconds);
        out.python_flows_per_sec.push(rate);
    }
    Ok(out)
}

/// The throughput runs: each round one `bulkhead ingest` and one Python pipeline over the
/// same topic.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Throughput {
    pub flows: u64,
    /// Without start-up (topic check, state topics loaded).
    pub rust_flows_per_sec: Vec<f64>,
    /// Flows per CPU second (user + system) of the ingest process.
    pub rust_flows_per_cpu_sec: Vec<f64>,
    pub startup_secs: Vec<f64>,
    pub peak_rss_mib: f64,
    pub python_flows_per_sec: Vec<f64>,
}

/// One row of the scaling table: `processes` ingest processes in one consumer group
/// sharing `partitions` partitions and one lake.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScalingRow {
    pub processes: usize,
    pub partitions: i32,
    pub flows: u64,
    /// Wall time includes start-up and the group's rebalances; over the rounds.
    pub flows_per_sec: Summary,
    pub flows_per_cpu_sec: Summary,
    /// Median flows/s ÷ (processes × one process's median flows/s).
    pub efficiency: f64,
}

/// The same backlog drained by 1, 2, 4 … ingest processes in one group (partitions =
/// the largest count), each run on fresh topics and a fresh lake. Start-up is included:
/// every process pays it, as a real scale-out does.
pub async fn scaling(
    bulkhead: &str,
    kafka: &str,
    flows: u64,
    processes: &[usize],
    rounds: usize,
    work: &Path,
) -> Result<Vec<ScalingRow>, BoxError> {
    let partitions = processes.iter().copied().max().unwrap_or(1) as i32;
    let (estate, spec) = backlog(6, flows);
    let mut rows: Vec<ScalingRow> = Vec::new();
    for &n in processes {
        let config = fresh_config(kafka, &format!("scale{n}"));
        setup_topics(&config, partitions).await?;
        let producer = Producer::new(&config)?;
        publish_inventory(&producer, &config, &estate).await?;
        let produced = produce(&producer, &config, estate.flows(&spec)).await? as f64;
        let topic = config.topic(Topic::Flows);
        let (mut rates, mut per_cpu) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Each round drains the whole topic again: its own group and lake.
            let lake = work.join(format!("lake-scale-{n}-{round}"));
            let group = format!("bench-scaling-{round}");
            let started = Instant::now();
            let mut children = (0..n)
                .map(|i| {
                    IngestChild::start_logged(
                        bulkhead,
                        &config,
                        &lake,
                        &group,
                        &["--commit-interval-secs", "1", "--commit-flows", "500000"],
                        work.join(format!("scale-{n}-{round}-{i}.log")),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut cpu = vec![0.0; n];
            loop {
                for (i, child) in children.iter_mut().enumerate() {
                    child.check_running()?;
                    cpu[i] = child.usage().1;
                }
                if caught_up(&config, &group, &topic)? {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let seconds = started.elapsed().as_secs_f64();
            for child in children {
                child.stop()?;
            }
            let _ = std::fs::remove_dir_all(&lake);
            rates.push(produced / seconds);
            per_cpu.push(produced / cpu.iter().sum::<f64>().max(1e-9));
        }
        let flows_per_sec = Summary::of(rates);
        let single = rows
            .first()
            .map_or(flows_per_sec.median, |r| r.flows_per_sec.median);
        let row = ScalingRow {
            processes: n,
            partitions,
            flows: produced as u64,
            efficiency: flows_per_sec.median / (single * n as f64),
            flows_per_sec,
            flows_per_cpu_sec: Summary::of(per_cpu),
        };
        println!(
            "ingest scaling: {n} process(es), {partitions} partitions: {:.0} flows/s (median of {rounds}; {:.0}-{:.0}), {:.0} flows per CPU second, efficiency {:.2}",
            row.flows_per_sec.median,
            row.flows_per_sec.min,
            row.flows_per_sec.max,
            row.flows_per_cpu_sec.median,
            row.efficiency
        );
        rows.push(row);
    }
    Ok(rows)
}

/// The rows of every "committed flows to the lake" line of an ingest log (the span
/// before the message has a `rows` of its own: the event's is the one after it).
fn committed_flows(log: &str) -> u64 {
    log.lines()
        .filter_map(|line| {
            line.split_once("committed flows to the lake")
                .map(|(_, fields)| fields)
        })
        .filter_map(|fields| {
            fields
                .split_whitespace()
                .find_map(|field| field.strip_prefix("rows="))
                .and_then(|rows| rows.parse::<u64>().ok())
        })
        .sum()
}

/// What the freshness run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Freshness {
    /// Produce → visible, ms (none if no probe became visible).
    pub latency_ms: Option<Summary>,
    pub peak_rss_mib: f64,
    /// Flows the process committed, the whole load and the probes.
    pub flows_committed: u64,
    /// CPU seconds (user + system) of the process from its start to its last commit.
    pub cpu_s: f64,
    /// `flows_committed / cpu_s`: per CPU second over a minute of steady load, start-up
    /// included, where the throughput rounds are a fresh process's first 2M flows (its
    /// first touch of every page it uses, costly on this VM, is a fifth of those).
    pub flows_per_cpu_s: f64,
}

fn coordinator_not_ready(error: &bulkhead_kafka::rdkafka::error::KafkaError) -> bool {
    use bulkhead_kafka::rdkafka::error::RDKafkaErrorCode::{
        CoordinatorLoadInProgress, CoordinatorNotAvailable, NotCoordinator,
    };
    matches!(
        error.rdkafka_error_code(),
        Some(NotCoordinator | CoordinatorLoadInProgress | CoordinatorNotAvailable)
    )
}

/// Signs the estate's policy (version 1, created now: before the load's flows) with a
/// fresh key and publishes it; returns the public key's PEM file, written under `work`.
async fn publish_estate_policy(
    producer: &Producer,
    config: &KafkaConfig,
    estate: &Estate,
    work: &Path,
) -> Result<PathBuf, BoxError> {
    use bulkhead_schemas::policy::PolicySigner;
    let signer = PolicySigner::generate();
    let signed = signer.sign(&estate.policy(1, bulkhead_schemas::now_unix_ns()));
    producer
        .send(
            &config.topic(Topic::Policy),
            bulkhead_schemas::topics::POLICY_KEY.as_bytes(),
            &signed.encode_to_vec(),
        )
        .await?;
    let key = work.join("policy-key.pem");
    std::fs::write(&key, signer.public_key_pem())?;
    Ok(key)
}

/// Produce → visible in a DataFusion query, p50/p99, under `rate` flows/s for `secs`;
/// the process's CPU per flow over the whole load.
pub async fn freshness(
    bulkhead: &str,
    kafka: &str,
    rate: u64,
    secs: u64,
    work: &Path,
) -> Result<Freshness, BoxError> {
    let config = fresh_config(kafka, "fresh");
    setup_topics(&config, 4).await?;
    let producer = Producer::new(&config)?;
    let estate = Estate::generate(6, 200);
    publish_inventory(&producer, &config, &estate).await?;
    let key = publish_estate_policy(&producer, &config, &estate, work).await?;
    let lake = work.join("lake-freshness");
    let key_arg = key.to_str().ok_or("policy key path is not UTF-8")?;
    let mut child = IngestChild::start(
        bulkhead,
        &config,
        &lake,
        "bench-fresh",
        &["--policy-public-key", key_arg],
    )?;
    let started = |log: String| {
        ["ingesting flows", "policy version verified"]
            .iter()
            .all(|line| log.contains(line))
    };
    while !started(child.log_text()) {
        child.check_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Load: a thread encodes batches of 1,000 flows and enqueues them at `rate` without
    // waiting for each acknowledgement (a fleet's agents do not wait for one another);
    // probes go from their own task every 100 ms, so catching up on load never delays one.
    let load = {
        let config = config.clone();
        std::thread::spawn(move || -> Result<u64, String> {
            use bulkhead_kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
            use bulkhead_kafka::rdkafka::producer::FutureRecord;
            let producer = Producer::new(&config).map_err(|e| e.to_string())?;
            let topic = config.topic(Topic::Flows);
            let batches = estate.flows(&FlowSpec {
                seed: 6,
                records: rate * secs,
                start_unix_ns: bulkhead_schemas::now_unix_ns(),
                span_ns: secs * 1_000_000_000,
                batch_records: 1_000,
            });
            let start = Instant::now();
            let mut sent = 0u64;
            for batch in batches {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                let payload = batch.encode_to_vec();
                loop {
                    let record = FutureRecord::to(&topic)
                        .key(batch.host_id.as_bytes())
                        .payload(&payload);
                    match producer.inner().send_result(record) {
                        Ok(_delivery) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err((e, _)) => return Err(format!("producing load to {topic}: {e}")),
                    }
                }
                sent += batch.records.len() as u64;
            }
            producer
                .flush(Duration::from_secs(30))
                .map_err(|e| e.to_string())?;
            Ok(sent)
        })
    };
    let produced_at: std::sync::Arc<std::sync::Mutex<BTreeMap<i64, Instant>>> =
        std::sync::Arc::default();
    let probes = {
        let produced_at = produced_at.clone();
        let topic = config.topic(Topic::Flows);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let start = Instant::now();
            let mut probe = 0i64;
            while start.elapsed() < Duration::from_secs(secs) {
                tick.tick().await;
                let now_ns = bulkhead_schemas::now_unix_ns();
                let batch = FlowBatch {
                    schema_version: 1,
                    host_id: "probe".into(),
                    agent_instance_id: "probe".into(),
                    batch_seq: probe as u64,
                    records: vec![FlowRecord {
                        host_id: "probe".into(),
                        ip_version: 4,
                        src_ip: vec![192, 0, 2, 1],
                        dst_ip: vec![192, 0, 2, 2],
                        first_seen_unix_ns: now_ns,
                        last_seen_unix_ns: now_ns,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let at = Instant::now();
                if producer
                    .send(&topic, b"probe", &batch.encode_to_vec())
                    .await
                    .is_ok()
                    && let Ok(mut m) = produced_at.lock()
                {
                    m.insert(probe, at);
                }
                probe += 1;
            }
        })
    };
    let mut latencies = Vec::new();
    let mut seen = -1i64;
    let url = url::Url::from_directory_path(lake.join("flows")).map_err(|()| "lake path")?;
    let deadline = Instant::now() + Duration::from_secs(secs + 40);
    let mut peak = 0.0f64;
    while Instant::now() < deadline {
        child.check_running()?;
        peak = peak.max(child.usage().0);
        if let Some(max) = newest_probe(&url).await {
            let now = Instant::now();
            if max > seen {
                if let Ok(m) = produced_at.lock() {
                    for (_, at) in m.range(seen + 1..=max) {
                        latencies.push(now - *at);
                    }
                }
                seen = max;
            }
        }
        let total = produced_at.lock().map(|m| m.len() as i64).unwrap_or(0);
        if probes.is_finished() && seen + 1 >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    probes.await?;
    let sent = load.join().map_err(|_| "the load thread panicked")??;
    let probes_sent = produced_at.lock().map(|m| m.len() as u64).unwrap_or(0);
    // CPU per flow once every flow produced is committed (nothing left in flight).
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.committed_flows() < sent + probes_sent && Instant::now() < deadline {
        child.check_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (last_peak, cpu_s) = child.usage();
    let flows_committed = child.committed_flows();
    child.stop()?;
    let latency_ms = (!latencies.is_empty()).then(|| Summary::of_durations_ms(&latencies));
    let fresh = Freshness {
        latency_ms,
        peak_rss_mib: peak.max(last_peak),
        flows_committed,
        cpu_s,
        flows_per_cpu_s: flows_committed as f64 / cpu_s.max(1e-9),
    };
    if let Some(s) = &fresh.latency_ms {
        println!(
            "ingest: freshness at {rate} flows/s ({sent} flows in {secs} s) (ms): {s}; peak {:.0} MiB",
            fresh.peak_rss_mib
        );
    }
    println!(
        "ingest: steady load under the estate's policy: {flows_committed} flows committed for {cpu_s:.2} CPU s = {:.0} flows per CPU second",
        fresh.flows_per_cpu_s
    );
    Ok(fresh)
}

async fn newest_probe(url: &url::Url) -> Option<i64> {
    let table = deltalake::open_table(url.clone()).await.ok()?;
    let ctx = datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state()).ok()?;
    ctx.register_table("flows", table.table_provider().await.ok()?)
        .ok()?;
    let batches = ctx
        .sql("SELECT max(batch_seq) FROM flows WHERE host_id = 'probe'")
        .await
        .ok()?
        .collect()
        .await
        .ok()?;
    use arrow_array::cast::AsArray as _;
    let column = batches.first()?.column(0);
    let values = column.as_primitive::<arrow_array::types::Int64Type>();
    (!arrow_array::Array::is_null(values, 0)).then(|| values.value(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_flows_sums_the_events_rows_not_the_spans() {
        let log = "2026-11-27T12:23:07.444842Z  INFO commit{partitions=1 rows=500720 commit_attempt=1}: bulkhead_ingest::telemetry: committed flows to the lake version=1 rows=441000 partitions=1 took_ms=1675
2026-11-27T12:23:08Z INFO bulkhead_ingest::run: partitions assigned rows=7
2026-11-27T12:23:09Z INFO commit{rows=9}: bulkhead_ingest::telemetry: committed flows to the lake version=2 rows=244000 partitions=2 took_ms=524
";
        assert_eq!(committed_flows(log), 441_000 + 244_000);
    }
}
