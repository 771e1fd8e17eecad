//! Lifting summed edges to label-level rules (the steps are in the crate documentation).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use bulkhead_schemas::policy::{
    Actor, IpList, Label, PortRange, Rule, ServiceRef, label_set_matches,
};
use sha2::Digest as _;

use crate::{
    EdgeSum, End, Evidence, EvidenceEdge, Kind, Options, Recommendation, Recommendations,
    WorkloadLabels,
};

/// A workload's ruleset scope and role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Group {
    scope: Vec<Label>,
    role: Option<String>,
}

impl Group {
    fn name(&self) -> String {
        scope_name(&self.scope)
    }
    fn env(&self) -> Option<&str> {
        self.scope
            .iter()
            .find(|l| l.key == "env")
            .map(|l| l.value.as_str())
    }
    /// The group as an actor: within its own scope only the role is needed.
    fn actor(&self, inside_scope: bool) -> Actor {
        let mut set: Vec<Label> = if inside_scope {
            Vec::new()
        } else {
            self.scope.clone()
        };
        match &self.role {
            Some(role) => set.push(Label::new("role", role)),
            None if inside_scope => set = self.scope.clone(),
            None => {}
        }
        Actor::Labels(set)
    }
}

fn scope_name(scope: &[Label]) -> String {
    scope
        .iter()
        .map(|l| l.value.as_str())
        .collect::<Vec<_>>()
        .join("-")
}

/// Ruleset + actors: rules with the same key merge their ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RuleKey {
    scope: Vec<Label>,
    consumers: Vec<Actor>,
    providers: Vec<Actor>,
    extra_scope: bool,
    kind: Kind,
}

#[derive(Default)]
struct Candidate<'e> {
    ports: BTreeSet<PortRange>,
    edges: Vec<&'e EdgeSum>,
    ip_lists: BTreeMap<String, IpList>,
    support: f64,
    rationale: Vec<String>,
}

struct Context<'a> {
    labels: &'a WorkloadLabels,
    options: &'a Options,
    /// Workloads per group, per scope, per env.
    group_size: BTreeMap<Group, usize>,
    env_size: BTreeMap<String, usize>,
}

impl Context<'_> {
    fn group(&self, end: &End) -> Option<Group> {
        let End::Workload(id) = end else { return None };
        let labels = self.labels.get(id)?;
        let scope = self
            .options
            .scope_keys
            .iter()
            .map(|k| labels.get(k).map(|v| Label::new(k, v)))
            .collect::<Option<Vec<_>>>()?;
        Some(Group {
            scope,
            role: labels.get("role").cloned(),
        })
    }

    /// The group as an actor when enough of its members showed the pattern, else the
    /// members seen.
    fn side(&self, group: &Group, seen: &BTreeSet<&str>, inside_scope: bool) -> (Vec<Actor>, f64) {
        let size = self
            .group_size
            .get(group)
            .copied()
            .unwrap_or(seen.len())
            .max(1);
        let support = seen.len() as f64 / size as f64;
        if support >= self.options.support_threshold {
            (vec![group.actor(inside_scope)], support)
        } else {
            (
                seen.iter()
                    .map(|id| Actor::Workload(id.to_string()))
                    .collect(),
                support,
            )
        }
    }
}

pub(crate) fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_private() || v4.is_loopback() || v4.is_link_local()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The `internet` list: every address but private, loopback and link-local ranges.
pub fn internet_list() -> IpList {
    let nets = |v: &[&str]| v.iter().map(|c| c.parse().expect("valid CIDR")).collect();
    IpList {
        name: "internet".into(),
        description: "every address outside private, loopback and link-local ranges".into(),
        cidrs: nets(&["0.0.0.0/0", "::/0"]),
        exclusions: nets(&[
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "fc00::/7",
            "fe80::/10",
            "::1/128",
        ]),
    }
}

fn short_hash(text: &str) -> String {
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6])
}

/// A list of the addresses seen, or `internet` when there are many public ones.
fn address_list(
    addresses: &BTreeSet<IpAddr>,
    name_prefix: &str,
    options: &Options,
) -> (IpList, String) {
    if addresses.len() >= options.internet_min_addresses && addresses.iter().all(is_public) {
        let why = format!(
            "{} distinct public addresses: generalised to the internet list",
            addresses.len()
        );
        return (internet_list(), why);
    }
    let cidrs: Vec<ipnet::IpNet> = addresses.iter().map(|ip| ipnet::IpNet::from(*ip)).collect();
    let text: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
    let name = format!("{name_prefix}-{}", short_hash(&text.join(",")));
    let why = format!("exactly the {} address(es) seen", addresses.len());
    (
        IpList {
            name,
            description: format!("addresses seen: {}", text.join(", ")),
            cidrs,
            exclusions: vec![],
        },
        why,
    )
}

/// Joins adjacent ports of one protocol into ranges.
fn services(ports: &BTreeSet<PortRange>) -> Vec<ServiceRef> {
    let mut out: Vec<PortRange> = Vec::new();
    for range in ports {
        if let Some(last) = out.last_mut()
            && last.protocol == range.protocol
            && !last.all_ports()
            && !range.all_ports()
            && range.from <= last.to + 1
        {
            last.to = last.to.max(range.to);
            continue;
        }
        out.push(*range);
    }
    out.into_iter().map(ServiceRef::Ports).collect()
}

fn port_range(protocol: u32, port: u32) -> PortRange {
    if bulkhead_schemas::policy::protocol::has_ports(protocol) {
        PortRange {
            protocol,
            from: port,
            to: port,
        }
    } else {
        PortRange {
            protocol,
            from: 0,
            to: 0,
        }
    }
}

pub fn recommend_from_sums(
    sums: &[EdgeSum],
    labels: &WorkloadLabels,
    options: &Options,
) -> Recommendations {
    let mut ctx = Context {
        labels,
        options,
        group_size: BTreeMap::new(),
        env_size: BTreeMap::new(),
    };
    for id in labels.keys() {
        if let Some(group) = ctx.group(&End::Workload(id.clone())) {
            if let Some(env) = group.env() {
                *ctx.env_size.entry(env.to_string()).or_default() += 1;
            }
            *ctx.group_size.entry(group).or_default() += 1;
        }
    }
    let scopes: BTreeSet<Vec<Label>> = ctx.group_size.keys().map(|g| g.scope.clone()).collect();
    let shared_min =
        ((scopes.len() as f64 * options.shared_min_scope_share).ceil() as usize).max(3);

    let total_flows: u64 = sums.iter().map(|e| e.flows).sum();
    let window_start = sums.iter().map(|e| e.first_seen_us).min().unwrap_or(0);
    let window_end = sums.iter().map(|e| e.last_seen_us).max().unwrap_or(0);
    let window = (window_end - window_start).max(1);
    let recent_cut = window_end - (window as f64 * options.recent_fraction) as i64;
    let thin = |e: &EdgeSum| e.bytes / e.flows.max(1) < options.scan_max_bytes_per_flow;

    // 1. Suspicious patterns.
    /// What one source reached with thin flows.
    #[derive(Default)]
    struct Reached<'a> {
        targets: BTreeSet<(&'a End, u32)>,
        ports: BTreeSet<u32>,
    }
    let mut reached: BTreeMap<&End, Reached> = BTreeMap::new();
    for e in sums.iter().filter(|e| thin(e)) {
        let by_src = reached.entry(&e.src).or_default();
        by_src.targets.insert((&e.dst, e.port));
        by_src.ports.insert(e.port);
    }
    let scanners: BTreeSet<&End> = reached
        .iter()
        .filter(|(_, by_src)| {
            by_src.targets.len() >= options.scan_min_targets
                && by_src.ports.len() >= options.scan_min_ports
        })
        .map(|(src, _)| *src)
        .collect();
    let pattern = |e: &EdgeSum| (ctx.group(&e.src), ctx.group(&e.dst), e.protocol, e.port);
    let doubtful = |e: &EdgeSum| {
        (scanners.contains(&e.src) && thin(e))
            || (e.first_seen_us >= recent_cut && e.flows <= options.new_edge_max_flows)
    };
    let established: BTreeSet<_> = sums
        .iter()
        .filter(|e| !doubtful(e))
        .map(pattern)
        .filter(|(s, d, _, _)| s.is_some() || d.is_some())
        .collect();
    let (suspicious, accepted): (Vec<&EdgeSum>, Vec<&EdgeSum>) = sums.iter().partition(|e| {
        let p = pattern(e);
        doubtful(e) && ((p.0.is_none() && p.1.is_none()) || !established.contains(&p))
    });

    let mut out = Recommendations {
        edges: sums.len(),
        flows: total_flows,
        ..Default::default()
    };
    let now = bulkhead_schemas::now_unix_ns();
    let mut by_source: BTreeMap<&End, Vec<&EdgeSum>> = BTreeMap::new();
    for e in suspicious {
        by_source.entry(&e.src).or_default().push(e);
    }
    for (src, edges) in by_source {
        let targets: BTreeSet<&End> = edges.iter().map(|e| &e.dst).collect();
        let ports: BTreeSet<PortRange> = edges
            .iter()
            .map(|e| port_range(e.protocol, e.port))
            .collect();
        let scope = ctx.group(src).map(|g| g.scope).unwrap_or_default();
        let mut ip_lists = Vec::new();
        let consumer = match src {
            End::Workload(id) => Actor::Workload(id.clone()),
            End::Address(ip) => {
                let list = address_list(
                    &BTreeSet::from([*ip]),
                    "suspect",
                    &Options {
                        internet_min_addresses: usize::MAX,
                        ..options.clone()
                    },
                )
                .0;
                let name = list.name.clone();
                ip_lists.push(list);
                Actor::IpList(name)
            }
        };
        let providers: Vec<Actor> = targets
            .iter()
            .filter_map(|t| match t {
                End::Workload(id) => Some(Actor::Workload(id.clone())),
                End::Address(_) => None,
            })
            .collect();
        let why = if scanners.contains(src) {
            format!(
                "{src} touched {} hosts on {} ports with under {} bytes a flow: looks like a scan",
                targets.len(),
                ports.len(),
                options.scan_max_bytes_per_flow
            )
        } else {
            format!(
                "{src} opened {} new connection(s) to {} host(s) in the last {:.0}% of the window, with few flows and no peer doing the same: possible lateral movement",
                edges.len(),
                targets.len(),
                options.recent_fraction * 100.0
            )
        };
        let id = format!("sus-{}", short_hash(&format!("{src}")));
        let rule = Rule {
            id: id.clone(),
            description: "suspicious: review, do not allow".into(),
            consumers: vec![consumer],
            providers: if providers.is_empty() {
                vec![Actor::Any]
            } else {
                providers
            },
            services: services(&ports),
            extra_scope: true,
            disabled: true,
        };
        let evidence = evidence(&edges, 0.0, options.sample_size);
        out.items.push(Recommendation {
            id,
            kind: Kind::Suspicious,
            ruleset: "review".into(),
            scope,
            rule,
            ip_lists,
            evidence,
            confidence: 0.0,
            coverage: 0.0,
            rationale: why,
            created_unix_ns: now,
        });
    }

    // 2-4. Group the accepted edges into candidate rules.
    let mut candidates: BTreeMap<RuleKey, Candidate> = BTreeMap::new();

    type Pattern = (Group, Group, u32, u32);
    let mut internal: BTreeMap<Pattern, Vec<&EdgeSum>> = BTreeMap::new();
    let mut egress: BTreeMap<(Group, u32, u32), Vec<&EdgeSum>> = BTreeMap::new();
    let mut ingress: BTreeMap<(Group, u32, u32), Vec<&EdgeSum>> = BTreeMap::new();
    for e in &accepted {
        match (ctx.group(&e.src), ctx.group(&e.dst), &e.src, &e.dst) {
            (Some(s), Some(d), _, _) => internal
                .entry((s, d, e.protocol, e.port))
                .or_default()
                .push(e),
            (Some(s), None, _, End::Address(_)) => {
                egress.entry((s, e.protocol, e.port)).or_default().push(e)
            }
            (None, Some(d), End::Address(_), _) => {
                ingress.entry((d, e.protocol, e.port)).or_default().push(e)
            }
            _ => out.unlabeled_edges += 1,
        }
    }
    let in_scope = |filter: &[Label], scope: &[Label]| {
        let map: BTreeMap<String, String> = scope
            .iter()
            .map(|l| (l.key.clone(), l.value.clone()))
            .collect();
        filter.is_empty() || label_set_matches(filter, &map)
    };

    // Shared providers and consumers.
    let mut consumer_scopes: BTreeMap<(&Group, u32, u32), BTreeSet<&[Label]>> = BTreeMap::new();
    let mut provider_scopes: BTreeMap<(&Group, u32, u32), BTreeSet<&[Label]>> = BTreeMap::new();
    for (s, d, protocol, port) in internal.keys() {
        consumer_scopes
            .entry((d, *protocol, *port))
            .or_default()
            .insert(&s.scope);
        provider_scopes
            .entry((s, *protocol, *port))
            .or_default()
            .insert(&d.scope);
    }
    let shared_provider = |d: &Group, protocol: u32, port: u32| {
        consumer_scopes
            .get(&(d, protocol, port))
            .is_some_and(|s| s.len() >= shared_min)
    };
    let shared_consumer = |s: &Group, protocol: u32, port: u32| {
        provider_scopes
            .get(&(s, protocol, port))
            .is_some_and(|p| p.len() >= shared_min)
    };
    let ids = |edges: &[&EdgeSum], dst: bool| -> BTreeSet<String> {
        edges
            .iter()
            .filter_map(|e| match if dst { &e.dst } else { &e.src } {
                End::Workload(id) => Some(id.clone()),
                End::Address(_) => None,
            })
            .collect()
    };

    // Shared providers: all their consumers over all their shared ports at once.
    let mut shared_by_provider: BTreeMap<Group, Vec<&EdgeSum>> = BTreeMap::new();
    let mut shared_by_consumer: BTreeMap<(Group, String), Vec<&EdgeSum>> = BTreeMap::new();
    let mut plain: Vec<(&Pattern, &Vec<&EdgeSum>)> = Vec::new();
    for (key @ (s, d, protocol, port), edges) in &internal {
        if shared_provider(d, *protocol, *port) {
            shared_by_provider
                .entry(d.clone())
                .or_default()
                .extend(edges);
        } else if shared_consumer(s, *protocol, *port) {
            for e in edges {
                let env = ctx
                    .group(&e.dst)
                    .and_then(|g| g.env().map(str::to_string))
                    .unwrap_or_default();
                shared_by_consumer
                    .entry((s.clone(), env))
                    .or_default()
                    .push(e);
            }
        } else {
            plain.push((key, edges));
        }
    }
    for (d, edges) in &shared_by_provider {
        let consumers = ids(edges, false);
        let consumer_groups: BTreeSet<Group> =
            edges.iter().filter_map(|e| ctx.group(&e.src)).collect();
        let envs: BTreeSet<&str> = consumer_groups.iter().filter_map(|g| g.env()).collect();
        let env_members: usize = envs
            .iter()
            .map(|e| ctx.env_size.get(*e).copied().unwrap_or(0))
            .sum();
        let support = consumers.len() as f64 / env_members.max(1) as f64;
        let mut set: Vec<Label> = Vec::new();
        let why = if support >= options.support_threshold {
            format!(
                "shared service: used by {} of the {} workloads of env {} from {} scopes, so every workload of those environments may use it",
                consumers.len(),
                env_members,
                envs.iter().copied().collect::<Vec<_>>().join("/"),
                consumer_groups
                    .iter()
                    .map(|g| &g.scope)
                    .collect::<BTreeSet<_>>()
                    .len()
            )
        } else {
            let apps: BTreeSet<&str> = consumer_groups
                .iter()
                .flat_map(|g| {
                    g.scope
                        .iter()
                        .filter(|l| l.key == "app")
                        .map(|l| l.value.as_str())
                })
                .collect();
            set.extend(apps.iter().map(|a| Label::new("app", *a)));
            format!(
                "shared service: used by {} workloads ({:.0}% of their environments, under the {:.0}% support threshold): allowed to the {} apps seen",
                consumers.len(),
                support * 100.0,
                options.support_threshold * 100.0,
                apps.len()
            )
        };
        set.extend(envs.iter().map(|e| Label::new("env", *e)));
        let providers_seen = ids(edges, true);
        let seen: BTreeSet<&str> = providers_seen.iter().map(String::as_str).collect();
        let (providers, _) = ctx.side(d, &seen, true);
        if !in_scope(&options.scope_filter, &d.scope) {
            continue;
        }
        add(
            &mut candidates,
            RuleKey {
                scope: d.scope.clone(),
                consumers: vec![Actor::Labels(set)],
                providers,
                extra_scope: true,
                kind: Kind::SharedService,
            },
            edges,
            support.min(1.0),
            None,
            why,
        );
    }
    for ((s, env), edges) in &shared_by_consumer {
        let scope = vec![Label::new("env", env)];
        if env.is_empty() || !in_scope(&options.scope_filter, &scope) {
            continue;
        }
        let providers = ids(edges, true);
        let members = ctx.env_size.get(env).copied().unwrap_or(0).max(1);
        let support = providers.len() as f64 / members as f64;
        let (provider, why) = if support >= options.support_threshold {
            (
                Actor::Any,
                format!(
                    "shared infrastructure consumer: {} reaches {} of the {} workloads of env={env}, so the rule names every workload of env={env} (an explicit any within that scope)",
                    s.name(),
                    providers.len(),
                    members
                ),
            )
        } else {
            let apps: BTreeSet<String> = edges
                .iter()
                .filter_map(|e| ctx.group(&e.dst))
                .flat_map(|g| {
                    g.scope
                        .into_iter()
                        .filter(|l| l.key == "app")
                        .map(|l| l.value)
                })
                .collect();
            (
                Actor::Labels(apps.iter().map(|a| Label::new("app", a)).collect()),
                format!(
                    "shared infrastructure consumer: {} reaches {} workloads of {} apps in env={env}",
                    s.name(),
                    providers.len(),
                    apps.len()
                ),
            )
        };
        add(
            &mut candidates,
            RuleKey {
                scope,
                consumers: vec![s.actor(false)],
                providers: vec![provider],
                extra_scope: true,
                kind: Kind::SharedService,
            },
            edges,
            support.min(1.0),
            None,
            why,
        );
    }
    for ((s, d, _, _), edges) in plain {
        if !in_scope(&options.scope_filter, &d.scope) {
            continue;
        }
        let intra = s.scope == d.scope;
        let consumers_seen = ids(edges, false);
        let providers_seen = ids(edges, true);
        let cs: BTreeSet<&str> = consumers_seen.iter().map(String::as_str).collect();
        let ps: BTreeSet<&str> = providers_seen.iter().map(String::as_str).collect();
        let (consumers, c_support) = ctx.side(s, &cs, intra);
        let (providers, p_support) = ctx.side(d, &ps, true);
        let support = c_support.min(p_support).min(1.0);
        let why = format!(
            "{} of {} {} and {} of {} {} workloads showed it (support threshold {:.0}%)",
            cs.len(),
            ctx.group_size.get(s).copied().unwrap_or(0),
            s.actor(false),
            ps.len(),
            ctx.group_size.get(d).copied().unwrap_or(0),
            d.actor(false),
            options.support_threshold * 100.0
        );
        let kind = if intra {
            Kind::IntraScope
        } else {
            Kind::ExtraScope
        };
        add(
            &mut candidates,
            RuleKey {
                scope: d.scope.clone(),
                consumers,
                providers,
                extra_scope: !intra,
                kind,
            },
            edges,
            support,
            None,
            why,
        );
    }
    for ((s, _, _), edges) in &egress {
        if !in_scope(&options.scope_filter, &s.scope) {
            continue;
        }
        let addresses: BTreeSet<IpAddr> = edges
            .iter()
            .filter_map(|e| match e.dst {
                End::Address(ip) => Some(ip),
                _ => None,
            })
            .collect();
        let prefix = format!("{}-{}-egress", s.name(), s.role.as_deref().unwrap_or("all"));
        let (list, why) = address_list(&addresses, &prefix, options);
        let consumers_seen = ids(edges, false);
        let cs: BTreeSet<&str> = consumers_seen.iter().map(String::as_str).collect();
        let (consumers, support) = ctx.side(s, &cs, true);
        let provider = Actor::IpList(list.name.clone());
        add(
            &mut candidates,
            RuleKey {
                scope: s.scope.clone(),
                consumers,
                providers: vec![provider],
                extra_scope: false,
                kind: Kind::IpList,
            },
            edges,
            support.min(1.0),
            Some(list),
            format!("traffic leaving the estate: {why}"),
        );
    }
    for ((d, _, _), edges) in &ingress {
        if !in_scope(&options.scope_filter, &d.scope) {
            continue;
        }
        let addresses: BTreeSet<IpAddr> = edges
            .iter()
            .filter_map(|e| match e.src {
                End::Address(ip) => Some(ip),
                _ => None,
            })
            .collect();
        let prefix = format!(
            "{}-{}-clients",
            d.name(),
            d.role.as_deref().unwrap_or("all")
        );
        let (list, why) = address_list(&addresses, &prefix, options);
        let providers_seen = ids(edges, true);
        let ps: BTreeSet<&str> = providers_seen.iter().map(String::as_str).collect();
        let (providers, support) = ctx.side(d, &ps, true);
        let consumer = Actor::IpList(list.name.clone());
        add(
            &mut candidates,
            RuleKey {
                scope: d.scope.clone(),
                consumers: vec![consumer],
                providers,
                extra_scope: true,
                kind: Kind::IpList,
            },
            edges,
            support.min(1.0),
            Some(list),
            format!("traffic from outside the estate: {why}"),
        );
    }

    // 5. One rule per candidate, its ports merged into services.
    for (key, c) in candidates {
        let ruleset = scope_name(&key.scope);
        let services = services(&c.ports);
        let text = format!(
            "{ruleset}|{:?}|{:?}|{}|{}",
            key.consumers,
            key.providers,
            services
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            key.extra_scope
        );
        let id = format!("rec-{}", short_hash(&text));
        let ev = evidence(&c.edges, c.support, options.sample_size);
        let persistence = (ev.last_seen_unix_ns.saturating_sub(ev.first_seen_unix_ns)) as f64
            / (window as f64 * 1000.0);
        let volume = (ev.flows as f64 / 20.0).min(1.0);
        let confidence =
            (0.4 * c.support.min(1.0) + 0.4 * persistence.min(1.0) + 0.2 * volume).clamp(0.0, 1.0);
        let coverage = ev.flows as f64 / total_flows.max(1) as f64;
        let rule = Rule {
            id: id.clone(),
            description: String::new(),
            consumers: key.consumers.clone(),
            providers: key.providers.clone(),
            services,
            extra_scope: key.extra_scope,
            disabled: false,
        };
        out.items.push(Recommendation {
            id,
            kind: key.kind,
            ruleset,
            scope: key.scope,
            rule,
            ip_lists: c.ip_lists.into_values().collect(),
            evidence: ev,
            confidence: (confidence * 1000.0).round() / 1000.0,
            coverage,
            rationale: c.rationale.join("; "),
            created_unix_ns: now,
        });
    }
    out.items
        .sort_by(|a, b| (&a.ruleset, a.kind, &a.id).cmp(&(&b.ruleset, b.kind, &b.id)));
    out
}

fn add<'e>(
    candidates: &mut BTreeMap<RuleKey, Candidate<'e>>,
    key: RuleKey,
    edges: &[&'e EdgeSum],
    support: f64,
    list: Option<IpList>,
    why: String,
) {
    let c = candidates.entry(key).or_default();
    for e in edges {
        c.ports.insert(port_range(e.protocol, e.port));
    }
    c.edges.extend_from_slice(edges);
    if c.rationale.is_empty() || support < c.support {
        c.support = support;
    }
    if let Some(list) = list {
        c.ip_lists.insert(list.name.clone(), list);
    }
    if !c.rationale.contains(&why) {
        c.rationale.push(why);
    }
}

fn evidence(edges: &[&EdgeSum], support: f64, sample_size: usize) -> Evidence {
    let consumers: BTreeSet<&End> = edges.iter().map(|e| &e.src).collect();
    let providers: BTreeSet<&End> = edges.iter().map(|e| &e.dst).collect();
    let processes: BTreeSet<String> = edges.iter().filter_map(|e| e.process.clone()).collect();
    let mut heaviest: Vec<&&EdgeSum> = edges.iter().collect();
    heaviest.sort_by(|a, b| b.flows.cmp(&a.flows).then(b.bytes.cmp(&a.bytes)));
    let ns = |us: i64| (us.max(0) as u64).saturating_mul(1000);
    Evidence {
        flows: edges.iter().map(|e| e.flows).sum(),
        bytes: edges.iter().map(|e| e.bytes).sum(),
        first_seen_unix_ns: ns(edges.iter().map(|e| e.first_seen_us).min().unwrap_or(0)),
        last_seen_unix_ns: ns(edges.iter().map(|e| e.last_seen_us).max().unwrap_or(0)),
        consumer_workloads: consumers
            .iter()
            .filter(|e| matches!(e, End::Workload(_)))
            .count() as u32,
        provider_workloads: providers
            .iter()
            .filter(|e| matches!(e, End::Workload(_)))
            .count() as u32,
        support,
        processes: processes.into_iter().collect(),
        sample: heaviest
            .into_iter()
            .take(sample_size)
            .map(|e| EvidenceEdge {
                src: e.src.to_string(),
                dst: e.dst.to_string(),
                port: e.port,
                protocol: e.protocol,
                process: e.process.clone(),
                flows: e.flows,
                bytes: e.bytes,
            })
            .collect(),
    }
}
