//! Figures as benchmarks report them: median, spread, p99, and ratios to a baseline
//! measured in the same run.

use std::time::Duration;

/// Summary of repeated measurements.
#[derive(Clone, Debug, serde::Serialize)]
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
