//! Test lab: network namespaces joined by veth pairs, processes with known names in
//! them, and a collector attached in one of them. Everything is removed by `Drop`, so a
//! failing test leaves no namespace, link or BPF program behind.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the lab"
)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use bulkhead_collector::{CollectorConfig, CollectorThread, Output, Published};
use bulkhead_schemas::proto::{FlowBatch, FlowRecord, HostInventory};

static NEXT: AtomicU32 = AtomicU32::new(1);

fn must_run() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
        || std::env::var_os("BULKHEAD_REQUIRE_KAFKA").is_some_and(|v| v == "1")
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Why this machine cannot run the lab, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (eBPF and network namespaces need root)".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    let release = bulkhead_collector::preflight::kernel_release();
    if bulkhead_collector::preflight::parse_release(&release).is_none_or(|v| v < (6, 6)) {
        return Some(format!("kernel {release} has no tcx (6.6+)"));
    }
    if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("the `ip` command (iproute2) is missing".into());
    }
    if !have("python3") {
        return Some("python3 (the traffic generator) is missing".into());
    }
    None
}

/// `require_lab!()`: returns from the test (skipped, loudly) when the lab cannot run,
/// unless the run requires it (CI, BULKHEAD_REQUIRE_KAFKA=1), where it fails.
#[macro_export]
macro_rules! require_lab {
    () => {
        if let Some(reason) = lab::unavailable() {
            lab::skip(&reason);
            return;
        }
    };
}

pub fn skip(reason: &str) {
    if must_run() {
        panic!("this run requires the network-namespace lab (CI), but: {reason}");
    }
    eprintln!(
        "\n*** SKIPPED: this test needs the network-namespace lab: {reason}.\n\
         *** Run it as root on Linux 6.6+ with BTF, iproute2 and python3 (dev/test does).\n"
    );
}

pub fn sh(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn traffic_script() -> PathBuf {
    bulkhead_kafka::testkit::repo_root().join("collector/tests/lab/traffic.py")
}

/// Two namespaces `a` and `b` joined by veth `va` (in a) — `vb` (in b):
/// a = 10.200.N.1/24, fd00:200:N::1/64; b = .2 / ::2. TCP timestamps, SACK and window
/// scaling are off in both, so every TCP header is 20 bytes except the SYNs' (24: MSS).
pub struct Pair {
    pub a: String,
    pub b: String,
    pub n: u32,
    children: Vec<Child>,
    readers: Vec<Option<BufReader<ChildStdout>>>,
}

impl Pair {
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 50) * 4;
        let n = n % 250 + 1;
        let pid = std::process::id();
        let pair = Self {
            a: format!("bhc-{tag}-{pid}-a"),
            b: format!("bhc-{tag}-{pid}-b"),
            n,
            children: Vec::new(),
            readers: Vec::new(),
        };
        for ns in [&pair.a, &pair.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            for (key, value) in [
                ("net.ipv4.tcp_timestamps", "0"),
                ("net.ipv4.tcp_sack", "0"),
                ("net.ipv4.tcp_window_scaling", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    &format!("{key}={value}"),
                ]);
            }
        }
        pair.link("va", "vb", n);
        pair
    }

    /// Adds another veth pair between the namespaces: 10.(200+k).N.0/24.
    pub fn link(&self, in_a: &str, in_b: &str, subnet: u32) {
        let _ = subnet;
        sh(&[
            "ip", "-n", &self.a, "link", "add", in_a, "type", "veth", "peer", "name", in_b,
            "netns", &self.b,
        ]);
        let (v4a, v4b, v6a, v6b) = self.addresses(in_a);
        sh(&[
            "ip",
            "-n",
            &self.a,
            "addr",
            "add",
            &format!("{v4a}/24"),
            "dev",
            in_a,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.b,
            "addr",
            "add",
            &format!("{v4b}/24"),
            "dev",
            in_b,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.a,
            "addr",
            "add",
            &format!("{v6a}/64"),
            "dev",
            in_a,
            "nodad",
        ]);
        sh(&[
            "ip",
            "-n",
            &self.b,
            "addr",
            "add",
            &format!("{v6b}/64"),
            "dev",
            in_b,
            "nodad",
        ]);
        sh(&["ip", "-n", &self.a, "link", "set", in_a, "up"]);
        sh(&["ip", "-n", &self.b, "link", "set", in_b, "up"]);
    }

    /// (a v4, b v4, a v6, b v6) of the link whose a-side is `in_a` ("va" = first link).
    pub fn addresses(&self, in_a: &str) -> (String, String, String, String) {
        let second = if in_a == "va" { 200 } else { 201 };
        let n = self.n;
        (
            format!("10.{second}.{n}.1"),
            format!("10.{second}.{n}.2"),
            format!("fd00:{second}:{n}::1"),
            format!("fd00:{second}:{n}::2"),
        )
    }

    /// Starts `traffic.py NAME MODE ARGS` in namespace `ns`; waits for its first line.
    pub fn spawn(
        &mut self,
        ns: &str,
        name: &str,
        mode: &str,
        args: &[&str],
    ) -> (u32, String, usize) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, &python()])
            .arg(traffic_script())
            .args([name, mode])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({mode}) in {ns}: {e}"));
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        reader.read_line(&mut first).expect("read the first line");
        assert!(
            !first.is_empty(),
            "{name} ({mode}) in {ns} ended without saying anything"
        );
        self.children.push(child);
        self.readers.push(Some(reader));
        (pid, first.trim().to_string(), self.children.len() - 1)
    }

    /// Waits for a child to exit successfully, returning the rest of its output.
    pub fn wait(&mut self, index: usize) -> String {
        let mut rest = String::new();
        if let Some(mut reader) = self.readers[index].take() {
            let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        }
        let status = self.children[index]
            .wait()
            .expect("wait for a traffic process");
        assert!(
            status.success(),
            "traffic process {index} failed ({status}); output: {rest}"
        );
        rest
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A collector in a lab namespace, publishing to a channel.
pub struct Watch {
    pub thread: Option<CollectorThread>,
    pub received: Receiver<Published>,
    _host_dir: tempfile::TempDir,
}

pub fn config(host_dir: &Path) -> CollectorConfig {
    CollectorConfig {
        host_id_file: host_dir.join("host-id"),
        evict_interval: Duration::from_secs(1),
        interface_poll: Duration::from_millis(200),
        ..CollectorConfig::default()
    }
}

impl Watch {
    pub fn start(ns: &str, tune: impl FnOnce(&mut CollectorConfig)) -> Self {
        // BULKHEAD_LOG=debug shows what the collectors do (attach, evict, ...).
        if let Ok(filter) = std::env::var("BULKHEAD_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let host_dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(host_dir.path());
        tune(&mut config);
        let (tx, received) = std::sync::mpsc::channel();
        let thread = CollectorThread::spawn(
            config,
            Output::Channel(tx),
            Some(bulkhead_collector::netns::named(ns)),
        )
        .unwrap_or_else(|e| panic!("collector in {ns} did not start: {e}"));
        Self {
            thread: Some(thread),
            received,
            _host_dir: host_dir,
        }
    }

    /// Stops (final eviction) and returns every batch and inventory published.
    pub fn stop(mut self) -> (Vec<FlowBatch>, Vec<HostInventory>) {
        if let Some(thread) = self.thread.take() {
            thread
                .stop()
                .unwrap_or_else(|e| panic!("collector ended with an error: {e}"));
        }
        let mut batches = Vec::new();
        let mut inventories = Vec::new();
        for item in self.received.try_iter() {
            match item {
                Published::Flows(b) => batches.push(b),
                Published::Inventory(i) => inventories.push(i),
            }
        }
        (batches, inventories)
    }
}

/// Flow records summed per (direction, src, sport, dst, dport, proto).
#[derive(Clone, Debug, Default)]
pub struct Sum {
    pub packets: u64,
    pub bytes: u64,
    pub flags: u32,
    pub names: Vec<String>,
    pub pids: Vec<u32>,
    pub server: bool,
    pub closed: bool,
    pub dns: Vec<String>,
    pub interfaces: Vec<String>,
    pub records: usize,
}

pub type Key = (i32, String, u32, String, u32, u32);

pub fn key_of(r: &FlowRecord) -> Key {
    let ip = |b: &[u8]| {
        bulkhead_schemas::ip::from_bytes(b)
            .map(|ip| ip.to_string())
            .unwrap_or_default()
    };
    (
        r.direction,
        ip(&r.src_ip),
        r.src_port,
        ip(&r.dst_ip),
        r.dst_port,
        r.protocol,
    )
}

pub fn sum(batches: &[FlowBatch]) -> BTreeMap<Key, Sum> {
    let mut sums: BTreeMap<Key, Sum> = BTreeMap::new();
    for record in batches.iter().flat_map(|b| &b.records) {
        let s = sums.entry(key_of(record)).or_default();
        s.packets += record.packets;
        s.bytes += record.bytes;
        s.flags |= record.tcp_flags;
        s.records += 1;
        s.server |= record.local_is_server;
        s.closed |= record.closed;
        for (list, value) in [
            (&mut s.names, &record.process_name),
            (&mut s.dns, &record.remote_dns_name),
            (&mut s.interfaces, &record.interface),
        ] {
            if !value.is_empty() && !list.contains(value) {
                list.push(value.clone());
            }
        }
        if record.pid != 0 && !s.pids.contains(&record.pid) {
            s.pids.push(record.pid);
        }
    }
    sums
}

pub const INGRESS: i32 = 1;
pub const EGRESS: i32 = 2;

pub fn get<'a>(
    sums: &'a BTreeMap<Key, Sum>,
    key: (i32, &str, u32, &str, u32, u32),
    what: &str,
) -> &'a Sum {
    let k: Key = (
        key.0,
        key.1.to_string(),
        key.2,
        key.3.to_string(),
        key.4,
        key.5,
    );
    sums.get(&k).unwrap_or_else(|| {
        panic!(
            "{what}: no flow {k:?}; flows seen:\n{}",
            sums.keys()
                .map(|k| format!("  {k:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

pub fn port_of(line: &str) -> u32 {
    line.strip_prefix("local_port=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected local_port=N, got {line:?}"))
}
