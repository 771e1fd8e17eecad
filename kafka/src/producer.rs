//! The producer every component uses: idempotent and compressed.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::{KafkaConfig, KafkaError};

/// An idempotent producer (`enable.idempotence`, `acks=all`): a retried send never
/// duplicates or reorders a message within a partition.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    brokers: String,
}

/// Where a message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

impl Producer {
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut client_config = config.client_config();
        client_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", config.compression_codec())
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set(
                "message.max.bytes",
                crate::admin::MAX_MESSAGE_BYTES.to_string(),
            )
            // librdkafka retries within this bound; past it the send fails and the caller
            // decides (buffer, drop oldest, stop) instead of waiting forever.
            .set("message.timeout.ms", "30000");
        let inner = config.create(client_config)?;
        Ok(Self {
            inner,
            brokers: config.brokers.clone(),
        })
    }

    /// Sends one message and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
    ) -> Result<Delivery, KafkaError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match self.inner.send(record, Timeout::Never).await {
            Ok(delivery) => Ok(Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((source, _)) => Err(KafkaError::request(
                format!("produce to {topic} on {}", self.brokers),
                source,
            )),
        }
    }

    /// Waits until every message sent so far is acknowledged (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner
            .flush(timeout)
            .map_err(|e| KafkaError::request(format!("flush to {}", self.brokers), e))
    }

    /// The underlying librdkafka producer, for callers that pipeline sends themselves.
    pub fn inner(&self) -> &FutureProducer {
        &self.inner
    }
}
