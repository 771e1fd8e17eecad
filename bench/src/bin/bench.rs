//! `bench`: Bulkhead's benchmarks. Each prints its figures beside a baseline measured in
//! the same run and writes them to `bench/results/<name>.json`.
//!
//!   cargo run --release -p bulkhead-bench --bin bench -- enforcer          # full sizes
//!   cargo run -p bulkhead-bench --bin bench -- enforcer --quick            # smoke test

use std::time::Duration;

use bulkhead_bench::{enforcer, lab, schemas};
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
    }
    Ok(())
}
