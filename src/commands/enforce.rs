//! `bulkhead enforce`: apply this host's view of the signed policy with nftables.

use anyhow::Context as _;
use bulkhead_enforcer::{EnforceArgs, EnforcerConfig, agent, render};
use bulkhead_schemas::topics::Topic;

use crate::config::Settings;

pub async fn run(settings: &Settings, args: EnforceArgs) -> anyhow::Result<()> {
    let config = EnforcerConfig::from_args(&args)?;
    if args.remove {
        let nft = config.nft.clone();
        tokio::task::spawn_blocking(move || nft.apply(&render::removal())).await??;
        println!(
            "removed table inet {} (this host is no longer enforced)",
            render::TABLE
        );
        return Ok(());
    }
    if args.dry_run {
        let nft = config.nft.clone();
        let (enforcer, _) = agent::prepare(config, &settings.kafka).await?;
        let rendered = enforcer.rendered().with_context(|| {
            format!(
                "no valid policy on {} yet: nothing to apply",
                settings.kafka.topic(Topic::Policy)
            )
        })?;
        println!("{}", serde_json::to_string_pretty(&rendered.batch)?);
        eprintln!(
            "{} rules, {} set elements",
            rendered.rules, rendered.set_elements
        );
        let batch = rendered.batch;
        match tokio::task::spawn_blocking(move || nft.check(&batch)).await? {
            Ok(()) => eprintln!("nft --check: accepted (nothing was changed)"),
            Err(e) => anyhow::bail!("nft --check refused the ruleset: {e}"),
        }
        return Ok(());
    }
    super::serve_metrics(&args.metrics_addr)?;
    agent::run(config, &settings.kafka, super::shutdown_signal()).await?;
    Ok(())
}
