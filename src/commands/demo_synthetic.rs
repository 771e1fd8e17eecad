//! `bulkhead demo --synthetic`: the pipeline without root or a lab, against a real broker
//! (for machines where network namespaces are not available).
//!
//! 1. Creates the topics, generates a seeded estate and publishes its inventory and flows
//!    exactly as collectors would.
//! 2. Reads those flows back from Kafka, decodes them into Arrow columns and summarises
//!    them (the ingest path's first half).
//! 3. Validates a policy, signs it, publishes it on the policy topic, reads it back and
//!    verifies it as an enforcer does, then shows a forged and a stale copy refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arrow_array::cast::AsArray as _;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array as _, ArrayRef, Int64Array, RecordBatch, StringArray};
use bulkhead_bench::workload::{Estate, FlowSpec};
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{Consumer, ConsumerOptions, KafkaConfig, Offsets, Producer};
use bulkhead_schemas::lake::FlowColumns;
use bulkhead_schemas::policy::{PolicyDocument, PolicySigner, PolicyVerifier, PolicyVersion};
use bulkhead_schemas::proto::{FlowBatch, SignedPolicy};
use bulkhead_schemas::topics::{POLICY_KEY, Topic};
use prost::Message as _;

use crate::config::Settings;

const EXAMPLE_POLICY: &str = include_str!("../../examples/policy.yaml");

#[derive(clap::Args, Debug)]
pub struct SyntheticArgs {
    /// Hosts in the synthetic estate.
    #[arg(long, default_value_t = 30)]
    pub hosts: usize,
    /// Flow records to publish and read back.
    #[arg(long, default_value_t = 200_000)]
    pub flows: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Policy to sign and publish [default: examples/policy.yaml, built in].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
}

pub async fn run(settings: &Settings, args: SyntheticArgs) -> anyhow::Result<()> {
    let kafka = &settings.kafka;
    step(&format!("Kafka at {}", kafka.brokers));
    let probe = kafka.clone();
    tokio::task::spawn_blocking(move || admin::list_topics(&probe, ""))
        .await?
        .with_context(|| {
            format!(
                "no Kafka broker answers at {} (start one: dev/kafka/up)",
                kafka.brokers
            )
        })?;
    super::topics::create_all(kafka, &TopicOptions::default()).await?;

    step(&format!(
        "Publishing a synthetic estate: {} hosts, {} flow records (seed {})",
        args.hosts, args.flows, args.seed
    ));
    let estate = Estate::generate(args.seed, args.hosts);
    let spec = FlowSpec::recent(args.seed, args.flows, 300);
    let flows_topic = kafka.topic(Topic::Flows);
    let reader = Consumer::new(
        kafka,
        &ConsumerOptions::group(format!("bulkhead-demo-{}", std::process::id())),
    )?;
    let before = watermarks(&reader, &flows_topic).await?;
    let report = super::gen_flows::publish(kafka, &estate, &spec, true).await?;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "  {} records in {} batches, {:.1} MB of protobuf (zstd on the wire), {:.2} s: {:.0} records/s into Kafka",
        report.records,
        report.batches,
        report.encoded_bytes as f64 / 1e6,
        secs,
        report.records as f64 / secs
    );

    step("Reading the flows back from Kafka into Arrow");
    let after = watermarks(&reader, &flows_topic).await?;
    let flows = read_back(&reader, &flows_topic, &before, &after, report.batches).await?;
    summarise(&flows, report.records, report.flow_bytes)?;

    step("Policy: validate, sign, publish, verify as an enforcer would");
    policy_round_trip(kafka, args.policy.as_deref()).await?;

    step("Next");
    println!("  bulkhead topics list            # what is on the broker");
    println!("  bulkhead gen --to stdout --flows 5 | head   # flows as JSON lines");
    println!("  bulkhead policy validate examples/policy.yaml");
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

async fn watermarks(consumer: &Consumer, topic: &str) -> anyhow::Result<Offsets> {
    let marks = consumer.watermarks(topic, Duration::from_secs(30))?;
    Ok(marks
        .into_iter()
        .map(|(partition, (_, high))| ((topic.to_string(), partition), high))
        .collect())
}

/// Reads every message between `from` and `to` (per partition) into Arrow columns.
async fn read_back(
    consumer: &Consumer,
    topic: &str,
    from: &Offsets,
    to: &Offsets,
    expected: u64,
) -> anyhow::Result<RecordBatch> {
    consumer.assign(from)?;
    let mut columns = FlowColumns::with_capacity(0);
    let mut remaining: HashMap<i32, i64> = to
        .iter()
        .filter(|(k, high)| from.get(k).is_some_and(|low| low < high))
        .map(|((_, p), high)| (*p, *high))
        .collect();
    let bar = super::progress(expected, "batches");
    while !remaining.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no message from Kafka for 30 s while reading back")??;
        if let Some(payload) = message.payload() {
            let batch = FlowBatch::decode(payload).with_context(|| {
                format!(
                    "{topic}/{} offset {}: not a FlowBatch",
                    message.partition(),
                    message.offset()
                )
            })?;
            columns.append_batch(&batch)?;
        }
        bar.inc(1);
        if remaining
            .get(&message.partition())
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&message.partition());
        }
    }
    bar.finish_and_clear();
    Ok(columns.finish()?)
}

fn summarise(
    flows: &RecordBatch,
    produced_records: u64,
    produced_bytes: u64,
) -> anyhow::Result<()> {
    let bytes = flows
        .column_by_name("bytes")
        .context("bytes column")?
        .as_primitive::<Int64Type>();
    let total_bytes: i64 = bytes.iter().flatten().sum();
    println!(
        "  {} rows × {} columns; bytes sum {} (published {}): {}",
        flows.num_rows(),
        flows.num_columns(),
        total_bytes,
        produced_bytes,
        if flows.num_rows() as u64 == produced_records && total_bytes as u64 == produced_bytes {
            "exact"
        } else {
            "MISMATCH"
        }
    );
    anyhow::ensure!(
        flows.num_rows() as u64 == produced_records,
        "read back {} rows, published {produced_records}",
        flows.num_rows()
    );

    // The heaviest server-side edges (what the dependency map will draw).
    let col = |name: &str| flows.column_by_name(name).expect("flows schema column");
    let (src, dst, port) = (
        col("src_ip").as_string::<i32>().clone(),
        col("dst_ip").as_string::<i32>().clone(),
        col("dst_port").as_primitive::<Int32Type>().clone(),
    );
    let (server, process) = (
        col("local_is_server").as_boolean().clone(),
        col("process_name").as_string::<i32>().clone(),
    );
    let mut edges: HashMap<(&str, &str, i32, &str), (i64, i64)> = HashMap::new();
    for row in 0..flows.num_rows() {
        if !server.value(row) {
            continue;
        }
        let process = if process.is_null(row) {
            "?"
        } else {
            process.value(row)
        };
        let entry = edges
            .entry((src.value(row), dst.value(row), port.value(row), process))
            .or_default();
        entry.0 += 1;
        entry.1 += bytes.value(row);
    }
    let mut top: Vec<_> = edges.into_iter().collect();
    top.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(&b.0)));
    top.truncate(8);
    let table = RecordBatch::try_from_iter([
        (
            "src_ip",
            Arc::new(StringArray::from_iter_values(top.iter().map(|e| e.0.0))) as ArrayRef,
        ),
        (
            "dst_ip",
            Arc::new(StringArray::from_iter_values(top.iter().map(|e| e.0.1))) as ArrayRef,
        ),
        (
            "dst_port",
            Arc::new(Int64Array::from_iter_values(
                top.iter().map(|e| i64::from(e.0.2)),
            )) as ArrayRef,
        ),
        (
            "server_process",
            Arc::new(StringArray::from_iter_values(top.iter().map(|e| e.0.3))) as ArrayRef,
        ),
        (
            "flows",
            Arc::new(Int64Array::from_iter_values(top.iter().map(|e| e.1.0))) as ArrayRef,
        ),
        (
            "bytes",
            Arc::new(Int64Array::from_iter_values(top.iter().map(|e| e.1.1))) as ArrayRef,
        ),
    ])?;
    println!(
        "  heaviest edges (server side):\n{}",
        arrow_cast::pretty::pretty_format_batches(&[table])?
    );
    Ok(())
}

async fn policy_round_trip(
    kafka: &KafkaConfig,
    file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (text, name) = match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            EXAMPLE_POLICY.to_string(),
            "examples/policy.yaml".to_string(),
        ),
    };
    let document = PolicyDocument::load(&text, &name)?;
    println!(
        "  {name}: valid, {} rulesets, {} rules, {} deny rules",
        document.rulesets.len(),
        document.rules().count(),
        document.deny_rules.len()
    );

    let signer = PolicySigner::generate();
    let topic = kafka.topic(Topic::Policy);
    let producer = Producer::new(kafka)?;
    let reader = Consumer::new(
        kafka,
        &ConsumerOptions::group(format!("bulkhead-demo-policy-{}", std::process::id())),
    )?;
    let high = watermarks(&reader, &topic).await?;
    // Versions on a shared demo broker keep rising: take the next after what is there.
    let version = high.values().copied().max().unwrap_or(0) as u64 + 1;
    let signed = signer.sign(&PolicyVersion::new(
        version,
        version - 1,
        "bulkhead-demo",
        "demo",
        document,
    ));
    let delivery = producer
        .send(&topic, POLICY_KEY.as_bytes(), &signed.encode_to_vec())
        .await?;
    println!(
        "  published version {version} signed by key {} to {topic} (offset {})",
        signer.key_id(),
        delivery.offset
    );

    reader.assign(
        &[((topic.clone(), delivery.partition), delivery.offset)]
            .into_iter()
            .collect(),
    )?;
    let message = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .context("policy read back")??;
    let bytes = message.payload().unwrap_or_default().to_vec();
    let verifier = PolicyVerifier::new([signer.verifying_key()]);
    let accepted = verifier.verify_bytes(&bytes, None)?;
    println!(
        "  enforcer view: accepted version {} (content sha256 {})",
        accepted.version,
        hex::encode(&accepted.content_sha256[..8])
    );

    let mut forged = SignedPolicy::decode(bytes.as_slice())?;
    let last = forged.payload.len() - 1;
    forged.payload[last] ^= 0x01;
    println!(
        "  forged copy (one bit flipped): refused: {}",
        verifier.verify(&forged, None).unwrap_err()
    );
    println!(
        "  replayed copy after applying it: refused: {}",
        verifier
            .verify_bytes(&bytes, Some(accepted.version))
            .unwrap_err()
    );
    let unsigned = SignedPolicy {
        signature: vec![],
        ..SignedPolicy::decode(bytes.as_slice())?
    };
    println!(
        "  unsigned copy: refused: {}",
        verifier.verify(&unsigned, None).unwrap_err()
    );
    Ok(())
}
