//! One module per command; each parses its own flags and calls into a component crate.

pub mod agent;
pub mod collect;
pub mod demo;
pub mod demo_synthetic;
pub mod enforce;
pub mod gen_flows;
pub mod ingest;
pub mod lab;
pub mod lake;
pub mod policy;
pub mod policy_api;
pub mod recommend;
pub mod serve;
pub mod sql;
pub mod topics;

/// A progress bar on stderr for `total` items (hidden when stderr is not a terminal).
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {human_pos}/{human_len} ({per_sec}, {eta})",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A spinner on stderr saying `what` is under way, ticking until finished (hidden when
/// stderr is not a terminal).
pub fn spinner(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .expect("the template is valid"),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Serves Prometheus metrics on `addr` (empty: off). An address that is not host:port is
/// a configuration error and refused; a failure to listen on a good one (the port taken)
/// is logged, not fatal: a service keeps doing its job without its metrics endpoint.
pub fn serve_metrics(addr: &str) -> anyhow::Result<()> {
    if addr.is_empty() {
        return Ok(());
    }
    let refused = |problem: String| {
        anyhow::anyhow!(
            "--metrics-addr {addr:?}: {problem} (host:port, or empty to turn metrics off)"
        )
    };
    // A host name (`localhost:9462`) is resolved; its first address is served.
    let parsed = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| refused(e.to_string()))?
        .next()
        .ok_or_else(|| refused("no address".into()))?;
    match metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(parsed)
        .install()
    {
        Ok(()) => tracing::info!(%parsed, "serving Prometheus metrics at /metrics"),
        Err(e) => tracing::warn!(%parsed, error = %e, "cannot serve metrics"),
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
