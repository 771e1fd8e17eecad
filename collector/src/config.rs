//! What the collector is configured with: flags ([`CollectArgs`], each with a
//! `BULKHEAD_*` variable) over the `[collector]` table of the TOML file
//! ([`CollectorFileConfig`]) over defaults, resolved into a [`CollectorConfig`] and
//! checked by a pure [`CollectorConfig::validate`] (no files, no network) before
//! anything is loaded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::CollectorError;

/// `bulkhead collect` flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CollectArgs {
    /// Interface to watch, repeatable [default: every non-loopback interface that is up,
    /// including ones that appear later].
    #[arg(
        long = "interface",
        short = 'i',
        env = "BULKHEAD_INTERFACES",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub interfaces: Vec<String>,
    /// Evict flows this often (e.g. 5s, 500ms) [default: 5s].
    #[arg(long, env = "BULKHEAD_EVICT_INTERVAL", value_name = "DURATION")]
    pub evict_interval: Option<String>,
    /// Entries of each of the two kernel flow maps [default: 65536].
    #[arg(long, env = "BULKHEAD_FLOW_MAP_ENTRIES", value_name = "N")]
    pub flow_map_entries: Option<u32>,
    /// Entries of the socket owner and connection maps [default: 65536].
    #[arg(long, env = "BULKHEAD_SOCKET_MAP_ENTRIES", value_name = "N")]
    pub socket_map_entries: Option<u32>,
    /// Bytes of encoded batches buffered while Kafka is slow or down; past it the oldest
    /// are dropped [default: 64 MiB].
    #[arg(long, env = "BULKHEAD_QUEUE_BYTES", value_name = "BYTES")]
    pub queue_bytes: Option<u64>,
    /// Most flow records per FlowBatch message [default: 10000].
    #[arg(long, env = "BULKHEAD_MAX_BATCH_RECORDS", value_name = "N")]
    pub max_batch_records: Option<usize>,
    /// File holding this host's id (created on first start) [default: /var/lib/bulkhead/host-id].
    #[arg(long, env = "BULKHEAD_HOST_ID_FILE", value_name = "FILE")]
    pub host_id_file: Option<PathBuf>,
    /// Host label KEY=VALUE, repeatable (e.g. --label role=db --label env=prod).
    #[arg(
        long = "label",
        env = "BULKHEAD_LABELS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub labels: Vec<String>,
    /// cgroup2 directory whose processes are attributed [default: the first cgroup2
    /// mount in /proc/self/mountinfo, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified].
    #[arg(long, env = "BULKHEAD_CGROUP", value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Print flows as JSON lines on stdout instead of publishing to Kafka.
    #[arg(long)]
    pub stdout: bool,
    /// Stop after this long (e.g. 30s) instead of running until SIGINT/SIGTERM.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9464).
    #[arg(long, env = "BULKHEAD_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Watch this named network namespace (`ip netns` name) instead of the current one;
    /// Kafka is still reached from the current one.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

/// The `[collector]` table of the TOML config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorFileConfig {
    pub interfaces: Option<Vec<String>>,
    pub evict_interval: Option<String>,
    pub flow_map_entries: Option<u32>,
    pub socket_map_entries: Option<u32>,
    pub queue_bytes: Option<u64>,
    pub max_batch_records: Option<usize>,
    pub host_id_file: Option<PathBuf>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub cgroup: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub inventory_interval: Option<String>,
}

/// Resolved settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectorConfig {
    /// Empty: every non-loopback interface that is up (and later ones).
    pub interfaces: Vec<String>,
    pub evict_interval: Duration,
    pub flow_map_entries: u32,
    pub socket_map_entries: u32,
    pub port_map_entries: u32,
    pub queue_bytes: usize,
    pub max_batch_records: usize,
    pub host_id_file: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// None: the first cgroup2 mount found at start.
    pub cgroup: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub metrics_listen: Option<SocketAddr>,
    /// How often interfaces are listed (to attach new ones).
    pub interface_poll: Duration,
    /// How often the inventory is re-observed (published only when it changed).
    pub inventory_interval: Duration,
    /// After a TCP close, evict this soon (lets the last ACK be counted).
    pub close_delay: Duration,
    pub dns_cache_entries: usize,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            evict_interval: Duration::from_secs(5),
            flow_map_entries: 65_536,
            socket_map_entries: 65_536,
            port_map_entries: 8_192,
            queue_bytes: 64 << 20,
            max_batch_records: 10_000,
            host_id_file: PathBuf::from("/var/lib/bulkhead/host-id"),
            labels: BTreeMap::new(),
            cgroup: None,
            duration: None,
            metrics_listen: None,
            interface_poll: Duration::from_secs(1),
            inventory_interval: Duration::from_secs(30),
            close_delay: Duration::from_millis(250),
            dns_cache_entries: 100_000,
        }
    }
}

/// Parses `5`, `5s`, `500ms`, `2m`, `1h` (plain numbers are seconds).
pub fn parse_duration(what: &str, text: &str) -> Result<Duration, CollectorError> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1e9 => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(CollectorError::Config(format!(
            "{what} {text:?} is not a duration (examples: 5s, 500ms, 2m)"
        ))),
    }
}

fn parse_label(text: &str) -> Result<(String, String), CollectorError> {
    let (k, v) = text.split_once('=').ok_or_else(|| {
        CollectorError::Config(format!(
            "--label {text:?}: expected KEY=VALUE (e.g. role=db)"
        ))
    })?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

impl CollectorConfig {
    /// Flags over file over defaults, then [`Self::validate`].
    pub fn resolve(
        args: &CollectArgs,
        file: Option<&CollectorFileConfig>,
    ) -> Result<Self, CollectorError> {
        let file = file.cloned().unwrap_or_default();
        let d = Self::default();
        let mut labels = file.labels;
        for label in &args.labels {
            let (k, v) = parse_label(label)?;
            labels.insert(k, v);
        }
        let duration_of = |what: &str,
                           flag: &Option<String>,
                           file: &Option<String>,
                           default: Duration| {
            match flag.as_ref().or(file.as_ref()) {
                Some(text) => parse_duration(what, text),
                None => Ok(default),
            }
        };
        let metrics_listen = match args
            .metrics_listen
            .as_ref()
            .or(file.metrics_listen.as_ref())
        {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
                CollectorError::Config(format!("metrics address {text:?} is not host:port ({e})"))
            })?),
        };
        let config = Self {
            interfaces: if args.interfaces.is_empty() {
                file.interfaces.unwrap_or_default()
            } else {
                args.interfaces.clone()
            },
            evict_interval: duration_of(
                "--evict-interval",
                &args.evict_interval,
                &file.evict_interval,
                d.evict_interval,
            )?,
            flow_map_entries: args
                .flow_map_entries
                .or(file.flow_map_entries)
                .unwrap_or(d.flow_map_entries),
            socket_map_entries: args
                .socket_map_entries
                .or(file.socket_map_entries)
                .unwrap_or(d.socket_map_entries),
            queue_bytes: args
                .queue_bytes
                .or(file.queue_bytes)
                .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
                .unwrap_or(d.queue_bytes),
            max_batch_records: args
                .max_batch_records
                .or(file.max_batch_records)
                .unwrap_or(d.max_batch_records),
            host_id_file: args
                .host_id_file
                .clone()
                .or(file.host_id_file)
                .unwrap_or(d.host_id_file),
            labels,
            cgroup: args.cgroup.clone().or(file.cgroup),
            duration: match &args.duration {
                Some(text) => Some(parse_duration("--duration", text)?),
                None => None,
            },
            metrics_listen,
            inventory_interval: duration_of(
                "inventory_interval",
                &None,
                &file.inventory_interval,
                d.inventory_interval,
            )?,
            ..d
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings without touching the system.
    pub fn validate(&self) -> Result<(), CollectorError> {
        let bad = |m: String| Err(CollectorError::Config(m));
        if self.evict_interval < Duration::from_millis(100)
            || self.evict_interval > Duration::from_secs(3600)
        {
            return bad(format!(
                "evict interval {:?} must be between 100ms and 1h",
                self.evict_interval
            ));
        }
        for (what, n) in [
            ("flow map entries", self.flow_map_entries),
            ("socket map entries", self.socket_map_entries),
            ("port map entries", self.port_map_entries),
        ] {
            if n == 0 || n > 16 << 20 {
                return bad(format!("{what} {n} must be between 1 and 16777216"));
            }
        }
        if self.queue_bytes < 4096 {
            return bad(format!(
                "queue bytes {} must be at least 4096",
                self.queue_bytes
            ));
        }
        if self.max_batch_records == 0 || self.max_batch_records > 100_000 {
            return bad(format!(
                "max batch records {} must be between 1 and 100000 (a batch must fit a Kafka message)",
                self.max_batch_records
            ));
        }
        for name in &self.interfaces {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return bad(format!(
                    "interface name {name:?} is not a Linux interface name"
                ));
            }
        }
        for (k, v) in &self.labels {
            if k.is_empty()
                || k.len() > 63
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            {
                return bad(format!(
                    "label key {k:?} must be 1-63 letters, digits, '-', '_', '.', '/'"
                ));
            }
            if v.len() > 255 {
                return bad(format!("label {k:?}: value longer than 255 bytes"));
            }
        }
        if let Some(d) = self.duration
            && d.is_zero()
        {
            return bad("--duration must be more than 0".into());
        }
        if self.host_id_file.as_os_str().is_empty() {
            return bad("host id file path is empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let file = CollectorFileConfig {
            evict_interval: Some("10s".into()),
            flow_map_entries: Some(1024),
            labels: [("env".to_string(), "prod".to_string())].into(),
            ..Default::default()
        };
        let args = CollectArgs {
            evict_interval: Some("500ms".into()),
            labels: vec!["role=db".into()],
            ..Default::default()
        };
        let c = CollectorConfig::resolve(&args, Some(&file)).unwrap();
        assert_eq!(c.evict_interval, Duration::from_millis(500));
        assert_eq!(c.flow_map_entries, 1024);
        assert_eq!(c.labels["env"], "prod");
        assert_eq!(c.labels["role"], "db");
        assert_eq!(c.queue_bytes, 64 << 20);
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |args: CollectArgs| {
            CollectorConfig::resolve(&args, None)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(CollectArgs {
                evict_interval: Some("fast".into()),
                ..Default::default()
            })
            .contains("\"fast\"")
        );
        assert!(
            err(CollectArgs {
                evict_interval: Some("1ms".into()),
                ..Default::default()
            })
            .contains("between 100ms")
        );
        assert!(
            err(CollectArgs {
                flow_map_entries: Some(0),
                ..Default::default()
            })
            .contains("flow map entries 0")
        );
        assert!(
            err(CollectArgs {
                labels: vec!["novalue".into()],
                ..Default::default()
            })
            .contains("KEY=VALUE")
        );
        assert!(
            err(CollectArgs {
                interfaces: vec!["a/b".into()],
                ..Default::default()
            })
            .contains("\"a/b\"")
        );
        assert!(
            err(CollectArgs {
                metrics_listen: Some("nope".into()),
                ..Default::default()
            })
            .contains("\"nope\"")
        );
        assert!(
            err(CollectArgs {
                duration: Some("-3s".into()),
                ..Default::default()
            })
            .contains("\"-3s\"")
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("x", "5").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("x", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("x", "2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x", "NaN").is_err());
        assert!(parse_duration("x", "").is_err());
    }
}
