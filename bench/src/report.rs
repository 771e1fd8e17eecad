//! The run's report: every benchmark's headline figures beside their baselines, written
//! as `bench/results/latest.json` and `bench/results/latest.md` (the latest run only;
//! history is not kept in git).

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// One headline figure: a measurement, the baseline measured in the same run, and their
/// ratio, with the target the issue set (as text: "≥ 5×", "< 10 s").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    pub bench: String,
    pub name: String,
    pub unit: String,
    pub value: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baseline {
    pub name: String,
    pub value: Summary,
    /// value median / baseline median.
    pub ratio: f64,
}

impl Figure {
    pub fn new(bench: &str, name: &str, unit: &str, value: Summary) -> Self {
        Self {
            bench: bench.into(),
            name: name.into(),
            unit: unit.into(),
            value,
            baseline: None,
            target: None,
        }
    }

    pub fn against(mut self, name: &str, baseline: Summary) -> Self {
        let ratio = self.value.median / baseline.median;
        self.baseline = Some(Baseline {
            name: name.into(),
            value: baseline,
            ratio,
        });
        self
    }

    pub fn target(mut self, target: &str) -> Self {
        self.target = Some(target.into());
        self
    }
}

/// The figures of one run of `bench`, with what the run was.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub started: String,
    pub quick: bool,
    pub machine: String,
    pub figures: Vec<Figure>,
    /// Benchmarks that could not run, with why (no root, no broker…).
    pub skipped: Vec<(String, String)>,
}

impl Report {
    pub fn new(quick: bool) -> Self {
        Self {
            started: humantime_now(),
            quick,
            machine: machine(),
            figures: Vec::new(),
            skipped: Vec::new(),
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Bulkhead benchmarks — {}{}\n\nMachine: {}\n",
            self.started,
            if self.quick {
                " (quick: smoke sizes, not figures to quote)"
            } else {
                ""
            },
            self.machine
        );
        md.push_str("| bench | figure | median | spread (min–max) | baseline | baseline median | ratio | target |\n");
        md.push_str("|---|---|---:|---:|---|---:|---:|---|\n");
        for f in &self.figures {
            let (bname, bmedian, ratio) = match &f.baseline {
                Some(b) => (
                    b.name.as_str(),
                    format!("{} {}", fmt_num(b.value.median), f.unit),
                    format!("{:.2}×", b.ratio),
                ),
                None => ("—", "—".into(), "—".into()),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} {} | {}–{} | {} | {} | {} | {} |",
                f.bench,
                f.name,
                fmt_num(f.value.median),
                f.unit,
                fmt_num(f.value.min),
                fmt_num(f.value.max),
                bname,
                bmedian,
                ratio,
                f.target.as_deref().unwrap_or("—"),
            );
        }
        for (bench, why) in &self.skipped {
            let _ = writeln!(md, "\n**{bench} did not run:** {why}");
        }
        md
    }

    /// Writes `latest.json` and `latest.md` under `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("latest.json"),
            serde_json::to_string_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::write(dir.join("latest.md"), self.markdown())
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn humantime_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown time".into(),
    }
}

/// CPU model, core count and memory, from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!(
        "{model}, {cores} cores, {:.1} GiB",
        mem_kb as f64 / 1024.0 / 1024.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_a_row_per_figure_with_its_ratio() {
        let mut report = Report::new(true);
        report.figures.push(
            Figure::new("ingest", "flows/s", "flows/s", Summary::of(vec![2e6, 3e6]))
                .against("python", Summary::of(vec![4e5, 5e5]))
                .target("≥ 5×"),
        );
        report
            .skipped
            .push(("collector".into(), "needs root".into()));
        let md = report.markdown();
        assert!(md.contains("| ingest | flows/s |"), "{md}");
        assert!(md.contains("6.00×") || md.contains("5.00×"), "{md}");
        assert!(md.contains("collector did not run:** needs root"), "{md}");
    }
}
