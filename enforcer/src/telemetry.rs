//! Each event the enforcer reports: one function that logs and counts together, with
//! low-cardinality labels. Metric names: `bulkhead_enforcer_<thing>_<unit>`.

use std::time::Duration;

pub fn policy_rejected(host_id: &str, reason: &'static str, error: &dyn std::fmt::Display) {
    tracing::warn!(host_id, reason, %error, "refused policy; the last good ruleset stays in force");
    metrics::counter!("bulkhead_enforcer_policy_rejections_total", "reason" => reason).increment(1);
}

pub fn applied(
    host_id: &str,
    version: u64,
    mode: &str,
    rules: usize,
    set_elements: usize,
    took: Duration,
) {
    tracing::info!(
        host_id,
        version,
        mode,
        rules,
        set_elements,
        took_ms = took.as_secs_f64() * 1e3,
        "applied policy"
    );
    metrics::counter!("bulkhead_enforcer_applies_total", "result" => "ok").increment(1);
    metrics::histogram!("bulkhead_enforcer_apply_duration_seconds").record(took.as_secs_f64());
    metrics::gauge!("bulkhead_enforcer_applied_version").set(version as f64);
    metrics::gauge!("bulkhead_enforcer_rules").set(rules as f64);
    metrics::gauge!("bulkhead_enforcer_set_elements").set(set_elements as f64);
}

pub fn apply_failed(host_id: &str, version: u64, error: &dyn std::fmt::Display) {
    tracing::error!(host_id, version, %error, "applying policy failed; the previous ruleset stays in force");
    metrics::counter!("bulkhead_enforcer_applies_total", "result" => "error").increment(1);
}

pub fn status_failed(error: &dyn std::fmt::Display) {
    tracing::warn!(%error, "could not publish enforcer status");
    metrics::counter!("bulkhead_enforcer_status_errors_total").increment(1);
}
