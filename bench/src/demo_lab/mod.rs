//! The demo lab (`bulkhead lab up|traffic|status|down`): a small estate in network
//! namespaces that persists across commands, for the demo, the console's browser test and
//! anyone who wants to watch Bulkhead on real traffic.
//!
//! Two applications (crm, shop), each web → app → db; a shared DNS server and a
//! monitoring host (app=infra); an "internet" host outside the estate (a TEST-NET-3
//! address, no agent); and one unlabeled rogue host that scans the estate and tries the
//! crm database. Every estate host runs `bulkhead agent` (collector + enforcer) publishing
//! to the broker's lab listener, with its labels given on the command line, so the lab's
//! ground truth is known ([`estate`]). Each host's software is one `bulkhead lab host`
//! process ([`host`]) whose threads carry the programs' names.
//!
//! State lives in a directory (default `/run/bulkhead-lab`): `lab.json` (namespaces,
//! addresses, labels, pids), per-host agent state and logs, the traffic switch file and,
//! unless keys were given, the policy-signing key pair the agents trust. Namespaces are
//! named `bhl<net>-<host>` (never `bh-*`, which the test suite sweeps); `down` kills every
//! process inside them and deletes them, and is safe to repeat.

pub mod demo;
pub mod host;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::lab::{LAB_BRIDGE, LAB_GATEWAY, lab_bridge};
use host::{CallPlan, HostPlan, ProgramPlan};

pub const DEFAULT_STATE_DIR: &str = "/run/bulkhead-lab";
/// Third octet of the lab's addresses (10.250.`net`.0/24); the test suite's hosts use
/// 20-219, so the lab takes 220-254.
pub const DEFAULT_NET: u8 = 240;
const STATE_FILE: &str = "lab.json";
const TRAFFIC_FILE: &str = "traffic-until";
const ROUND_MS: u64 = 2000;

/// How a lab is brought up.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub state_dir: PathBuf,
    pub net: u8,
    /// The `bulkhead` executable the agents and host processes run.
    pub bulkhead: PathBuf,
    /// The broker address the agents use (the lab listener).
    pub kafka: String,
    pub topic_prefix: String,
    /// Trusted policy keys for the enforcers; empty: a key pair is made in the state dir.
    pub policy_keys: Vec<String>,
    pub evict_interval: String,
    pub heartbeat_secs: u64,
    /// Switch the traffic on for this long right away (zero: off until `lab traffic`).
    pub traffic_for: Duration,
}

/// A lab host as recorded in the state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabHost {
    /// Host name, workload id and hostname inside the namespace (e.g. `db-crm`).
    pub name: String,
    pub ns: String,
    pub veth: String,
    pub ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    /// Whether `bulkhead agent` runs there (every host but the internet).
    pub agent: bool,
    /// TCP ports and processes listening there: port → process name.
    pub listens: BTreeMap<u16, String>,
    /// Process ids: `host` (the host's software) and `agent`.
    pub pids: BTreeMap<String, u32>,
}

/// The state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub net: u8,
    pub state_dir: PathBuf,
    pub kafka: String,
    pub topic_prefix: String,
    /// Private key for signing policy the agents accept, when the lab made it.
    pub policy_signing_key: Option<PathBuf>,
    pub policy_keys: Vec<String>,
    pub hosts: Vec<LabHost>,
}

impl LabState {
    pub fn host(&self, name: &str) -> Option<&LabHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// One host of the estate, before addresses are given.
struct HostSpec {
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    agent: bool,
}

/// The estate: the lab's ground truth. Order fixes the addresses (10.250.<net>.10+i).
const ESTATE: &[HostSpec] = &[
    HostSpec {
        name: "web-crm",
        labels: &[("app", "crm"), ("env", "prod"), ("role", "web")],
        agent: true,
    },
    HostSpec {
        name: "app-crm",
        labels: &[("app", "crm"), ("env", "prod"), ("role", "app")],
        agent: true,
    },
    HostSpec {
        name: "db-crm",
        labels: &[("app", "crm"), ("env", "prod"), ("role", "db")],
        agent: true,
    },
    HostSpec {
        name: "web-shop",
        labels: &[("app", "shop"), ("env", "prod"), ("role", "web")],
        agent: true,
    },
    HostSpec {
        name: "app-shop",
        labels: &[("app", "shop"), ("env", "prod"), ("role", "app")],
        agent: true,
    },
    HostSpec {
        name: "db-shop",
        labels: &[("app", "shop"), ("env", "prod"), ("role", "db")],
        agent: true,
    },
    HostSpec {
        name: "dns",
        labels: &[("app", "infra"), ("env", "prod"), ("role", "dns")],
        agent: true,
    },
    HostSpec {
        name: "monitoring",
        labels: &[("app", "infra"), ("env", "prod"), ("role", "monitoring")],
        agent: true,
    },
    HostSpec {
        name: "internet",
        labels: &[],
        agent: false,
    },
    HostSpec {
        name: "rogue",
        labels: &[],
        agent: true,
    },
];

pub const NODE_EXPORTER_PORT: u16 = 9100;

/// The lab's hosts with their addresses, labels and listeners (no side effects).
pub fn estate(net: u8) -> Vec<LabHost> {
    ESTATE
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let ip = if spec.name == "internet" {
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, net))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 250, net, 10 + i as u8))
            };
            let mut listens = BTreeMap::new();
            match spec.name {
                "web-crm" | "web-shop" => {
                    listens.insert(443, "nginx".to_string());
                }
                "app-crm" | "app-shop" => {
                    listens.insert(8080, "java".to_string());
                }
                "db-crm" => {
                    listens.insert(5432, "postgres".to_string());
                }
                "db-shop" => {
                    listens.insert(3306, "mysqld".to_string());
                }
                "monitoring" => {
                    listens.insert(9090, "prometheus".to_string());
                }
                _ => {}
            }
            if spec.agent {
                listens.insert(NODE_EXPORTER_PORT, "node_exporter".to_string());
            }
            LabHost {
                name: spec.name.to_string(),
                ns: format!("bhl{net}-{}", spec.name),
                veth: format!("bhl{net}v{i}"),
                ip,
                labels: spec
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                agent: spec.agent,
                listens,
                pids: BTreeMap::new(),
            }
        })
        .collect()
}

/// Lab DNS name of a host.
pub fn dns_name(host: &str) -> String {
    format!("{host}.lab")
}

/// What each host runs: its listeners and the calls its programs make (no side effects).
pub fn plan(hosts: &[LabHost], state_dir: &Path) -> Vec<HostPlan> {
    let by_name = |n: &str| hosts.iter().find(|h| h.name == n).expect("estate host");
    let dns = by_name("dns").ip;
    let call = |to: &str, port: u16| CallPlan {
        name: Some(dns_name(to)),
        ip: by_name(to).ip,
        port,
    };
    hosts
        .iter()
        .map(|h| {
            let mut programs: Vec<ProgramPlan> = Vec::new();
            let listener = |comm: &str, port: u16| ProgramPlan {
                comm: comm.to_string(),
                tcp_listen: vec![port],
                dns_zone: BTreeMap::new(),
                calls: vec![],
                calls_per_round: 0,
            };
            for (&port, comm) in &h.listens {
                programs.push(listener(comm, port));
            }
            if h.labels.get("role").map(String::as_str) == Some("dns") {
                programs.push(ProgramPlan {
                    comm: "dnsmasq".into(),
                    tcp_listen: vec![],
                    dns_zone: hosts
                        .iter()
                        .filter(|t| t.name != "internet")
                        .map(|t| (dns_name(&t.name), t.ip))
                        .collect(),
                    calls: vec![],
                    calls_per_round: 0,
                });
            }
            let app = h.labels.get("app").map(String::as_str).unwrap_or("");
            let mut client = |comm: &str, calls: Vec<CallPlan>, per_round: usize| {
                add_calls(&mut programs, comm, calls, per_round)
            };
            match h.labels.get("role").map(String::as_str) {
                Some("web") => client("nginx", vec![call(&format!("app-{app}"), 8080)], 0),
                Some("app") => {
                    let port = if app == "crm" { 5432 } else { 3306 };
                    client("java", vec![call(&format!("db-{app}"), port)], 0)
                }
                Some("monitoring") => client(
                    "prometheus",
                    hosts
                        .iter()
                        .filter(|t| t.agent && t.name != h.name)
                        .map(|t| call(&t.name, NODE_EXPORTER_PORT))
                        .collect(),
                    0,
                ),
                _ => {}
            }
            match h.name.as_str() {
                // Customers reach the web tiers from outside.
                "internet" => client(
                    "curl",
                    vec![
                        CallPlan {
                            name: None,
                            ip: by_name("web-crm").ip,
                            port: 443,
                        },
                        CallPlan {
                            name: None,
                            ip: by_name("web-shop").ip,
                            port: 443,
                        },
                    ],
                    0,
                ),
                // A compromised host: scans every host on common ports (a few per round)
                // and keeps trying the crm database directly.
                "rogue" => {
                    let scan = hosts
                        .iter()
                        .filter(|t| t.name != h.name && t.name != "internet")
                        .flat_map(|t| {
                            [22, 443, 3306, 5432, 8080].map(|port| CallPlan {
                                name: None,
                                ip: t.ip,
                                port,
                            })
                        })
                        .collect();
                    client("nmap", scan, 4);
                    client("psql", vec![call("db-crm", 5432)], 0);
                }
                _ => {}
            }
            HostPlan {
                host: h.name.clone(),
                traffic_file: state_dir.join(TRAFFIC_FILE),
                round_ms: ROUND_MS,
                dns_server: (h.name != "internet").then_some(dns),
                programs,
            }
        })
        .collect()
}

/// Gives the program named `comm` these calls (adding a client-only program if none).
fn add_calls(programs: &mut Vec<ProgramPlan>, comm: &str, calls: Vec<CallPlan>, per_round: usize) {
    if let Some(p) = programs.iter_mut().find(|p| p.comm == comm) {
        p.calls = calls;
        p.calls_per_round = per_round;
    } else {
        programs.push(ProgramPlan {
            comm: comm.to_string(),
            tcp_listen: vec![],
            dns_zone: BTreeMap::new(),
            calls,
            calls_per_round: per_round,
        });
    }
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn read_state(state_dir: &Path) -> anyhow::Result<Option<LabState>> {
    let path = state_dir.join(STATE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a lab state file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_state(state: &LabState) -> anyhow::Result<()> {
    let path = state.state_dir.join(STATE_FILE);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// The lab's state, if it is up.
pub fn status(state_dir: &Path) -> anyhow::Result<Option<LabState>> {
    read_state(state_dir)
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Brings the lab up: namespaces, agents, host software. On failure, what was made is
/// removed again.
pub fn up(options: &LabOptions) -> anyhow::Result<LabState> {
    if let Some(p) = crate::lab::host_problem() {
        bail!("bulkhead lab needs {p}");
    }
    if !(220..=254).contains(&options.net) {
        bail!(
            "--net {}: the lab's third octet must be 220-254 (10.250.20-219.x belong to the test suite)",
            options.net
        );
    }
    if read_state(&options.state_dir)?.is_some() {
        bail!(
            "a lab is already up (state in {}); `bulkhead lab down` first",
            options.state_dir.display()
        );
    }
    if !options.bulkhead.is_file() {
        bail!(
            "the bulkhead executable {} does not exist",
            options.bulkhead.display()
        );
    }
    lab_bridge();
    let broker: SocketAddr = options.kafka.parse().with_context(|| {
        format!(
            "--agent-kafka {}: the agents need the broker's lab listener as IP:port",
            options.kafka
        )
    })?;
    if TcpStream::connect_timeout(&broker, Duration::from_secs(2)).is_err() {
        bail!(
            "no broker listens on {broker} (the lab listener, advertised on bridge {LAB_BRIDGE} {LAB_GATEWAY}): start Kafka with dev/kafka/up"
        );
    }
    std::fs::create_dir_all(options.state_dir.join("logs"))
        .with_context(|| format!("cannot create {}", options.state_dir.display()))?;
    set_traffic(&options.state_dir, options.traffic_for)?;

    let (policy_signing_key, policy_keys) = if options.policy_keys.is_empty() {
        let signer = bulkhead_schemas::policy::PolicySigner::generate();
        let private = options.state_dir.join("policy-signing.pem");
        let public = options.state_dir.join("policy-signing.pub.pem");
        std::fs::write(&private, signer.to_pkcs8_pem())
            .with_context(|| format!("cannot write {}", private.display()))?;
        std::fs::write(&public, signer.public_key_pem())
            .with_context(|| format!("cannot write {}", public.display()))?;
        (Some(private), vec![public.display().to_string()])
    } else {
        (None, options.policy_keys.clone())
    };
    let mut state = LabState {
        net: options.net,
        state_dir: options.state_dir.clone(),
        kafka: options.kafka.clone(),
        topic_prefix: options.topic_prefix.clone(),
        policy_signing_key,
        policy_keys,
        hosts: estate(options.net),
    };
    // Recorded before anything is made, so that `down` finds what a failed `up` left.
    write_state(&state)?;
    match build(options, &mut state) {
        Ok(()) => Ok(state),
        Err(e) => {
            let _ = down(&options.state_dir, options.net);
            Err(e)
        }
    }
}

fn build(options: &LabOptions, state: &mut LabState) -> anyhow::Result<()> {
    let dns_ip = state.host("dns").map(|h| h.ip);
    for host in &state.hosts {
        make_namespace(host, options.net)?;
        if let Some(dns) = dns_ip {
            // Programs that resolve with the C library use the lab's DNS too.
            let dir = PathBuf::from("/etc/netns").join(&host.ns);
            if std::fs::create_dir_all(&dir).is_ok() {
                let _ = std::fs::write(dir.join("resolv.conf"), format!("nameserver {dns}\n"));
            }
        }
    }
    for i in 0..state.hosts.len() {
        if state.hosts[i].agent {
            let pid = spawn_agent(options, state, &state.hosts[i])?;
            state.hosts[i].pids.insert("agent".into(), pid);
            write_state(state)?;
        }
    }
    // Agents attach first so the hosts' own sockets are attributed from their creation
    // (a socket older than the collector is attributed from /proc, to its process's name,
    // not its thread's).
    wait_for_agents_attached(state, AGENT_ATTACH_WAIT);
    let plans = plan(&state.hosts, &state.state_dir);
    for (i, plan) in plans.into_iter().enumerate() {
        let pid = spawn_host(options, &state.hosts[i], &plan)?;
        state.hosts[i].pids.insert("host".into(), pid);
        write_state(state)?;
    }
    // Give every process a moment to fail on its own (a port taken, a bad flag).
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        for host in &state.hosts {
            for (what, &pid) in &host.pids {
                if !alive(pid) {
                    let log = log_path(&state.state_dir, &host.name, what);
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                    bail!(
                        "the {what} process of lab host {} exited; last lines of {}:\n{}",
                        host.name,
                        log.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

fn make_namespace(host: &LabHost, net: u8) -> anyhow::Result<()> {
    let ns = host.ns.as_str();
    let _ = sh(&["ip", "link", "del", &host.veth]);
    let _ = sh(&["ip", "netns", "del", ns]);
    sh(&["ip", "netns", "add", ns])?;
    // The estate is IPv4-only: without IPv6, no link-local neighbour discovery chatter
    // fills the map and the recommendations with fe80:: addresses. Set before eth0 exists
    // so that it starts without an IPv6 address.
    for key in ["all", "default"] {
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
        ])?;
    }
    sh(&[
        "ip", "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])?;
    // Its bridge end too (it would solicit routers and join multicast groups on the link).
    sh(&[
        "sysctl",
        "-qw",
        &format!("net.ipv6.conf.{}.disable_ipv6=1", host.veth),
    ])?;
    sh(&["ip", "link", "set", &host.veth, "master", LAB_BRIDGE, "up"])?;
    sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    if host.name == "internet" {
        // Outside the estate: its own address, the lab reached directly on the link.
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", host.ip),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        sh(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "10.250.0.0/16",
            "dev",
            "eth0",
        ])?;
    } else {
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/16", host.ip),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        sh(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            &format!("203.0.113.{net}/32"),
            "dev",
            "eth0",
        ])?;
    }
    Ok(())
}

/// How long `lab up` waits for every agent's collector to attach before starting the
/// hosts' software anyway (a debug build under a loaded machine took more than 2 s).
const AGENT_ATTACH_WAIT: Duration = Duration::from_secs(60);

/// The line a collector logs once its programs are attached (collector/src/run.rs).
const COLLECTOR_ATTACHED: &str = "collector attached";

/// Waits until each agent's log says its collector attached, one exits, or `limit` passes
/// (then says which have not, and goes on: their hosts' sockets are attributed from
/// /proc).
fn wait_for_agents_attached(state: &LabState, limit: Duration) {
    let deadline = Instant::now() + limit;
    let waiting = |host: &LabHost| {
        host.pids.get("agent").is_some_and(|&pid| alive(pid))
            && !std::fs::read_to_string(log_path(&state.state_dir, &host.name, "agent"))
                .is_ok_and(|log| log.contains(COLLECTOR_ATTACHED))
    };
    // Once attached, an agent's log is not read again.
    let mut left: Vec<&LabHost> = state.hosts.iter().collect();
    loop {
        left.retain(|host| waiting(host));
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = left.iter().map(|h| h.name.as_str()).collect();
            eprintln!(
                "lab: the agents of {} have not attached after {limit:?}; starting the hosts' \
                 software anyway (its first sockets are attributed to their process's name)",
                names.join(", ")
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_path(state_dir: &Path, host: &str, what: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{host}-{what}.log"))
}

/// Starts a detached process (own session: it outlives this command and the terminal's
/// Ctrl-C) inside the host's namespace; returns its pid.
fn spawn_detached(
    state_dir: &Path,
    host: &LabHost,
    what: &str,
    args: &[String],
) -> anyhow::Result<u32> {
    let log_path = log_path(state_dir, &host.name, what);
    let log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &host.ns])
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start the {what} of lab host {}", host.name))?;
    // `ip netns exec`, `unshare` and `sh -c … exec` all exec in place: this pid is the
    // process itself. Its exit is reaped by init once this command exits.
    Ok(child.id())
}

fn spawn_agent(options: &LabOptions, state: &LabState, host: &LabHost) -> anyhow::Result<u32> {
    let dir = state.state_dir.join("hosts").join(&host.name);
    std::fs::create_dir_all(dir.join("enforcer"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let id_file = dir.join("host-id");
    std::fs::write(&id_file, &host.name)
        .with_context(|| format!("cannot write {}", id_file.display()))?;
    // A UTS namespace gives the host its own hostname; `ip netns exec` remounts /sys
    // without the cgroup2 mount the collector's socket hooks need, so mount one.
    let script = "echo \"$BHL_HOSTNAME\" > /proc/sys/kernel/hostname && mount -t cgroup2 none /sys/fs/cgroup && exec \"$0\" \"$@\"";
    let mut args: Vec<String> = vec![
        "env".into(),
        format!("BHL_HOSTNAME={}", host.name),
        "unshare".into(),
        "--uts".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
        options.bulkhead.display().to_string(),
        "agent".into(),
        "--kafka".into(),
        state.kafka.clone(),
        "--topic-prefix".into(),
        state.topic_prefix.clone(),
        "--host-id-file".into(),
        id_file.display().to_string(),
        "--state-dir".into(),
        dir.join("enforcer").display().to_string(),
        "--evict-interval".into(),
        options.evict_interval.clone(),
        "--heartbeat-secs".into(),
        options.heartbeat_secs.to_string(),
        "--control-plane".into(),
        format!("{LAB_GATEWAY}/32"),
        "--metrics-addr".into(),
        String::new(),
    ];
    for key in &state.policy_keys {
        args.extend(["--policy-key".to_string(), key.clone()]);
    }
    for (k, v) in &host.labels {
        args.extend(["--label".to_string(), format!("{k}={v}")]);
    }
    // `env` and `unshare` exec in place too, so the pid is the agent's.
    spawn_detached(&state.state_dir, host, "agent", &args)
}

fn spawn_host(options: &LabOptions, host: &LabHost, plan: &HostPlan) -> anyhow::Result<u32> {
    let args = vec![
        options.bulkhead.display().to_string(),
        "lab".into(),
        "host".into(),
        serde_json::to_string(plan)?,
    ];
    spawn_detached(&options.state_dir, host, "host", &args)
}

/// Switches the lab's traffic on for `duration` from now (zero: off).
pub fn set_traffic(state_dir: &Path, duration: Duration) -> anyhow::Result<()> {
    let until = if duration.is_zero() {
        0
    } else {
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + duration.as_secs().max(1)
    };
    let path = state_dir.join(TRAFFIC_FILE);
    std::fs::write(&path, until.to_string())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct DownReport {
    pub namespaces: Vec<String>,
    pub processes: usize,
}

/// Removes the lab: every process in its namespaces (SIGTERM, then SIGKILL after 5 s),
/// the namespaces and their veths, and the state directory. Finds the namespaces from
/// the state file and by their `bhl<net>-` prefix, so it also cleans up after a crash;
/// running it when nothing is up does nothing.
pub fn down(state_dir: &Path, net: u8) -> anyhow::Result<DownReport> {
    let state = read_state(state_dir).ok().flatten();
    let net = state.as_ref().map_or(net, |s| s.net);
    let prefix = format!("bhl{net}-");
    let mut namespaces: Vec<String> = sh(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(String::from)
        .collect();
    let mut pids: Vec<u32> = Vec::new();
    if let Some(state) = &state {
        for h in &state.hosts {
            if !namespaces.contains(&h.ns) && Path::new("/var/run/netns").join(&h.ns).exists() {
                namespaces.push(h.ns.clone());
            }
            pids.extend(h.pids.values().copied().filter(|&p| alive(p)));
        }
    }
    for ns in &namespaces {
        pids.extend(
            sh(&["ip", "netns", "pids", ns])
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    let report_processes = pids.len();
    for &pid in &pids {
        // SAFETY: plain kill(2); these pids are the lab's processes (recorded or inside
        // the lab's namespaces).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut problems = Vec::new();
    for ns in &namespaces {
        if let Err(e) = sh(&["ip", "netns", "del", ns]) {
            problems.push(e.to_string());
        }
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
    }
    for i in 0..ESTATE.len() {
        let veth = format!("bhl{net}v{i}");
        if sh(&["ip", "link", "show", &veth]).is_ok() {
            let _ = sh(&["ip", "link", "del", &veth]);
        }
    }
    if state_dir.exists() {
        std::fs::remove_dir_all(state_dir)
            .with_context(|| format!("cannot remove {}", state_dir.display()))?;
    }
    if let Some(p) = pids.iter().find(|&&p| alive(p)) {
        problems.push(format!("process {p} did not exit after SIGKILL"));
    }
    if !problems.is_empty() {
        bail!("lab down left something behind: {}", problems.join("; "));
    }
    Ok(DownReport {
        namespaces,
        processes: report_processes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estate_is_the_documented_ground_truth() {
        let hosts = estate(240);
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "web-crm",
                "app-crm",
                "db-crm",
                "web-shop",
                "app-shop",
                "db-shop",
                "dns",
                "monitoring",
                "internet",
                "rogue"
            ]
        );
        for h in &hosts {
            assert!(
                !h.ns.starts_with("bh-"),
                "{} would be swept by dev/test",
                h.ns
            );
            assert!(
                h.veth.len() <= 15,
                "{} is too long for an interface name",
                h.veth
            );
        }
        let rogue = hosts.iter().find(|h| h.name == "rogue").unwrap();
        assert!(rogue.labels.is_empty() && rogue.agent);
        let internet = hosts.iter().find(|h| h.name == "internet").unwrap();
        assert!(!internet.agent);
        assert_eq!(internet.ip.to_string(), "203.0.113.240");
    }

    #[test]
    fn every_call_goes_to_a_listener_or_is_a_scan() {
        let hosts = estate(241);
        let plans = plan(&hosts, Path::new("/tmp/x"));
        let listening: Vec<(IpAddr, u16)> = hosts
            .iter()
            .flat_map(|h| h.listens.keys().map(move |&p| (h.ip, p)))
            .collect();
        for p in &plans {
            for program in &p.programs {
                if program.comm == "nmap" {
                    assert_eq!(program.calls_per_round, 4, "scans are bounded per round");
                    continue;
                }
                for call in &program.calls {
                    assert!(
                        listening.contains(&(call.ip, call.port)),
                        "{}'s {} calls {}:{} where nothing listens",
                        p.host,
                        program.comm,
                        call.ip,
                        call.port
                    );
                }
            }
        }
        let dns = plans.iter().find(|p| p.host == "dns").unwrap();
        let zone = &dns
            .programs
            .iter()
            .find(|p| p.comm == "dnsmasq")
            .unwrap()
            .dns_zone;
        assert_eq!(
            zone.get("db-crm.lab"),
            Some(&"10.250.241.12".parse().unwrap())
        );
    }
}
