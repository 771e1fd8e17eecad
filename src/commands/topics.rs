//! `bulkhead topics create|list`.

use bulkhead_kafka::admin::{self, TopicOptions, TopicOutcome};

use crate::config::Settings;

#[derive(clap::Subcommand)]
pub enum TopicsCommand {
    /// Create every Bulkhead topic that does not exist yet (partitions and compaction from
    /// the registry; existing topics are left as they are).
    Create {
        /// Replication factor (1 for a single broker, 3 in production).
        #[arg(long, default_value_t = 1)]
        replication: i32,
        /// Partitions for every topic, instead of the registry's per-topic counts.
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// List the topics under the prefix, with their partition counts.
    List,
}

/// Creates every topic and prints one line per topic.
pub async fn create_all(
    kafka: &bulkhead_kafka::KafkaConfig,
    options: &TopicOptions,
) -> anyhow::Result<()> {
    for outcome in admin::ensure_all_topics(kafka, options).await? {
        match outcome {
            TopicOutcome::Created { name, partitions } => {
                println!("  created {name} ({partitions} partitions)")
            }
            TopicOutcome::Existed { name } => println!("  exists  {name}"),
        }
    }
    Ok(())
}

pub async fn run(settings: &Settings, command: TopicsCommand) -> anyhow::Result<()> {
    let kafka = &settings.kafka;
    match command {
        TopicsCommand::Create {
            replication,
            partitions,
        } => {
            create_all(
                kafka,
                &TopicOptions {
                    replication,
                    partitions,
                },
            )
            .await?;
        }
        TopicsCommand::List => {
            let prefix = kafka.topic_prefix.clone();
            let topics = tokio::task::spawn_blocking({
                let kafka = kafka.clone();
                move || admin::list_topics(&kafka, &prefix)
            })
            .await??;
            if topics.is_empty() {
                println!(
                    "no topics under {:?} on {} (create them: bulkhead topics create)",
                    kafka.topic_prefix, kafka.brokers
                );
            }
            for (name, partitions) in topics {
                println!("{name}\t{partitions} partitions");
            }
        }
    }
    Ok(())
}
