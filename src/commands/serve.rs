//! `bulkhead serve`: the HTTP API, the console and Arrow Flight SQL over the lake.

pub async fn run(args: bulkhead_analytics::serve::ServeArgs) -> anyhow::Result<()> {
    bulkhead_analytics::serve::run(args, super::shutdown_signal()).await
}
