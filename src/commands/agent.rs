//! `bulkhead agent`: the host agent — the collector and the enforcer in one process,
//! sharing the host id and one Prometheus endpoint.

use bulkhead_collector::{CollectArgs, CollectorConfig, CollectorThread, Output};
use bulkhead_enforcer::{EnforceArgs, EnforcerConfig, agent};

use crate::config::Settings;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub collect: CollectArgs,
    #[command(flatten)]
    pub enforce: EnforceArgs,
}

pub async fn run(settings: &Settings, args: AgentArgs) -> anyhow::Result<()> {
    let AgentArgs {
        collect,
        mut enforce,
    } = args;
    anyhow::ensure!(
        !enforce.dry_run && !enforce.remove && !collect.stdout && collect.netns.is_none(),
        "bulkhead agent runs both halves for real; use `bulkhead enforce --dry-run|--remove` or `bulkhead collect --stdout|--netns` for those"
    );
    anyhow::ensure!(
        collect.metrics_listen.is_none(),
        "bulkhead agent serves one Prometheus endpoint for both halves: give it with \
         --metrics-addr, not --metrics-listen or BULKHEAD_METRICS_LISTEN (the collector's own)"
    );
    let mut collector_config = CollectorConfig::resolve(&collect, settings.collector.as_ref())?;
    // One endpoint for both halves: the enforcer's --metrics-addr serves the global
    // recorder (a collector address from the config file is dropped here).
    collector_config.metrics_listen = None;
    if enforce.host_id.is_none() {
        // The collector's persisted id (created on first start) names this host for both.
        enforce.host_id = Some(bulkhead_collector::inventory::host_id(
            &collector_config.host_id_file,
        )?);
    }
    let enforcer_config = EnforcerConfig::from_args(&enforce)?;
    super::serve_metrics(&enforce.metrics_addr)?;

    let output = Output::Kafka(settings.kafka.clone());
    let collector =
        tokio::task::spawn_blocking(move || CollectorThread::spawn(collector_config, output, None))
            .await??;
    let collector_finished = collector.finished();
    let shutdown = async {
        tokio::select! {
            () = super::shutdown_signal() => {}
            () = collector_finished => tracing::warn!("the collector stopped; stopping the agent"),
        }
    };
    let enforced = agent::run(enforcer_config, &settings.kafka, shutdown).await;
    tokio::task::spawn_blocking(move || collector.stop()).await??;
    enforced?;
    Ok(())
}
