//! The collector's error: each variant says who must act (the operator, the platform, or
//! us) and whether retrying can help.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Operator: run as root (or with CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON). No retry.
    #[error(
        "the collector must run as root (it loads eBPF programs and attaches them to interfaces and cgroups); euid is {euid}"
    )]
    NotRoot { euid: u32 },
    /// Platform: the kernel cannot run the collector's programs. No retry.
    #[error("this kernel cannot run the collector: {0}")]
    Unsupported(String),
    /// Operator: a bad setting (named in the message). No retry.
    #[error("collector config: {0}")]
    Config(String),
    /// Operator or platform: the cgroup2 hierarchy is not where it was expected.
    #[error("cgroup2 hierarchy {path}: {reason}")]
    Cgroup { path: PathBuf, reason: String },
    /// Platform: loading or attaching a program or a map failed.
    #[error("eBPF: {0}")]
    Kernel(String),
    /// Platform: attaching to one interface failed (it may have gone; others continue).
    #[error("attach to interface {interface}: {reason}")]
    Attach { interface: String, reason: String },
    /// Environment: a file or system call failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// External: Kafka (retryable when the broker comes back).
    #[error(transparent)]
    Kafka(#[from] bulkhead_kafka::KafkaError),
    /// A bug in the collector.
    #[error("internal error (a bug in the collector): {0}")]
    Internal(String),
}

impl CollectorError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
