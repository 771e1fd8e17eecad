//! The collector's Kafka output: batches and the inventory arrive in a real broker and
//! decode; a dead broker never blocks eviction and costs the oldest batches, counted.

mod lab;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_collector::publisher::{Publisher, Sink};
use bulkhead_collector::telemetry::Stats;
use bulkhead_collector::{CollectorThread, Output, netns};
use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{Consumer, ConsumerOptions, KafkaConfig, Producer, require_kafka};
use bulkhead_schemas::proto::{FlowBatch, FlowRecord, HostInventory};
use bulkhead_schemas::topics::Topic;
use lab::{EGRESS, INGRESS, Pair, get, port_of};
use prost::Message as _;

#[test]
fn batches_and_inventory_arrive_in_kafka_and_decode() {
    require_lab!();
    let kafka = require_kafka!();
    let config = kafka.config("collector-kafka");
    let mut lab = Pair::new("kafka");
    let (a4, b4, _, _) = lab.addresses("va");
    let host_dir = tempfile::tempdir().expect("tempdir");
    let mut collector_config = lab::config(host_dir.path());
    collector_config.labels.insert("role".into(), "db".into());
    let collector = CollectorThread::spawn(
        collector_config,
        Output::Kafka(config.clone()),
        Some(netns::named(&lab.a)),
    )
    .unwrap_or_else(|e| panic!("collector did not start: {e}"));
    let host_id = collector.started.host_id.clone();
    let stats = collector.stats.clone();

    let (_, ready, echo) = lab.spawn(&lab.b.clone(), "bh-udpecho", "udp-echo", &["7070", "3"]);
    assert_eq!(ready, "ready");
    let (_, line, client) = lab.spawn(
        &lab.a.clone(),
        "bh-kclient",
        "udp-client",
        &[&b4, "7070", "3", "50"],
    );
    let port = port_of(&line);
    lab.wait(client);
    lab.wait(echo);
    std::thread::sleep(Duration::from_millis(200));
    collector
        .stop()
        .unwrap_or_else(|e| panic!("collector ended with an error: {e}"));
    let published = Stats::get(&stats.published_batches);
    assert!(published >= 1, "no batch was acknowledged by Kafka");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (batches, inventory) = runtime.block_on(async {
        let consumer = Consumer::new(
            &config,
            &ConsumerOptions::group(format!("{}reader", config.topic_prefix)),
        )
        .expect("consumer");
        let flows_topic = config.topic(Topic::Flows);
        let inventory_topic = config.topic(Topic::Inventory);
        consumer
            .subscribe(&[&flows_topic, &inventory_topic])
            .expect("subscribe");
        let mut batches = Vec::new();
        let mut inventory = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while (batches.len() as u64) < published || inventory.is_none() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(remaining, consumer.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} of {published} batches (inventory: {}) within 60 s",
                        batches.len(),
                        inventory.is_some()
                    )
                })
                .expect("consume");
            assert_eq!(
                message.key(),
                Some(host_id.as_bytes()),
                "messages are keyed by host id"
            );
            let payload = message.payload().expect("a payload");
            if message.topic() == flows_topic {
                batches.push(FlowBatch::decode(payload).expect("a FlowBatch decodes"));
            } else {
                inventory = Some(HostInventory::decode(payload).expect("a HostInventory decodes"));
            }
        }
        (batches, inventory.expect("inventory"))
    });

    // One key → one partition → batches in order, numbered from 0 without gaps.
    let seqs: Vec<u64> = batches.iter().map(|b| b.batch_seq).collect();
    assert_eq!(seqs, (0..published).collect::<Vec<_>>());
    assert!(
        batches
            .iter()
            .all(|b| b.host_id == host_id && b.schema_version == 1)
    );
    let sums = lab::sum(&batches);
    let out = get(
        &sums,
        (EGRESS, a4.as_str(), port, b4.as_str(), 7070, 17),
        "UDP out, from Kafka",
    );
    let back = get(
        &sums,
        (INGRESS, b4.as_str(), 7070, a4.as_str(), port, 17),
        "UDP back, from Kafka",
    );
    assert_eq!((out.packets, out.bytes), (3, 3 * 78));
    assert_eq!((back.packets, back.bytes), (3, 3 * 78));
    assert_eq!(out.names, vec!["bh-kclient"]);

    assert_eq!(inventory.host_id, host_id);
    assert_eq!(inventory.labels.get("role").map(String::as_str), Some("db"));
    let va = inventory
        .interfaces
        .iter()
        .find(|i| i.name == "va")
        .expect("va in the inventory");
    assert!(va.addresses.contains(&format!("{a4}/24")), "{va:?}");
    assert!(!inventory.agent_version.is_empty() && inventory.os.starts_with("Linux"));
}

fn batch(seq: u64) -> FlowBatch {
    FlowBatch {
        schema_version: 1,
        host_id: "h".into(),
        batch_seq: seq,
        records: vec![
            FlowRecord {
                process_name: "x".repeat(100),
                ..Default::default()
            };
            10
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_dead_broker_never_blocks_and_costs_the_oldest_batches() {
    // A real producer pointed at a port where nothing listens: sends never complete.
    let config = KafkaConfig::with_brokers("127.0.0.1:1");
    let producer = Producer::new(&config).expect("a producer (it connects lazily)");
    let stats = Arc::new(Stats::default());
    let sink = Sink::Kafka {
        producer,
        flows_topic: "nowhere.flows".into(),
        inventory_topic: "nowhere.inventory".into(),
    };
    let size = batch(0).encode_to_vec().len();
    let capacity = 8 * size;
    let publisher = Publisher::start(sink, capacity, stats.clone());
    let started = Instant::now();
    for seq in 0..30 {
        publisher.flows(batch(seq));
        tokio::task::yield_now().await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "publishing blocked on a dead broker"
    );
    let dropped = Stats::get(&stats.dropped_batches_queue_full);
    // 30 batches, at most 8 queued and 8 in flight: at least 14 dropped, oldest first.
    assert!(dropped >= 14, "dropped {dropped}");
    // Each dropped batch held 10 flow records: they are counted as lost flows too.
    assert_eq!(Stats::get(&stats.dropped_flows_queue_full), dropped * 10);
    assert_eq!(Stats::get(&stats.published_batches), 0);
    publisher.shutdown(Duration::from_millis(200)).await;
}

#[test]
fn the_collector_starts_and_captures_while_kafka_is_down() {
    require_lab!();
    let mut lab = Pair::new("nokafka");
    let (_, b4, _, _) = lab.addresses("va");
    let host_dir = tempfile::tempdir().expect("tempdir");
    let config = lab::config(host_dir.path());
    // Nothing listens on port 1: topic creation times out, sends never complete.
    let dead = KafkaConfig::with_brokers("127.0.0.1:1");
    let started = Instant::now();
    let collector = CollectorThread::spawn(config, Output::Kafka(dead), Some(netns::named(&lab.a)))
        .unwrap_or_else(|e| panic!("the collector must start without Kafka: {e}"));
    assert!(started.elapsed() < Duration::from_secs(20));
    let stats = collector.stats.clone();
    let (_, done, spray) = lab.spawn(
        &lab.a.clone(),
        "bh-spray",
        "udp-spray",
        &[&b4, "30000", "5"],
    );
    assert_eq!(done, "done");
    lab.wait(spray);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Stats::get(&stats.evicted_flows) < 5 {
        assert!(
            Instant::now() < deadline,
            "flows were not evicted while Kafka is down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    collector
        .stop()
        .unwrap_or_else(|e| panic!("collector ended with an error: {e}"));
    assert_eq!(Stats::get(&stats.published_batches), 0);
}

/// A second real broker on its own port and state directory, stopped on drop.
struct SpareBroker {
    port: u16,
    state: tempfile::TempDir,
}

impl SpareBroker {
    fn env(&self, command: &mut std::process::Command) {
        command
            .env("BULKHEAD_KAFKA_PORT", self.port.to_string())
            .env("BULKHEAD_KAFKA_STATE", self.state.path())
            .env("BULKHEAD_KAFKA_HEAP", "256m");
    }

    fn start(&self) {
        let mut up =
            std::process::Command::new(bulkhead_kafka::testkit::repo_root().join("dev/kafka/up"));
        self.env(&mut up);
        let status = up.status().expect("run dev/kafka/up");
        assert!(
            status.success(),
            "dev/kafka/up on port {} failed",
            self.port
        );
    }
}

impl Drop for SpareBroker {
    fn drop(&mut self) {
        let mut down =
            std::process::Command::new(bulkhead_kafka::testkit::repo_root().join("dev/kafka/down"));
        self.env(&mut down);
        let _ = down.status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_resumes_when_kafka_returns_with_the_newest_batches() {
    // The shared broker proves Java and the jars are there; the outage is a second broker.
    let _ = require_kafka!();
    let spare = SpareBroker {
        port: 19_292,
        state: tempfile::tempdir().expect("tempdir"),
    };
    let mut config = KafkaConfig::with_brokers(&format!("127.0.0.1:{}", spare.port));
    config.topic_prefix = format!("resume.{}.", std::process::id());
    let stats = Arc::new(Stats::default());
    let sink = Sink::Kafka {
        producer: Producer::new(&config).expect("a producer (it connects lazily)"),
        flows_topic: config.topic(Topic::Flows),
        inventory_topic: config.topic(Topic::Inventory),
    };
    let capacity = 8 * batch(0).encode_to_vec().len();
    let publisher = Publisher::start(sink, capacity, stats.clone());
    for seq in 0..30 {
        publisher.flows(batch(seq));
        tokio::task::yield_now().await;
    }
    assert_eq!(
        Stats::get(&stats.published_batches),
        0,
        "nothing can be published while Kafka is down"
    );
    let dropped = Stats::get(&stats.dropped_batches_queue_full);
    assert!(dropped >= 14, "dropped {dropped}");

    // Kafka returns.
    tokio::task::block_in_place(|| spare.start());
    let deadline = Instant::now() + Duration::from_secs(90);
    while bulkhead_kafka::admin::list_topics(&config, "").is_err() {
        assert!(
            Instant::now() < deadline,
            "the spare broker did not come up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bulkhead_kafka::admin::ensure_topics(
        &config,
        &[Topic::Flows, Topic::Inventory],
        &Default::default(),
    )
    .await
    .expect("topics on the returned broker");
    // What arrives, in order, ends with the newest batch: publishing resumed. (The first
    // batches were already in flight when the queue filled; they arrive too if the broker
    // came back within their 30 s message timeout.)
    let consumer = Consumer::new(
        &config,
        &ConsumerOptions::group(format!("{}reader", config.topic_prefix)),
    )
    .expect("consumer");
    consumer
        .subscribe(&[&config.topic(Topic::Flows)])
        .expect("subscribe");
    let mut seqs = Vec::new();
    while seqs.last() != Some(&29) {
        assert!(
            Instant::now() < deadline,
            "publishing did not resume; arrived so far: {seqs:?}"
        );
        let Ok(message) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
        else {
            continue;
        };
        let message = message.expect("consume");
        seqs.push(
            FlowBatch::decode(message.payload().unwrap_or_default())
                .expect("decodes")
                .batch_seq,
        );
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "batches arrived out of order: {seqs:?}"
    );
    assert!(
        seqs.len() as u64 <= 30 - dropped,
        "a dropped batch was published: {seqs:?} ({dropped} dropped)"
    );
    // The queue is bounded in bytes: the newest batches that fit in it all arrive.
    let queued = capacity / batch(29).encode_to_vec().len();
    let newest: Vec<u64> = (30 - queued as u64..30).collect();
    assert!(
        seqs.ends_with(&newest),
        "the queued (newest) batches {newest:?} were not all published: {seqs:?}"
    );
    publisher.shutdown(Duration::from_secs(5)).await;
}
