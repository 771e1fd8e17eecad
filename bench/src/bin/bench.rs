//! `bench`: Bulkhead's benchmarks. Each prints its figures beside a baseline measured in
//! the same run, writes its own `bench/results/<name>.json`, and adds its headline figures
//! to the run's report (`bench/results/latest.md` and `latest.json`).
//!
//!   cargo run --release -p bulkhead-bench --bin bench -- all               # every benchmark, full sizes
//!   cargo run --release -p bulkhead-bench --bin bench -- all --skip query  # all but one
//!   cargo run --release -p bulkhead-bench --bin bench -- enforcer          # one benchmark
//!   cargo run -p bulkhead-bench --bin bench -- all --quick                 # smoke test (CI)

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_bench::report::{Figure, Report};
use bulkhead_bench::stats::Summary;
use bulkhead_bench::{collector, enforcer, ingest, ingest_stages, lab, query, recommend, schemas};
use clap::{Parser, Subcommand};

/// The same allocator as `bulkhead`, so in-process figures (queries, recommendations,
/// encoding) are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hosts of the larger estate `bench ingest`'s steps also run for.
const FLEET_HOSTS: usize = 5_000;

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
    /// Kafka bootstrap for the benchmarks' own topics (root namespace).
    #[arg(long, global = true, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// The broker's lab listener, as hosts in namespaces reach it.
    #[arg(long, global = true, default_value = lab::LAB_KAFKA)]
    lab_kafka: String,
    /// The bulkhead binary to run as a component [default: next to this binary].
    #[arg(long, global = true)]
    bulkhead: Option<String>,
    /// Where one benchmark run by `bench all` leaves its figures (JSON) for `all` to
    /// gather, instead of writing the run's report itself.
    #[arg(long, global = true, hide = true)]
    report_part: Option<PathBuf>,
}

#[derive(Subcommand, Clone)]
enum Bench {
    /// Every benchmark below, one after the other, each in a process of its own; what
    /// cannot run here is reported.
    All {
        /// Benchmarks to leave out (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = Bench::NAMES)]
        skip: Vec<String>,
    },
    /// FlowBatch decode and conversion into Arrow columns, vs. decode alone.
    Schemas,
    /// Apply latency by ruleset size, packet cost of 10,000 rules, provision → active.
    Enforcer,
    /// TC program cost vs. an empty program, veth throughput with vs. without, user-space
    /// conversion, and the path into Kafka vs. raw librdkafka (root).
    Collector,
    /// Flows/s from Kafka into the lake (decode, enrich, edges, Delta commits) vs. a
    /// Python pipeline (confluent-kafka + pyarrow) doing the same job; freshness p50/p99
    /// under a steady load; peak memory.
    Ingest {
        /// Flows for the throughput run [default: 2,000,000; --quick: 100,000].
        #[arg(long)]
        flows: Option<u64>,
        /// Steady load of the freshness run, flows/s [default: 200,000; --quick: 5,000].
        #[arg(long)]
        rate: Option<u64>,
        /// Only ingest's own throughput rounds, printed (no Python baseline, freshness,
        /// scaling or report): a quick comparison while working on ingest.
        #[arg(long)]
        rust_throughput_only: bool,
    },
    /// Analyst queries: DataFusion over the Delta lake vs. DuckDB on the same Parquet
    /// files (alternating; median and ratio), and the dependency map for many workloads.
    Query {
        /// Flows to put in the lake through Kafka and ingest [default: 50M; --quick 200k].
        #[arg(long)]
        flows: Option<u64>,
        /// Workloads in the dependency map [default: 10,000; --quick 500].
        #[arg(long)]
        map_workloads: Option<usize>,
    },
    /// Recommender time and memory by estate size (growth exponent over the sizes) vs.
    /// the polars aggregation alone; simulation speed vs. the decision function alone.
    Recommend,
}

impl Bench {
    /// Every benchmark, as `bench all` runs them, in order.
    const NAMES: [&str; 6] = [
        "schemas",
        "collector",
        "enforcer",
        "ingest",
        "query",
        "recommend",
    ];

    fn name(&self) -> &'static str {
        match self {
            Bench::All { .. } => "all",
            Bench::Schemas => "schemas",
            Bench::Enforcer => "enforcer",
            Bench::Collector => "collector",
            Bench::Ingest { .. } => "ingest",
            Bench::Query { .. } => "query",
            Bench::Recommend => "recommend",
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    if let Bench::All { skip } = &args.bench {
        return run_each_in_its_own_process(&args, skip);
    }
    let mut report = Report::new(args.quick);
    let outcome = run(args.bench.clone(), &args, &mut report.figures).await;
    if let Err(why) = &outcome {
        eprintln!("bench {}: did not run: {why}", args.bench.name());
    }
    match &args.report_part {
        Some(part) => {
            // `bench all` reports a benchmark that could not run and goes on.
            if let Err(why) = outcome {
                report
                    .skipped
                    .push((args.bench.name().into(), why.to_string()));
            }
            std::fs::write(part, serde_json::to_vec(&report)?)?;
        }
        None => {
            outcome?;
            write_report(&report, &args.out)?;
        }
    }
    Ok(())
}

/// `bench all`: each benchmark runs in a child process (`bench <name> --report-part
/// …`), and their figures are gathered into one report. In one process, a benchmark
/// started with what earlier ones left: memory the allocator kept (counted in its peak:
/// the recommender's first size showed 1,029 MiB after the others, 307 MiB alone),
/// threads and caches.
fn run_each_in_its_own_process(
    args: &Args,
    skip: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut report = Report::new(args.quick);
    for name in Bench::NAMES
        .into_iter()
        .filter(|name| !skip.iter().any(|s| s == name))
    {
        let part = args.out.join(format!(".{name}.part.json"));
        let _ = std::fs::remove_file(&part);
        let mut child = std::process::Command::new(&exe);
        child
            .arg(name)
            .arg("--out")
            .arg(&args.out)
            .args(["--kafka", &args.kafka, "--lab-kafka", &args.lab_kafka])
            .arg("--report-part")
            .arg(&part);
        if args.quick {
            child.arg("--quick");
        }
        if let Some(bulkhead) = &args.bulkhead {
            child.args(["--bulkhead", bulkhead]);
        }
        let status = child.status()?;
        match std::fs::read(&part) {
            Ok(bytes) => {
                let part_report: Report = serde_json::from_slice(&bytes)?;
                report.figures.extend(part_report.figures);
                report.skipped.extend(part_report.skipped);
                let _ = std::fs::remove_file(&part);
            }
            Err(e) => {
                let why = format!("its process ended ({status}) without figures ({e})");
                eprintln!("bench {name}: did not run: {why}");
                report.skipped.push((name.to_string(), why));
            }
        }
    }
    write_report(&report, &args.out)
}

fn write_report(report: &Report, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    report.write(out)?;
    println!("\n{}", report.markdown());
    println!("results: {}", out.join("latest.md").display());
    Ok(())
}

/// The bulkhead binary to run as a component: --bulkhead, or the one beside this binary.
fn bulkhead_binary(args: &Args) -> std::io::Result<String> {
    Ok(match args.bulkhead.clone() {
        Some(path) => path,
        None => std::env::current_exe()?
            .with_file_name("bulkhead")
            .to_string_lossy()
            .into_owned(),
    })
}

fn write_json(
    out: &Path,
    name: &str,
    value: &(impl serde::Serialize + ?Sized),
) -> std::io::Result<()> {
    let path = out.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    println!("results: {}", path.display());
    Ok(())
}

async fn run(
    bench: Bench,
    args: &Args,
    figures: &mut Vec<Figure>,
) -> Result<(), Box<dyn std::error::Error>> {
    match bench {
        Bench::All { .. } => unreachable!("run by run_each_in_its_own_process"),
        Bench::Schemas => {
            let (records, rounds) = if args.quick {
                (20_000, 3)
            } else {
                (1_000_000, 7)
            };
            let report = schemas::conversion(records, rounds);
            figures.push(
                Figure::new(
                    "schemas",
                    "FlowBatch decode → Arrow columns",
                    "records/s",
                    report.decode_and_convert_records_per_s.clone(),
                )
                .against(
                    "protobuf decode alone",
                    report.baseline_decode_only_records_per_s.clone(),
                ),
            );
            write_json(&args.out, "schemas", &report)?;
        }
        Bench::Collector => {
            if let Some(problem) = collector::problem() {
                return Err(problem.into());
            }
            let sizes = if args.quick {
                collector::Sizes::QUICK
            } else {
                collector::Sizes::FULL
            };
            let start = figures.len();
            // The kernel parts move threads between namespaces: keep them off the runtime.
            let kafka = args.kafka.clone();
            let measured = tokio::task::spawn_blocking(move || {
                let mut figures = Vec::new();
                collector::run(sizes, &kafka, &mut figures);
                figures
            })
            .await?;
            figures.extend(measured);
            write_json(&args.out, "collector", &figures[start..])?;
        }
        Bench::Enforcer => {
            if let Some(problem) = lab::host_problem() {
                return Err(format!("the enforcer benchmarks need lab hosts: {problem}").into());
            }
            let bulkhead = bulkhead_binary(args)?;
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
            let mut config = bulkhead_kafka::KafkaConfig::with_brokers(&args.kafka);
            config.topic_prefix = format!("bench.{}.", std::process::id());
            let provision = enforcer::provision_latency(
                &bulkhead,
                &config,
                &args.lab_kafka,
                if args.quick { 4 } else { 30 },
            )
            .await;
            for row in &apply {
                figures.push(
                    Figure::new(
                        "enforcer",
                        &format!("apply {}", row.case),
                        "ms",
                        row.total_ms.clone(),
                    )
                    .against("empty table apply", row.baseline_empty_apply_ms.clone()),
                );
            }
            figures.push(
                Figure::new(
                    "enforcer",
                    &format!("TCP connect through {} rules", packet_cost.rules),
                    "µs",
                    packet_cost.many_rules_connect_us.clone(),
                )
                .against("no bulkhead table", packet_cost.no_table_connect_us.clone()),
            );
            figures.push(
                Figure::new(
                    "enforcer",
                    "provision → rules in force",
                    "ms",
                    provision.provision_to_active_ms.clone(),
                )
                .against(
                    "Kafka produce → consume",
                    provision.baseline_kafka_round_trip_ms.clone(),
                ),
            );
            let report = serde_json::json!({ "quick": args.quick, "apply": apply, "packet_cost": packet_cost, "provision": provision });
            write_json(&args.out, "enforcer", &report)?;
        }
        Bench::Query {
            flows,
            map_workloads,
        } => {
            let bulkhead = bulkhead_binary(args)?;
            let records = flows.unwrap_or(if args.quick { 200_000 } else { 50_000_000 });
            let map_workloads = map_workloads.unwrap_or(if args.quick { 500 } else { 10_000 });
            let mut config = bulkhead_kafka::KafkaConfig::with_brokers(&args.kafka);
            config.topic_prefix = format!("bench.{}.", std::process::id());
            // A lake per size, kept between runs: building 50M flows takes a while.
            let lake = std::env::temp_dir().join(format!("bulkhead-bench-lake-{records}"));
            let rounds = if args.quick { 3 } else { 7 };
            let report = query::run(
                lake,
                &bulkhead,
                &config,
                records,
                rounds,
                map_workloads,
                map_workloads * 20,
            )
            .await;
            for q in &report.queries {
                figures.push(
                    Figure::new(
                        "query",
                        &format!(
                            "{} over {} flows{}",
                            q.name,
                            report.flows,
                            if q.rows_equal {
                                ""
                            } else {
                                " (ANSWERS DIFFER)"
                            }
                        ),
                        "ms",
                        q.datafusion_ms.clone(),
                    )
                    .against("DuckDB, same Parquet files", q.duckdb_ms.clone()),
                );
            }
            figures.push(
                Figure::new(
                    "query",
                    &format!(
                        "dependency map, {} workloads ({} edge rows)",
                        report.map.workloads, report.map.edge_rows
                    ),
                    "ms",
                    report.map.ms.clone(),
                )
                .target("< 1000 ms"),
            );
            write_json(&args.out, "query", &report)?;
        }
        Bench::Recommend => {
            let (sizes, simulation_workloads, flow_rows, rounds): (&[(usize, usize)], _, _, _) =
                if args.quick {
                    (&[(200, 1), (400, 1), (800, 1)], 400, 200_000, 2)
                } else {
                    (
                        &[(2_500, 11), (5_000, 11), (10_000, 11)],
                        10_000,
                        50_000_000,
                        3,
                    )
                };
            let report = tokio::task::spawn_blocking(move || {
                recommend::run(sizes, simulation_workloads, flow_rows, rounds)
            })
            .await?;
            for size in &report.sizes {
                let mut figure = Figure::new(
                    "recommend",
                    &format!(
                        "recommend, {} workloads, {} edge rows (peak RSS {:.0} MiB)",
                        size.workloads, size.edges, size.peak_rss_mib
                    ),
                    "ms",
                    size.recommend_ms.clone(),
                )
                .against("polars aggregation alone", size.aggregate_ms.clone());
                if size.workloads >= 10_000 {
                    figure = figure.target("< 10 s for 10k workloads, 1M edges");
                }
                figures.push(figure);
            }
            figures.push(Figure::new(
                "recommend",
                "growth exponent b (time ~ edges^b)",
                "",
                Summary::of(vec![report.growth_exponent]),
            ));
            figures.push(
                Figure::new(
                    "recommend",
                    &format!(
                        "simulate {} connection keys against {} rules",
                        report.simulation.connection_keys, report.simulation.rules
                    ),
                    "ms",
                    report.simulation.simulate_ms.clone(),
                )
                .against(
                    "decision function alone",
                    report.simulation.decide_only_ms.clone(),
                ),
            );
            let rows = &report.simulation_from_rows;
            figures.push(
                Figure::new(
                    "recommend",
                    &format!(
                        "simulate {} flow rows from Parquet ({} files)",
                        rows.rows, rows.files
                    ),
                    "ms",
                    rows.total_ms.clone(),
                )
                .against("scanning the same columns alone", rows.scan_only_ms.clone())
                .target("< 30 s for ≥ 50M rows"),
            );
            write_json(&args.out, "recommend", &report)?;
        }
        Bench::Ingest {
            flows,
            rate,
            rust_throughput_only,
        } => {
            let bulkhead = bulkhead_binary(args)?;
            let flows = flows.unwrap_or(if args.quick { 100_000 } else { 2_000_000 });
            let rate = rate.unwrap_or(if args.quick { 5_000 } else { 200_000 });
            let secs = if args.quick { 20 } else { 60 };
            let work =
                std::env::temp_dir().join(format!("bulkhead-bench-ingest-{}", std::process::id()));
            std::fs::create_dir_all(&work)?;
            let partitions = 4;
            let rounds = if args.quick { 1 } else { 3 };
            let stages =
                ingest_stages::stages(flows, 500_000, ingest::BACKLOG_HOSTS, rounds, &work).await?;
            // The "thousands of hosts": a thousand applications' rulesets, and
            // ten thousand addresses to enrich.
            let fleet = ingest_stages::stages(flows, 500_000, FLEET_HOSTS, rounds, &work).await?;
            let throughput = ingest::throughput(
                &bulkhead,
                &args.kafka,
                flows,
                partitions,
                rounds,
                !rust_throughput_only,
                &work,
            )
            .await?;
            if rust_throughput_only {
                let _ = std::fs::remove_dir_all(&work);
                return Ok(());
            }
            let freshness = ingest::freshness(&bulkhead, &args.kafka, rate, secs, &work).await?;
            let scaling = ingest::scaling(
                &bulkhead,
                &args.kafka,
                if args.quick { 50_000 } else { flows },
                &[1, 2, 4],
                rounds,
                &work,
            )
            .await?;
            let _ = std::fs::remove_dir_all(&work);
            let rust_rate = Summary::of(throughput.rust_flows_per_sec.clone());
            let python_rate = Summary::of(throughput.python_flows_per_sec.clone());
            let peak = throughput.peak_rss_mib;
            let report = ingest::IngestReport {
                partitions,
                ratio: rust_rate.median / python_rate.median,
                rust_flows_per_cpu_sec: Summary::of(throughput.rust_flows_per_cpu_sec.clone()),
                rust_flows_per_sec: rust_rate,
                python_flows_per_sec: python_rate,
                throughput,
                freshness_rate_flows_per_sec: rate,
                freshness: freshness.clone(),
                scaling,
            };
            println!(
                "ingest: {:.0} flows/s vs python {:.0} flows/s (medians of {rounds}): ratio {:.1}x; {:.0} flows per CPU second",
                report.rust_flows_per_sec.median,
                report.python_flows_per_sec.median,
                report.ratio,
                report.rust_flows_per_cpu_sec.median
            );
            figures.push(
                Figure::new(
                    "ingest",
                    &format!("Kafka → lake, {partitions} partitions"),
                    "flows/s",
                    report.rust_flows_per_sec.clone(),
                )
                .against(
                    "Python confluent-kafka + pyarrow",
                    report.python_flows_per_sec.clone(),
                )
                .target("≥ 5×"),
            );
            figures.push(
                Figure::new(
                    "ingest",
                    "flows per CPU second",
                    "flows/s",
                    report.rust_flows_per_cpu_sec.clone(),
                )
                .target("≥ 1M per core"),
            );
            figures.push(
                Figure::new(
                    "ingest",
                    &format!(
                        "flows per CPU second under {rate} flows/s for {secs} s, under the estate's policy (freshness run)"
                    ),
                    "flows/s",
                    Summary::of(vec![freshness.flows_per_cpu_s]),
                )
                .target("≥ 1M per core"),
            );
            figures.push(
                Figure::new(
                    "ingest",
                    "flows per CPU second, its steps in memory without Kafka, under the estate's policy (ingest_stages.json)",
                    "flows/s",
                    Summary::of(stages.rounds_flows_per_cpu_s.clone()),
                )
                .target("≥ 1M per core"),
            );
            figures.push(Figure::new(
                "ingest",
                "the same steps before any policy (no policy step)",
                "flows/s",
                Summary::of(vec![stages.flows_per_cpu_s_without_policy]),
            ));
            figures.push(
                Figure::new(
                    "ingest",
                    &format!(
                        "the same steps for an estate of {FLEET_HOSTS} hosts under its policy (ingest_stages_fleet.json)"
                    ),
                    "flows/s",
                    Summary::of(fleet.rounds_flows_per_cpu_s.clone()),
                )
                .target("≥ 1M per core"),
            );
            for row in &report.scaling {
                figures.push(Figure::new(
                    "ingest",
                    &format!(
                        "scaling: {} process(es) on {} partitions (efficiency {:.2})",
                        row.processes, row.partitions, row.efficiency
                    ),
                    "flows/s",
                    row.flows_per_sec.clone(),
                ));
            }
            figures.push(Figure::new(
                "ingest",
                "peak memory (throughput run)",
                "MiB",
                Summary::of(vec![peak]),
            ));
            if let Some(freshness) = freshness.latency_ms {
                figures.push(
                    Figure::new(
                        "ingest",
                        // The spread column shows min–max; the p99 is what the
                        // target is about, so the name carries it.
                        &format!(
                            "freshness at {rate} flows/s, median (p99 {:.0} ms)",
                            freshness.p99
                        ),
                        "ms",
                        freshness,
                    )
                    .target("~15 s"),
                );
            }
            write_json(&args.out, "ingest_stages", &stages)?;
            write_json(&args.out, "ingest_stages_fleet", &fleet)?;
            let report = serde_json::json!({ "quick": args.quick, "debug_build": cfg!(debug_assertions), "ingest": report });
            write_json(&args.out, "ingest", &report)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_all_runs_is_a_benchmark_of_that_name() {
        for name in Bench::NAMES {
            let args = Args::try_parse_from(["bench", name, "--report-part", "part.json"])
                .unwrap_or_else(|e| panic!("bench {name}: {e}"));
            assert_eq!(args.bench.name(), name);
        }
        let error = Args::try_parse_from(["bench", "all", "--skip", "schemas,nope"])
            .err()
            .expect("an unknown benchmark is refused");
        assert!(error.to_string().contains("nope"), "{error}");
    }
}
