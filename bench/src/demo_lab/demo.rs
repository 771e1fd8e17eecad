//! `bulkhead demo`: the whole system on one machine, around the lab estate.
//!
//! The back end runs as child processes of the demo (`bulkhead ingest` and `bulkhead
//! serve`, each in its own process group so a terminal's Ctrl-C reaches only the demo,
//! which stops them in order); the estate is the lab ([`super::up`]) whose agents publish
//! to the broker's lab listener and trust the demo's policy key.
//!
//! ```text
//! DemoOptions::validate (pure) ─▶ preflight (root, ip, nft, brokers, console assets)
//!   ─▶ Demo::start (topics, signing key, ingest + serve) ─▶ lab_up ─▶ wait_for_api
//!   ─▶ wait_for_flows ─▶ recommend_once ─▶ running … ─▶ stop (lab down, children stopped,
//!      nothing left: namespaces with their nftables tables, processes)
//! ```
//!
//! A `Demo` dropped without `stop` (an error halfway) stops itself, so a failed start
//! leaves nothing behind either. Waits take a stop flag, set by the caller's signal
//! handler, so Ctrl-C during start-up tears down at once.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bulkhead_schemas::policy::PolicySigner;

use super::{LabOptions, LabState};
use crate::lab::{LAB_BRIDGE, LAB_GATEWAY, host_problem};

/// Lab octets the demo may use (the lab's range; the test suite's hosts use 20-219).
const NETS: std::ops::RangeInclusive<u8> = 220..=254;

/// How the demo is run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The `bulkhead` executable every child runs.
    pub bulkhead: PathBuf,
    /// The broker for the back end (ingest, serve, recommend).
    pub kafka: String,
    /// The broker's lab listener, for the agents in the lab's namespaces.
    pub agent_kafka: String,
    pub topic_prefix: String,
    /// Third octet of the lab's addresses (10.250.`net`.0/24).
    pub net: u8,
    /// HTTP API and console.
    pub listen: SocketAddr,
    /// Arrow Flight SQL (None: off).
    pub flight_listen: Option<SocketAddr>,
    /// Signing key, logs and the lab's state live here.
    pub state_dir: PathBuf,
    /// The Delta lake directory.
    pub lake: PathBuf,
    /// The console's built assets (console/dist).
    pub console_dir: PathBuf,
    /// How often `serve` reruns the recommender (whole seconds, at least one).
    pub recommend_every: Duration,
    /// How long the lab's background traffic runs before it stops by itself.
    pub traffic_for: Duration,
}

impl DemoOptions {
    /// Checks the options without touching anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !NETS.contains(&self.net) {
            bail!(
                "--net {}: the lab's octet must be within {}-{} (10.250.<net>.0/24)",
                self.net,
                NETS.start(),
                NETS.end()
            );
        }
        self.agent_kafka.parse::<SocketAddr>().with_context(|| {
            format!(
                "--agent-kafka {}: expected the broker's lab listener as IP:port",
                self.agent_kafka
            )
        })?;
        if self.kafka.trim().is_empty() {
            bail!("--kafka is empty: name the broker the back end uses (host:port)");
        }
        if self.topic_prefix.trim().is_empty() {
            bail!("--topic-prefix is empty");
        }
        if self.flight_listen == Some(self.listen) {
            bail!(
                "--listen and --flight-listen are both {}: give them different ports",
                self.listen
            );
        }
        if self.recommend_every.as_secs() == 0 {
            bail!("--recommend-every is 0: the demo needs a periodic recommender (e.g. 30s)");
        }
        if self.traffic_for.as_secs() == 0 {
            bail!("--traffic-for is 0: the demo needs the lab's traffic (e.g. 8h)");
        }
        Ok(())
    }

    /// The signing key the policy engine uses; its public half is `<key>.pub.pem`.
    pub fn policy_key(&self) -> PathBuf {
        self.state_dir.join("policy-signing.pem")
    }

    pub fn lab_dir(&self) -> PathBuf {
        self.state_dir.join("lab")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// The console's address as a browser would use it.
    pub fn console_url(&self) -> String {
        format!("http://{}/", self.listen)
    }
}

/// What must be true of this machine before anything starts: root, `ip`, `nft`, both
/// broker listeners answering, the console built.
pub fn preflight(options: &DemoOptions) -> anyhow::Result<()> {
    if let Some(problem) = host_problem() {
        bail!("the demo builds hosts in network namespaces: {problem}; run it as root");
    }
    if !options.bulkhead.is_file() {
        bail!(
            "the bulkhead executable {} does not exist",
            options.bulkhead.display()
        );
    }
    let index = options.console_dir.join("index.html");
    if !index.is_file() {
        bail!(
            "--console-dir {}: no index.html; build the console first (console/build --no-test)",
            options.console_dir.display()
        );
    }
    if !reachable(&options.kafka) {
        bail!(
            "no Kafka broker answers at {} (start one: dev/kafka/up)",
            options.kafka
        );
    }
    // The lab listener is on the bridge's address: make the bridge first (idempotent).
    crate::lab::lab_bridge();
    if !reachable(&options.agent_kafka) {
        bail!(
            "the broker has no lab listener at {} (advertised on bridge {LAB_BRIDGE} {LAB_GATEWAY}); \
             restart it with dev/kafka/down && dev/kafka/up",
            options.agent_kafka
        );
    }
    Ok(())
}

/// Whether this process was started with SIGHUP ignored (`nohup`): then a closed
/// terminal is not a reason to stop.
pub fn hangup_ignored() -> bool {
    // SAFETY: sigaction(2) with a null new action only reads the current disposition
    // into `current`, a zeroed struct this function owns.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

fn reachable(brokers: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    brokers.split(',').any(|b| {
        b.trim()
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
    })
}

/// Reads the policy signing key, or makes one (mode 0600) with its public half beside it;
/// returns the public key's path and whether the key is new.
pub fn ensure_policy_key(private: &Path) -> anyhow::Result<(PathBuf, bool)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let public = private.with_extension("pub.pem");
    let (signer, created) = match std::fs::read_to_string(private) {
        Ok(pem) => (
            PolicySigner::from_pkcs8_pem(&pem, &private.display().to_string())?,
            false,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = private.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let signer = PolicySigner::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(private)
                .with_context(|| format!("cannot create {}", private.display()))?;
            file.write_all(signer.to_pkcs8_pem().as_bytes())?;
            (signer, true)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", private.display())),
    };
    // Rewritten each time: it must be the public half of this private key.
    std::fs::write(&public, signer.public_key_pem())
        .with_context(|| format!("cannot write {}", public.display()))?;
    Ok((public, created))
}

/// A back-end process the demo started (in its own process group).
struct ChildProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ChildProcess {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Why a wait ended early.
#[derive(Debug)]
pub enum Interrupted {
    /// The stop flag was set (Ctrl-C, SIGTERM).
    Stopped,
    /// A back-end process exited on its own.
    Failed(anyhow::Error),
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interrupted::Stopped => write!(f, "stopped by a signal"),
            Interrupted::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

/// What `stop` removed, and what it could not.
#[derive(Debug, Default)]
pub struct Teardown {
    pub namespaces: usize,
    pub lab_processes: usize,
    pub children: Vec<String>,
    pub problems: Vec<String>,
}

/// The running demo.
pub struct Demo {
    options: DemoOptions,
    public_key: PathBuf,
    children: Vec<ChildProcess>,
    lab: Option<LabState>,
    stopped: bool,
}

impl Demo {
    /// Creates the topics and the signing key (if missing), and starts ingest and serve.
    pub fn start(options: DemoOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(options.logs_dir())
            .with_context(|| format!("cannot create {}", options.logs_dir().display()))?;
        std::fs::create_dir_all(&options.lake)
            .with_context(|| format!("cannot create {}", options.lake.display()))?;
        let (public_key, _) = ensure_policy_key(&options.policy_key())?;
        let mut demo = Demo {
            options,
            public_key,
            children: Vec::new(),
            lab: None,
            stopped: false,
        };
        demo.run_to_end("topics", &["topics", "create"])?;
        let o = demo.options.clone();
        let lake = o.lake.display().to_string();
        demo.spawn(
            "ingest",
            &[
                "ingest",
                "--lake",
                &lake,
                "--group",
                &format!("{}demo-ingest", o.topic_prefix),
                "--commit-interval-secs",
                "5",
                "--policy-public-key",
                &demo.public_key.display().to_string(),
                "--metrics-addr",
                "",
            ],
        )?;
        let flight = o.flight_listen.map(|a| a.to_string()).unwrap_or_default();
        let every = format!("{}s", o.recommend_every.as_secs());
        demo.spawn(
            "serve",
            &[
                "serve",
                "--lake",
                &lake,
                "--listen",
                &o.listen.to_string(),
                "--flight-listen",
                &flight,
                "--console-dir",
                &o.console_dir.display().to_string(),
                "--policy-key-file",
                &o.policy_key().display().to_string(),
                "--recommend-every",
                &every,
                "--recommend-since",
                "1h",
            ],
        )?;
        Ok(demo)
    }

    pub fn options(&self) -> &DemoOptions {
        &self.options
    }

    pub fn public_key(&self) -> &Path {
        &self.public_key
    }

    pub fn lab(&self) -> Option<&LabState> {
        self.lab.as_ref()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.options.bulkhead);
        command
            .args(["--kafka", &self.options.kafka])
            .args(["--topic-prefix", &self.options.topic_prefix])
            // The Delta kernel logs every snapshot at info: keep the logs readable.
            .args(["--log", "info,buoyant_kernel=warn,deltalake=warn"])
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("BULKHEAD_CONFIG")
            .stdin(Stdio::null());
        command
    }

    fn log_file(&self, name: &str) -> anyhow::Result<(PathBuf, File)> {
        let path = self.options.logs_dir().join(format!("{name}.log"));
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok((path, file))
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) -> anyhow::Result<()> {
        let (log, file) = self.log_file(name)?;
        let mut command = self.command(args);
        // Own process group: a terminal's Ctrl-C reaches the demo, which stops the
        // children in order (agents first, then serve, then ingest with its last commit).
        command
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        // And should the demo itself be killed (SIGKILL, a crash), they stop with it
        // rather than hold the ports and the consumer group. (The lab's detached
        // processes are removed by the next demo's start, or `bulkhead lab down`.)
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start bulkhead {name}"))?;
        self.children.push(ChildProcess { name, child, log });
        Ok(())
    }

    /// Runs a short bulkhead command to its end; its output goes to its log.
    fn run_to_end(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let (log, file) = self.log_file(name)?;
        let status = self
            .command(args)
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .with_context(|| format!("cannot run bulkhead {name}"))?;
        if !status.success() {
            bail!(
                "bulkhead {} failed ({status}); last lines of {}:\n{}",
                args.join(" "),
                log.display(),
                tail(&log, 15)
            );
        }
        Ok(std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// An error when a back-end process has exited on its own.
    pub fn check_children(&mut self) -> anyhow::Result<()> {
        for c in &mut self.children {
            if let Some(status) = c.exited() {
                bail!(
                    "bulkhead {} exited ({status}); last lines of {}:\n{}",
                    c.name,
                    c.log.display(),
                    tail(&c.log, 20)
                );
            }
        }
        Ok(())
    }

    /// Sleeps `d` unless stopped or a child failed.
    fn pause(&mut self, stop: &AtomicBool, d: Duration) -> Result<(), Interrupted> {
        if stop.load(Ordering::SeqCst) {
            return Err(Interrupted::Stopped);
        }
        self.check_children().map_err(Interrupted::Failed)?;
        std::thread::sleep(d);
        Ok(())
    }

    /// Brings the lab up with its agents trusting the demo's key, traffic on.
    pub fn lab_up(&mut self) -> anyhow::Result<&LabState> {
        let lab_dir = self.options.lab_dir();
        // A lab left by a demo that was killed (state file present) is removed first.
        if super::status(&lab_dir).ok().flatten().is_some() {
            super::down(&lab_dir, self.options.net)
                .context("cannot remove the lab a previous demo left")?;
        }
        let lab = super::up(&LabOptions {
            state_dir: lab_dir,
            net: self.options.net,
            bulkhead: self.options.bulkhead.clone(),
            kafka: self.options.agent_kafka.clone(),
            topic_prefix: self.options.topic_prefix.clone(),
            policy_keys: vec![self.public_key.display().to_string()],
            evict_interval: "2s".into(),
            heartbeat_secs: 5,
            traffic_for: self.options.traffic_for,
        })?;
        Ok(self.lab.insert(lab))
    }

    /// Labels the lab's workloads in the policy engine (the lab's ground truth, as a CMDB
    /// import would) and puts them in `visibility_only` (as a newly paired agent is): the
    /// engine's rules name labels, and the enforcers resolve labels from the provisioned
    /// policy only, never from what a host says of itself. Takes effect when the first
    /// policy is provisioned; until then every flow is `unknown`.
    pub fn label_workloads(&mut self) -> anyhow::Result<usize> {
        let hosts: Vec<(String, Vec<String>)> = self
            .lab
            .as_ref()
            .context("the lab is not up")?
            .hosts
            .iter()
            .filter(|h| h.agent && !h.labels.is_empty())
            .map(|h| {
                let labels = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (h.name.clone(), labels)
            })
            .collect();
        let api = format!("http://{}", self.options.listen);
        for (name, labels) in &hosts {
            let mut args = vec!["labels", "set", name.as_str()];
            args.extend(labels.iter().map(String::as_str));
            args.extend([
                "--api",
                &api,
                "--actor",
                "bulkhead-demo",
                "--reason",
                "the lab's labels, set by bulkhead demo",
            ]);
            self.run_to_end(&format!("labels-{name}"), &args)?;
            self.run_to_end(
                &format!("mode-{name}"),
                &[
                    "labels",
                    "mode",
                    "visibility_only",
                    name,
                    "--api",
                    &api,
                    "--actor",
                    "bulkhead-demo",
                    "--reason",
                    "new lab agents start in visibility only",
                ],
            )?;
        }
        Ok(hosts.len())
    }

    /// Waits until serve answers `/healthz`.
    pub fn wait_for_api(&mut self, stop: &AtomicBool, within: Duration) -> Result<(), Interrupted> {
        let deadline = Instant::now() + within;
        loop {
            if http_ok(self.options.listen, "/healthz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Interrupted::Failed(anyhow::anyhow!(
                    "serve does not answer on http://{}/healthz after {} s; see {}",
                    self.options.listen,
                    within.as_secs(),
                    self.options.logs_dir().join("serve.log").display()
                )));
            }
            self.pause(stop, Duration::from_millis(300))?;
        }
    }

    /// Waits until ingest has committed flows and edges to the lake.
    pub fn wait_for_flows(
        &mut self,
        stop: &AtomicBool,
        within: Duration,
    ) -> Result<(), Interrupted> {
        let deadline = Instant::now() + within;
        loop {
            if ["flows", "edges"]
                .iter()
                .all(|t| has_commit(&self.options.lake.join(t)))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Interrupted::Failed(anyhow::anyhow!(
                    "no flows reached the lake {} within {} s; see the agents' logs in {} and {}",
                    self.options.lake.display(),
                    within.as_secs(),
                    self.options.lab_dir().join("logs").display(),
                    self.options.logs_dir().join("ingest.log").display()
                )));
            }
            self.pause(stop, Duration::from_millis(500))?;
        }
    }

    /// Runs the recommender once over the last hour of edges; returns its summary line.
    /// Serve's periodic run may be writing the recommendations table at the same moment:
    /// a conflict is retried.
    pub fn recommend_once(&mut self, stop: &AtomicBool) -> Result<String, Interrupted> {
        let lake = self.options.lake.display().to_string();
        let mut last_error = None;
        for _ in 0..3 {
            match self.run_to_end(
                "recommend",
                &["recommend", "--lake", &lake, "--since", "1h"],
            ) {
                Ok(out) => {
                    let summary = out
                        .lines()
                        .filter(|l| l.contains("rules,") || l.starts_with("published"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Ok(summary);
                }
                Err(e) => last_error = Some(e),
            }
            self.pause(stop, Duration::from_secs(3))?;
        }
        Err(Interrupted::Failed(
            last_error.expect("three attempts failed"),
        ))
    }

    /// Blocks until the stop flag is set, or fails when a back-end process dies.
    pub fn run_until(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        loop {
            match self.pause(stop, Duration::from_millis(500)) {
                Ok(()) => {}
                Err(Interrupted::Stopped) => return Ok(()),
                Err(Interrupted::Failed(e)) => return Err(e),
            }
        }
    }

    /// Tears everything down: the lab (agents, hosts, namespaces and with them their
    /// nftables tables), then serve and ingest (SIGTERM, SIGKILL after 20 s). Checks
    /// that nothing is left.
    pub fn stop(&mut self) -> Teardown {
        self.stopped = true;
        let mut report = Teardown::default();
        match super::down(&self.options.lab_dir(), self.options.net) {
            Ok(down) => {
                report.namespaces = down.namespaces.len();
                report.lab_processes = down.processes;
            }
            Err(e) => report.problems.push(format!("{e:#}")),
        }
        self.lab = None;
        // Serve first (it owns the control topic), ingest last (it commits what it holds).
        for c in self.children.iter_mut().rev() {
            if c.exited().is_none() {
                // SAFETY: plain kill(2) of a child this demo started and has not reaped.
                unsafe { libc::kill(c.pid() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(20);
                while c.exited().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if c.exited().is_none() {
                    report.problems.push(format!(
                        "bulkhead {} did not stop within 20 s of SIGTERM; killed",
                        c.name
                    ));
                    let _ = c.child.kill();
                    let _ = c.child.wait();
                }
            }
            report.children.push(c.name.to_string());
        }
        self.children.clear();
        let prefix = format!("bhl{}-", self.options.net);
        let left: Vec<String> = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(String::from)
            .collect();
        if !left.is_empty() {
            report
                .problems
                .push(format!("namespaces left: {}", left.join(", ")));
        }
        report
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.stopped {
            let report = self.stop();
            for p in report.problems {
                eprintln!("demo teardown: {p}");
            }
        }
    }
}

/// Whether a Delta table has at least one commit.
fn has_commit(table: &Path) -> bool {
    std::fs::read_dir(table.join("_delta_log"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
}

/// A plain HTTP/1.0 GET answered with 200.
fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 16];
    let n = stream.read(&mut head).unwrap_or(0);
    String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200")
        || String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.0 200")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> DemoOptions {
        DemoOptions {
            bulkhead: PathBuf::from("/bin/true"),
            kafka: "127.0.0.1:9092".into(),
            agent_kafka: "10.250.0.1:9094".into(),
            topic_prefix: "demo.".into(),
            net: 245,
            listen: "127.0.0.1:8080".parse().unwrap(),
            flight_listen: None,
            state_dir: PathBuf::from("/tmp/demo"),
            lake: PathBuf::from("/tmp/demo/lake"),
            console_dir: PathBuf::from("console/dist"),
            recommend_every: Duration::from_secs(30),
            traffic_for: Duration::from_secs(3600),
        }
    }

    #[test]
    fn bad_options_are_refused_naming_the_flag() {
        assert!(options().validate().is_ok());
        let e = DemoOptions {
            net: 12,
            ..options()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--net 12"), "{e}");
        let e = DemoOptions {
            agent_kafka: "bhlab0".into(),
            ..options()
        }
        .validate()
        .unwrap_err();
        assert!(format!("{e:#}").contains("--agent-kafka bhlab0"), "{e:#}");
        let e = DemoOptions {
            flight_listen: Some("127.0.0.1:8080".parse().unwrap()),
            ..options()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--flight-listen"), "{e}");
        let e = DemoOptions {
            recommend_every: Duration::ZERO,
            ..options()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--recommend-every"), "{e}");
    }

    #[test]
    fn the_policy_key_is_made_once_and_its_public_half_kept_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("keys").join("policy-signing.pem");
        let (public, created) = ensure_policy_key(&private).unwrap();
        assert!(created);
        assert_eq!(
            public,
            dir.path().join("keys").join("policy-signing.pub.pem")
        );
        let first = std::fs::read_to_string(&public).unwrap();
        let (_, created) = ensure_policy_key(&private).unwrap();
        assert!(!created);
        assert_eq!(std::fs::read_to_string(&public).unwrap(), first);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&private, "not a key").unwrap();
        let e = ensure_policy_key(&private).unwrap_err();
        assert!(format!("{e:#}").contains("policy-signing.pem"), "{e:#}");
    }
}
