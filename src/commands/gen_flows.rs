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
