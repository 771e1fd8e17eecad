//! Where flows and inventories go: Kafka (through a bytes-bounded, drop-oldest queue), JSON
//! lines on stdout, or an in-process channel (for `bulkhead agent` and tests).
//!
//! A [`Sink`] is built before the collector enters its network namespace (Kafka client
//! threads stay in the namespace that reaches the broker).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::{KafkaConfig, Producer};
use bulkhead_schemas::proto::{FlowBatch, HostInventory};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;
use tokio::task::JoinHandle;

use crate::error::CollectorError;
use crate::queue::{ByteQueue, Dropped, Weighted};
use crate::telemetry::{Metric, Stats};

/// Where the collector publishes.
#[derive(Clone, Debug)]
pub enum Output {
    Kafka(KafkaConfig),
    Stdout,
    Channel(Sender<Published>),
}

/// What goes to a [`Output::Channel`].
#[derive(Clone, Debug, PartialEq)]
pub enum Published {
    Flows(FlowBatch),
    Inventory(HostInventory),
}

/// A connected output.
pub enum Sink {
    Kafka {
        producer: Producer,
        flows_topic: String,
        inventory_topic: String,
    },
    Stdout,
    Channel(Sender<Published>),
}

impl Sink {
    /// Connects (Kafka: creates the topics if missing and a producer).
    pub async fn connect(output: Output) -> Result<Self, CollectorError> {
        Ok(match output {
            Output::Kafka(config) => {
                config.validate()?;
                // A broker that is down at start must not keep the collector from
                // capturing: batches wait in the bounded queue until it answers.
                let topics = [Topic::Flows, Topic::Inventory];
                let options = TopicOptions::default();
                let ensure = admin::ensure_topics(&config, &topics, &options);
                match tokio::time::timeout(Duration::from_secs(10), ensure).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not create the topics; publishing anyway")
                    }
                    Err(_) => tracing::warn!(
                        brokers = %config.brokers,
                        "Kafka did not answer within 10 s; capturing anyway (batches wait in the bounded queue)"
                    ),
                }
                Sink::Kafka {
                    producer: Producer::new(&config)?,
                    flows_topic: config.topic(Topic::Flows),
                    inventory_topic: config.topic(Topic::Inventory),
                }
            }
            Output::Stdout => Sink::Stdout,
            Output::Channel(sender) => Sink::Channel(sender),
        })
    }
}

struct Queued {
    topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    /// Flow records inside (0 for an inventory).
    records: u64,
}

impl Weighted for Queued {
    fn weight(&self) -> u64 {
        self.records
    }
}

fn count_drops(stats: &Stats, dropped: Dropped) {
    if dropped.items == 0 {
        return;
    }
    Stats::add(&stats.dropped_batches_queue_full, dropped.items);
    Metric::DroppedBatches.add_tagged("queue_full", dropped.items);
    Stats::add(&stats.dropped_flows_queue_full, dropped.weight);
    Metric::DroppedFlows.add_tagged("queue_full", dropped.weight);
}

/// Publishes without ever blocking the caller.
pub struct Publisher {
    kind: Kind,
    stats: Arc<Stats>,
}

enum Kind {
    Kafka {
        queue: Arc<ByteQueue<Queued>>,
        sender: JoinHandle<()>,
        producer: Producer,
        flows_topic: String,
        inventory_topic: String,
    },
    Stdout,
    Channel(Sender<Published>),
}

impl Publisher {
    /// Starts the publisher; Kafka sends run on a task of the current runtime.
    pub fn start(sink: Sink, queue_bytes: usize, stats: Arc<Stats>) -> Self {
        let kind = match sink {
            Sink::Kafka {
                producer,
                flows_topic,
                inventory_topic,
            } => {
                let queue = Arc::new(ByteQueue::new(queue_bytes));
                let sender =
                    tokio::spawn(send_loop(queue.clone(), producer.clone(), stats.clone()));
                Kind::Kafka {
                    queue,
                    sender,
                    producer,
                    flows_topic,
                    inventory_topic,
                }
            }
            Sink::Stdout => Kind::Stdout,
            Sink::Channel(sender) => Kind::Channel(sender),
        };
        Self { kind, stats }
    }

    fn enqueue(&self, queue: &ByteQueue<Queued>, item: Queued) {
        let size = item.payload.len();
        let dropped = queue.push(item, size);
        count_drops(&self.stats, dropped);
        if dropped.items > 0 {
            tracing::warn!(
                dropped_messages = dropped.items,
                dropped_flows = dropped.weight,
                dropped_bytes = dropped.bytes,
                capacity_bytes = queue.capacity(),
                "publish queue full (Kafka slow or down): dropped the oldest messages"
            );
        }
        Metric::QueueBytes.set(queue.usage().1 as f64);
    }

    /// Hands a batch over; never blocks.
    pub fn flows(&self, batch: FlowBatch) {
        match &self.kind {
            Kind::Kafka {
                queue, flows_topic, ..
            } => {
                let item = Queued {
                    topic: flows_topic.clone(),
                    key: batch.host_id.as_bytes().to_vec(),
                    records: batch.records.len() as u64,
                    payload: batch.encode_to_vec(),
                };
                self.enqueue(queue, item);
            }
            Kind::Stdout => {
                let mut out = std::io::stdout().lock();
                for record in &batch.records {
                    let line = bulkhead_schemas::json::flow_record(record);
                    // A closed stdout (e.g. `| head`) is not the collector's failure.
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
                self.delivered(1, 0);
            }
            Kind::Channel(sender) => {
                if sender.send(Published::Flows(batch)).is_ok() {
                    self.delivered(1, 0);
                }
            }
        }
    }

    fn delivered(&self, batches: u64, bytes: u64) {
        Stats::add(&self.stats.published_batches, batches);
        Metric::PublishedBatches.add(batches);
        Stats::add(&self.stats.published_bytes, bytes);
        Metric::PublishedBytes.add(bytes);
    }

    /// Hands an inventory over; never blocks.
    pub fn inventory(&self, inventory: HostInventory) {
        Stats::add(&self.stats.published_inventories, 1);
        Metric::PublishedInventories.add(1);
        match &self.kind {
            Kind::Kafka {
                queue,
                inventory_topic,
                ..
            } => {
                let item = Queued {
                    topic: inventory_topic.clone(),
                    key: inventory.host_id.as_bytes().to_vec(),
                    records: 0,
                    payload: inventory.encode_to_vec(),
                };
                self.enqueue(queue, item);
            }
            Kind::Stdout => {
                tracing::info!(
                    host_id = %inventory.host_id,
                    interfaces = inventory.interfaces.len(),
                    listening = inventory.listening.len(),
                    "host inventory (not published: --stdout)"
                );
            }
            Kind::Channel(sender) => {
                let _ = sender.send(Published::Inventory(inventory));
            }
        }
    }

    /// Sends what is queued, waiting at most `timeout`, then stops.
    pub async fn shutdown(self, timeout: Duration) {
        if let Kind::Kafka {
            queue,
            sender,
            producer,
            ..
        } = self.kind
        {
            queue.close();
            let mut sender = sender;
            if tokio::time::timeout(timeout, &mut sender).await.is_err() {
                sender.abort();
                let (items, bytes) = queue.usage();
                tracing::warn!(
                    items,
                    bytes,
                    "Kafka did not take the last messages in time; they are lost"
                );
            }
            let _ =
                tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        }
    }
}

/// Messages handed to librdkafka and not yet acknowledged. Within a partition the
/// idempotent producer keeps them in order; more in flight hides the broker round trip.
const IN_FLIGHT: usize = 8;

async fn send_loop(queue: Arc<ByteQueue<Queued>>, producer: Producer, stats: Arc<Stats>) {
    use futures::StreamExt as _;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut failing = false;
    let mut degraded = false;
    let mut closed = false;
    loop {
        if closed && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            // Acknowledgements first: they free room (and memory) before new input.
            Some((result, item, size)) = in_flight.next(), if !in_flight.is_empty() => {
                let result: Result<bulkhead_kafka::Delivery, bulkhead_kafka::KafkaError> = result;
                let item: Queued = item;
                match result {
                    Ok(_) => {
                        if degraded {
                            tracing::info!("Kafka accepts messages again");
                            degraded = false;
                        }
                        if item.records > 0 {
                            Stats::add(&stats.published_batches, 1);
                            Metric::PublishedBatches.add(1);
                            Stats::add(&stats.published_bytes, size as u64);
                            Metric::PublishedBytes.add(size as u64);
                        }
                        Metric::QueueBytes.set(queue.usage().1 as f64);
                    }
                    Err(e) => {
                        if !degraded {
                            tracing::warn!(error = %e, "Kafka send failed; keeping the message and retrying");
                            degraded = true;
                        }
                        failing = true;
                        count_drops(&stats, queue.push_front(item, size));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            next = queue.pop(), if !closed && in_flight.len() < IN_FLIGHT && !failing => {
                match next {
                    Some((item, size)) => {
                        let producer = producer.clone();
                        in_flight.push(async move {
                            let result = producer.send(&item.topic, &item.key, &item.payload).await;
                            (result, item, size)
                        });
                    }
                    None => closed = true,
                }
            }
            // While failing, retry one message at a time (the one put back in front).
            () = tokio::time::sleep(Duration::from_millis(100)), if failing && in_flight.is_empty() => {
                failing = false;
            }
        }
    }
}
