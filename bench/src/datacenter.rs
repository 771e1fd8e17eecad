//! A seeded datacenter with ground truth, on which the recommender is measured.
//!
//! - **Apps** (`app=<name>`, `env=prod|staging`) of three tiers: `role=web` (HTTPS from
//!   the internet), `role=app` (tcp/8080 from web), `role=db` (postgres, mysql or redis
//!   from app), 2-4 / 2-4 / 1-2 hosts each.
//! - **Shared services** in `app=infra, env=prod`: DNS (udp+tcp/53), NTP (udp/123),
//!   LDAP (tcp/636), a package mirror (tcp/443) that every host uses, and monitoring
//!   (`role=monitoring`) that scrapes every host's node exporter (tcp/9100).
//! - **Cross-app dependencies**: some apps' app tier calls another app's app tier
//!   (tcp/8080); **internet egress**: some apps' app tier calls partner APIs
//!   (192.0.2.0/24, tcp/443).
//! - **Illegitimate traffic**, marked as such: a compromised web host scans other hosts
//!   (many ports, a few hundred bytes each) and a few hosts move laterally (direct
//!   connections to another app's database or SSH). Both begin in the last tenth of the
//!   window; legitimate traffic has been seen since its first twentieth.
//! - The **ground truth** [`PolicyDocument`]: the rules an architect would write for
//!   exactly the legitimate traffic (one ruleset per app, one for shared services, one
//!   per environment for monitoring).
//!
//! Addresses: infrastructure 10.0.0.x, app hosts 10.1.x.y in order, internet clients
//! 198.51.100.0/24 and 203.0.113.0/24, partners 192.0.2.0/24. The same seed and sizes
//! give the same datacenter.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use bulkhead_schemas::policy::{
    Actor, EnforcementMode, IpList, Label, PolicyDocument, PortRange, Rule, Ruleset, ServiceRef,
    WorkloadPolicy,
};
use bulkhead_schemas::proto::{self, Direction, FlowBatch, FlowRecord, HostInventory};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TCP: u32 = 6;
const UDP: u32 = 17;
const APP_NAMES: &[&str] = &[
    "crm",
    "billing",
    "shop",
    "hr",
    "erp",
    "search",
    "auth",
    "media",
    "ledger",
    "chat",
    "wiki",
    "mail",
    "portal",
    "payroll",
    "cart",
    "catalog",
    "orders",
    "inventory",
    "shipping",
    "reports",
];

/// A workload (host) of the datacenter.
#[derive(Clone, Debug)]
pub struct DcWorkload {
    pub id: String,
    pub hostname: String,
    pub ip: Ipv4Addr,
    /// role, app, env, loc.
    pub labels: BTreeMap<String, String>,
    /// What it serves: (protocol, port, process).
    pub listening: Vec<(u32, u32, &'static str)>,
    /// The process it opens connections with.
    pub client_process: &'static str,
}

impl DcWorkload {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }
}

/// What a connection is, and so whether policy should allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrafficKind {
    Tier,
    CrossApp,
    SharedService,
    Monitoring,
    InternetIngress,
    InternetEgress,
    /// Injected: a compromised host probing ports.
    Scan,
    /// Injected: a host reaching another app's database or SSH.
    LateralMovement,
}

impl TrafficKind {
    pub fn legitimate(self) -> bool {
        !matches!(self, TrafficKind::Scan | TrafficKind::LateralMovement)
    }
}

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Index into [`Datacenter::workloads`].
    Workload(usize),
    External(IpAddr),
}

/// Client → server traffic on one service over the window: what the `edges` table holds
/// for it (summed over the window).
#[derive(Clone, Debug)]
pub struct Connection {
    pub src: Peer,
    pub dst: Peer,
    pub protocol: u32,
    pub port: u32,
    /// Server-side process ("" when nothing listens).
    pub process: &'static str,
    pub flows: u64,
    pub bytes: u64,
    pub first_seen_unix_ns: u64,
    pub last_seen_unix_ns: u64,
    pub kind: TrafficKind,
}

/// A generated datacenter: workloads, their traffic, and the policy that is right for it.
#[derive(Clone, Debug)]
pub struct Datacenter {
    pub seed: u64,
    pub start_unix_ns: u64,
    pub span_ns: u64,
    pub workloads: Vec<DcWorkload>,
    pub connections: Vec<Connection>,
    pub ground_truth: PolicyDocument,
}

/// Sizes of a datacenter.
#[derive(Clone, Debug)]
pub struct DcSpec {
    pub seed: u64,
    pub apps: usize,
    pub start_unix_ns: u64,
    pub span_ns: u64,
    /// Multiplies every tier's host count (1 = 2-4 web, 2-4 app, 1-2 db).
    pub tier_scale: usize,
}

impl DcSpec {
    /// `apps` apps over the 24 hours before `end_unix_ns`.
    pub fn day(seed: u64, apps: usize, end_unix_ns: u64) -> Self {
        let span_ns = 86_400 * 1_000_000_000;
        Self {
            seed,
            apps,
            start_unix_ns: end_unix_ns.saturating_sub(span_ns),
            span_ns,
            tier_scale: 1,
        }
    }
}

fn labels(role: &str, app: &str, env: &str, loc: &str) -> BTreeMap<String, String> {
    [("role", role), ("app", app), ("env", env), ("loc", loc)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn label_set(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(k, v)| Label::new(*k, *v)).collect()
}

/// (protocol, port) pairs.
type Ports = &'static [(u32, u32)];

/// The shared services: role, protocol/port pairs, process.
const SHARED: &[(&str, Ports, &str)] = &[
    ("dns", &[(UDP, 53), (TCP, 53)], "unbound"),
    ("ntp", &[(UDP, 123)], "chronyd"),
    ("ldap", &[(TCP, 636)], "slapd"),
    ("mirror", &[(TCP, 443)], "nginx"),
];

struct App {
    name: String,
    env: &'static str,
    web: Vec<usize>,
    app: Vec<usize>,
    db: Vec<usize>,
    db_port: (u32, &'static str),
}

impl Datacenter {
    /// Every connection as a simulation input, with whether it is legitimate.
    pub fn flow_keys(&self) -> Vec<(bulkhead_policy::simulate::FlowKey, bool)> {
        self.connections
            .iter()
            .map(|c| {
                let id = |p: Peer| self.workload_id(p).map(str::to_string);
                (
                    bulkhead_policy::simulate::FlowKey {
                        src_workload: id(c.src),
                        src_ip: self.ip(c.src),
                        dst_workload: id(c.dst),
                        dst_ip: self.ip(c.dst),
                        port: c.port,
                        protocol: c.protocol,
                        flows: c.flows,
                    },
                    c.kind.legitimate(),
                )
            })
            .collect()
    }

    pub fn generate(spec: &DcSpec) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let mut workloads: Vec<DcWorkload> = Vec::new();
        let add = |workloads: &mut Vec<DcWorkload>,
                   role: &str,
                   app: &str,
                   env: &str,
                   n: usize,
                   ip: Ipv4Addr,
                   listening: Vec<(u32, u32, &'static str)>,
                   client_process: &'static str| {
            workloads.push(DcWorkload {
                id: format!("dc-{:x}-{:05}", spec.seed, workloads.len()),
                hostname: format!("{app}-{role}-{n}.{env}.dc.example"),
                ip,
                labels: labels(
                    role,
                    app,
                    env,
                    if n.is_multiple_of(2) { "par" } else { "fra" },
                ),
                listening,
                client_process,
            });
            workloads.len() - 1
        };
        let mut infra_ip = 10u8;
        let mut shared_hosts: Vec<(usize, &'static [(u32, u32)])> = Vec::new();
        for (role, ports, process) in SHARED {
            let count = if *role == "mirror" { 1 } else { 2 };
            for n in 0..count {
                let listening = ports
                    .iter()
                    .map(|(p, port)| (*p, *port, *process))
                    .collect();
                let i = add(
                    &mut workloads,
                    role,
                    "infra",
                    "prod",
                    n,
                    Ipv4Addr::new(10, 0, 0, infra_ip),
                    listening,
                    "systemd",
                );
                infra_ip += 1;
                shared_hosts.push((i, ports));
            }
        }
        let monitoring = add(
            &mut workloads,
            "monitoring",
            "infra",
            "prod",
            0,
            Ipv4Addr::new(10, 0, 0, infra_ip),
            vec![(TCP, 9090, "prometheus")],
            "prometheus",
        );
        let mut next_ip = 0u32;
        let mut host_ip = || {
            next_ip += 1;
            Ipv4Addr::new(
                10,
                1 + (next_ip >> 16) as u8,
                (next_ip >> 8) as u8,
                next_ip as u8,
            )
        };
        let db_kinds = [(5432, "postgres"), (3306, "mysqld"), (6379, "redis-server")];
        let mut apps = Vec::new();
        for a in 0..spec.apps.max(1) {
            let base = APP_NAMES[a % APP_NAMES.len()];
            let name = if a < APP_NAMES.len() {
                base.to_string()
            } else {
                format!("{base}{}", a / APP_NAMES.len())
            };
            let env = if a % 4 == 3 { "staging" } else { "prod" };
            let db_port = db_kinds[rng.random_range(0..db_kinds.len())];
            let scale = spec.tier_scale.max(1);
            let mut tier = |workloads: &mut Vec<DcWorkload>,
                            role: &str,
                            count: usize,
                            listening: (u32, u32, &'static str),
                            client: &'static str| {
                (0..count)
                    .map(|n| {
                        add(
                            workloads,
                            role,
                            &name,
                            env,
                            n,
                            host_ip(),
                            vec![listening],
                            client,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let web = tier(
                &mut workloads,
                "web",
                rng.random_range(2..=4) * scale,
                (TCP, 443, "nginx"),
                "nginx",
            );
            let app = tier(
                &mut workloads,
                "app",
                rng.random_range(2..=4) * scale,
                (TCP, 8080, "java"),
                "java",
            );
            let db = tier(
                &mut workloads,
                "db",
                rng.random_range(1..=2) * scale,
                (TCP, db_port.0, db_port.1),
                "bash",
            );
            apps.push(App {
                name: name.clone(),
                env,
                web,
                app,
                db,
                db_port,
            });
        }

        let start = spec.start_unix_ns;
        let span = spec.span_ns.max(1_000_000_000);
        let mut connections = Vec::new();
        // Legitimate traffic: seen since the window's first twentieth until its end.
        let legit = |rng: &mut ChaCha8Rng,
                     connections: &mut Vec<Connection>,
                     src: Peer,
                     dst: Peer,
                     (protocol, port, process): (u32, u32, &'static str),
                     kind: TrafficKind| {
            let flows = rng.random_range(4..=20);
            connections.push(Connection {
                src,
                dst,
                protocol,
                port,
                process,
                flows,
                bytes: flows * rng.random_range(600..20_000),
                first_seen_unix_ns: start + rng.random_range(0..span / 20),
                last_seen_unix_ns: start + span - rng.random_range(0..span / 20),
                kind,
            });
        };
        let w = Peer::Workload;
        for app in &apps {
            // Internet → web: a handful of clients per web host.
            for &web in &app.web {
                for _ in 0..rng.random_range(3..=6) {
                    let client = if rng.random_bool(0.5) {
                        Ipv4Addr::new(198, 51, 100, rng.random_range(1..255))
                    } else {
                        Ipv4Addr::new(203, 0, 113, rng.random_range(1..255))
                    };
                    legit(
                        &mut rng,
                        &mut connections,
                        Peer::External(client.into()),
                        w(web),
                        (TCP, 443, "nginx"),
                        TrafficKind::InternetIngress,
                    );
                }
            }
            // Every web host calls every app host; every app host calls every db host.
            for &web in &app.web {
                for &api in &app.app {
                    legit(
                        &mut rng,
                        &mut connections,
                        w(web),
                        w(api),
                        (TCP, 8080, "java"),
                        TrafficKind::Tier,
                    );
                }
            }
            for &api in &app.app {
                for &db in &app.db {
                    legit(
                        &mut rng,
                        &mut connections,
                        w(api),
                        w(db),
                        (TCP, app.db_port.0, app.db_port.1),
                        TrafficKind::Tier,
                    );
                }
            }
        }
        // Cross-app dependencies and partner egress, as the ground truth records them.
        let mut cross: Vec<(usize, usize)> = Vec::new();
        let mut egress: Vec<(usize, Vec<Ipv4Addr>)> = Vec::new();
        for (a, app) in apps.iter().enumerate() {
            if apps.len() > 1 && rng.random_bool(0.5) {
                let mut b = rng.random_range(0..apps.len() - 1);
                if b >= a {
                    b += 1;
                }
                cross.push((a, b));
                for &src in &app.app {
                    for &dst in &apps[b].app {
                        legit(
                            &mut rng,
                            &mut connections,
                            w(src),
                            w(dst),
                            (TCP, 8080, "java"),
                            TrafficKind::CrossApp,
                        );
                    }
                }
            }
            if rng.random_bool(0.3) {
                let partners: Vec<Ipv4Addr> = (0..rng.random_range(1..=2))
                    .map(|_| Ipv4Addr::new(192, 0, 2, rng.random_range(1..255)))
                    .collect();
                for &src in &app.app {
                    for ip in &partners {
                        legit(
                            &mut rng,
                            &mut connections,
                            w(src),
                            Peer::External((*ip).into()),
                            (TCP, 443, ""),
                            TrafficKind::InternetEgress,
                        );
                    }
                }
                egress.push((a, partners));
            }
        }
        // Shared services: every host uses every one (one server of each, picked per
        // host); monitoring scrapes every host.
        let all_hosts = workloads.len();
        for host in 0..all_hosts {
            for role_start in (0..shared_hosts.len()).filter(|&i| {
                i == 0
                    || workloads[shared_hosts[i].0].label("role")
                        != workloads[shared_hosts[i - 1].0].label("role")
            }) {
                let role = workloads[shared_hosts[role_start].0]
                    .label("role")
                    .to_string();
                let servers: Vec<usize> = shared_hosts[role_start..]
                    .iter()
                    .take_while(|(s, _)| workloads[*s].label("role") == role)
                    .map(|(s, _)| *s)
                    .collect();
                let server = servers[rng.random_range(0..servers.len())];
                if server == host {
                    continue;
                }
                let ports = shared_hosts[role_start].1;
                for &(protocol, port) in ports {
                    let process = workloads[server].listening[0].2;
                    legit(
                        &mut rng,
                        &mut connections,
                        w(host),
                        w(server),
                        (protocol, port, process),
                        TrafficKind::SharedService,
                    );
                }
            }
            if host != monitoring {
                legit(
                    &mut rng,
                    &mut connections,
                    w(monitoring),
                    w(host),
                    (TCP, 9100, "node_exporter"),
                    TrafficKind::Monitoring,
                );
            }
        }

        // Injected: one compromised web host scans; a few hosts move laterally. Recent,
        // few flows, few bytes.
        let injected = |rng: &mut ChaCha8Rng,
                        connections: &mut Vec<Connection>,
                        src: usize,
                        dst: usize,
                        port: u32,
                        kind: TrafficKind| {
            let first = start + span - rng.random_range(0..span / 10);
            let flows = rng.random_range(1..=2);
            let listens = workloads[dst].listening.iter().find(|l| l.1 == port);
            connections.push(Connection {
                src: Peer::Workload(src),
                dst: Peer::Workload(dst),
                protocol: TCP,
                port,
                process: listens.map(|l| l.2).unwrap_or(""),
                flows,
                bytes: flows * rng.random_range(60..400),
                first_seen_unix_ns: first,
                last_seen_unix_ns: first + rng.random_range(0..1_000_000_000),
                kind,
            });
        };
        let scanner_app = &apps[rng.random_range(0..apps.len())];
        let scanner = scanner_app.web[0];
        let targets: Vec<usize> = (0..40.min(all_hosts - 1))
            .map(|_| rng.random_range(0..all_hosts))
            .filter(|&t| t != scanner)
            .collect();
        for &target in &targets {
            for _ in 0..8 {
                let port = rng.random_range(1..10_000);
                injected(
                    &mut rng,
                    &mut connections,
                    scanner,
                    target,
                    port,
                    TrafficKind::Scan,
                );
            }
        }
        for _ in 0..(apps.len() / 5).max(2) {
            let a = rng.random_range(0..apps.len());
            let b = rng.random_range(0..apps.len());
            if a == b {
                continue;
            }
            let src = apps[a].web[rng.random_range(0..apps[a].web.len())];
            let db = apps[b].db[0];
            let port = if rng.random_bool(0.5) {
                apps[b].db_port.0
            } else {
                22
            };
            injected(
                &mut rng,
                &mut connections,
                src,
                db,
                port,
                TrafficKind::LateralMovement,
            );
        }

        let ground_truth = ground_truth(&workloads, &apps, &cross, &egress);
        Datacenter {
            seed: spec.seed,
            start_unix_ns: start,
            span_ns: span,
            workloads,
            connections,
            ground_truth,
        }
    }

    /// The address of one end.
    pub fn ip(&self, peer: Peer) -> IpAddr {
        match peer {
            Peer::Workload(i) => self.workloads[i].ip.into(),
            Peer::External(ip) => ip,
        }
    }

    /// The workload id of one end, if it is a workload.
    pub fn workload_id(&self, peer: Peer) -> Option<&str> {
        match peer {
            Peer::Workload(i) => Some(&self.workloads[i].id),
            Peer::External(_) => None,
        }
    }

    /// Every workload's inventory as its agent would report it.
    pub fn inventories(&self, at_unix_ns: u64) -> Vec<HostInventory> {
        self.workloads
            .iter()
            .map(|w| HostInventory {
                schema_version: bulkhead_schemas::SCHEMA_VERSION,
                host_id: w.id.clone(),
                hostname: w.hostname.clone(),
                os: "Linux 6.1.0 (synthetic)".into(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                interfaces: vec![proto::Interface {
                    name: "eth0".into(),
                    ifindex: 2,
                    mac: vec![
                        0x02,
                        0,
                        0,
                        w.ip.octets()[1],
                        w.ip.octets()[2],
                        w.ip.octets()[3],
                    ],
                    addresses: vec![format!("{}/8", w.ip)],
                    up: true,
                }],
                listening: w
                    .listening
                    .iter()
                    .map(|(protocol, port, process)| proto::ListeningSocket {
                        protocol: *protocol,
                        address: "0.0.0.0".into(),
                        port: *port,
                        pid: 100,
                        process_name: process.to_string(),
                        executable: format!("/usr/sbin/{process}"),
                    })
                    .collect(),
                labels: w.labels.clone(),
                observed_unix_ns: at_unix_ns,
                agent_started_unix_ns: at_unix_ns,
            })
            .collect()
    }

    /// The flow records of every connection, as the collectors at both ends report them
    /// (one record per flow per managed end), in batches of at most `batch_records` per
    /// host.
    pub fn flow_batches(&self, batch_records: usize) -> Vec<FlowBatch> {
        let mut per_host: Vec<Vec<FlowRecord>> = vec![Vec::new(); self.workloads.len()];
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5eed);
        for c in &self.connections {
            let src_ip = self.ip(c.src);
            let dst_ip = self.ip(c.dst);
            let step = (c.last_seen_unix_ns - c.first_seen_unix_ns) / c.flows.max(1);
            for f in 0..c.flows {
                let first = c.first_seen_unix_ns + f * step;
                let bytes = c.bytes / c.flows.max(1);
                let packets = (bytes / 500).max(1);
                let sport = rng.random_range(32768..61000);
                let record =
                    |host: usize, direction: Direction, server: bool, process: &str| FlowRecord {
                        host_id: self.workloads[host].id.clone(),
                        interface: "eth0".into(),
                        ifindex: 2,
                        direction: direction as i32,
                        ip_version: 4,
                        src_ip: bulkhead_schemas::ip::to_bytes(src_ip),
                        dst_ip: bulkhead_schemas::ip::to_bytes(dst_ip),
                        src_port: sport,
                        dst_port: c.port,
                        protocol: c.protocol,
                        packets,
                        bytes,
                        tcp_flags: if c.protocol == TCP { 0x1b } else { 0 },
                        first_seen_unix_ns: first,
                        last_seen_unix_ns: first + 1_000_000,
                        sampling_rate: 1,
                        process_name: process.to_string(),
                        closed: c.protocol == TCP,
                        local_is_server: server,
                        ..Default::default()
                    };
                if let Peer::Workload(d) = c.dst {
                    per_host[d].push(record(d, Direction::Ingress, true, c.process));
                }
                if let Peer::Workload(s) = c.src {
                    let process = self.workloads[s].client_process;
                    per_host[s].push(record(s, Direction::Egress, false, process));
                }
            }
        }
        let mut batches = Vec::new();
        for (host, records) in per_host.into_iter().enumerate() {
            for (seq, chunk) in records.chunks(batch_records.max(1)).enumerate() {
                batches.push(FlowBatch {
                    schema_version: bulkhead_schemas::SCHEMA_VERSION,
                    host_id: self.workloads[host].id.clone(),
                    agent_instance_id: format!("synthetic-dc-{:x}", self.seed),
                    batch_seq: seq as u64,
                    created_unix_ns: self.start_unix_ns + self.span_ns,
                    records: chunk.to_vec(),
                    dropped_flows: 0,
                });
            }
        }
        batches
    }
}

fn ground_truth(
    workloads: &[DcWorkload],
    apps: &[App],
    cross: &[(usize, usize)],
    egress: &[(usize, Vec<Ipv4Addr>)],
) -> PolicyDocument {
    let role = |r: &str| Actor::Labels(label_set(&[("role", r)]));
    let ports = |ranges: &[PortRange]| {
        ranges
            .iter()
            .copied()
            .map(ServiceRef::Ports)
            .collect::<Vec<_>>()
    };
    let rule = |id: String,
                consumers: Actor,
                providers: Actor,
                services: Vec<ServiceRef>,
                extra_scope: bool| Rule {
        id,
        description: String::new(),
        consumers: vec![consumers],
        providers: vec![providers],
        services,
        extra_scope,
        disabled: false,
    };
    let mut ip_lists = vec![IpList {
        name: "internet".into(),
        description: "every address outside the private ranges".into(),
        cidrs: vec!["0.0.0.0/0".parse().unwrap()],
        exclusions: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect(),
    }];
    let envs: Vec<&str> = {
        let mut e: Vec<&str> = apps.iter().map(|a| a.env).chain(["prod"]).collect();
        e.sort();
        e.dedup();
        e
    };
    let every_env = Actor::Labels(envs.iter().map(|e| Label::new("env", *e)).collect());
    let mut rulesets = Vec::new();
    for (a, app) in apps.iter().enumerate() {
        let mut rules = vec![
            rule(
                format!("{}-internet-to-web", app.name),
                Actor::IpList("internet".into()),
                role("web"),
                ports(&[PortRange::tcp(443)]),
                true,
            ),
            rule(
                format!("{}-web-to-app", app.name),
                role("web"),
                role("app"),
                ports(&[PortRange::tcp(8080)]),
                false,
            ),
            rule(
                format!("{}-app-to-db", app.name),
                role("app"),
                role("db"),
                ports(&[PortRange::tcp(app.db_port.0 as u16)]),
                false,
            ),
        ];
        for (from, _) in cross.iter().filter(|(_, to)| *to == a) {
            let consumer = &apps[*from];
            rules.push(rule(
                format!("{}-from-{}", app.name, consumer.name),
                Actor::Labels(label_set(&[
                    ("app", &consumer.name),
                    ("env", consumer.env),
                    ("role", "app"),
                ])),
                role("app"),
                ports(&[PortRange::tcp(8080)]),
                true,
            ));
        }
        if let Some((_, partners)) = egress.iter().find(|(from, _)| *from == a) {
            let name = format!("{}-partners", app.name);
            ip_lists.push(IpList {
                name: name.clone(),
                description: String::new(),
                cidrs: partners
                    .iter()
                    .map(|ip| ipnet::IpNet::from(IpAddr::from(*ip)))
                    .collect(),
                exclusions: vec![],
            });
            rules.push(rule(
                format!("{}-app-to-partners", app.name),
                role("app"),
                Actor::IpList(name),
                ports(&[PortRange::tcp(443)]),
                false,
            ));
        }
        rulesets.push(Ruleset {
            name: format!("{}-{}", app.name, app.env),
            description: String::new(),
            scope: label_set(&[("app", &app.name), ("env", app.env)]),
            rules,
        });
    }
    let mut shared_rules = Vec::new();
    for (r, ports_of, _) in SHARED {
        let ranges: Vec<PortRange> = ports_of
            .iter()
            .map(|(p, port)| PortRange {
                protocol: *p,
                from: *port,
                to: *port,
            })
            .collect();
        shared_rules.push(rule(
            format!("shared-{r}"),
            every_env.clone(),
            role(r),
            ports(&ranges),
            true,
        ));
    }
    rulesets.push(Ruleset {
        name: "infra-prod".into(),
        description: "shared services".into(),
        scope: label_set(&[("app", "infra"), ("env", "prod")]),
        rules: shared_rules,
    });
    for env in &envs {
        rulesets.push(Ruleset {
            name: format!("monitoring-{env}"),
            description: "monitoring scrapes every host".into(),
            scope: label_set(&[("env", env)]),
            rules: vec![rule(
                format!("monitoring-scrapes-{env}"),
                Actor::Labels(label_set(&[("app", "infra"), ("role", "monitoring")])),
                Actor::Any,
                ports(&[PortRange::tcp(9100)]),
                true,
            )],
        });
    }
    PolicyDocument {
        ip_lists,
        rulesets,
        workloads: workloads
            .iter()
            .map(|w| WorkloadPolicy {
                workload_id: w.id.clone(),
                labels: w.labels.clone(),
                mode: None,
                quarantined: false,
                enforce_outbound: false,
            })
            .collect(),
        default_mode: EnforcementMode::Full,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_datacenter_with_ground_truth_that_validates() {
        let spec = DcSpec::day(5, 60, 1_764_115_200_000_000_000);
        let a = Datacenter::generate(&spec);
        let b = Datacenter::generate(&spec);
        assert_eq!(a.workloads.len(), b.workloads.len());
        assert_eq!(
            format!("{:?}", a.connections),
            format!("{:?}", b.connections)
        );
        a.ground_truth.validate().unwrap();
        let apps: std::collections::BTreeSet<&str> = a
            .workloads
            .iter()
            .map(|w| w.label("app"))
            .filter(|a| *a != "infra")
            .collect();
        assert_eq!(apps.len(), 60);
        for kind in [
            TrafficKind::Tier,
            TrafficKind::CrossApp,
            TrafficKind::SharedService,
            TrafficKind::Monitoring,
            TrafficKind::InternetIngress,
            TrafficKind::InternetEgress,
            TrafficKind::Scan,
            TrafficKind::LateralMovement,
        ] {
            assert!(a.connections.iter().any(|c| c.kind == kind), "{kind:?}");
        }
        let other = Datacenter::generate(&DcSpec { seed: 6, ..spec });
        assert_ne!(
            format!("{:?}", a.connections),
            format!("{:?}", other.connections)
        );
    }

    #[test]
    fn flow_batches_have_one_record_per_flow_and_managed_end() {
        let dc = Datacenter::generate(&DcSpec::day(1, 5, 1_764_115_200_000_000_000));
        let expected: u64 = dc
            .connections
            .iter()
            .map(|c| {
                c.flows
                    * (matches!(c.src, Peer::Workload(_)) as u64
                        + matches!(c.dst, Peer::Workload(_)) as u64)
            })
            .sum();
        let batches = dc.flow_batches(500);
        assert_eq!(
            batches.iter().map(|b| b.records.len() as u64).sum::<u64>(),
            expected
        );
        assert!(batches.iter().all(|b| b.records.len() <= 500));
    }
}
