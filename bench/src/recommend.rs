//! `bench recommend`: recommender time and peak memory by estate size (workloads, edges),
//! with the growth exponent fitted over the sizes, beside a baseline measured in the same
//! run (the polars aggregation of the same edges alone); and simulation speed (flows
//! judged per second against the recommended draft) beside the decision function alone.

use std::time::Instant;

use bulkhead_policy::simulate::{FlowKey, simulate};
use bulkhead_recommender::{
    EdgeRow, Options, WorkloadLabels, aggregate, edges_frame, recommend_from_sums,
};
use bulkhead_schemas::policy::{
    Decider, Decision, Endpoint, EnforcementMode, PolicyDocument, Ruleset, WorkloadPolicy,
};
use polars::prelude::IntoLazy as _;
use serde::Serialize;

use crate::datacenter::{Datacenter, DcSpec};
use crate::stats::{Summary, peak_rss_mib, reset_peak_rss};

#[derive(Debug, Serialize)]
pub struct SizeResult {
    pub workloads: usize,
    pub edges: usize,
    /// The polars aggregation of the same edges alone (the baseline).
    pub aggregate_ms: Summary,
    /// Aggregation + lifting to label rules + evidence (what `bulkhead recommend` does
    /// after reading the table).
    pub recommend_ms: Summary,
    pub ratio_to_aggregate: f64,
    pub rules: usize,
    pub suspicious: usize,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct SimulationResult {
    pub connection_keys: usize,
    pub rules: usize,
    pub simulate_ms: Summary,
    pub keys_per_s: f64,
    /// The decision function alone over the same keys (the baseline).
    pub decide_only_ms: Summary,
    pub ratio_to_decide_only: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub sizes: Vec<SizeResult>,
    /// Exponent b of time ≈ a · edges^b (least squares over the sizes).
    pub growth_exponent: f64,
    pub simulation: SimulationResult,
    pub simulation_from_rows: RowsSimulation,
}

/// `simulate` as the API runs it: flow rows read from Parquet, grouped into connection
/// keys (polars), judged against the draft.
#[derive(Debug, Serialize)]
pub struct RowsSimulation {
    pub rows: usize,
    pub files: usize,
    pub total_ms: Summary,
    pub rows_per_s: f64,
    /// Reading the same columns of the same files and counting the rows (the I/O and
    /// decoding floor).
    pub scan_only_ms: Summary,
    pub ratio_to_scan_only: f64,
}

/// A datacenter of about `workloads` workloads, its connections split over `windows`
/// hourly rows each (the `edges` table has one row per window and edge).
pub fn estate(
    seed: u64,
    workloads: usize,
    windows: usize,
) -> (Datacenter, Vec<EdgeRow>, WorkloadLabels) {
    let apps = (workloads / 8).max(1);
    let dc = Datacenter::generate(&DcSpec::day(seed, apps, 1_764_115_200_000_000_000));
    let hour_us = 3_600_000_000i64;
    let mut rows = Vec::with_capacity(dc.connections.len() * windows);
    for c in &dc.connections {
        for w in 0..windows.max(1) as i64 {
            let first = (c.first_seen_unix_ns / 1000) as i64 + w * hour_us;
            rows.push(EdgeRow {
                src_workload: dc.workload_id(c.src).map(str::to_string),
                src_ip: Some(dc.ip(c.src).to_string()),
                dst_workload: dc.workload_id(c.dst).map(str::to_string),
                dst_ip: Some(dc.ip(c.dst).to_string()),
                dst_port: c.port as i32,
                protocol: c.protocol as i32,
                process: (!c.process.is_empty()).then(|| c.process.to_string()),
                flows: (c.flows as i64 / windows as i64).max(1),
                packets: c.flows as i64,
                bytes: (c.bytes as i64 / windows as i64).max(1),
                first_seen_us: first.min((c.last_seen_unix_ns / 1000) as i64),
                last_seen_us: (c.last_seen_unix_ns / 1000) as i64,
            });
        }
    }
    let labels = dc
        .workloads
        .iter()
        .map(|w| (w.id.clone(), w.labels.clone()))
        .collect();
    (dc, rows, labels)
}

fn fit_exponent(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (xs, ys): (Vec<f64>, Vec<f64>) = points.iter().map(|(x, y)| (x.ln(), y.ln())).unzip();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    cov / var.max(1e-12)
}

/// `sizes`: (workloads, hourly windows per connection); each measured `rounds` times,
/// alternating with its baseline.
pub fn run(
    sizes: &[(usize, usize)],
    simulation_workloads: usize,
    flow_rows: usize,
    rounds: usize,
) -> Report {
    let mut results = Vec::new();
    for &(workloads, windows) in sizes {
        reset_peak_rss();
        let (dc, rows, labels) = estate(7, workloads, windows);
        let frame = edges_frame(&rows).expect("the edges frame builds");
        let (mut aggregate_ms, mut recommend_ms) = (Vec::new(), Vec::new());
        let mut out = None;
        for _ in 0..rounds.max(1) {
            let started = Instant::now();
            let sums = aggregate(frame.clone().lazy()).expect("aggregation runs");
            aggregate_ms.push(started.elapsed().as_secs_f64() * 1e3);
            drop(sums);
            let started = Instant::now();
            let sums = aggregate(frame.clone().lazy()).expect("aggregation runs");
            let recommended = recommend_from_sums(&sums, &labels, &Options::default());
            recommend_ms.push(started.elapsed().as_secs_f64() * 1e3);
            out = Some(recommended);
        }
        let out = out.expect("at least one round");
        let (aggregate_ms, recommend_ms) = (Summary::of(aggregate_ms), Summary::of(recommend_ms));
        let result = SizeResult {
            workloads: dc.workloads.len(),
            edges: rows.len(),
            ratio_to_aggregate: recommend_ms.median / aggregate_ms.median.max(1e-9),
            aggregate_ms,
            recommend_ms,
            rules: out.rules().count(),
            suspicious: out.suspicious().count(),
            peak_rss_mib: peak_rss_mib(),
        };
        println!(
            "recommend: {:>6} workloads, {:>8} edges: median {:>9.1} ms (aggregation alone {:>8.1} ms, ratio {:.2}); {} rules, {} suspicious; peak RSS {:.0} MiB",
            result.workloads,
            result.edges,
            result.recommend_ms.median,
            result.aggregate_ms.median,
            result.ratio_to_aggregate,
            result.rules,
            result.suspicious,
            result.peak_rss_mib
        );
        results.push(result);
    }
    let growth_exponent = fit_exponent(
        &results
            .iter()
            .map(|r| (r.edges as f64, r.recommend_ms.median))
            .collect::<Vec<_>>(),
    );
    println!("recommend: fitted growth exponent (time ~ edges^b): b = {growth_exponent:.2}");

    // Simulation: every connection of an estate, against its recommended draft.
    let (dc, rows, labels) = estate(8, simulation_workloads, 1);
    let out = recommend_from_sums(
        &aggregate(edges_frame(&rows).expect("frame").lazy()).expect("aggregation"),
        &labels,
        &Options::default(),
    );
    let mut draft = PolicyDocument {
        default_mode: EnforcementMode::Full,
        ..Default::default()
    };
    for r in out.rules() {
        for list in &r.ip_lists {
            if !draft.ip_lists.iter().any(|l| l.name == list.name) {
                draft.ip_lists.push(list.clone());
            }
        }
        match draft.rulesets.iter_mut().find(|rs| rs.name == r.ruleset) {
            Some(rs) => rs.rules.push(r.rule.clone()),
            None => draft.rulesets.push(Ruleset {
                name: r.ruleset.clone(),
                description: String::new(),
                scope: r.scope.clone(),
                rules: vec![r.rule.clone()],
            }),
        }
    }
    draft.workloads = dc
        .workloads
        .iter()
        .map(|w| WorkloadPolicy {
            workload_id: w.id.clone(),
            labels: w.labels.clone(),
            mode: None,
            quarantined: false,
            enforce_outbound: false,
        })
        .collect();
    let flows: Vec<FlowKey> = dc.flow_keys().into_iter().map(|(key, _)| key).collect();
    let (mut simulate_ms, mut decide_ms) = (Vec::new(), Vec::new());
    let (mut allowed, mut per_app) = (0usize, 0usize);
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        per_app = simulate(None, &draft, &flows).per_app.len();
        simulate_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let decider = Decider::new(&draft);
        allowed = flows
            .iter()
            .filter(|f| {
                decider.decide(
                    Endpoint {
                        ip: f.src_ip,
                        workload: f.src_workload.as_deref(),
                    },
                    Endpoint {
                        ip: f.dst_ip,
                        workload: f.dst_workload.as_deref(),
                    },
                    f.protocol,
                    f.port,
                ) == Decision::Allowed
            })
            .count();
        decide_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (simulate_ms, decide_only_ms) = (Summary::of(simulate_ms), Summary::of(decide_ms));
    let simulation = SimulationResult {
        connection_keys: flows.len(),
        rules: draft.rules().count(),
        keys_per_s: flows.len() as f64 / (simulate_ms.median / 1e3).max(1e-9),
        ratio_to_decide_only: simulate_ms.median / decide_only_ms.median.max(1e-9),
        simulate_ms,
        decide_only_ms,
    };
    println!(
        "simulate: {} connection keys against {} rules: median {:.1} ms ({:.0} keys/s; decide alone {:.1} ms, ratio {:.2}); {} allowed, {} per-app rows",
        simulation.connection_keys,
        simulation.rules,
        simulation.simulate_ms.median,
        simulation.keys_per_s,
        simulation.decide_only_ms.median,
        simulation.ratio_to_decide_only,
        allowed,
        per_app
    );
    let simulation_from_rows = simulate_rows(&draft, &flows, flow_rows, rounds);
    Report {
        sizes: results,
        growth_exponent,
        simulation,
        simulation_from_rows,
    }
}

const ROWS_PER_FILE: usize = 5_000_000;

/// Writes `rows` flow rows (the `flows` table's columns that simulation reads), cycling
/// over `keys` and reported by the server's end, as Parquet files under a directory kept
/// between runs; returns the files.
fn flow_row_files(keys: &[FlowKey], rows: usize) -> Vec<String> {
    use polars::prelude::{Column, DataFrame, ParquetWriter};
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-sim-v2-{rows}-{}", keys.len()));
    let files: Vec<String> = (0..rows.div_ceil(ROWS_PER_FILE))
        .map(|i| {
            dir.join(format!("part-{i:03}.parquet"))
                .display()
                .to_string()
        })
        .collect();
    if files.iter().all(|f| std::path::Path::new(f).exists()) {
        return files;
    }
    std::fs::create_dir_all(&dir).expect("simulation rows dir");
    let started = Instant::now();
    for (i, file) in files.iter().enumerate() {
        let range = i * ROWS_PER_FILE..((i + 1) * ROWS_PER_FILE).min(rows);
        let key = |r: usize| &keys[r % keys.len()];
        let text = |f: &dyn Fn(&FlowKey) -> Option<String>| -> Vec<Option<String>> {
            range.clone().map(|r| f(key(r))).collect()
        };
        let host = text(&|k| k.dst_workload.clone().or_else(|| k.src_workload.clone()));
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("host_id".into(), host),
            Column::new("src_workload".into(), text(&|k| k.src_workload.clone())),
            Column::new("src_ip".into(), text(&|k| Some(k.src_ip.to_string()))),
            Column::new("dst_workload".into(), text(&|k| k.dst_workload.clone())),
            Column::new("dst_ip".into(), text(&|k| Some(k.dst_ip.to_string()))),
            // The server's record when the server is a workload, else the client's.
            Column::new(
                "local_is_server".into(),
                range
                    .clone()
                    .map(|r| key(r).dst_workload.is_some())
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "dst_port".into(),
                range
                    .clone()
                    .map(|r| key(r).port as i32)
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "protocol".into(),
                range
                    .clone()
                    .map(|r| key(r).protocol as i32)
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "first_seen".into(),
                range
                    .clone()
                    .map(|r| 1_764_115_200_000_000i64 + r as i64)
                    .collect::<Vec<_>>(),
            ),
        ])
        .expect("simulation rows frame");
        let out = std::fs::File::create(file).expect("simulation rows file");
        ParquetWriter::new(out)
            .finish(&mut df)
            .expect("writing simulation rows");
    }
    println!(
        "simulate: wrote {rows} flow rows in {} files in {:.1} s",
        files.len(),
        started.elapsed().as_secs_f64()
    );
    files
}

fn simulate_rows(
    draft: &PolicyDocument,
    keys: &[FlowKey],
    rows: usize,
    rounds: usize,
) -> RowsSimulation {
    use polars::prelude::{
        LazyFrame, PlRefPath, PolarsResult, ScanArgsParquet, UnionArgs, col, concat,
    };
    let files = flow_row_files(keys, rows);
    let scan = || -> PolarsResult<LazyFrame> {
        let frames = files
            .iter()
            .map(|f| {
                LazyFrame::scan_parquet(PlRefPath::new(f.as_str()), ScanArgsParquet::default())
            })
            .collect::<PolarsResult<Vec<_>>>()?;
        concat(frames, UnionArgs::default())
    };
    let (mut total, mut scan_only) = (Vec::new(), Vec::new());
    let mut judged = 0;
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        // File by file, so that the floor does not also pay for holding every row.
        let mut counted = 0;
        for file in &files {
            let df =
                LazyFrame::scan_parquet(PlRefPath::new(file.as_str()), ScanArgsParquet::default())
                    .and_then(|f| {
                        f.select([
                            col("host_id"),
                            col("src_workload"),
                            col("src_ip"),
                            col("dst_workload"),
                            col("dst_ip"),
                            col("dst_port"),
                            col("protocol"),
                        ])
                        .collect()
                    })
                    .expect("scan");
            counted += df.height();
        }
        assert_eq!(counted, rows);
        scan_only.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let grouped =
            bulkhead_policy::simulate::flow_keys(scan().expect("scan")).expect("grouping");
        let report = simulate(None, draft, &grouped);
        total.push(started.elapsed().as_secs_f64() * 1e3);
        judged = report.totals.flows;
    }
    let (total_ms, scan_only_ms) = (Summary::of(total), Summary::of(scan_only));
    let result = RowsSimulation {
        rows,
        files: files.len(),
        rows_per_s: rows as f64 / (total_ms.median / 1e3).max(1e-9),
        ratio_to_scan_only: total_ms.median / scan_only_ms.median.max(1e-9),
        total_ms,
        scan_only_ms,
    };
    assert_eq!(judged as usize, rows, "every row judged once");
    println!(
        "simulate: {rows} flow rows from {} Parquet files: median {:.1} ms ({:.0} rows/s; scanning alone {:.1} ms, ratio {:.2})",
        result.files,
        result.total_ms.median,
        result.rows_per_s,
        result.scan_only_ms.median,
        result.ratio_to_scan_only
    );
    result
}
