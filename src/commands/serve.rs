//! `bulkhead serve`: the HTTP API, the console and Arrow Flight SQL over the lake, and
//! the policy engine (the single writer of the control topic) with its part of the API,
//! refreshed by the recommender on a schedule.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_analytics::serve::{ServeConfig, Server};
use bulkhead_recommender::Options;

use crate::config::Settings;

#[derive(clap::Args, Debug)]
pub struct ServeCommandArgs {
    #[command(flatten)]
    pub analytics: bulkhead_analytics::serve::ServeArgs,
    /// The policy signing key (PKCS#8 PEM); generated on first start, with a message.
    #[arg(
        long,
        env = "BULKHEAD_POLICY_KEY_FILE",
        default_value = "bulkhead-policy.pem"
    )]
    pub policy_key_file: PathBuf,
    /// Serve queries only, without the policy engine: for read replicas (exactly one
    /// `serve` may own the policy, since it numbers the versions).
    #[arg(long)]
    pub no_policy: bool,
    /// Run the recommender this often (90s, 10m, 1h; 0 never). Its rules wait for review.
    #[arg(long, default_value = "10m", value_parser = super::recommend::parse_duration_secs)]
    pub recommend_every: u64,
    /// The recommender looks at edges last seen within this long.
    #[arg(long, default_value = "24h", value_parser = super::recommend::parse_duration_secs)]
    pub recommend_since: u64,
}

pub async fn run(settings: &Settings, args: ServeCommandArgs) -> anyhow::Result<()> {
    let config = ServeConfig::from_args(&args.analytics)?;
    let query_engine = args.analytics.engine.engine()?;
    let mut server = Server::builder(query_engine, config);
    if !args.no_policy {
        let lake = bulkhead_schemas::lake::lake_url(&args.analytics.engine.lake)?;
        let engine = bulkhead_policy::Engine::start(bulkhead_policy::EngineConfig {
            kafka: settings.kafka.clone(),
            key_file: args.policy_key_file.clone(),
            lake: Some(lake.clone()),
        })
        .await?;
        let engine = Arc::new(engine);
        if let Err(e) = refresh(&engine, &lake).await {
            tracing::warn!("{}", bulkhead_schemas::error_line(e.as_ref()));
        }
        if args.recommend_every > 0 {
            tokio::spawn(recommend_periodically(
                settings.kafka.clone(),
                lake,
                engine.clone(),
                Duration::from_secs(args.recommend_every),
                args.recommend_since,
            ));
        }
        server = server.merge(bulkhead_policy::router(engine));
    }
    let running = server.start(super::shutdown_signal()).await?;
    eprintln!(
        "serving the HTTP API{} on http://{}{}",
        if args.no_policy {
            ""
        } else {
            " and the policy engine"
        },
        running.http_addr,
        running
            .flight_addr
            .map(|a| format!(" and Flight SQL on {a}"))
            .unwrap_or_default()
    );
    running.wait().await
}

/// Recommends, publishes and hands the result to the engine for review, every `every`;
/// a failed run is logged and retried at the next tick (the lake may not have edges yet).
async fn recommend_periodically(
    kafka: bulkhead_kafka::KafkaConfig,
    lake: url::Url,
    engine: Arc<bulkhead_policy::Engine>,
    every: Duration,
    since_secs: u64,
) {
    // The first run one interval after start: at start `refresh` already loaded what
    // the lake has, and a fresh lake has no edges yet.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let run = async {
            // What analysts set counts before it is provisioned.
            let assigned = engine.draft_labels().await;
            let out =
                super::recommend::compute(&lake, since_secs, Options::default(), &assigned).await?;
            if out.items.is_empty() {
                return Ok(0);
            }
            super::recommend::publish(&kafka, &lake, &out).await?;
            refresh(&engine, &lake).await
        };
        match run.await {
            Ok(n) => tracing::info!(recommendations = n, "periodic recommender run"),
            Err(e) => tracing::warn!(
                "periodic recommender run failed: {}",
                bulkhead_schemas::error_line(e.as_ref())
            ),
        }
    }
}

/// Hands the engine what the lake knows now: the workloads' inventory (labels from hosts
/// and label rules), and the recommendations table.
async fn refresh(engine: &bulkhead_policy::Engine, lake: &url::Url) -> anyhow::Result<usize> {
    let inventory = bulkhead_recommender::lake::inventory(lake).await?;
    let labelled = engine
        .adopt_inventory(&inventory)
        .await
        .map_err(|e| anyhow::anyhow!("cannot label workloads from their inventory: {e}"))?;
    if labelled > 0 {
        tracing::info!(labels = labelled, "workloads labelled from inventory");
    }
    engine
        .load_recommendations()
        .await
        .map_err(|e| e.context("cannot load the recommendations table"))
}
