//! Figures as benchmarks report them: median, spread, p99, and ratios to a baseline
//! measured in the same run.

use std::time::Duration;

/// Summary of repeated measurements.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(mut values: Vec<f64>) -> Self {
        assert!(!values.is_empty(), "no measurements");
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Self {
            n: values.len(),
            median: at(0.5),
            p99: at(0.99),
            min: values[0],
            max: values[values.len() - 1],
        }
    }

    pub fn of_durations_ms(values: &[Duration]) -> Self {
        Self::of(values.iter().map(|d| d.as_secs_f64() * 1e3).collect())
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:.2}, p99 {:.2} (min {:.2}, max {:.2}, n={})",
            self.median, self.p99, self.min, self.max, self.n
        )
    }
}

/// Peak resident memory of this process (VmHWM) since it started or since the last
/// [`reset_peak_rss`], MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Starts a new peak-memory measurement, so that one measurement's peak is not an earlier
/// one's in the same process (the recommender's sizes): returns freed heap to the kernel
/// (`mi_collect`: the allocator keeps it otherwise, and it would count as resident), then
/// resets VmHWM to the current resident size (writing `5` to `/proc/self/clear_refs`).
pub fn reset_peak_rss() {
    // SAFETY: mi_collect only purges free memory of mimalloc's heaps (the bench binary's
    // global allocator, as in `bulkhead`).
    unsafe { libmimalloc_sys::mi_collect(true) };
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("bench: peak memory cannot be reset ({e}): peaks include earlier benchmarks");
    }
}
