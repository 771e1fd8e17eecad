//! Errors of the Kafka layer, each saying what was being done and with what.

/// A Kafka operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The configuration is wrong: the user must fix it; retrying will not help.
    #[error("kafka config: {0}")]
    Config(String),
    /// The client could not be created from the configuration (librdkafka refused it).
    #[error("kafka client for {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A request to the cluster failed; often transient (broker down, leader moving).
    #[error("kafka {operation}: {source}")]
    Request {
        operation: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Topic creation failed for one topic.
    #[error("creating topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
}

impl KafkaError {
    pub(crate) fn request(
        operation: impl Into<String>,
        source: rdkafka::error::KafkaError,
    ) -> Self {
        KafkaError::Request {
            operation: operation.into(),
            source,
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaError::Config(_) | KafkaError::Client { .. } | KafkaError::CreateTopic { .. } => {
                false
            }
            KafkaError::Request { source, .. } => source.rdkafka_error_code().is_none_or(|code| {
                !matches!(
                    code,
                    rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                        | rdkafka::types::RDKafkaErrorCode::InvalidConfig
                        | rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                        | rdkafka::types::RDKafkaErrorCode::ClusterAuthorizationFailed
                        | rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed
                )
            }),
        }
    }
}
