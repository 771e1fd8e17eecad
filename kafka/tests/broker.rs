//! The Kafka layer against the real dev broker.

use std::time::Duration;

use bulkhead_kafka::admin::{self, TopicOptions, TopicOutcome};
use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{Consumer, ConsumerOptions, Producer, require_kafka};
use bulkhead_schemas::topics::{TOPICS, Topic};

#[tokio::test]
async fn topics_are_created_from_the_registry_once() {
    let kafka = require_kafka!();
    let config = kafka.config("topics");
    let first = admin::ensure_all_topics(&config, &TopicOptions::default())
        .await
        .unwrap();
    assert_eq!(first.len(), TOPICS.len());
    assert!(
        first
            .iter()
            .all(|o| matches!(o, TopicOutcome::Created { .. })),
        "{first:?}"
    );
    let again = admin::ensure_all_topics(&config, &TopicOptions::default())
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|o| matches!(o, TopicOutcome::Existed { .. })),
        "{again:?}"
    );

    let listed = admin::list_topics(&config, &config.topic_prefix).unwrap();
    for spec in TOPICS {
        let name = config.topic(spec.topic);
        assert_eq!(
            listed.get(&name),
            Some(&(spec.partitions as usize)),
            "{name}"
        );
    }
}

#[tokio::test]
async fn offsets_are_committed_only_when_the_caller_says_so() {
    let kafka = require_kafka!();
    let config = kafka.config("offsets");
    admin::ensure_topics(
        &config,
        &[Topic::Status],
        &TopicOptions {
            partitions: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let topic = config.topic(Topic::Status);
    let producer = Producer::new(&config).unwrap();
    for i in 0..5u8 {
        let delivery = producer.send(&topic, b"host", &[i]).await.unwrap();
        assert_eq!(delivery.offset, i64::from(i));
    }
    let group = format!("{}group", config.topic_prefix);
    let read_two_and_commit = |commit: bool| {
        let consumer = Consumer::new(&config, &ConsumerOptions::group(&group)).unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let topic = topic.clone();
        async move {
            let mut last = None;
            for _ in 0..2 {
                let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                    .await
                    .unwrap()
                    .unwrap();
                last = Some((message.payload().unwrap()[0], message.offset()));
            }
            let (value, offset) = last.unwrap();
            if commit {
                consumer
                    .commit(&[((topic, 0), offset + 1)].into_iter().collect())
                    .unwrap();
            }
            value
        }
    };
    // Read without committing: the next member of the group starts from the beginning.
    assert_eq!(read_two_and_commit(false).await, 1);
    assert_eq!(read_two_and_commit(true).await, 1);
    // Committed at offset 2: the next reader continues there.
    assert_eq!(read_two_and_commit(false).await, 3);
}
