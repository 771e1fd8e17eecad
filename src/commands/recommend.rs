//! `bulkhead recommend`: recommendations from the lake's `edges` table, published to
//! `bulkhead.recommendations.v1` and written to the `recommendations` table.

use std::time::Instant;

use anyhow::Context as _;
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::{KafkaConfig, Producer};
use bulkhead_recommender::{Kind, Options, Recommendations, WorkloadLabels};
use bulkhead_schemas::policy::Label;
use bulkhead_schemas::topics::Topic;
use prost::Message as _;

use crate::config::Settings;

#[derive(clap::Args, Debug)]
pub struct RecommendArgs {
    /// The lake root (a path, file:// URL or s3://bucket/prefix) holding the `edges` table.
    #[arg(long, env = "BULKHEAD_LAKE")]
    pub lake: String,
    /// Look at edges last seen within this long before now: 90m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration_secs)]
    pub since: u64,
    /// Only recommend rules for providers in this scope: app=crm,env=prod.
    #[arg(long, value_delimiter = ',')]
    pub scope: Vec<Label>,
    /// Share of a label group's members that must show a pattern before the rule names
    /// the group instead of the members.
    #[arg(long, default_value_t = 0.5)]
    pub support: f64,
    /// Print the recommendations as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Do not publish to Kafka or write the table (look only).
    #[arg(long)]
    pub dry_run: bool,
}

/// `90s`, `15m`, `24h`, `7d` → seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 24h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use s, m, h or d)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?}: too long a duration"))
}

pub async fn run(settings: &Settings, args: RecommendArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.support > 0.0 && args.support <= 1.0,
        "--support {}: expected a share in (0, 1]",
        args.support
    );
    let lake = bulkhead_schemas::lake::lake_url(&args.lake)?;
    let started = Instant::now();
    let options = Options {
        support_threshold: args.support,
        scope_filter: args.scope.clone(),
        ..Options::default()
    };
    // Standalone, the labels are the edges' own: the provisioned policy's over the hosts'.
    let out = compute(&lake, args.since, options, &WorkloadLabels::new()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out.items)?);
    } else {
        println!(
            "{:<14} {:<22} {:<40} {:<40} {:<18} {:>8} {:>5}",
            "kind", "ruleset", "consumers", "providers", "services", "flows", "conf"
        );
        for r in &out.items {
            let actors = |a: &[bulkhead_schemas::policy::Actor]| {
                a.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let services = r
                .rule
                .services
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            println!(
                "{:<14} {:<22} {:<40} {:<40} {:<18} {:>8} {:>5.2}",
                r.kind.as_str(),
                r.ruleset,
                actors(&r.rule.consumers),
                actors(&r.rule.providers),
                services,
                r.evidence.flows,
                r.confidence
            );
        }
        println!(
            "{} rules, {} suspicious findings from {} edges ({} flows); {} edges skipped for lack of scope labels; {:.2} s",
            out.items
                .iter()
                .filter(|r| r.kind != Kind::Suspicious)
                .count(),
            out.items
                .iter()
                .filter(|r| r.kind == Kind::Suspicious)
                .count(),
            out.edges,
            out.flows,
            out.unlabeled_edges,
            started.elapsed().as_secs_f64()
        );
    }
    if args.dry_run {
        return Ok(());
    }
    let (topic, version) = publish(&settings.kafka, &lake, &out).await?;
    println!(
        "published {} recommendations to {topic}; recommendations table version {version}",
        out.items.len()
    );
    Ok(())
}

/// The recommender over the edges last seen within `since_secs`, with `assigned` (labels
/// the policy gives workloads) laid over the labels the edges carried.
pub async fn compute(
    lake: &url::Url,
    since_secs: u64,
    options: Options,
    assigned: &WorkloadLabels,
) -> anyhow::Result<Recommendations> {
    let started = Instant::now();
    let since_us =
        (bulkhead_schemas::now_unix_ns() / 1000) as i64 - (since_secs as i64) * 1_000_000;
    let (edges, mut labels) = bulkhead_recommender::lake::load_edges(lake, since_us).await?;
    bulkhead_recommender::lay_labels_over(&mut labels, assigned);
    let out = tokio::task::spawn_blocking(move || {
        bulkhead_recommender::recommend(edges, &labels, &options)
    })
    .await
    .context("the recommender stopped")??;
    tracing::info!(
        edges = out.edges,
        flows = out.flows,
        items = out.items.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recommendations computed"
    );
    Ok(out)
}

/// Writes the `recommendations` table (replacing the previous run's) and publishes every
/// item to `bulkhead.recommendations.v1`; returns the topic and the table version.
pub async fn publish(
    kafka: &KafkaConfig,
    lake: &url::Url,
    out: &Recommendations,
) -> anyhow::Result<(String, i64)> {
    let version = bulkhead_recommender::lake::write_recommendations(lake, &out.items).await?;
    admin::ensure_topics(kafka, &[Topic::Recommendations], &TopicOptions::default()).await?;
    let producer = Producer::new(kafka)?;
    let topic = kafka.topic(Topic::Recommendations);
    for r in &out.items {
        producer
            .send(&topic, r.key().as_bytes(), &r.to_proto().encode_to_vec())
            .await?;
    }
    Ok((topic, version))
}
