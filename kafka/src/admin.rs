//! Topic administration: creates Bulkhead's topics from the registry, idempotently.

use std::collections::BTreeMap;

use bulkhead_schemas::topics::{Topic, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaConfig, KafkaError};

/// Largest message Bulkhead's topics accept (a FlowBatch of many thousand records).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How topics are created.
#[derive(Clone, Debug)]
pub struct TopicOptions {
    /// Replication factor (1 for a single dev broker; 3 in production).
    pub replication: i32,
    /// Overrides the registry's partition count (e.g. 1 in tests that need order).
    pub partitions: Option<i32>,
}

impl Default for TopicOptions {
    fn default() -> Self {
        Self {
            replication: 1,
            partitions: None,
        }
    }
}

/// What happened to each topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicOutcome {
    Created { name: String, partitions: i32 },
    Existed { name: String },
}

fn admin_client(config: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    config.create(config.client_config())
}

fn topic_configs(spec: &TopicSpec) -> Vec<(&'static str, String)> {
    let mut configs = vec![("max.message.bytes", MAX_MESSAGE_BYTES.to_string())];
    if spec.compacted {
        configs.push(("cleanup.policy", "compact".into()));
        // Keep tombstones long enough for a slow reader to see a deletion.
        configs.push(("delete.retention.ms", (24 * 3600 * 1000).to_string()));
    }
    configs
}

/// Creates every topic in `topics` that does not exist yet, with the registry's layout.
pub async fn ensure_topics(
    config: &KafkaConfig,
    topics: &[Topic],
    options: &TopicOptions,
) -> Result<Vec<TopicOutcome>, KafkaError> {
    let admin = admin_client(config)?;
    let specs: Vec<_> = topics
        .iter()
        .map(|t| (config.topic(*t), t.spec(), topic_configs(t.spec())))
        .collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(name, spec, configs)| {
            let partitions = options.partitions.unwrap_or(spec.partitions);
            configs.iter().fold(
                NewTopic::new(
                    name,
                    partitions,
                    TopicReplication::Fixed(options.replication),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let admin_options = AdminOptions::new().operation_timeout(Some(config.request_timeout()));
    let results = admin
        .create_topics(new_topics.iter(), &admin_options)
        .await
        .map_err(|e| KafkaError::request(format!("create topics on {}", config.brokers), e))?;
    let mut outcomes = Vec::with_capacity(results.len());
    for (result, (name, spec, _)) in results.into_iter().zip(&specs) {
        match result {
            Ok(_) => {
                let partitions = options.partitions.unwrap_or(spec.partitions);
                tracing::info!(topic = %name, partitions, compacted = spec.compacted, "created topic");
                outcomes.push(TopicOutcome::Created {
                    name: name.clone(),
                    partitions,
                });
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                outcomes.push(TopicOutcome::Existed { name: name.clone() });
            }
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(outcomes)
}

/// Creates every Bulkhead topic.
pub async fn ensure_all_topics(
    config: &KafkaConfig,
    options: &TopicOptions,
) -> Result<Vec<TopicOutcome>, KafkaError> {
    let all: Vec<Topic> = bulkhead_schemas::topics::TOPICS
        .iter()
        .map(|s| s.topic)
        .collect();
    ensure_topics(config, &all, options).await
}

/// Topic name → partition count, for every topic in the cluster whose name starts with
/// `prefix`. Doubles as a reachability check: it fails when no broker answers.
pub fn list_topics(
    config: &KafkaConfig,
    prefix: &str,
) -> Result<BTreeMap<String, usize>, KafkaError> {
    let consumer: BaseConsumer = config.create(config.client_config())?;
    let metadata = consumer
        .fetch_metadata(None, config.request_timeout())
        .map_err(|e| KafkaError::request(format!("metadata from {}", config.brokers), e))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix))
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect())
}
