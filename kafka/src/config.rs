//! Kafka settings: flags > environment > TOML file > defaults, validated before use.

use std::collections::BTreeMap;
use std::time::Duration;

use bulkhead_schemas::topics::{DEFAULT_PREFIX, Topic};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::KafkaError;

/// Kafka flags shared by every command (`#[command(flatten)]`). Each also reads its
/// `BULKHEAD_*` environment variable; unset ones fall back to the TOML file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, host:port[,host:port...] [default: 127.0.0.1:9092].
    #[arg(
        long = "kafka",
        env = "BULKHEAD_KAFKA",
        value_name = "BROKERS",
        global = true
    )]
    pub brokers: Option<String>,
    /// Prefix of every topic name [default: "bulkhead."].
    #[arg(
        long,
        env = "BULKHEAD_TOPIC_PREFIX",
        value_name = "PREFIX",
        global = true
    )]
    pub topic_prefix: Option<String>,
    /// Any librdkafka property, KEY=VALUE, repeatable (e.g. -X security.protocol=SASL_SSL).
    #[arg(
        short = 'X',
        long = "kafka-property",
        env = "BULKHEAD_KAFKA_PROPERTIES",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        global = true
    )]
    pub properties: Vec<String>,
    /// Producer compression: zstd, lz4 [default: zstd].
    #[arg(
        long,
        env = "BULKHEAD_KAFKA_COMPRESSION",
        value_name = "CODEC",
        global = true
    )]
    pub compression: Option<Compression>,
}

/// The `[kafka]` table of the TOML config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaFileConfig {
    pub brokers: Option<String>,
    pub topic_prefix: Option<String>,
    pub compression: Option<Compression>,
    /// librdkafka properties, e.g. `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Producer compression codec (DESIGN: lz4 or zstd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    Lz4,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}

/// Resolved Kafka settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic_prefix: String,
    pub compression: Compression,
    /// Passed to librdkafka as they are; they override Bulkhead's defaults.
    pub properties: BTreeMap<String, String>,
}

/// Properties Bulkhead sets itself from dedicated settings; setting them through the
/// passthrough would be silently ambiguous.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "--kafka / BULKHEAD_KAFKA / [kafka] brokers",
    ),
    (
        "metadata.broker.list",
        "--kafka / BULKHEAD_KAFKA / [kafka] brokers",
    ),
    ("compression.type", "--compression / [kafka] compression"),
    ("compression.codec", "--compression / [kafka] compression"),
];

impl KafkaConfig {
    /// The dev broker started by `dev/kafka/up`, default prefix.
    pub fn local() -> Self {
        Self::with_brokers("127.0.0.1:9092")
    }

    pub fn with_brokers(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            topic_prefix: DEFAULT_PREFIX.to_string(),
            compression: Compression::default(),
            properties: BTreeMap::new(),
        }
    }

    /// Merges flags/environment over the file over defaults, then validates.
    pub fn resolve(args: &KafkaArgs, file: Option<&KafkaFileConfig>) -> Result<Self, KafkaError> {
        let file = file.cloned().unwrap_or_default();
        let mut properties = file.properties;
        for pair in &args.properties {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                KafkaError::Config(format!(
                    "-X {pair:?}: expected KEY=VALUE (e.g. -X security.protocol=SSL)"
                ))
            })?;
            properties.insert(key.trim().to_string(), value.trim().to_string());
        }
        let config = Self {
            brokers: args
                .brokers
                .clone()
                .or(file.brokers)
                .unwrap_or_else(|| "127.0.0.1:9092".into()),
            topic_prefix: args
                .topic_prefix
                .clone()
                .or(file.topic_prefix)
                .unwrap_or_else(|| DEFAULT_PREFIX.into()),
            compression: args.compression.or(file.compression).unwrap_or_default(),
            properties,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings without touching the network.
    pub fn validate(&self) -> Result<(), KafkaError> {
        if self.brokers.trim().is_empty() {
            return Err(KafkaError::Config(
                "no brokers given (--kafka host:port)".into(),
            ));
        }
        for broker in self.brokers.split(',') {
            let broker = broker.trim();
            let port_ok = broker.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                return Err(KafkaError::Config(format!(
                    "broker {broker:?} in {:?} is not host:port",
                    self.brokers
                )));
            }
        }
        let prefix_ok = self
            .topic_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !prefix_ok || self.topic_prefix.len() > 200 {
            return Err(KafkaError::Config(format!(
                "topic prefix {:?} may only hold ASCII letters, digits, '.', '_' and '-'",
                self.topic_prefix
            )));
        }
        for key in self.properties.keys() {
            if key.is_empty() {
                return Err(KafkaError::Config("a -X property has an empty key".into()));
            }
            if let Some((_, instead)) = OWNED_PROPERTIES.iter().find(|(owned, _)| owned == key) {
                return Err(KafkaError::Config(format!(
                    "property {key:?} is set with {instead}, not -X"
                )));
            }
        }
        Ok(())
    }

    /// The full name of `topic` under this config's prefix.
    pub fn topic(&self, topic: Topic) -> String {
        topic.name(&self.topic_prefix)
    }

    /// A librdkafka config with the brokers and the passthrough properties (last, so they
    /// win over any default a caller sets before calling [`Self::apply_properties`]).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set(
            "client.id",
            format!("bulkhead/{}", env!("CARGO_PKG_VERSION")),
        );
        // Fail fast on a wrong address instead of retrying forever in the background.
        config.set("socket.connection.setup.timeout.ms", "10000");
        config
    }

    /// Applies the passthrough properties over whatever defaults `config` holds.
    pub fn apply_properties(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
    }

    /// Creates a librdkafka client from `client_config` with the passthrough properties
    /// applied last.
    pub fn create<T: rdkafka::config::FromClientConfig>(
        &self,
        mut client_config: ClientConfig,
    ) -> Result<T, KafkaError> {
        self.apply_properties(&mut client_config);
        client_config.create().map_err(|source| KafkaError::Client {
            brokers: self.brokers.clone(),
            source,
        })
    }

    pub(crate) fn compression_codec(&self) -> &'static str {
        self.compression.as_str()
    }

    /// How long metadata and admin requests may take.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(brokers: Option<&str>, props: &[&str]) -> KafkaArgs {
        KafkaArgs {
            brokers: brokers.map(Into::into),
            properties: props.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file = KafkaFileConfig {
            brokers: Some("file:9092".into()),
            topic_prefix: Some("acme.bulkhead.".into()),
            compression: Some(Compression::Lz4),
            properties: [
                ("security.protocol".to_string(), "SSL".to_string()),
                ("a".into(), "file".into()),
            ]
            .into_iter()
            .collect(),
        };
        let c = KafkaConfig::resolve(
            &args(Some("flag:9093"), &["a=flag", "sasl.mechanism=PLAIN"]),
            Some(&file),
        )
        .unwrap();
        assert_eq!(c.brokers, "flag:9093");
        assert_eq!(c.topic_prefix, "acme.bulkhead.");
        assert_eq!(c.compression, Compression::Lz4);
        assert_eq!(c.properties["a"], "flag");
        assert_eq!(c.properties["security.protocol"], "SSL");
        assert_eq!(c.properties["sasl.mechanism"], "PLAIN");
        assert_eq!(c.topic(Topic::Flows), "acme.bulkhead.flows.v1");

        let d = KafkaConfig::resolve(&KafkaArgs::default(), None).unwrap();
        assert_eq!(d, KafkaConfig::local());
    }

    #[test]
    fn bad_settings_are_refused_with_the_input_named() {
        let err = |a: KafkaArgs| KafkaConfig::resolve(&a, None).unwrap_err().to_string();
        assert!(err(args(Some("localhost"), &[])).contains("\"localhost\""));
        assert!(err(args(Some("h:0"), &[])).contains("not host:port"));
        assert!(err(args(None, &["novalue"])).contains("\"novalue\": expected KEY=VALUE"));
        assert!(err(args(None, &["bootstrap.servers=x:1"])).contains("--kafka"));
        let bad_prefix = KafkaArgs {
            topic_prefix: Some("a b".into()),
            ..Default::default()
        };
        assert!(err(bad_prefix).contains("topic prefix"));
    }
}
