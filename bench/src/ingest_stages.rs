//! Where one core's time goes in ingest: the steps `bulkhead ingest` runs for every
//! commit — decode, enrich, edges, the flows' columns built in file order, Parquet + Delta
//! commit — run one after another over the same synthetic flows as the throughput bench,
//! each timed by the process's CPU time (user + system, every thread: a large commit's
//! columns are built on two threads, and delta-rs writes files on tokio's blocking pool).
//!
//! The estate runs under its policy ([`crate::workload::Estate::policy`]), as a deployment
//! does once its first version is provisioned: the policy step judges every record and
//! gives its ends the policy's labels. The total is also printed without that step, the
//! figure before any policy (and the one earlier runs reported).
//!
//! Kafka is left out (librdkafka's fetch and decompression, ~0.25 µs per flow in the
//! throughput bench), so the sum of the stages is about what a core could reach if the
//! event log were free (the process itself lands within ±15 % of it: its two threads
//! split the work differently). Each stage's own rate says how far from the per-core
//! target that step alone is.

use std::path::Path;

use bulkhead_ingest::edges::{EdgeAggregator, Windowing};
use bulkhead_ingest::enrich::Inventory;
use bulkhead_ingest::flow_rows::{FlowRows, sorted_flows};
use bulkhead_ingest::policy::{PolicyCache, PolicyHistory};
use bulkhead_ingest::writer::{AppendTable, EDGE_SORT_COLUMNS, SORT_COLUMNS};
use bulkhead_schemas::lake::SharedLabels;
use bulkhead_schemas::proto::FlowBatch;
use prost::Message as _;

type BoxError = Box<dyn std::error::Error>;

/// The steps, in the order ingest runs them.
pub const STAGES: [&str; 7] = [
    "decode (prost)",
    "enrich (workloads, labels)",
    "policy (decisions, policy's labels)",
    "edges (aggregate + seal)",
    "sort keys + flows columns in file order",
    "Parquet + zstd + Delta commit (flows)",
    "sort + Parquet + commit (edges)",
];

/// The index of the policy step in [`STAGES`].
const POLICY_STAGE: usize = 2;

/// CPU seconds per stage over `flows` flows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StagesReport {
    pub flows: u64,
    /// Hosts of the estate, each a workload of its policy.
    pub hosts: usize,
    pub commit_flows: u64,
    /// `(stage, CPU seconds, flows per CPU second of that stage alone)`.
    pub stages: Vec<(String, f64, f64)>,
    pub total_cpu_s: f64,
    /// `flows / total_cpu_s`: the per-core ceiling without Kafka.
    pub flows_per_cpu_s: f64,
    /// The same without the policy step: before any policy version.
    pub flows_per_cpu_s_without_policy: f64,
    /// `flows_per_cpu_s` of each round (the figure above is their median).
    pub rounds_flows_per_cpu_s: Vec<f64>,
}

/// User + system CPU seconds of this process so far.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Adds the CPU time since `started` to `stage`; returns the time now.
fn lap(stage: &mut f64, started: f64) -> f64 {
    let now = process_cpu_s();
    *stage += now - started;
    now
}

/// Runs the stages `rounds` times over `flows` synthetic flows of an estate of `hosts`
/// hosts in commits of `commit_flows`, writing the tables under `work/lake-stages`
/// (replaced each round), and prints the lines of the round with the median total. One
/// round swung by ±10 % on a 2-vCPU virtual machine; the median of three keeps a change
/// of a few percent from drowning in that.
pub async fn stages(
    flows: u64,
    commit_flows: u64,
    hosts: usize,
    rounds: usize,
    work: &Path,
) -> Result<StagesReport, BoxError> {
    bulkhead_ingest::memory::keep_freed_memory_for(bulkhead_ingest::memory::KEEP_FREED_MEMORY);
    let (estate, spec) = crate::ingest::backlog_of(5, flows, hosts);
    let mut inventory = Inventory::default();
    for host in estate.inventories(crate::ingest::INVENTORY_OBSERVED_UNIX_NS) {
        inventory.apply(&host.host_id, Some(&host));
    }
    let mut policy = PolicyHistory::default();
    policy.insert(estate.policy(1, crate::ingest::INVENTORY_OBSERVED_UNIX_NS));
    // Messages grouped into commits as ingest groups them: a commit once the buffered
    // flows reach `commit_flows`.
    let mut commits: Vec<Vec<Vec<u8>>> = vec![vec![]];
    let mut buffered = 0;
    for batch in estate.flows(&spec) {
        if buffered >= commit_flows {
            commits.push(vec![]);
            buffered = 0;
        }
        buffered += batch.records.len() as u64;
        commits
            .last_mut()
            .expect("one commit at least")
            .push(batch.encode_to_vec());
    }
    // One untimed pass over the first commit: decoded, enriched and built into columns,
    // then dropped (no policy, no edges, nothing written). A process's first commit
    // faults its buffers' memory in; without this pass the first estate's column-building
    // line swung between 0.57 and 0.76 µs per flow from run to run.
    if let Some(first) = commits.first() {
        let mut rows = FlowRows::default();
        for bytes in first {
            let mut batch = bulkhead_schemas::decode_flow_batch(bytes)?;
            let mut shared = Vec::new();
            inventory.enrich(&mut batch, &mut shared);
            rows.push(batch, shared)?;
        }
        drop(sorted_flows(&[&rows])?);
    }
    let lake = work.join("lake-stages");
    let url = |name: &str| url::Url::from_directory_path(lake.join(name)).expect("absolute path");
    let windowing = Windowing::default();
    // Each round is the same run again: the same commits into a new lake, with a new
    // policy memo (one carried over holds three rounds' classes, and at 5,000 hosts its
    // larger tables made the policy step 50 % slower: not the figure earlier runs gave).
    let mut rounds_cpu: Vec<[f64; STAGES.len()]> = Vec::with_capacity(rounds);
    let mut done = 0;
    for _ in 0..rounds.max(1) {
        let _ = std::fs::remove_dir_all(&lake);
        let mut flows_table = AppendTable::open_named(&url("flows"), "flows", SORT_COLUMNS).await?;
        let mut edges_table =
            AppendTable::open_named(&url("edges"), "edges", EDGE_SORT_COLUMNS).await?;
        let mut cpu = [0.0; STAGES.len()];
        let mut edges = EdgeAggregator::default();
        let mut newest_us = i64::MIN;
        let mut policy_cache = PolicyCache::default();
        done = 0;
        for (commit, messages) in commits.iter().enumerate() {
            let t = process_cpu_s();
            let mut batches: Vec<FlowBatch> = messages
                .iter()
                .map(|bytes| bulkhead_schemas::decode_flow_batch(bytes))
                .collect::<Result<_, _>>()?;
            let t = lap(&mut cpu[0], t);
            let mut shared: Vec<Vec<SharedLabels>> = batches
                .iter_mut()
                .map(|batch| {
                    let mut shared = Vec::new();
                    inventory.enrich(batch, &mut shared);
                    shared
                })
                .collect();
            let t = lap(&mut cpu[1], t);
            for (batch, shared) in batches.iter_mut().zip(&mut shared) {
                policy.decide(batch, shared, &mut policy_cache);
            }
            let t = lap(&mut cpu[POLICY_STAGE], t);
            for (batch, shared) in batches.iter().zip(&shared) {
                edges.add_batch(batch, shared, windowing, &mut newest_us);
            }
            let edge_rows = edges.finish(windowing)?;
            let t = lap(&mut cpu[3], t);
            let mut rows = FlowRows::default();
            for (batch, shared) in batches.into_iter().zip(shared) {
                rows.push(batch, shared)?;
            }
            done += rows.len() as u64;
            let sorted = sorted_flows(&[&rows])?;
            drop(rows);
            let t = lap(&mut cpu[4], t);
            let offsets = [(0, commit as i64)];
            flows_table
                .commit_sorted(sorted, "bench.stages", &offsets)
                .await?;
            let t = lap(&mut cpu[5], t);
            edges_table
                .commit_parts(vec![edge_rows], "bench.stages", &offsets)
                .await?;
            lap(&mut cpu[6], t);
        }
        rounds_cpu.push(cpu);
    }
    // The round of the median total, whole: its steps add up to its total.
    let round_totals: Vec<f64> = rounds_cpu.iter().map(|r| r.iter().sum()).collect();
    let mut by_total: Vec<usize> = (0..round_totals.len()).collect();
    by_total.sort_by(|&a, &b| round_totals[a].total_cmp(&round_totals[b]));
    let cpu = rounds_cpu[by_total[by_total.len() / 2]];
    let total_cpu_s: f64 = cpu.iter().sum();
    let report = StagesReport {
        flows: done,
        hosts: estate.hosts.len(),
        commit_flows,
        stages: STAGES
            .iter()
            .zip(cpu)
            .map(|(stage, s)| (stage.to_string(), s, done as f64 / s.max(1e-9)))
            .collect(),
        total_cpu_s,
        flows_per_cpu_s: done as f64 / total_cpu_s.max(1e-9),
        flows_per_cpu_s_without_policy: done as f64 / (total_cpu_s - cpu[POLICY_STAGE]).max(1e-9),
        rounds_flows_per_cpu_s: round_totals
            .iter()
            .map(|t| done as f64 / t.max(1e-9))
            .collect(),
    };
    println!(
        "ingest stages: {done} flows of an estate of {} hosts, under its policy",
        report.hosts
    );
    for (stage, cpu_s, rate) in &report.stages {
        println!(
            "ingest stages: {stage:<40} {cpu_s:>6.2} CPU s = {:>5.2} µs/flow ({rate:>9.0} flows per CPU s alone)",
            cpu_s * 1e6 / done as f64
        );
    }
    println!(
        "ingest stages: all, without Kafka: {total_cpu_s:.2} CPU s for {done} flows = {:.0} flows per CPU second ({:.0} without the policy step)",
        report.flows_per_cpu_s, report.flows_per_cpu_s_without_policy
    );
    if rounds_cpu.len() > 1 {
        let rates = crate::stats::Summary::of(report.rounds_flows_per_cpu_s.clone());
        println!(
            "ingest stages: all, median of {} rounds; rounds {:.0}–{:.0} flows per CPU second",
            rates.n, rates.min, rates.max
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_stage_runs_over_every_flow_and_writes_both_tables() {
        let work = tempfile::tempdir().unwrap();
        let report = stages(12_000, 5_000, 50, 2, work.path()).await.unwrap();
        assert_eq!(report.rounds_flows_per_cpu_s.len(), 2);
        assert_eq!(report.flows, 12_000);
        assert_eq!(report.stages.len(), STAGES.len());
        for (stage, cpu_s, _) in &report.stages {
            assert!(*cpu_s >= 0.0, "{stage}: {cpu_s} CPU s");
        }
        // Decoding, judging, building the columns and writing the files cannot be free.
        for stage in [0, POLICY_STAGE, 4, 5] {
            assert!(report.stages[stage].1 > 0.0, "{:?}", report.stages[stage]);
        }
        let total: f64 = report.stages.iter().map(|(_, s, _)| s).sum();
        assert!((report.total_cpu_s - total).abs() < 1e-9);
        for table in ["flows", "edges"] {
            let log = work
                .path()
                .join("lake-stages")
                .join(table)
                .join("_delta_log");
            let commits = std::fs::read_dir(&log).unwrap().filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".json")
            });
            // The table's creation, then a commit per 5,000 flows and one for the rest.
            assert_eq!(commits.count(), 4, "{table}");
        }
    }
}
