//! A consumer that never commits by itself: the caller commits the offsets of data it has
//! made durable, so a crash replays instead of losing.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use crate::{KafkaConfig, KafkaError};

/// Errors that mean "no leader elected yet" (a new topic): worth retrying briefly.
fn leader_pending(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::NotLeaderForPartition | Code::LeaderNotAvailable | Code::UnknownTopicOrPartition
        )
    )
}

/// How a consumer joins.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// Consumer group id (partitions are shared among the group's members).
    pub group_id: String,
    /// Where a group without committed offsets starts: "earliest" or "latest".
    pub auto_offset_reset: &'static str,
}

impl ConsumerOptions {
    pub fn group(group_id: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            auto_offset_reset: "earliest",
        }
    }
}

/// Next offset to read, per (topic, partition): what a consumer commits.
pub type Offsets = BTreeMap<(String, i32), i64>;

/// A group consumer with auto-commit off.
pub struct Consumer {
    inner: StreamConsumer,
    brokers: String,
}

impl Consumer {
    pub fn new(config: &KafkaConfig, options: &ConsumerOptions) -> Result<Self, KafkaError> {
        let mut client_config = config.client_config();
        client_config
            .set("group.id", &options.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", options.auto_offset_reset)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "fetch.message.max.bytes",
                crate::admin::MAX_MESSAGE_BYTES.to_string(),
            );
        let inner = config.create(client_config)?;
        Ok(Self {
            inner,
            brokers: config.brokers.clone(),
        })
    }

    /// Joins the group for `topics`.
    pub fn subscribe(&self, topics: &[&str]) -> Result<(), KafkaError> {
        self.inner.subscribe(topics).map_err(|e| {
            KafkaError::request(format!("subscribe to {topics:?} on {}", self.brokers), e)
        })
    }

    /// Reads exactly these partitions from these offsets, outside group management.
    pub fn assign(&self, offsets: &Offsets) -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| KafkaError::request("build assignment", e))?;
        }
        self.inner
            .assign(&list)
            .map_err(|e| KafkaError::request(format!("assign {offsets:?}"), e))
    }

    /// The next message (with its topic, partition and offset).
    pub async fn recv(&self) -> Result<BorrowedMessage<'_>, KafkaError> {
        self.inner
            .recv()
            .await
            .map_err(|e| KafkaError::request(format!("consume from {}", self.brokers), e))
    }

    /// Commits `offsets` (the next offset to read per partition) synchronously: call it
    /// only once the data up to there is durable downstream.
    pub fn commit(&self, offsets: &Offsets) -> Result<(), KafkaError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| KafkaError::request("build commit", e))?;
        }
        self.inner
            .commit(&list, CommitMode::Sync)
            .map_err(|e| KafkaError::request(format!("commit {offsets:?}"), e))
    }

    /// The group's committed offsets for the current assignment.
    pub fn committed(&self, timeout: Duration) -> Result<Offsets, KafkaError> {
        let list = self
            .inner
            .committed(timeout)
            .map_err(|e| KafkaError::request("read committed offsets", e))?;
        Ok(list
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    /// Low and high watermarks of every partition of `topic`: the first offset still
    /// stored, and the offset the next message will get.
    pub fn watermarks(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
        let metadata = self
            .inner
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| KafkaError::request(format!("metadata of {topic}"), e))?;
        let mut out = BTreeMap::new();
        let deadline = std::time::Instant::now() + timeout;
        for t in metadata.topics() {
            for p in t.partitions() {
                let marks = loop {
                    match self.inner.fetch_watermarks(topic, p.id(), timeout) {
                        Ok(marks) => break marks,
                        // A topic created a moment ago has no partition leader yet.
                        Err(e) if leader_pending(&e) && std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => {
                            return Err(KafkaError::request(
                                format!("watermarks of {topic}/{}", p.id()),
                                e,
                            ));
                        }
                    }
                };
                out.insert(p.id(), marks);
            }
        }
        Ok(out)
    }

    /// The underlying librdkafka consumer (rebalance hooks, pause/resume, ...).
    pub fn inner(&self) -> &StreamConsumer {
        &self.inner
    }
}
