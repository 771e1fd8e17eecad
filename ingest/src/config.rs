//! What `bulkhead ingest` is configured with: flags (and `BULKHEAD_*` variables), checked
//! by a pure [`IngestConfig::from_args`] before anything connects or touches the lake.

use std::time::Duration;

use url::Url;

/// Flags of `bulkhead ingest`.
#[derive(Clone, Debug, clap::Args)]
pub struct IngestArgs {
    /// The lake: a local directory (created if missing), a file:// URL, or an S3 prefix
    /// (`s3://bucket/lake`; credentials, region and endpoint from the standard `AWS_*`
    /// variables). Each table is the Delta table `<lake>/<table>` (`<lake>/flows`, …).
    #[arg(long, env = "BULKHEAD_LAKE", value_name = "DIR|URL")]
    pub lake: String,
    /// Consumer group; ingest processes of one group share the flow partitions.
    #[arg(
        long = "group",
        env = "BULKHEAD_INGEST_GROUP",
        default_value = "bulkhead-ingest"
    )]
    pub group_id: String,
    /// Commit to the lake at least this often (seconds) while flows arrive.
    #[arg(long, env = "BULKHEAD_INGEST_COMMIT_SECS", default_value_t = 10.0)]
    pub commit_interval_secs: f64,
    /// ... or as soon as this many flows are buffered.
    #[arg(long, env = "BULKHEAD_INGEST_COMMIT_FLOWS", default_value_t = 500_000)]
    pub commit_flows: usize,
    /// ... or as soon as this many bytes of Kafka payload are buffered (MiB).
    #[arg(long, env = "BULKHEAD_INGEST_COMMIT_MIB", default_value_t = 256)]
    pub commit_mib: usize,
    /// Longest wait between two attempts to write a lake that refuses writes (seconds).
    #[arg(long, env = "BULKHEAD_INGEST_RETRY_MAX_SECS", default_value_t = 30.0)]
    pub retry_max_secs: f64,
    /// Tumbling event-time window of the `edges` table (seconds).
    #[arg(long, env = "BULKHEAD_INGEST_EDGE_WINDOW_SECS", default_value_t = 60.0)]
    pub edge_window_secs: f64,
    /// Flows whose edge window ended longer ago than this (behind the newest flow seen)
    /// are counted as late; they still land in their window, in a later commit.
    #[arg(
        long,
        env = "BULKHEAD_INGEST_EDGE_LATENESS_SECS",
        default_value_t = 300.0
    )]
    pub edge_lateness_secs: f64,
    /// Ed25519 public key (PEM file) that signs policy versions. Without it, policy
    /// messages are not trusted: no `policy` table rows, decisions stay `unknown`.
    #[arg(
        long,
        alias = "policy-key",
        env = "BULKHEAD_POLICY_PUBLIC_KEY",
        value_name = "PEM"
    )]
    pub policy_public_key: Option<std::path::PathBuf>,
    /// Prometheus metrics listen address (empty to disable).
    #[arg(
        long,
        default_value = "127.0.0.1:9462",
        env = "BULKHEAD_INGEST_METRICS"
    )]
    pub metrics_addr: String,
}

/// Resolved ingest settings.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestConfig {
    /// Root of the lake (a directory URL ending in '/').
    pub lake: Url,
    pub group_id: String,
    pub commit_interval: Duration,
    pub commit_flows: usize,
    pub commit_bytes: usize,
    pub retry_max: Duration,
    pub windowing: crate::edges::Windowing,
    pub policy_public_key: Option<std::path::PathBuf>,
}

/// A setting that cannot work; names the flag and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl IngestConfig {
    /// Checks the flags without side effects (no file system, no network).
    pub fn from_args(args: &IngestArgs) -> Result<Self, ConfigError> {
        let lake =
            bulkhead_schemas::lake::lake_url(&args.lake).map_err(|e| ConfigError(e.to_string()))?;
        if args.group_id.trim().is_empty() {
            return Err(ConfigError("--group must not be empty".into()));
        }
        let secs = |flag: &str, value: f64, min: f64| {
            if value.is_finite() && value >= min && value <= 86_400.0 {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(ConfigError(format!(
                    "{flag} {value}: expected seconds between {min} and 86400"
                )))
            }
        };
        let commit_interval = secs("--commit-interval-secs", args.commit_interval_secs, 0.05)?;
        let retry_max = secs("--retry-max-secs", args.retry_max_secs, 0.01)?;
        let window = secs("--edge-window-secs", args.edge_window_secs, 1.0)?;
        let lateness = secs("--edge-lateness-secs", args.edge_lateness_secs, 0.0)?;
        if args.commit_flows == 0 {
            return Err(ConfigError("--commit-flows must be at least 1".into()));
        }
        if args.commit_mib == 0 || args.commit_mib > 64 * 1024 {
            return Err(ConfigError(format!(
                "--commit-mib {}: expected 1 to 65536",
                args.commit_mib
            )));
        }
        Ok(Self {
            lake,
            group_id: args.group_id.trim().to_string(),
            commit_interval,
            commit_flows: args.commit_flows,
            commit_bytes: args.commit_mib * 1024 * 1024,
            retry_max,
            windowing: crate::edges::Windowing {
                window_us: window.as_micros() as i64,
                lateness_us: lateness.as_micros() as i64,
            },
            policy_public_key: args.policy_public_key.clone(),
        })
    }

    /// The URL of the table called `name` in the lake.
    pub fn table_url(&self, name: &str) -> Url {
        bulkhead_schemas::lake::table_url(&self.lake, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(lake: &str) -> IngestArgs {
        IngestArgs {
            lake: lake.into(),
            group_id: "g".into(),
            commit_interval_secs: 10.0,
            commit_flows: 500_000,
            commit_mib: 256,
            retry_max_secs: 30.0,
            edge_window_secs: 60.0,
            edge_lateness_secs: 300.0,
            policy_public_key: None,
            metrics_addr: String::new(),
        }
    }

    #[test]
    fn defaults_resolve_and_paths_become_directory_urls() {
        let c = IngestConfig::from_args(&args("/var/lake")).unwrap();
        assert_eq!(c.lake.as_str(), "file:///var/lake/");
        assert_eq!(c.table_url("flows").as_str(), "file:///var/lake/flows/");
        assert_eq!(c.commit_interval, Duration::from_secs(10));
        assert_eq!(c.commit_flows, 500_000);
        let rel = IngestConfig::from_args(&args("lake")).unwrap();
        assert!(rel.lake.path().ends_with("/lake/"), "{}", rel.lake);
        let url = IngestConfig::from_args(&args("file:///tmp/x")).unwrap();
        assert_eq!(url.table_url("flows").as_str(), "file:///tmp/x/flows/");
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let err = |a: IngestArgs| IngestConfig::from_args(&a).unwrap_err().to_string();
        assert!(err(args("")).contains("--lake"));
        assert!(err(args("gs://bucket/lake")).contains("\"gs\""));
        let mut a = args("/l");
        a.commit_interval_secs = f64::NAN;
        assert!(err(a).contains("--commit-interval-secs"));
        let mut a = args("/l");
        a.commit_flows = 0;
        assert!(err(a).contains("--commit-flows"));
        let mut a = args("/l");
        a.group_id = " ".into();
        assert!(err(a).contains("--group"));
        let mut a = args("/l");
        a.edge_window_secs = 0.5;
        assert!(err(a).contains("--edge-window-secs"));
    }
}
