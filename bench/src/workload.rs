//! A seeded synthetic estate: applications of web → api → db tiers, shared DNS and
//! monitoring, clients on the internet, and one rogue host that scans. The same seed and
//! sizes give the same hosts and flows, byte for byte.
//!
//! Addresses: hosts get 10.x.y.z (and fd00::/64) addresses, internet clients come from the
//! documentation ranges 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32. Nothing here
//! sends a packet; these are records only.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bulkhead_schemas::policy::PolicyVersion;
use bulkhead_schemas::proto::{self, Direction, FlowBatch, FlowRecord, HostInventory};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const APPS: &[&str] = &[
    "crm", "billing", "shop", "hr", "erp", "search", "auth", "media", "ledger", "chat",
];
const TCP: u32 = 6;
const UDP: u32 = 17;

/// A host of the synthetic estate.
#[derive(Clone, Debug)]
pub struct Host {
    pub id: String,
    pub hostname: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// role, app, env, loc.
    pub labels: BTreeMap<String, String>,
    /// The server process and port it listens on (0 = none).
    pub process: &'static str,
    pub port: u32,
    pub protocol: u32,
}

impl Host {
    fn role(&self) -> &str {
        &self.labels["role"]
    }
}

/// The hosts of an estate, grouped by application.
#[derive(Clone, Debug)]
pub struct Estate {
    pub seed: u64,
    pub hosts: Vec<Host>,
}

fn role_process(role: &str) -> (&'static str, u32, u32) {
    match role {
        "web" => ("nginx", 443, TCP),
        "api" => ("java", 8080, TCP),
        "db" => ("postgres", 5432, TCP),
        "dns" => ("unbound", 53, UDP),
        "monitoring" => ("prometheus", 9090, TCP),
        _ => ("sshd", 22, TCP),
    }
}

impl Estate {
    /// An estate of `hosts` hosts (at least 8): 2 shared hosts (DNS, monitoring), one rogue
    /// host, and applications of 5 hosts (2 web, 2 api, 1 db) in alternating prod/staging.
    pub fn generate(seed: u64, hosts: usize) -> Self {
        let hosts = hosts.max(8);
        let mut out = Vec::with_capacity(hosts);
        fn add(out: &mut Vec<Host>, seed: u64, n: usize, role: &str, app: &str, env: &str) {
            let (process, port, protocol) = role_process(role);
            let i = out.len() as u32;
            let labels = [
                ("role", role),
                ("app", app),
                ("env", env),
                ("loc", if n.is_multiple_of(2) { "par" } else { "fra" }),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            out.push(Host {
                id: format!("host-{seed:x}-{i:05}"),
                hostname: format!("{app}-{role}-{n}.{env}.example"),
                ipv4: Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, (i & 0xff) as u8),
                ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16),
                labels,
                process,
                port,
                protocol,
            });
        }
        add(&mut out, seed, 0, "dns", "infra", "prod");
        add(&mut out, seed, 0, "monitoring", "infra", "prod");
        add(&mut out, seed, 0, "rogue", "unknown", "prod");
        let mut app_index = 0usize;
        'apps: loop {
            let app = APPS[app_index % APPS.len()];
            let app = if app_index < APPS.len() {
                app.to_string()
            } else {
                format!("{app}{}", app_index / APPS.len())
            };
            let env = if app_index.is_multiple_of(2) {
                "prod"
            } else {
                "staging"
            };
            for (role, count) in [("web", 2), ("api", 2), ("db", 1)] {
                for n in 0..count {
                    if out.len() >= hosts {
                        break 'apps;
                    }
                    add(&mut out, seed, n, role, &app, env);
                }
            }
            app_index += 1;
        }
        Estate { seed, hosts: out }
    }

    /// Every host's inventory, as its agent would report it at `at_unix_ns`.
    pub fn inventories(&self, at_unix_ns: u64) -> Vec<HostInventory> {
        self.hosts
            .iter()
            .map(|h| HostInventory {
                schema_version: bulkhead_schemas::SCHEMA_VERSION,
                host_id: h.id.clone(),
                hostname: h.hostname.clone(),
                os: "Linux 6.1.0 (synthetic)".into(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                interfaces: vec![proto::Interface {
                    name: "eth0".into(),
                    ifindex: 2,
                    mac: vec![0x02, 0, 0, 0, (h.ipv4.octets()[2]), h.ipv4.octets()[3]],
                    addresses: vec![format!("{}/8", h.ipv4), format!("{}/64", h.ipv6)],
                    up: true,
                }],
                listening: vec![proto::ListeningSocket {
                    protocol: h.protocol,
                    address: "0.0.0.0".into(),
                    port: h.port,
                    pid: 100,
                    process_name: h.process.into(),
                    executable: format!("/usr/sbin/{}", h.process),
                }],
                labels: h.labels.clone(),
                observed_unix_ns: at_unix_ns,
                agent_started_unix_ns: at_unix_ns,
            })
            .collect()
    }

    /// The policy an architect would write for this estate, as version `version` created at
    /// `created_unix_ns`: every host a workload with its own labels (prod in full
    /// enforcement, staging in visibility); DNS for everyone; monitoring scrapes the
    /// applications' hosts; the internet reaches web on 443; within an application, web →
    /// api on 8080 and api → db on 5432. Web → api across applications and the rogue
    /// host's scans are what it leaves out (blocked in prod, would be blocked in staging).
    pub fn policy(&self, version: u64, created_unix_ns: u64) -> PolicyVersion {
        use bulkhead_schemas::policy::{
            Actor, EnforcementMode, IpList, Label, PolicyDocument, PortRange, Rule, Ruleset,
            ServiceRef, WorkloadPolicy,
        };
        let rule =
            |id: String, consumers: Actor, providers: Actor, port: PortRange, extra: bool| Rule {
                id,
                description: String::new(),
                consumers: vec![consumers],
                providers: vec![providers],
                services: vec![ServiceRef::Ports(port)],
                extra_scope: extra,
                disabled: false,
            };
        let role = |role: &str| Actor::Labels(vec![Label::new("role", role)]);
        let mut apps: Vec<&str> = self
            .hosts
            .iter()
            .map(|h| h.labels["app"].as_str())
            .collect();
        apps.dedup();
        // The rogue host's "unknown" application gets no rules.
        let rulesets = apps
            .into_iter()
            .filter(|app| *app != "unknown")
            .map(|app| {
                let id = |what: &str| format!("{app}-{what}");
                let rules = if app == "infra" {
                    vec![rule(
                        id("dns"),
                        Actor::Any,
                        role("dns"),
                        PortRange::udp(53),
                        true,
                    )]
                } else {
                    vec![
                        rule(
                            id("web"),
                            Actor::IpList("internet".into()),
                            role("web"),
                            PortRange::tcp(443),
                            true,
                        ),
                        rule(
                            id("api"),
                            role("web"),
                            role("api"),
                            PortRange::tcp(8080),
                            false,
                        ),
                        rule(
                            id("db"),
                            role("api"),
                            role("db"),
                            PortRange::tcp(5432),
                            false,
                        ),
                        rule(
                            id("scrape"),
                            role("monitoring"),
                            Actor::Any,
                            PortRange::tcp(9100),
                            true,
                        ),
                    ]
                };
                Ruleset {
                    name: app.to_string(),
                    description: String::new(),
                    scope: vec![Label::new("app", app)],
                    rules,
                }
            })
            .collect();
        let internet = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"];
        let document = PolicyDocument {
            ip_lists: vec![IpList {
                name: "internet".into(),
                description: String::new(),
                cidrs: internet
                    .iter()
                    .map(|c| c.parse().expect("a CIDR"))
                    .collect(),
                exclusions: vec![],
            }],
            rulesets,
            workloads: self
                .hosts
                .iter()
                .map(|h| WorkloadPolicy {
                    workload_id: h.id.clone(),
                    labels: h.labels.clone(),
                    mode: Some(if h.labels["env"] == "prod" {
                        EnforcementMode::Full
                    } else {
                        EnforcementMode::VisibilityOnly
                    }),
                    quarantined: false,
                    enforce_outbound: false,
                })
                .collect(),
            ..Default::default()
        };
        let mut policy = PolicyVersion::new(version, 0, "bench", "the estate's policy", document);
        policy.created_unix_ns = created_unix_ns;
        policy
    }

    fn by_role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.hosts
            .iter()
            .enumerate()
            .filter(move |(_, h)| h.role() == role)
            .map(|(i, _)| i)
    }

    /// Flow batches totalling `spec.records` records, as every host's collector would
    /// publish them over `spec.span_ns` from `spec.start_unix_ns`.
    pub fn flows(&self, spec: &FlowSpec) -> FlowBatches<'_> {
        FlowBatches {
            estate: self,
            spec: spec.clone(),
            rng: ChaCha8Rng::seed_from_u64(self.seed ^ spec.seed.rotate_left(17)),
            webs: self.by_role("web").collect(),
            apis: self.by_role("api").collect(),
            dbs: self.by_role("db").collect(),
            dns: self
                .by_role("dns")
                .next()
                .expect("every estate has a DNS host"),
            monitoring: self
                .by_role("monitoring")
                .next()
                .expect("every estate has a monitoring host"),
            rogue: self
                .by_role("rogue")
                .next()
                .expect("every estate has a rogue host"),
            pending: (0..self.hosts.len()).map(|_| Vec::new()).collect(),
            seq: vec![0; self.hosts.len()],
            emitted: 0,
            ready: Vec::new(),
            flushed: false,
        }
    }
}

/// How many flow records, over what time, in batches of what size.
#[derive(Clone, Debug)]
pub struct FlowSpec {
    pub seed: u64,
    pub records: u64,
    pub start_unix_ns: u64,
    pub span_ns: u64,
    /// Records per batch at most (a collector evicts per interval; large hosts send more).
    pub batch_records: usize,
}

impl FlowSpec {
    /// `records` records over the last `span` seconds before now, batches of 1,000.
    pub fn recent(seed: u64, records: u64, span_secs: u64) -> Self {
        let span_ns = span_secs.max(1) * 1_000_000_000;
        Self {
            seed,
            records,
            start_unix_ns: bulkhead_schemas::now_unix_ns().saturating_sub(span_ns),
            span_ns,
            batch_records: 1000,
        }
    }
}

/// The flow batches of an estate (an iterator; generates lazily, bounded memory).
pub struct FlowBatches<'a> {
    estate: &'a Estate,
    spec: FlowSpec,
    rng: ChaCha8Rng,
    webs: Vec<usize>,
    apis: Vec<usize>,
    dbs: Vec<usize>,
    dns: usize,
    monitoring: usize,
    rogue: usize,
    pending: Vec<Vec<FlowRecord>>,
    seq: Vec<u64>,
    emitted: u64,
    ready: Vec<FlowBatch>,
    flushed: bool,
}

/// One end of a synthetic connection.
#[derive(Clone, Copy)]
enum End {
    Host(usize),
    Internet(IpAddr),
}

impl FlowBatches<'_> {
    fn addr(&self, end: End, v6: bool) -> IpAddr {
        match end {
            End::Host(i) if v6 => IpAddr::V6(self.estate.hosts[i].ipv6),
            End::Host(i) => IpAddr::V4(self.estate.hosts[i].ipv4),
            End::Internet(ip) => ip,
        }
    }

    fn internet_client(&mut self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                self.rng.random_range(1..5000),
            ))
        } else if self.rng.random_bool(0.5) {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, self.rng.random_range(1..255)))
        } else {
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, self.rng.random_range(1..255)))
        }
    }

    /// One connection: client → server on the server's service; both hosts report it.
    fn connection(&mut self) {
        let pick = |rng: &mut ChaCha8Rng, v: &[usize]| v[rng.random_range(0..v.len())];
        let roll = self.rng.random_range(0..100);
        let (client, server, port, protocol) =
            if roll < 32 && !self.webs.is_empty() && !self.apis.is_empty() {
                (
                    End::Host(pick(&mut self.rng, &self.webs)),
                    pick(&mut self.rng, &self.apis),
                    8080,
                    TCP,
                )
            } else if roll < 52 && !self.apis.is_empty() && !self.dbs.is_empty() {
                (
                    End::Host(pick(&mut self.rng, &self.apis)),
                    pick(&mut self.rng, &self.dbs),
                    5432,
                    TCP,
                )
            } else if roll < 72 && !self.webs.is_empty() {
                let v6 = self.rng.random_bool(0.2);
                (
                    End::Internet(self.internet_client(v6)),
                    pick(&mut self.rng, &self.webs),
                    443,
                    TCP,
                )
            } else if roll < 92 {
                let client = self.rng.random_range(0..self.estate.hosts.len());
                (End::Host(client), self.dns, 53, UDP)
            } else if roll < 99 {
                let target = self.rng.random_range(0..self.estate.hosts.len());
                (End::Host(self.monitoring), target, 9100, TCP)
            } else {
                // The rogue host probes random ports on random hosts.
                let target = self.rng.random_range(0..self.estate.hosts.len());
                (
                    End::Host(self.rogue),
                    target,
                    self.rng.random_range(1..1024),
                    TCP,
                )
            };
        let server_end = End::Host(server);
        if matches!(client, End::Host(c) if c == server) {
            return;
        }
        let v6 = matches!(client, End::Internet(IpAddr::V6(_)));
        let client_ip = self.addr(client, v6);
        let server_ip = self.addr(server_end, v6);
        let client_port = self.rng.random_range(32768..61000);
        let first = self.spec.start_unix_ns + self.rng.random_range(0..self.spec.span_ns.max(1));
        let last = first + self.rng.random_range(0..2_000_000_000);
        // Records carry the client → server direction, as seen at each end.
        let packets_out = if protocol == UDP {
            1
        } else {
            self.rng.random_range(3..40)
        };
        let bytes_out = packets_out * self.rng.random_range(60..900);
        let flags = if protocol == TCP { 0x1b } else { 0 };
        let server_host = &self.estate.hosts[server];
        let server_process = if port == server_host.port || port == 9100 {
            if port == 9100 {
                "node_exporter"
            } else {
                server_host.process
            }
        } else {
            ""
        };
        let record = |host: &Host,
                      direction: Direction,
                      src: IpAddr,
                      dst: IpAddr,
                      sport: u32,
                      dport: u32,
                      packets: u64,
                      bytes: u64,
                      process: &str,
                      server_side: bool| FlowRecord {
            host_id: host.id.clone(),
            interface: "eth0".into(),
            ifindex: 2,
            direction: direction as i32,
            ip_version: if src.is_ipv6() { 6 } else { 4 },
            src_ip: bulkhead_schemas::ip::to_bytes(src),
            dst_ip: bulkhead_schemas::ip::to_bytes(dst),
            src_port: sport,
            dst_port: dport,
            protocol,
            packets,
            bytes,
            tcp_flags: flags,
            first_seen_unix_ns: first,
            last_seen_unix_ns: last,
            sampling_rate: 1,
            pid: if process.is_empty() {
                0
            } else {
                1000 + (bytes as u32 % 30000)
            },
            process_name: process.to_string(),
            executable: if process.is_empty() {
                String::new()
            } else {
                format!("/usr/bin/{process}")
            },
            cgroup_id: if process.is_empty() { 0 } else { 4242 },
            closed: protocol == TCP,
            local_is_server: server_side,
            ..Default::default()
        };
        // The server reports the client's packets arriving (ingress).
        let server_record = record(
            server_host,
            Direction::Ingress,
            client_ip,
            server_ip,
            client_port,
            port,
            packets_out,
            bytes_out,
            server_process,
            true,
        );
        self.push(server, server_record);
        if let End::Host(c) = client {
            let client_host = &self.estate.hosts[c];
            let client_process = match client_host.role() {
                "web" => "nginx",
                "api" => "java",
                "monitoring" => "prometheus",
                "rogue" => "nmap",
                _ => "systemd-resolve",
            };
            let client_record = record(
                client_host,
                Direction::Egress,
                client_ip,
                server_ip,
                client_port,
                port,
                packets_out,
                bytes_out,
                client_process,
                false,
            );
            self.push(c, client_record);
        }
    }

    fn push(&mut self, host: usize, record: FlowRecord) {
        if self.emitted >= self.spec.records {
            return;
        }
        self.emitted += 1;
        self.pending[host].push(record);
        if self.pending[host].len() >= self.spec.batch_records.max(1) {
            let batch = self.take_batch(host);
            self.ready.push(batch);
        }
    }

    fn take_batch(&mut self, host: usize) -> FlowBatch {
        let records = std::mem::take(&mut self.pending[host]);
        let seq = self.seq[host];
        self.seq[host] += 1;
        let host = &self.estate.hosts[host];
        FlowBatch {
            schema_version: bulkhead_schemas::SCHEMA_VERSION,
            host_id: host.id.clone(),
            agent_instance_id: format!("synthetic-{:x}-{:x}", self.estate.seed, self.spec.seed),
            batch_seq: seq,
            created_unix_ns: self.spec.start_unix_ns + self.spec.span_ns,
            records,
            dropped_flows: 0,
        }
    }
}

impl Iterator for FlowBatches<'_> {
    type Item = FlowBatch;

    fn next(&mut self) -> Option<FlowBatch> {
        loop {
            if let Some(batch) = self.ready.pop() {
                return Some(batch);
            }
            if self.emitted < self.spec.records {
                self.connection();
                continue;
            }
            if self.flushed {
                return None;
            }
            self.flushed = true;
            for host in (0..self.pending.len()).rev() {
                if !self.pending[host].is_empty() {
                    let batch = self.take_batch(host);
                    self.ready.push(batch);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(records: u64) -> FlowSpec {
        FlowSpec {
            seed: 7,
            records,
            start_unix_ns: 1_764_115_200_000_000_000,
            span_ns: 60_000_000_000,
            batch_records: 100,
        }
    }

    #[test]
    fn same_seed_same_flows_and_exact_count() {
        let estate = Estate::generate(1, 30);
        let a: Vec<FlowBatch> = estate.flows(&spec(2_345)).collect();
        let b: Vec<FlowBatch> = Estate::generate(1, 30).flows(&spec(2_345)).collect();
        assert_eq!(a, b);
        assert_eq!(a.iter().map(|b| b.records.len() as u64).sum::<u64>(), 2_345);
        assert!(a.iter().all(|b| b.records.len() <= 100 && b.records.iter().all(|r| r.host_id == b.host_id)));
        let other: Vec<FlowBatch> = Estate::generate(2, 30).flows(&spec(2_345)).collect();
        assert_ne!(a, other);
    }

    #[test]
    fn estate_has_shared_services_apps_and_labels() {
        let estate = Estate::generate(9, 20);
        assert_eq!(estate.hosts.len(), 20);
        for role in ["dns", "monitoring", "rogue", "web", "api", "db"] {
            assert!(estate.hosts.iter().any(|h| h.role() == role), "{role}");
        }
        let ids: std::collections::HashSet<_> = estate.hosts.iter().map(|h| &h.id).collect();
        assert_eq!(ids.len(), 20);
        assert!(
            estate
                .inventories(0)
                .iter()
                .all(|i| i.labels.contains_key("app"))
        );
    }

    #[test]
    fn the_estates_policy_is_valid_and_judges_its_flows_each_way() {
        use bulkhead_ingest::enrich::Inventory;
        use bulkhead_ingest::policy::{PolicyCache, PolicyHistory};
        use bulkhead_schemas::proto::PolicyDecision;

        let estate = Estate::generate(4, 40);
        let start = spec(1).start_unix_ns;
        let version = estate.policy(1, start);
        version.document.validate().unwrap();
        let mut inventory = Inventory::default();
        for host in estate.inventories(start) {
            inventory.apply(&host.host_id, Some(&host));
        }
        let mut history = PolicyHistory::default();
        history.insert(version);
        let mut cache = PolicyCache::default();
        let mut decisions = std::collections::HashMap::<(i32, &str, u32), usize>::new();
        let batches: Vec<FlowBatch> = estate
            .flows(&spec(20_000))
            .map(|mut batch| {
                let mut shared = vec![];
                inventory.enrich(&mut batch, &mut shared);
                history.decide(&mut batch, &mut shared, &mut cache);
                batch
            })
            .collect();
        let env = |workload: &str| {
            estate
                .hosts
                .iter()
                .find(|h| h.id == workload)
                .map_or("internet", |h| h.labels["env"].as_str())
        };
        for record in batches.iter().flat_map(|b| &b.records) {
            *decisions
                .entry((
                    record.policy_decision,
                    env(&record.dst_workload),
                    record.dst_port,
                ))
                .or_default() += 1;
        }
        let count = |decision: PolicyDecision, env: &str, port: u32| {
            decisions
                .get(&(decision as i32, env, port))
                .copied()
                .unwrap_or(0)
        };
        assert!(
            !decisions
                .keys()
                .any(|(d, _, _)| *d == PolicyDecision::Unknown as i32),
            "every flow is judged: {decisions:?}"
        );
        // The internet reaches web, DNS and scrapes are allowed everywhere, web → api
        // within an application; web → api across applications is blocked in prod and
        // would be in staging.
        for port in [443, 53, 9100, 8080] {
            assert!(
                count(PolicyDecision::Allowed, "prod", port) > 0,
                "{port}: {decisions:?}"
            );
        }
        assert!(
            count(PolicyDecision::Blocked, "prod", 8080) > 0,
            "{decisions:?}"
        );
        assert!(
            count(PolicyDecision::PotentiallyBlocked, "staging", 8080) > 0,
            "{decisions:?}"
        );
        assert_eq!(
            count(PolicyDecision::Blocked, "prod", 443),
            0,
            "{decisions:?}"
        );
    }

    #[test]
    fn batches_convert_to_arrow() {
        let estate = Estate::generate(3, 12);
        let batches: Vec<FlowBatch> = estate.flows(&spec(500)).collect();
        let rb = bulkhead_schemas::lake::flow_batches_to_arrow(&batches).unwrap();
        assert_eq!(rb.num_rows(), 500);
    }
}
