//! `bench`: Bulkhead's benchmarks. Each prints its figures beside a baseline measured in
//! the same run and writes them to `bench/results/<name>.json`.
//!
//!   cargo run --release -p bulkhead-bench --bin bench -- enforcer          # full sizes
//!   cargo run -p bulkhead-bench --bin bench -- enforcer --quick            # smoke test
//!   cargo run --release -p bulkhead-bench --bin bench -- ingest            # needs the broker

use std::time::Duration;

use bulkhead_bench::{enforcer, ingest, lab, schemas};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Bulkhead benchmarks, each beside its baseline in the same run")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
    /// Small sizes and few repetitions: checks that every benchmark runs (CI), not speed.
    #[arg(long, global = true)]
    quick: bool,
    /// Where results are written.
    #[arg(long, global = true, default_value = "bench/results")]
    out: std::path::PathBuf,
}

#[derive(Subcommand)]
enum Bench {
    /// FlowBatch decode and conversion into Arrow columns, vs. decode alone.
    Schemas,
    /// Apply latency by ruleset size, packet cost of 10,000 rules, provision → active.
    Enforcer {
        /// The bulkhead binary to run as the enforcer [default: next to this binary].
        #[arg(long)]
        bulkhead: Option<String>,
        /// Kafka bootstrap for the benchmark's own topics (root namespace).
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// The broker's lab listener, as hosts in namespaces reach it.
        #[arg(long, default_value = lab::LAB_KAFKA)]
        lab_kafka: String,
    },
    /// Flows/s from Kafka into the lake (decode, enrich, edges, Delta commits) vs. a
    /// Python pipeline doing the same job; freshness p50/p99 under load; peak memory.
    Ingest {
        /// The bulkhead binary to run as ingest [default: next to this binary].
        #[arg(long)]
        bulkhead: Option<String>,
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: String,
        /// Flows for the throughput run [default: 2,000,000; --quick: 100,000].
        #[arg(long)]
        flows: Option<u64>,
        /// Steady load of the freshness run, flows/s [default: 200,000; --quick: 5,000].
        #[arg(long)]
        rate: Option<u64>,
    },
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    match args.bench {
        Bench::Schemas => {
            let (records, rounds) = if args.quick {
                (20_000, 3)
            } else {
                (1_000_000, 7)
            };
            let report = schemas::conversion(records, rounds);
            let path = args.out.join("schemas.json");
            std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            println!("results: {}", path.display());
        }
        Bench::Enforcer {
            bulkhead,
            kafka,
            lab_kafka,
        } => {
            if let Some(problem) = lab::host_problem() {
                return Err(format!("the enforcer benchmarks need lab hosts: {problem}").into());
            }
            let bulkhead = match bulkhead {
                Some(path) => path,
                None => std::env::current_exe()?
                    .with_file_name("bulkhead")
                    .to_string_lossy()
                    .into_owned(),
            };
            let (cases, reps, rounds, window): (&[(usize, usize)], usize, usize, Duration) =
                if args.quick {
                    (
                        &[(10, 0), (1_000, 0), (0, 10_000)],
                        3,
                        2,
                        Duration::from_millis(300),
                    )
                } else {
                    (
                        &[(10, 0), (1_000, 0), (10_000, 0), (0, 100_000)],
                        20,
                        5,
                        Duration::from_secs(2),
                    )
                };
            let host = lab::Host::new("apply");
            let apply = enforcer::apply_latency(&host, cases, reps);
            drop(host);
            let (client, server) = (lab::Host::new("client"), lab::Host::new("server"));
            let packet_cost = enforcer::packet_cost(
                &client,
                &server,
                if args.quick { 1_000 } else { 10_000 },
                rounds,
                window,
            );
            drop((client, server));
            let mut config = bulkhead_kafka::KafkaConfig::with_brokers(&kafka);
            config.topic_prefix = format!("bench.{}.", std::process::id());
            let provision = enforcer::provision_latency(
                &bulkhead,
                &config,
                &lab_kafka,
                if args.quick { 4 } else { 30 },
            )
            .await;
            let report = serde_json::json!({ "quick": args.quick, "apply": apply, "packet_cost": packet_cost, "provision": provision });
            let path = args.out.join("enforcer.json");
            std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            println!("results: {}", path.display());
        }
        Bench::Ingest {
            bulkhead,
            kafka,
            flows,
            rate,
        } => {
            let bulkhead = match bulkhead {
                Some(path) => path,
                None => std::env::current_exe()?
                    .with_file_name("bulkhead")
                    .to_string_lossy()
                    .into_owned(),
            };
            let flows = flows.unwrap_or(if args.quick { 100_000 } else { 2_000_000 });
            let rate = rate.unwrap_or(if args.quick { 5_000 } else { 200_000 });
            let secs = if args.quick { 20 } else { 60 };
            let work =
                std::env::temp_dir().join(format!("bulkhead-bench-ingest-{}", std::process::id()));
            std::fs::create_dir_all(&work)?;
            let partitions = 4;
            let (rust_secs, startup, cpu, peak, produced, python) =
                ingest::throughput(&bulkhead, &kafka, flows, partitions, &work).await?;
            let (freshness_ms, fresh_peak) =
                ingest::freshness(&bulkhead, &kafka, rate, secs, &work).await?;
            let _ = std::fs::remove_dir_all(&work);
            let rust_rate = produced / (rust_secs - startup);
            let python_rate = python.0 as f64 / python.1;
            let report = ingest::IngestReport {
                flows: produced as u64,
                partitions,
                rust_secs,
                rust_startup_secs: startup,
                rust_flows_per_sec: rust_rate,
                python_secs: python.1,
                python_flows_per_sec: python_rate,
                ratio: rust_rate / python_rate,
                rust_cpu_secs: cpu,
                rust_flows_per_cpu_sec: produced / cpu.max(1e-9),
                peak_rss_mib: peak,
                freshness_rate_flows_per_sec: rate,
                freshness_ms,
                freshness_peak_rss_mib: fresh_peak,
            };
            println!(
                "ingest: {:.0} flows/s vs python {:.0} flows/s: ratio {:.1}x; {:.0} flows per CPU second",
                report.rust_flows_per_sec,
                report.python_flows_per_sec,
                report.ratio,
                report.rust_flows_per_cpu_sec
            );
            let report = serde_json::json!({ "quick": args.quick, "debug_build": cfg!(debug_assertions), "ingest": report });
            let path = args.out.join("ingest.json");
            std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            println!("results: {}", path.display());
        }
    }
    Ok(())
}
