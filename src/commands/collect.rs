//! `bulkhead collect`: the collector on its own (flows + inventory to Kafka, or JSON lines).

use bulkhead_collector::{CollectArgs, CollectorConfig, CollectorThread, Output, netns};

use crate::config::Settings;

pub async fn run(settings: &Settings, args: CollectArgs) -> anyhow::Result<()> {
    let config = CollectorConfig::resolve(&args, settings.collector.as_ref())?;
    let output = if args.stdout {
        Output::Stdout
    } else {
        Output::Kafka(settings.kafka.clone())
    };
    let namespace = args.netns.as_deref().map(netns::named);
    // The collector runs on its own thread (so that it may enter another network
    // namespace); this task waits for SIGINT/SIGTERM or for the collector to end.
    let collector =
        tokio::task::spawn_blocking(move || CollectorThread::spawn(config, output, namespace))
            .await??;
    let finished = collector.finished();
    tokio::select! {
        () = super::shutdown_signal() => {}
        () = finished => {}
    }
    tokio::task::spawn_blocking(move || collector.stop()).await??;
    Ok(())
}
