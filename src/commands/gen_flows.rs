//! `bulkhead gen`: a seeded synthetic estate's inventory and flows, published to Kafka as
//! collectors would publish them, or printed as JSON lines.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bulkhead_bench::workload::{Estate, FlowSpec};
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::{KafkaConfig, Producer};
use bulkhead_schemas::topics::Topic;
use futures::StreamExt as _;
use prost::Message as _;

use crate::config::Settings;

#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// Flow records to generate in total.
    #[arg(long, default_value_t = 100_000)]
    pub flows: u64,
    /// Hosts in the estate (at least 8).
    #[arg(long, default_value_t = 50)]
    pub hosts: usize,
    /// Seed: the same seed and sizes give the same estate and flows.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Spread the flows' timestamps over the last N seconds.
    #[arg(long, default_value_t = 300)]
    pub span_secs: u64,
    /// Records per FlowBatch at most.
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Where the output goes.
    #[arg(long, value_enum, default_value = "kafka")]
    pub to: GenTarget,
    /// What to generate: `estate` (--hosts, --flows) or `datacenter` (--apps; apps of
    /// web/app/db tiers, shared services, cross-app calls, internet egress, injected
    /// scans and lateral movement, over the last 24 hours, with a ground-truth policy).
    #[arg(long, value_enum, default_value = "estate")]
    pub model: GenModel,
    /// Apps in the datacenter model.
    #[arg(long, default_value_t = 60)]
    pub apps: usize,
    /// Write the datacenter's ground-truth policy (YAML) here.
    #[arg(long)]
    pub ground_truth: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GenModel {
    Estate,
    Datacenter,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GenTarget {
    /// Inventory and flow batches to the inventory and flows topics.
    Kafka,
    /// Flow records as JSON lines on stdout.
    Stdout,
}

/// What a publish run sent.
#[derive(Debug, Default)]
pub struct PublishReport {
    pub hosts: usize,
    pub batches: u64,
    pub records: u64,
    /// Sum of the records' `bytes` (traffic volume, for checking a read-back).
    pub flow_bytes: u64,
    pub encoded_bytes: u64,
    pub elapsed: Duration,
}

pub async fn run(settings: &Settings, args: GenArgs) -> anyhow::Result<()> {
    if let GenModel::Datacenter = args.model {
        return datacenter(settings, &args).await;
    }
    let estate = Estate::generate(args.seed, args.hosts);
    let spec = FlowSpec {
        batch_records: args.batch_records.max(1),
        ..FlowSpec::recent(args.seed, args.flows, args.span_secs)
    };
    match args.to {
        GenTarget::Stdout => print_json(&estate, &spec),
        GenTarget::Kafka => {
            admin::ensure_topics(
                &settings.kafka,
                &[Topic::Flows, Topic::Inventory],
                &TopicOptions::default(),
            )
            .await?;
            let report = publish(&settings.kafka, &estate, &spec, true).await?;
            let secs = report.elapsed.as_secs_f64().max(1e-9);
            println!(
                "published {} inventories and {} flow records in {} batches ({:.1} MB encoded) to {} in {:.2} s: {:.0} records/s",
                report.hosts,
                report.records,
                report.batches,
                report.encoded_bytes as f64 / 1e6,
                settings.kafka.topic(Topic::Flows),
                secs,
                report.records as f64 / secs,
            );
            Ok(())
        }
    }
}

fn print_json(estate: &Estate, spec: &FlowSpec) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for batch in estate.flows(spec) {
        for record in &batch.records {
            let line = bulkhead_schemas::json::flow_record(record);
            if let Err(e) = writeln!(out, "{line}") {
                // A closed pipe (`| head`) is the reader saying it has enough.
                return if e.kind() == std::io::ErrorKind::BrokenPipe {
                    Ok(())
                } else {
                    Err(e).context("writing to stdout")
                };
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// Publishes the estate's inventories, then its flow batches (keyed by host id), with up
/// to 256 sends in flight; fails on the first send the broker does not acknowledge.
pub async fn publish(
    kafka: &KafkaConfig,
    estate: &Estate,
    spec: &FlowSpec,
    show_progress: bool,
) -> anyhow::Result<PublishReport> {
    let producer = Producer::new(kafka)?;
    let started = Instant::now();
    let inventory_topic = kafka.topic(Topic::Inventory);
    for inventory in estate.inventories(bulkhead_schemas::now_unix_ns()) {
        producer
            .send(
                &inventory_topic,
                inventory.host_id.as_bytes(),
                &inventory.encode_to_vec(),
            )
            .await?;
    }

    let bar = if show_progress {
        super::progress(spec.records, "flows")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let flows_topic = kafka.topic(Topic::Flows);
    let mut report = PublishReport {
        hosts: estate.hosts.len(),
        ..Default::default()
    };
    let mut sends = futures::stream::iter(estate.flows(spec))
        .map(|batch| {
            let producer = producer.clone();
            let topic = flows_topic.clone();
            async move {
                let payload = batch.encode_to_vec();
                producer
                    .send(&topic, batch.host_id.as_bytes(), &payload)
                    .await?;
                let flow_bytes = batch.records.iter().map(|r| r.bytes).sum::<u64>();
                Ok::<_, bulkhead_kafka::KafkaError>((
                    batch.records.len() as u64,
                    flow_bytes,
                    payload.len() as u64,
                ))
            }
        })
        .buffer_unordered(256);
    while let Some(sent) = sends.next().await {
        let (records, flow_bytes, encoded_bytes) = sent?;
        report.batches += 1;
        report.records += records;
        report.flow_bytes += flow_bytes;
        report.encoded_bytes += encoded_bytes;
        bar.inc(records);
    }
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// `--model datacenter`: inventories and flow batches of a generated datacenter.
async fn datacenter(settings: &Settings, args: &GenArgs) -> anyhow::Result<()> {
    use bulkhead_bench::datacenter::{Datacenter, DcSpec};
    anyhow::ensure!(args.apps >= 1, "--apps must be at least 1");
    let dc = Datacenter::generate(&DcSpec::day(
        args.seed,
        args.apps,
        bulkhead_schemas::now_unix_ns(),
    ));
    if let Some(path) = &args.ground_truth {
        std::fs::write(path, dc.ground_truth.to_yaml())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let batches = dc.flow_batches(args.batch_records);
    let legit = dc
        .connections
        .iter()
        .filter(|c| c.kind.legitimate())
        .count();
    let summary = format!(
        "datacenter seed {}: {} workloads in {} apps, {} connections ({} injected illegitimate), {} ground-truth rules",
        args.seed,
        dc.workloads.len(),
        args.apps,
        dc.connections.len(),
        dc.connections.len() - legit,
        dc.ground_truth.rules().count()
    );
    match args.to {
        GenTarget::Stdout => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            for record in batches.iter().flat_map(|b| &b.records) {
                if writeln!(out, "{}", bulkhead_schemas::json::flow_record(record)).is_err() {
                    return Ok(()); // closed pipe
                }
            }
            let _ = out.flush();
            eprintln!("{summary}");
        }
        GenTarget::Kafka => {
            admin::ensure_topics(
                &settings.kafka,
                &[Topic::Flows, Topic::Inventory],
                &TopicOptions::default(),
            )
            .await?;
            let producer = Producer::new(&settings.kafka)?;
            let inventory_topic = settings.kafka.topic(Topic::Inventory);
            for inventory in dc.inventories(bulkhead_schemas::now_unix_ns()) {
                producer
                    .send(
                        &inventory_topic,
                        inventory.host_id.as_bytes(),
                        &inventory.encode_to_vec(),
                    )
                    .await?;
            }
            let flows_topic = settings.kafka.topic(Topic::Flows);
            let records: u64 = batches.iter().map(|b| b.records.len() as u64).sum();
            let bar = super::progress(records, "flows");
            let mut sends = futures::stream::iter(batches)
                .map(|batch| {
                    let producer = producer.clone();
                    let topic = flows_topic.clone();
                    async move {
                        producer
                            .send(&topic, batch.host_id.as_bytes(), &batch.encode_to_vec())
                            .await?;
                        Ok::<_, bulkhead_kafka::KafkaError>(batch.records.len() as u64)
                    }
                })
                .buffer_unordered(256);
            while let Some(sent) = sends.next().await {
                bar.inc(sent?);
            }
            bar.finish_and_clear();
            println!("{summary}; published {records} flow records to {flows_topic}");
        }
    }
    Ok(())
}
