//! What `bulkhead enforce` is configured with, validated before anything starts.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_schemas::policy::{PolicyVerifier, parse_verifying_key};
use ipnet::IpNet;

use crate::nft::Nft;

/// Where the agent keeps its host id (shared with the collector).
pub const DEFAULT_HOST_ID_FILE: &str = "/var/lib/bulkhead/host-id";
/// Where the enforcer remembers the last version it applied (refuses rollbacks after a
/// restart).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bulkhead";

/// Flags of `bulkhead enforce`.
#[derive(Clone, Debug, clap::Args)]
pub struct EnforceArgs {
    /// This host's workload id [default: read from /var/lib/bulkhead/host-id].
    #[arg(long, env = "BULKHEAD_HOST_ID")]
    pub host_id: Option<String>,
    /// Trusted Ed25519 policy public key: 64 hex characters or a PEM file. Repeat during
    /// a key rotation.
    #[arg(
        long = "policy-key",
        env = "BULKHEAD_POLICY_KEY",
        value_delimiter = ',',
        required = true
    )]
    pub policy_keys: Vec<String>,
    /// Seconds between status heartbeats.
    #[arg(long, default_value_t = 10, env = "BULKHEAD_HEARTBEAT_SECS")]
    pub heartbeat_secs: u64,
    /// More control-plane addresses that policy must never cut off (the Kafka brokers
    /// are always included), e.g. the API server: --control-plane 10.0.0.5/32.
    #[arg(long = "control-plane", value_delimiter = ',')]
    pub control_plane: Vec<String>,
    /// Directory for the enforcer's state (last applied version).
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "BULKHEAD_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The nft executable.
    #[arg(long, default_value = "nft")]
    pub nft: String,
    /// Prometheus metrics listen address (empty to disable).
    #[arg(
        long,
        default_value = "127.0.0.1:9461",
        env = "BULKHEAD_ENFORCER_METRICS"
    )]
    pub metrics_addr: String,
    /// Read the current policy, print the nftables batch it would apply (JSON, as given to
    /// `nft -j -f -`), check it with `nft --check`, and exit without changing anything.
    #[arg(long, conflicts_with = "remove")]
    pub dry_run: bool,
    /// Remove the bulkhead table and exit (the host is then unenforced).
    #[arg(long)]
    pub remove: bool,
}

/// Resolved enforcer settings.
#[derive(Clone, Debug)]
pub struct EnforcerConfig {
    pub host_id: String,
    pub verifier: PolicyVerifier,
    pub heartbeat: Duration,
    pub control_plane: Vec<IpNet>,
    pub state_dir: PathBuf,
    pub nft: Nft,
}

/// A setting that cannot work; names the flag and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl EnforcerConfig {
    /// Validates the flags (reads key files and the host id file; no network, no nft).
    pub fn from_args(args: &EnforceArgs) -> Result<Self, ConfigError> {
        let host_id = match &args.host_id {
            Some(id) => id.trim().to_string(),
            None => std::fs::read_to_string(DEFAULT_HOST_ID_FILE)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    ConfigError(format!(
                        "no --host-id given and {DEFAULT_HOST_ID_FILE} cannot be read ({e})"
                    ))
                })?,
        };
        if host_id.is_empty() {
            return Err(ConfigError("--host-id is empty".into()));
        }
        let mut keys = Vec::new();
        for key in &args.policy_keys {
            let (text, source) = if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
                (key.clone(), "--policy-key".to_string())
            } else {
                let text = std::fs::read_to_string(key).map_err(|e| {
                    ConfigError(format!(
                        "--policy-key {key:?}: not 64 hex characters, and not a readable file ({e})"
                    ))
                })?;
                (text, key.clone())
            };
            keys.push(parse_verifying_key(&text, &source).map_err(|e| ConfigError(e.to_string()))?);
        }
        if keys.is_empty() {
            return Err(ConfigError(
                "at least one --policy-key is required: enforcers never apply unsigned policy"
                    .into(),
            ));
        }
        if args.heartbeat_secs == 0 {
            return Err(ConfigError("--heartbeat-secs must be at least 1".into()));
        }
        let control_plane = args
            .control_plane
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError(format!(
                            "--control-plane {text:?} is not an address or CIDR"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            host_id,
            verifier: PolicyVerifier::new(keys),
            heartbeat: std::time::Duration::from_secs(args.heartbeat_secs),
            control_plane,
            state_dir: args.state_dir.clone(),
            nft: Nft::new(&args.nft),
        })
    }
}
