//! Every benchmark runs at a small size and produces sane figures (CI smoke test; no
//! time thresholds: speed is judged from full runs, in docs/performance.md).

use std::path::PathBuf;
use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_bench"));
    command
        .args(args)
        .arg("--quick")
        .arg("--out")
        .arg(out.path());
    let output = command.output().expect("the bench binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "bench {args:?} failed:\n{text}");
    let markdown = std::fs::read_to_string(out.path().join("latest.md"))
        .unwrap_or_else(|e| panic!("latest.md: {e}\n{text}"));
    assert!(
        markdown.contains(&format!("| {} |", args[0])),
        "the report has no {} figure:\n{markdown}",
        args[0]
    );
    let file = out.path().join(format!("{}.json", args[0]));
    serde_json::from_str(
        &std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", file.display())),
    )
    .unwrap()
}

fn positive(value: &serde_json::Value, path: &str) -> f64 {
    let number = path
        .split('.')
        .fold(value, |v, key| &v[key])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} missing in {value:#}"));
    assert!(number.is_finite() && number > 0.0, "{path} = {number}");
    number
}

#[test]
fn schemas_benchmark_runs() {
    let report = bench(&["schemas"]);
    positive(&report, "decode_and_convert_records_per_s.median");
    positive(&report, "baseline_decode_only_records_per_s.median");
    positive(&report, "ratio");
}

/// The bulkhead binary that `cargo test --workspace` builds beside this test's binary.
fn bulkhead_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    dir.join("bulkhead")
}

#[test]
fn enforcer_benchmark_runs() {
    if !bulkhead_bench::lab::can_build_hosts() || bulkhead_kafka::testkit::kafka().is_none() {
        return;
    }
    let bulkhead = bulkhead_binary();
    assert!(
        bulkhead.exists(),
        "{} not built: run cargo test --workspace (or cargo build) first",
        bulkhead.display()
    );
    let report = bench(&["enforcer", "--bulkhead", bulkhead.to_str().unwrap()]);
    for row in report["apply"].as_array().unwrap() {
        positive(row, "total_ms.p99");
        positive(row, "baseline_empty_apply_ms.median");
    }
    positive(&report, "packet_cost.ratio_to_ten_rules");
    positive(&report, "packet_cost.ratio_to_no_table");
    positive(&report, "provision.provision_to_active_ms.p99");
    positive(&report, "provision.baseline_kafka_round_trip_ms.median");
}

#[test]
fn collector_benchmark_runs() {
    // Root, as for lab hosts (loud skip, or a failure under CI).
    if !bulkhead_bench::lab::can_build_hosts() {
        return;
    }
    let report = bench(&["collector"]);
    let figures = report.as_array().expect("a list of figures");
    let named = |name: &str| {
        figures
            .iter()
            .find(|f| f["name"].as_str().is_some_and(|n| n.contains(name)))
            .unwrap_or_else(|| panic!("no {name:?} figure in {report:#}"))
    };
    positive(named("TC program cost"), "value.median");
    positive(named("TC program cost"), "baseline.value.median");
    positive(named("with the collector"), "baseline.ratio");
    positive(named("convert + batch + encode"), "value.median");
    if bulkhead_kafka::testkit::kafka().is_some() {
        positive(named("into Kafka"), "baseline.ratio");
    }
}

#[test]
fn ingest_benchmark_runs() {
    if bulkhead_kafka::testkit::kafka().is_none() {
        return;
    }
    let bulkhead = bulkhead_binary();
    assert!(bulkhead.exists(), "{} not built", bulkhead.display());
    let report = bench(&["ingest", "--bulkhead", bulkhead.to_str().unwrap()]);
    positive(&report, "ingest.rust_flows_per_sec.median");
    positive(&report, "ingest.python_flows_per_sec.median");
    positive(&report, "ingest.ratio");
    positive(&report, "ingest.rust_flows_per_cpu_sec.median");
    positive(&report, "ingest.throughput.peak_rss_mib");
    positive(&report, "ingest.freshness.latency_ms.p99");
    positive(&report, "ingest.freshness.flows_per_cpu_s");
}

#[test]
fn query_benchmark_runs_and_both_engines_agree() {
    if bulkhead_kafka::testkit::kafka().is_none() {
        return;
    }
    let bulkhead = bulkhead_binary();
    assert!(bulkhead.exists(), "{} not built", bulkhead.display());
    let report = bench(&["query", "--bulkhead", bulkhead.to_str().unwrap()]);
    positive(&report, "flows");
    for row in report["queries"].as_array().unwrap() {
        assert_eq!(
            row["rows_equal"], true,
            "DataFusion and DuckDB disagree: {row:#}"
        );
        positive(row, "datafusion_ms.median");
        positive(row, "duckdb_ms.median");
    }
    positive(&report, "map.ms.median");
    positive(&report, "map.edges");
}

#[test]
fn recommend_benchmark_runs_and_fits_an_exponent() {
    let report = bench(&["recommend"]);
    let sizes = report["sizes"].as_array().unwrap();
    assert!(
        sizes.len() >= 3,
        "an exponent needs three sizes: {report:#}"
    );
    for size in sizes {
        positive(size, "recommend_ms.median");
        positive(size, "aggregate_ms.median");
        positive(size, "rules");
        positive(size, "peak_rss_mib");
    }
    positive(&report, "growth_exponent");
    positive(&report, "simulation.keys_per_s");
    positive(&report, "simulation.decide_only_ms.median");
    positive(&report, "simulation_from_rows.total_ms.median");
    positive(&report, "simulation_from_rows.scan_only_ms.median");
}

/// `bench all` runs each benchmark in a process of its own and gathers their figures into
/// one report; one that cannot run is listed with why, and the others still report.
#[test]
fn all_gathers_each_benchmarks_figures_and_lists_one_that_did_not_run() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "all",
            "--quick",
            "--skip",
            "collector,enforcer,query,recommend",
        ])
        .args(["--bulkhead", "/nonexistent/bulkhead", "--out"])
        .arg(out.path())
        .output()
        .expect("the bench binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "bench all failed:\n{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("latest.json")).unwrap())
            .unwrap();
    let figures = report["figures"].as_array().expect("figures");
    assert!(
        figures.iter().all(|f| f["bench"] == "schemas") && !figures.is_empty(),
        "only the schemas benchmark has figures: {report:#}"
    );
    positive(&figures[0], "value.median");
    let skipped = report["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{report:#}");
    assert_eq!(skipped[0][0], "ingest");
    assert!(!skipped[0][1].as_str().unwrap().is_empty(), "{report:#}");
    let markdown = std::fs::read_to_string(out.path().join("latest.md")).unwrap();
    assert!(markdown.contains("**ingest did not run:**"), "{markdown}");
    let mut files: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    // Each benchmark's own results, the report, and no part left behind.
    assert_eq!(
        files,
        ["latest.json", "latest.md", "schemas.json"],
        "{text}"
    );
}
