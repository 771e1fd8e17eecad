//! Test support: a real broker for every test that needs one.
//!
//! [`kafka`] returns the broker at `BULKHEAD_TEST_KAFKA` (default `127.0.0.1:9092`),
//! starting it with `dev/kafka/up` the first time if nothing answers there. When no
//! broker can be had, a test calls [`require!`](crate::require_kafka) and is skipped with a
//! loud reason — unless `CI` or `BULKHEAD_REQUIRE_KAFKA` is set, where it fails: CI
//! provides the broker, so a skip there would hide a broken setup.
//!
//! Each test gets its own topic prefix ([`TestKafka::config`]), so tests never see each
//! other's messages and can run in parallel against one broker.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::KafkaConfig;

/// The broker tests run against.
#[derive(Debug)]
pub struct TestKafka {
    pub brokers: String,
}

static BROKER: OnceLock<Result<TestKafka, String>> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn must_run() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
        || std::env::var_os("BULKHEAD_REQUIRE_KAFKA").is_some_and(|v| v == "1")
        || std::env::var_os("BULKHEAD_REQUIRE_ALL").is_some_and(|v| v == "1")
}

fn reachable(brokers: &str) -> bool {
    brokers.split(',').any(|broker| {
        broker
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
    })
}

/// The repository root (where `dev/kafka/up` lives).
///
/// Found at run time first (cargo sets `CARGO_MANIFEST_DIR` for the package under test):
/// cargo reuses a workspace member's build across checkouts that share a target
/// directory, so the compile-time path can name another, since removed, checkout.
pub fn repo_root() -> PathBuf {
    let compiled = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([compiled.clone()])
        .find_map(|dir| {
            dir.ancestors()
                .find(|d| d.join("dev/kafka/up").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| {
            compiled
                .parent()
                .expect("kafka/ sits in the repository root")
                .to_path_buf()
        })
}

fn start_or_reuse() -> Result<TestKafka, String> {
    let explicit = std::env::var("BULKHEAD_TEST_KAFKA").ok();
    let brokers = explicit.clone().unwrap_or_else(|| "127.0.0.1:9092".into());
    if !reachable(&brokers) {
        if explicit.is_some() {
            return Err(format!("BULKHEAD_TEST_KAFKA={brokers} does not answer"));
        }
        let up = repo_root().join("dev/kafka/up");
        eprintln!(
            "testkit: no broker at {brokers}; starting one with {}",
            up.display()
        );
        let status = Command::new(&up)
            .status()
            .map_err(|e| format!("could not run {}: {e}", up.display()))?;
        if !status.success() {
            return Err(format!(
                "{} failed ({status}); see its output above",
                up.display()
            ));
        }
    }
    // An open port is not enough: ask for metadata, as a client would.
    let config = KafkaConfig::with_brokers(&brokers);
    crate::admin::list_topics(&config, "")
        .map_err(|e| format!("broker at {brokers} does not answer metadata: {e}"))?;
    Ok(TestKafka { brokers })
}

/// The test broker, or `None` (after saying why, loudly) when there is none and the run
/// does not require one. Panics when the run requires one (`CI`, `BULKHEAD_REQUIRE_KAFKA=1`).
pub fn kafka() -> Option<&'static TestKafka> {
    match BROKER.get_or_init(start_or_reuse) {
        Ok(kafka) => Some(kafka),
        Err(reason) if must_run() => {
            panic!("a Kafka broker is required in this run (CI) but: {reason}")
        }
        Err(reason) => {
            eprintln!(
                "\n*** SKIPPED: this test needs a Kafka broker: {reason}.\n\
                 *** Start one with dev/kafka/up (needs Java 17 and Maven), or run dev/test.\n"
            );
            None
        }
    }
}

impl TestKafka {
    /// A config with a topic prefix no other test uses: `test.<name>.<pid>.<n>.`.
    pub fn config(&self, test_name: &str) -> KafkaConfig {
        let clean: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(60)
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = bulkhead_schemas::now_unix_ns() % 1_000_000_000;
        let mut config = KafkaConfig::with_brokers(&self.brokers);
        config.topic_prefix = format!("test.{clean}.{}.{nanos}{n}.", std::process::id());
        config
    }
}

/// `let kafka = require_kafka!();` — the test broker, or return from the test (skipped,
/// loudly) when there is none and the run does not require one.
#[macro_export]
macro_rules! require_kafka {
    () => {
        match $crate::testkit::kafka() {
            Some(kafka) => kafka,
            None => return,
        }
    };
}
