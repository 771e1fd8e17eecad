//! # bulkhead-kafka — how every Bulkhead component talks to Kafka
//!
//! Role: the one place that knows librdkafka. Consumes and produces nothing by itself; it
//! gives components:
//!
//! - [`KafkaConfig`]: brokers, topic prefix and any librdkafka property
//!   (`security.protocol`, `sasl.*`, `ssl.*`, ...), from flags ([`KafkaArgs`]), `BULKHEAD_*`
//!   environment variables and the `[kafka]` table of the TOML config, in that order of
//!   precedence; validated without side effects before anything connects.
//! - [`admin`]: creation of Bulkhead's topics from the registry in
//!   `bulkhead_schemas::topics` (partitions, replication, compaction), idempotently.
//! - [`Producer`]: idempotent (`acks=all`, no duplicates on retry), zstd- or lz4-compressed.
//! - [`Consumer`]: manual offset management: nothing is committed until the caller says
//!   its data is durable; offsets are exposed and committed explicitly.
//! - `testkit` (feature `testkit`): starts or reuses the dev broker (`dev/kafka/up`) once
//!   per test run and gives each test its own topic prefix.
//!
//! ## Using
//!
//! ```no_run
//! # async fn demo() -> Result<(), bulkhead_kafka::KafkaError> {
//! use bulkhead_kafka::{KafkaConfig, Producer, admin};
//! use bulkhead_schemas::topics::Topic;
//! let config = KafkaConfig::local();
//! admin::ensure_topics(&config, &[Topic::Flows], &admin::TopicOptions::default()).await?;
//! let producer = Producer::new(&config)?;
//! producer.send(&config.topic(Topic::Flows), b"host-1", b"...").await?;
//! # Ok(()) }
//! ```

pub mod admin;
mod config;
mod consumer;
mod error;
mod producer;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{Compression, KafkaArgs, KafkaConfig, KafkaFileConfig};
pub use consumer::{Consumer, ConsumerOptions, Offsets};
pub use error::KafkaError;
pub use producer::{Delivery, Producer};
/// The librdkafka binding, for what this crate does not wrap (message accessors, offsets).
pub use rdkafka;
