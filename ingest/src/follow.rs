//! Following a state topic (inventory, status, policy): read it from its oldest offset to
//! its end before ingest starts, so that the fold is complete, then keep applying new
//! messages in a background task. Every ingest process folds the whole topic (these
//! topics are small, or compacted); the fold is the read model.

use std::collections::BTreeMap;
use std::time::Duration;

use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::rdkafka::message::BorrowedMessage;
use bulkhead_kafka::{Consumer, ConsumerOptions, KafkaConfig, KafkaError, Offsets};
use bulkhead_schemas::topics::Topic;

/// Reads `topic` to its end through `apply`, then spawns a task that keeps applying.
pub async fn follow_topic<F>(
    kafka: &KafkaConfig,
    topic: Topic,
    group: &str,
    mut apply: F,
) -> Result<(), KafkaError>
where
    F: FnMut(&BorrowedMessage<'_>) + Send + 'static,
{
    let name = kafka.topic(topic);
    let consumer = Consumer::new(
        kafka,
        &ConsumerOptions::group(format!("{group}-{}-reader", topic.spec().suffix)),
    )?;
    let marks = consumer.watermarks(&name, kafka.request_timeout())?;
    let start: Offsets = marks
        .iter()
        .map(|(p, (low, _))| ((name.clone(), *p), *low))
        .collect();
    consumer.assign(&start)?;
    let mut remaining: BTreeMap<i32, i64> = marks
        .iter()
        .filter(|(_, (low, high))| high > low)
        .map(|(p, (_, high))| (*p, *high))
        .collect();
    while !remaining.is_empty() {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await
        else {
            tracing::warn!(
                topic = name,
                ?remaining,
                "reading the topic to its end took over 60 s; going on with what is loaded"
            );
            break;
        };
        let message = message?;
        apply(&message);
        if remaining
            .get(&message.partition())
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&message.partition());
        }
    }
    tracing::info!(topic = name, "state topic loaded");
    tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(message) => apply(&message),
                Err(e) => {
                    tracing::warn!(topic = name, error = %e, "consume error (librdkafka retries)");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}
