//! The host's view of a policy version: which rules concern this host, with their peers
//! resolved to addresses. Pure: no I/O, so every case is unit-tested.
//!
//! Semantics (Illumio's):
//! - An allow rule of a ruleset concerns this host *inbound* when the host is in the
//!   ruleset's scope and matches one of the rule's providers. Its consumers are resolved
//!   to addresses: workloads by label or id (restricted to the scope unless the rule is
//!   extra-scope), IP lists by their CIDRs minus exclusions, `any` to every workload in
//!   scope (intra-scope) or every address (extra-scope).
//! - With `enforce_outbound`, a rule concerns the host *outbound* when the host is one of
//!   its consumers; its providers (always inside the scope) are resolved the same way.
//! - Deny rules are global: inbound when the host is a provider, outbound when it is a
//!   consumer. They override every allow.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bulkhead_schemas::policy::{
    Actor, DenyRule, EnforcementMode, Label, PolicyDocument, PolicyVersion, PortRange, Rule,
    ServiceRef, label_set_matches, protocol,
};

use crate::ranges::{AddrRange, Rectangles, merge, subtract};

/// Addresses of each workload, from the inventory topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    addresses: HashMap<String, Vec<IpAddr>>,
}

impl Membership {
    /// Sets (or, with no addresses, removes) a workload's addresses. Returns whether
    /// anything changed.
    pub fn set(&mut self, workload_id: &str, mut addresses: Vec<IpAddr>) -> bool {
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() {
            return self.addresses.remove(workload_id).is_some();
        }
        if self.addresses.get(workload_id) == Some(&addresses) {
            return false;
        }
        self.addresses.insert(workload_id.to_string(), addresses);
        true
    }

    /// A host's addresses from its inventory (interface CIDRs, loopback left out).
    pub fn set_from_inventory(
        &mut self,
        inventory: &bulkhead_schemas::proto::HostInventory,
    ) -> bool {
        let addresses = inventory
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter())
            .filter_map(|text| {
                text.parse::<ipnet::IpNet>()
                    .map(|n| n.addr())
                    .or_else(|_| text.parse::<IpAddr>())
                    .ok()
            })
            .filter(|ip| !ip.is_loopback())
            .collect();
        self.set(&inventory.host_id, addresses)
    }

    pub fn of(&self, workload_id: &str) -> &[IpAddr] {
        self.addresses
            .get(workload_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn workloads(&self) -> impl Iterator<Item = &str> {
        self.addresses.keys().map(String::as_str)
    }
}

/// What a group of rules matches, one family-agnostic bucket per kind of match.
#[derive(Clone, Debug, Default)]
pub struct Matchers {
    /// (address × port range) per port-carrying protocol (tcp, udp, sctp).
    pub ports: BTreeMap<u8, Rectangles>,
    /// (address, protocol): every packet of the protocol (ICMP, or TCP on every port).
    pub protocols: BTreeMap<u8, Vec<AddrRange>>,
    /// Addresses whose every packet matches (protocol `any`).
    pub all: Vec<AddrRange>,
}

impl Matchers {
    fn add(&mut self, peers: &[AddrRange], range: &PortRange) {
        if peers.is_empty() {
            return;
        }
        let proto = range.protocol as u8;
        if range.protocol == protocol::ANY {
            self.all.extend_from_slice(peers);
        } else if protocol::has_ports(range.protocol) && !range.all_ports() {
            let rects = self.ports.entry(proto).or_default();
            for peer in peers {
                rects.push(*peer, (range.from as u16, range.to as u16));
            }
        } else {
            self.protocols
                .entry(proto)
                .or_default()
                .extend_from_slice(peers);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ports.values().all(Rectangles::is_empty)
            && self.protocols.values().all(Vec::is_empty)
            && self.all.is_empty()
    }
}

/// Everything the enforcer applies on this host for one policy version.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    pub version: u64,
    pub content_sha256: [u8; 32],
    pub mode: EnforcementMode,
    pub quarantined: bool,
    pub enforce_outbound: bool,
    /// Addresses always allowed both ways (Kafka brokers, the control plane).
    pub control_plane: Vec<AddrRange>,
    pub inbound_allow: Matchers,
    pub inbound_deny: Matchers,
    pub outbound_allow: Matchers,
    pub outbound_deny: Matchers,
    /// Policy rules that concern this host (allow + deny), for status and logs.
    pub rules_applied: usize,
}

struct Resolver<'a> {
    doc: &'a PolicyDocument,
    membership: &'a Membership,
    labels: HashMap<&'a str, &'a BTreeMap<String, String>>,
    /// Every workload the policy or the inventory knows, sorted (built once: rules look
    /// them up many times).
    workloads: Vec<&'a str>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl<'a> Resolver<'a> {
    fn labels_of(&self, workload: &str) -> &BTreeMap<String, String> {
        self.labels.get(workload).copied().unwrap_or(&NO_LABELS)
    }

    fn in_scope(&self, workload: &str, scope: Option<&[Label]>) -> bool {
        scope.is_none_or(|scope| label_set_matches(scope, self.labels_of(workload)))
    }

    fn new(doc: &'a PolicyDocument, membership: &'a Membership) -> Self {
        let mut workloads: Vec<&str> = doc
            .workloads
            .iter()
            .map(|w| w.workload_id.as_str())
            .chain(membership.workloads())
            .collect();
        workloads.sort_unstable();
        workloads.dedup();
        let labels = doc
            .workloads
            .iter()
            .map(|w| (w.workload_id.as_str(), &w.labels))
            .collect();
        Self {
            doc,
            membership,
            labels,
            workloads,
        }
    }

    fn workload_addresses(&self, workload: &str) -> impl Iterator<Item = AddrRange> + '_ {
        self.membership
            .of(workload)
            .iter()
            .map(|ip| AddrRange::from_ip(*ip))
    }

    /// Addresses of `actor`; workloads limited to `scope` when given.
    fn addresses(&self, actor: &Actor, scope: Option<&[Label]>) -> Vec<AddrRange> {
        let workloads = |pred: &dyn Fn(&str) -> bool| -> Vec<AddrRange> {
            self.workloads
                .iter()
                .filter(|w| pred(w) && self.in_scope(w, scope))
                .flat_map(|w| self.workload_addresses(w))
                .collect()
        };
        match actor {
            Actor::Any if scope.is_none() => vec![AddrRange::all(false), AddrRange::all(true)],
            Actor::Any => workloads(&|_| true),
            Actor::Labels(set) => workloads(&|w| label_set_matches(set, self.labels_of(w))),
            Actor::Workload(id) if self.in_scope(id, scope) => {
                self.workload_addresses(id).collect()
            }
            Actor::Workload(_) => Vec::new(),
            Actor::IpList(name) => match self.doc.ip_lists.iter().find(|l| &l.name == name) {
                Some(list) => {
                    let holes: Vec<AddrRange> =
                        list.exclusions.iter().map(AddrRange::from_net).collect();
                    subtract(list.cidrs.iter().map(AddrRange::from_net).collect(), &holes)
                }
                None => Vec::new(),
            },
        }
    }

    /// Whether `host` is `actor` (within `scope` when given).
    fn is(&self, host: &str, actor: &Actor, scope: Option<&[Label]>) -> bool {
        if !self.in_scope(host, scope) {
            return false;
        }
        match actor {
            Actor::IpList(name) => self
                .doc
                .ip_lists
                .iter()
                .find(|l| &l.name == name)
                .is_some_and(|list| {
                    let ips = self.membership.of(host);
                    !ips.is_empty() && ips.iter().all(|ip| list.contains(*ip))
                }),
            other => other.matches_workload(host, self.labels_of(host)),
        }
    }

    fn add_rule(&self, into: &mut Matchers, peers: Vec<AddrRange>, services: &[ServiceRef]) {
        let peers = merge(peers);
        for range in self.doc.port_ranges(services) {
            into.add(&peers, &range);
        }
    }
}

/// The view of `policy` for `host_id`. `control_plane` addresses stay reachable whatever
/// the policy says.
pub fn compile(
    policy: &PolicyVersion,
    host_id: &str,
    membership: &Membership,
    control_plane: &[AddrRange],
) -> HostPolicy {
    let doc = &policy.document;
    let resolver = Resolver::new(doc, membership);
    let me = doc.workloads.iter().find(|w| w.workload_id == host_id);
    let mut out = HostPolicy {
        version: policy.version,
        content_sha256: policy.content_sha256,
        mode: doc.mode_of(host_id),
        quarantined: me.is_some_and(|w| w.quarantined),
        enforce_outbound: me.is_some_and(|w| w.enforce_outbound),
        control_plane: merge(control_plane.to_vec()),
        inbound_allow: Matchers::default(),
        inbound_deny: Matchers::default(),
        outbound_allow: Matchers::default(),
        outbound_deny: Matchers::default(),
        rules_applied: 0,
    };

    for (ruleset, rule) in doc.rules().filter(|(_, r)| !r.disabled) {
        let scope = Some(ruleset.scope.as_slice());
        let consumer_scope = if rule.extra_scope { None } else { scope };
        let Rule {
            consumers,
            providers,
            services,
            ..
        } = rule;
        let mut concerns = false;
        if providers.iter().any(|p| resolver.is(host_id, p, scope)) {
            let peers = consumers
                .iter()
                .flat_map(|c| resolver.addresses(c, consumer_scope))
                .collect();
            resolver.add_rule(&mut out.inbound_allow, peers, services);
            concerns = true;
        }
        if out.enforce_outbound
            && consumers
                .iter()
                .any(|c| resolver.is(host_id, c, consumer_scope))
        {
            let peers = providers
                .iter()
                .flat_map(|p| resolver.addresses(p, scope))
                .collect();
            resolver.add_rule(&mut out.outbound_allow, peers, services);
            concerns = true;
        }
        out.rules_applied += usize::from(concerns);
    }

    for DenyRule {
        consumers,
        providers,
        services,
        ..
    } in doc.deny_rules.iter().filter(|r| !r.disabled)
    {
        let mut concerns = false;
        if providers.iter().any(|p| resolver.is(host_id, p, None)) {
            let peers = consumers
                .iter()
                .flat_map(|c| resolver.addresses(c, None))
                .collect();
            resolver.add_rule(&mut out.inbound_deny, peers, services);
            concerns = true;
        }
        if consumers.iter().any(|c| resolver.is(host_id, c, None)) {
            let peers = providers
                .iter()
                .flat_map(|p| resolver.addresses(p, None))
                .collect();
            resolver.add_rule(&mut out.outbound_deny, peers, services);
            concerns = true;
        }
        out.rules_applied += usize::from(concerns);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
ip_lists:
  - name: internet
    cidrs: [0.0.0.0/0]
    exclusions: [10.0.0.0/8]
rulesets:
  - name: crm
    scope: [app=crm]
    rules:
      - id: web-to-api
        consumers: [{labels: [role=web]}]
        providers: [{labels: [role=api]}]
        services: [tcp/8080, tcp/8000-8100]
      - id: internet-to-web
        consumers: [{ip_list: internet}]
        providers: [{labels: [role=web]}]
        services: [tcp/443]
        extra_scope: true
      - id: anyone-in-crm-pings-api
        consumers: [{any: true}]
        providers: [{labels: [role=api]}]
        services: [icmp]
deny_rules:
  - id: no-telnet
    consumers: [{any: true}]
    providers: [{any: true}]
    services: [tcp/23]
workloads:
  - {workload_id: web1, labels: {app: crm, role: web}}
  - {workload_id: api1, labels: {app: crm, role: api}, mode: full, enforce_outbound: true}
  - {workload_id: web2, labels: {app: shop, role: web}}
default_mode: visibility_only
"#;

    fn setup() -> (PolicyVersion, Membership) {
        let doc = PolicyDocument::load(POLICY, "test").unwrap();
        let mut membership = Membership::default();
        membership.set(
            "web1",
            vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        );
        membership.set("api1", vec!["10.0.0.2".parse().unwrap()]);
        membership.set("web2", vec!["10.0.0.3".parse().unwrap()]);
        (PolicyVersion::new(4, 3, "t", "", doc), membership)
    }

    fn ip(text: &str) -> AddrRange {
        AddrRange::from_ip(text.parse().unwrap())
    }

    fn covers(ranges: &[AddrRange], text: &str) -> bool {
        let point = ip(text);
        ranges
            .iter()
            .any(|r| r.v6 == point.v6 && r.start <= point.start && point.end <= r.end)
    }

    #[test]
    fn provider_gets_scoped_consumers_with_merged_ports() {
        let (policy, membership) = setup();
        let api = compile(&policy, "api1", &membership, &[]);
        assert_eq!(api.mode, EnforcementMode::Full);
        let tcp = api.inbound_allow.ports[&6].disjoint();
        // web1 (both addresses) on 8000-8100; web2 is in another app: not included.
        assert_eq!(
            tcp,
            vec![
                (ip("10.0.0.1"), (8000, 8100)),
                (ip("fd00::1"), (8000, 8100))
            ]
        );
        // icmp from "any" in an intra-scope rule = every crm workload, not the world.
        let icmp = &api.inbound_allow.protocols[&1];
        assert!(
            covers(icmp, "10.0.0.1") && covers(icmp, "10.0.0.2") && !covers(icmp, "10.0.0.3"),
            "{icmp:?}"
        );
        assert_eq!(
            api.rules_applied, 3,
            "two allow rules inbound + the deny boundary"
        );
    }

    #[test]
    fn extra_scope_ip_lists_subtract_exclusions() {
        let (policy, membership) = setup();
        let web = compile(&policy, "web1", &membership, &[]);
        assert_eq!(web.mode, EnforcementMode::VisibilityOnly);
        let rects = web.inbound_allow.ports[&6].disjoint();
        assert_eq!(
            rects.len(),
            2,
            "0.0.0.0-9.255.255.255 and 11.0.0.0-255.255.255.255: {rects:?}"
        );
        assert!(
            rects
                .iter()
                .all(|(a, p)| *p == (443, 443) && !(a.start <= 0x0a000001 && 0x0a000001 <= a.end))
        );
        // web2 is not in scope crm: nothing allowed inbound.
        assert!(
            compile(&policy, "web2", &membership, &[])
                .inbound_allow
                .is_empty()
        );
    }

    #[test]
    fn deny_boundaries_are_global_and_outbound_follows_consumers() {
        let (policy, membership) = setup();
        let web2 = compile(&policy, "web2", &membership, &[]);
        let deny = web2.inbound_deny.ports[&6].disjoint();
        assert!(
            deny.contains(&(AddrRange::all(false), (23, 23)))
                && deny.contains(&(AddrRange::all(true), (23, 23)))
        );
        let api = compile(&policy, "api1", &membership, &[]);
        // api1 enforces outbound: it is a consumer of "anyone-in-crm-pings-api" (any) → it
        // may ping api workloads (itself); and the telnet boundary applies outbound too.
        assert!(covers(&api.outbound_allow.protocols[&1], "10.0.0.2"));
        assert!(!api.outbound_deny.is_empty());
    }

    #[test]
    fn quarantine_and_unknown_hosts() {
        let (mut policy, membership) = setup();
        policy.document.workloads[0].quarantined = true;
        assert!(compile(&policy, "web1", &membership, &[]).quarantined);
        let stranger = compile(&policy, "nobody", &membership, &[]);
        assert_eq!(stranger.mode, EnforcementMode::VisibilityOnly);
        assert!(stranger.inbound_allow.is_empty() && !stranger.quarantined);
    }

    #[test]
    fn membership_from_inventory_skips_loopback_and_reports_changes() {
        let inventory = bulkhead_schemas::proto::HostInventory {
            host_id: "h".into(),
            interfaces: vec![bulkhead_schemas::proto::Interface {
                addresses: vec![
                    "10.1.2.3/24".into(),
                    "127.0.0.1/8".into(),
                    "fd00::7/64".into(),
                    "garbage".into(),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut membership = Membership::default();
        assert!(membership.set_from_inventory(&inventory));
        assert!(
            !membership.set_from_inventory(&inventory),
            "same addresses: no change"
        );
        assert_eq!(membership.of("h").len(), 2);
    }
}
