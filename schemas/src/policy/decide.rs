//! What a policy says of one flow: `allowed`, `potentially_blocked` or `blocked`.
//!
//! The same semantics as the enforcer's nftables rules (`enforcer::compile` and
//! `render`), evaluated for one connection instead of compiled for one host, so that
//! ingest can label every flow, and simulation can replay flows against a draft.
//!
//! A flow is judged at both ends: inbound at the destination (the provider), outbound at
//! the source (the consumer). At each end, by the workload's state:
//! - quarantined: blocked (only the control plane may reach it, and flows to and from the
//!   control plane are not evaluated here);
//! - `idle`: nothing is enforced, the end lets it pass;
//! - a matching deny boundary: blocked in `full` and `selective`, potentially blocked in
//!   `visibility_only`;
//! - a matching allow rule: allowed;
//! - otherwise, inbound: blocked in `full`, potentially blocked in `visibility_only`,
//!   passes in `selective`. Outbound default-deny applies only to workloads with
//!   `enforce_outbound` (deny boundaries apply outbound to everyone).
//!
//! The flow's decision is the worse of the two ends. An address that is no workload
//! (the internet, an unmanaged server) enforces nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rustc_hash::FxHashMap;

use super::{Actor, EnforcementMode, IpList, Label, PolicyDocument, PortRange, label_set_matches};
use crate::proto::PolicyDecision;

/// The verdict on one flow. Ordered from least to most restrictive (`Unknown` first:
/// no policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// No policy was active.
    Unknown,
    Allowed,
    /// Not allowed, but the host only watches (`visibility_only`).
    PotentiallyBlocked,
    Blocked,
}

impl Decision {
    pub const ALL: [Decision; 4] = [
        Decision::Unknown,
        Decision::Allowed,
        Decision::PotentiallyBlocked,
        Decision::Blocked,
    ];

    /// The text the lake stores (`flows.policy_decision`, `edges.decision`).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Unknown => "unknown",
            Decision::Allowed => "allowed",
            Decision::PotentiallyBlocked => "potentially_blocked",
            Decision::Blocked => "blocked",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown policy decision {s:?} (expected allowed, potentially_blocked, blocked or unknown)"
                )
            })
    }
}

impl From<Decision> for PolicyDecision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Unknown => PolicyDecision::Unknown,
            Decision::Allowed => PolicyDecision::Allowed,
            Decision::PotentiallyBlocked => PolicyDecision::PotentiallyBlocked,
            Decision::Blocked => PolicyDecision::Blocked,
        }
    }
}

impl From<PolicyDecision> for Decision {
    fn from(d: PolicyDecision) -> Self {
        match d {
            PolicyDecision::Unknown => Decision::Unknown,
            PolicyDecision::Allowed => Decision::Allowed,
            PolicyDecision::PotentiallyBlocked => Decision::PotentiallyBlocked,
            PolicyDecision::Blocked => Decision::Blocked,
        }
    }
}

/// One end of a flow: its address, and the workload (host id) it belongs to if known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint<'a> {
    pub ip: IpAddr,
    pub workload: Option<&'a str>,
}

impl<'a> Endpoint<'a> {
    pub fn workload(ip: IpAddr, workload_id: &'a str) -> Self {
        Self {
            ip,
            workload: Some(workload_id),
        }
    }
    pub fn address(ip: IpAddr) -> Self {
        Self { ip, workload: None }
    }
}

/// The decision and the rule that made it (`None`: the mode's default, or nothing
/// enforced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict<'p> {
    pub decision: Decision,
    pub rule_id: Option<&'p str>,
}

#[derive(Clone, Copy)]
struct WorkloadState<'p> {
    /// Its [`EndClass::workload`]: the position in the document of the first workload
    /// that no rule can tell from it (same labels, mode, quarantine and outbound
    /// enforcement), or its own position when a rule names it.
    class: u32,
    labels: &'p BTreeMap<String, String>,
    mode: EnforcementMode,
    quarantined: bool,
    enforce_outbound: bool,
}

/// A rule with its services resolved to port ranges.
struct ResolvedRule<'p> {
    id: &'p str,
    /// `None` for deny rules (global).
    scope: Option<&'p [Label]>,
    consumers_extra_scope: bool,
    consumers: &'p [Actor],
    providers: &'p [Actor],
    ports: Vec<PortRange>,
}

/// A policy document prepared for judging many flows (workloads indexed, services
/// resolved). Build once per policy version.
pub struct Decider<'p> {
    doc: &'p PolicyDocument,
    workloads: FxHashMap<&'p str, WorkloadState<'p>>,
    allows: Vec<ResolvedRule<'p>>,
    /// Which allow rules can concern a host, inbound and outbound, on a (protocol,
    /// port): judging a flow looks at those only, not at every rule (simulations and
    /// ingest judge millions of flows against thousands).
    inbound_allows: RuleIndex<'p>,
    outbound_allows: RuleIndex<'p>,
    denies: Vec<ResolvedRule<'p>>,
}

/// Rule positions by (protocol, port) for narrow port ranges; the rest (wide ranges,
/// all ports) are candidates for every flow. Candidates keep rule order, so the first
/// matching rule is the same as without the index.
#[derive(Default)]
struct PortIndex {
    by_port: HashMap<(u32, u32), Vec<usize>>,
    wide: Vec<usize>,
}

/// Ranges up to this many ports are indexed port by port.
const NARROW_RANGE: u32 = 64;

impl PortIndex {
    /// The index of `rules`, given with their positions (ascending).
    fn new<'r, 'p: 'r>(rules: impl IntoIterator<Item = (usize, &'r ResolvedRule<'p>)>) -> Self {
        let mut index = Self::default();
        for (i, rule) in rules {
            let narrow = rule.ports.iter().all(|r| {
                r.protocol != super::protocol::ANY
                    && !r.all_ports()
                    && r.to >= r.from
                    && r.to - r.from < NARROW_RANGE
            });
            if !narrow {
                index.wide.push(i);
                continue;
            }
            for range in &rule.ports {
                for port in range.from..=range.to {
                    let at = index.by_port.entry((range.protocol, port)).or_default();
                    if at.last() != Some(&i) {
                        at.push(i);
                    }
                }
            }
        }
        index
    }

    /// Positions of the rules that may concern `protocol`/`port`, ascending.
    fn candidates(&self, protocol: u32, port: u32) -> Vec<usize> {
        let narrow = self
            .by_port
            .get(&(protocol, port))
            .map_or(&[][..], Vec::as_slice);
        let mut out = Vec::with_capacity(narrow.len() + self.wide.len());
        let (mut a, mut b) = (narrow.iter().peekable(), self.wide.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x <= y => out.push(*a.next().unwrap()),
                (_, Some(_)) => out.push(*b.next().unwrap()),
                (Some(_), None) => out.push(*a.next().unwrap()),
                (None, None) => return out,
            }
        }
    }
}

/// Allow rules by the scope a host must be in for them to concern it, then by port. A
/// scope is met only by a host carrying one of its values for each of its keys, so a rule
/// is filed under its scope's first key and each value the scope gives that key, and a
/// host looks under its own labels only: of a thousand applications' rulesets, a host
/// sees its own application's. Rules any host may meet (no scope) are filed everywhere.
#[derive(Default)]
struct RuleIndex<'p> {
    by_scope: FxHashMap<&'p str, FxHashMap<&'p str, PortIndex>>,
    everywhere: PortIndex,
}

impl<'p> RuleIndex<'p> {
    /// The index of `rules` as a host meets them: `scope_of(rule)` is the scope the host
    /// must be in (`None`: any host).
    fn new(
        rules: &[ResolvedRule<'p>],
        scope_of: impl Fn(&ResolvedRule<'p>) -> Option<&'p [Label]>,
    ) -> Self {
        let mut filed: FxHashMap<&'p str, FxHashMap<&'p str, Vec<usize>>> = FxHashMap::default();
        let mut everywhere = vec![];
        for (i, rule) in rules.iter().enumerate() {
            match scope_of(rule) {
                Some(scope @ [first, ..]) => {
                    let values = filed.entry(first.key.as_str()).or_default();
                    for label in scope.iter().filter(|l| l.key == first.key) {
                        let at = values.entry(label.value.as_str()).or_default();
                        if at.last() != Some(&i) {
                            at.push(i);
                        }
                    }
                }
                _ => everywhere.push(i),
            }
        }
        let index = |positions: &[usize]| PortIndex::new(positions.iter().map(|&i| (i, &rules[i])));
        Self {
            by_scope: filed
                .into_iter()
                .map(|(key, values)| {
                    let values = values
                        .into_iter()
                        .map(|(value, positions)| (value, index(&positions)))
                        .collect();
                    (key, values)
                })
                .collect(),
            everywhere: index(&everywhere),
        }
    }

    /// Positions of the rules that may concern a host with `labels` on
    /// `protocol`/`port`, ascending.
    fn candidates(
        &self,
        labels: &BTreeMap<String, String>,
        protocol: u32,
        port: u32,
    ) -> Vec<usize> {
        let mut out = self.everywhere.candidates(protocol, port);
        let mut more = false;
        for (key, value) in labels {
            if let Some(index) = self
                .by_scope
                .get(key.as_str())
                .and_then(|values| values.get(value.as_str()))
            {
                out.extend(index.candidates(protocol, port));
                more = true;
            }
        }
        if more {
            // In rule order, so the first that matches is the document's first. No rule
            // comes twice: each is filed under one key, and a host has one value per key.
            out.sort_unstable();
        }
        out
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// Which end of the flow an actor is matched against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The enforcing host.
    Host,
    Peer,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Inbound,
    Outbound,
}

impl<'p> Decider<'p> {
    pub fn new(doc: &'p PolicyDocument) -> Self {
        // Rules see a workload through its labels and state, unless they name it: the
        // workloads alike share a class, so that a fleet's decisions are remembered per
        // kind of workload rather than per pair of hosts.
        let named: std::collections::HashSet<&str> = doc
            .rules()
            .flat_map(|(_, r)| r.consumers.iter().chain(&r.providers))
            .chain(
                doc.deny_rules
                    .iter()
                    .flat_map(|r| r.consumers.iter().chain(&r.providers)),
            )
            .filter_map(|actor| match actor {
                Actor::Workload(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        let mut classes = HashMap::new();
        let workloads = doc
            .workloads
            .iter()
            .enumerate()
            .map(|(index, w)| {
                let (index, mode) = (index as u32, w.mode.unwrap_or(doc.default_mode));
                let class = if named.contains(w.workload_id.as_str()) {
                    index
                } else {
                    *classes
                        .entry((&w.labels, mode, w.quarantined, w.enforce_outbound))
                        .or_insert(index)
                };
                (
                    w.workload_id.as_str(),
                    WorkloadState {
                        class,
                        labels: &w.labels,
                        mode,
                        quarantined: w.quarantined,
                        enforce_outbound: w.enforce_outbound,
                    },
                )
            })
            .collect();
        let allows: Vec<ResolvedRule<'p>> = doc
            .rules()
            .filter(|(_, r)| !r.disabled)
            .map(|(rs, r)| ResolvedRule {
                id: &r.id,
                scope: Some(&rs.scope),
                consumers_extra_scope: r.extra_scope,
                consumers: &r.consumers,
                providers: &r.providers,
                ports: doc.port_ranges(&r.services),
            })
            .collect();
        let denies = doc
            .deny_rules
            .iter()
            .filter(|r| !r.disabled)
            .map(|r| ResolvedRule {
                id: &r.id,
                scope: None,
                consumers_extra_scope: true,
                consumers: &r.consumers,
                providers: &r.providers,
                ports: doc.port_ranges(&r.services),
            })
            .collect();
        let inbound_allows = RuleIndex::new(&allows, |rule| rule.scope);
        let outbound_allows = RuleIndex::new(&allows, |rule| rule.consumer_scope());
        Self {
            doc,
            workloads,
            allows,
            inbound_allows,
            outbound_allows,
            denies,
        }
    }

    /// This decider with every allow rule a candidate for every flow: what the indexes
    /// must agree with.
    #[cfg(test)]
    fn unindexed(doc: &'p PolicyDocument) -> Self {
        let mut decider = Self::new(doc);
        let all = || RuleIndex {
            by_scope: FxHashMap::default(),
            everywhere: PortIndex {
                by_port: HashMap::new(),
                wide: (0..decider.allows.len()).collect(),
            },
        };
        (decider.inbound_allows, decider.outbound_allows) = (all(), all());
        decider
    }

    /// The decision on a connection from `src` (the consumer, who opened it) to `dst`
    /// (the provider) on `protocol`/`port` (port 0 for protocols without ports).
    pub fn decide(
        &self,
        src: Endpoint<'_>,
        dst: Endpoint<'_>,
        protocol: u32,
        port: u32,
    ) -> Decision {
        self.explain(src, dst, protocol, port).decision
    }

    /// [`Decider::decide`] with the rule that made the decision.
    pub fn explain(
        &self,
        src: Endpoint<'_>,
        dst: Endpoint<'_>,
        protocol: u32,
        port: u32,
    ) -> Verdict<'p> {
        let inbound = self.judge(Side::Inbound, dst, src, protocol, port);
        let outbound = self.judge(Side::Outbound, src, dst, protocol, port);
        // The worse end decides; on a tie, the end that names a rule (inbound first).
        let outbound_names_rule = outbound.rule_id.is_some() && inbound.rule_id.is_none();
        if outbound.decision > inbound.decision
            || (outbound.decision == inbound.decision && outbound_names_rule)
        {
            outbound
        } else {
            inbound
        }
    }

    /// The labels the policy gives `workload_id` (`None` when it lists no such workload).
    pub fn labels_of(&self, workload_id: &str) -> Option<&'p BTreeMap<String, String>> {
        self.workloads.get(workload_id).map(|state| state.labels)
    }

    fn state(&self, workload: Option<&str>) -> Option<WorkloadState<'p>> {
        let id = workload?;
        Some(match self.workloads.get(id) {
            Some(state) => *state,
            // A workload with an agent that the policy does not list: default mode.
            None => WorkloadState {
                class: UNLISTED,
                labels: &NO_LABELS,
                mode: self.doc.default_mode,
                quarantined: false,
                enforce_outbound: false,
            },
        })
    }

    /// The verdict of `host`'s enforcer on the flow between it and `peer`.
    fn judge(
        &self,
        side: Side,
        host: Endpoint<'_>,
        peer: Endpoint<'_>,
        protocol: u32,
        port: u32,
    ) -> Verdict<'p> {
        let allowed = |rule_id| Verdict {
            decision: Decision::Allowed,
            rule_id,
        };
        let Some(state) = self.state(host.workload) else {
            return allowed(None);
        };
        if state.quarantined {
            return Verdict {
                decision: Decision::Blocked,
                rule_id: None,
            };
        }
        let not_allowed = match state.mode {
            EnforcementMode::Idle => return allowed(None),
            EnforcementMode::VisibilityOnly => Decision::PotentiallyBlocked,
            EnforcementMode::Selective | EnforcementMode::Full => Decision::Blocked,
        };
        let host_labels = state.labels;
        let concerns = |rule: &ResolvedRule<'p>| {
            rule.ports.iter().any(|r| r.contains(protocol, port))
                && match side {
                    Side::Inbound => {
                        self.is(host, host_labels, rule.providers, rule.scope, End::Host)
                            && self.is_peer(peer, rule.consumers, rule.consumer_scope())
                    }
                    Side::Outbound => {
                        self.is(
                            host,
                            host_labels,
                            rule.consumers,
                            rule.consumer_scope(),
                            End::Host,
                        ) && self.is_peer(peer, rule.providers, rule.scope)
                    }
                }
        };
        if let Some(deny) = self.denies.iter().find(|r| concerns(r)) {
            return Verdict {
                decision: not_allowed,
                rule_id: Some(deny.id),
            };
        }
        let default_deny = match side {
            Side::Inbound => {
                state.mode == EnforcementMode::Full || state.mode == EnforcementMode::VisibilityOnly
            }
            Side::Outbound => state.enforce_outbound && state.mode != EnforcementMode::Selective,
        };
        if !default_deny {
            return allowed(None);
        }
        let allows = match side {
            Side::Inbound => &self.inbound_allows,
            Side::Outbound => &self.outbound_allows,
        };
        match allows
            .candidates(host_labels, protocol, port)
            .into_iter()
            .map(|i| &self.allows[i])
            .find(|r| concerns(r))
        {
            Some(rule) => allowed(Some(rule.id)),
            None => Verdict {
                decision: not_allowed,
                rule_id: None,
            },
        }
    }

    /// Whether the endpoint (with its labels) is one of `actors`, within `scope`.
    fn is(
        &self,
        endpoint: Endpoint<'_>,
        labels: &BTreeMap<String, String>,
        actors: &[Actor],
        scope: Option<&[Label]>,
        side: End,
    ) -> bool {
        let in_scope = scope
            .is_none_or(|scope| endpoint.workload.is_some() && label_set_matches(scope, labels));
        actors.iter().any(|actor| match actor {
            // As the enforcer resolves them: a peer's IP list is its CIDRs, whatever the
            // scope; the enforcing host itself must be in scope.
            Actor::IpList(name) => {
                (in_scope || side == End::Peer)
                    && self.ip_list(name).is_some_and(|l| l.contains(endpoint.ip))
            }
            Actor::Any => in_scope,
            Actor::Labels(set) => {
                in_scope && endpoint.workload.is_some() && label_set_matches(set, labels)
            }
            Actor::Workload(id) => in_scope && endpoint.workload == Some(id.as_str()),
        })
    }

    /// [`Decider::is`] for the other end, whose labels come from the policy.
    fn is_peer(&self, peer: Endpoint<'_>, actors: &[Actor], scope: Option<&[Label]>) -> bool {
        let labels = self
            .state(peer.workload)
            .map(|s| s.labels)
            .unwrap_or(&NO_LABELS);
        self.is(peer, labels, actors, scope, End::Peer)
    }

    fn ip_list(&self, name: &str) -> Option<&'p IpList> {
        self.doc.ip_lists.iter().find(|l| l.name == name)
    }
}

impl<'p> ResolvedRule<'p> {
    /// Consumers are limited to the scope unless the rule is extra-scope.
    fn consumer_scope(&self) -> Option<&'p [Label]> {
        if self.consumers_extra_scope {
            None
        } else {
            self.scope
        }
    }
}

/// [`WorkloadState::class`] of a workload the policy does not list.
const UNLISTED: u32 = u32::MAX;

/// What the decision on a flow depends on at one of its ends: the workload the policy
/// lists it as, up to what rules can tell apart ([`WorkloadState::class`]; none for an
/// address that is no workload), and the IP lists its address is in. Rules see nothing
/// else of an end, so two ends of one class are judged alike.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct EndClass {
    workload: u32,
    ip_lists: u64,
}

/// [`EndClass::workload`] of an address that is no workload.
const NO_WORKLOAD: u32 = u32::MAX - 1;

/// One [`Decider`]'s decisions ([`Decider::memo`]), remembered by the classes of a
/// connection's ends, its protocol and port: for judging a stream of flows, whose
/// connections repeat (a fleet's flows fall in few such classes: pairs of kinds of
/// workloads and their ports, and the internet as the IP lists it is in). Ends it cannot class (a
/// workload the policy does not list, a document of more than 64 IP lists) are judged
/// each time, and so is everything asked of it with another document's decider.
pub struct DecisionMemo<'p> {
    doc: &'p PolicyDocument,
    /// Each address's IP lists, as bits in the document's order.
    ip_lists: FxHashMap<IpAddr, u64>,
    decisions: FxHashMap<(EndClass, EndClass, u32, u32), Decision>,
}

/// Entries each of a memo's two maps keeps before starting again (a fleet's classes stay
/// far below; a scan from many addresses fills the address map; both full take ~40 MB).
const MEMO_ENTRIES: usize = 1 << 18;

impl<'p> Decider<'p> {
    /// An empty memo of this decider's decisions.
    pub fn memo(&self) -> DecisionMemo<'p> {
        DecisionMemo {
            doc: self.doc,
            ip_lists: FxHashMap::default(),
            decisions: FxHashMap::default(),
        }
    }
}

impl<'p> DecisionMemo<'p> {
    /// `decider.decide(src, dst, protocol, port)`, remembered.
    pub fn decide(
        &mut self,
        decider: &Decider<'p>,
        src: Endpoint<'_>,
        dst: Endpoint<'_>,
        protocol: u32,
        port: u32,
    ) -> Decision {
        let (Some(src_class), Some(dst_class)) =
            (self.class(decider, src), self.class(decider, dst))
        else {
            return decider.decide(src, dst, protocol, port);
        };
        if self.decisions.len() >= MEMO_ENTRIES {
            self.decisions.clear();
        }
        *self
            .decisions
            .entry((src_class, dst_class, protocol, port))
            .or_insert_with(|| decider.decide(src, dst, protocol, port))
    }

    /// The names of the IP lists of the document that contain `ip`, as
    /// [`ip_lists_containing`] gives them, remembered.
    pub fn ip_lists_containing(&mut self, ip: IpAddr) -> Vec<&'p str> {
        let lists = &self.doc.ip_lists;
        match self.ip_list_bits(ip) {
            Some(bits) => lists
                .iter()
                .enumerate()
                .filter(|(i, _)| bits >> i & 1 == 1)
                .map(|(_, list)| list.name.as_str())
                .collect(),
            None => ip_lists_containing(self.doc, ip),
        }
    }

    fn class(&mut self, decider: &Decider<'p>, end: Endpoint<'_>) -> Option<EndClass> {
        if !std::ptr::eq(decider.doc, self.doc) {
            return None;
        }
        let workload = match end.workload {
            None => NO_WORKLOAD,
            Some(id) => decider.workloads.get(id)?.class,
        };
        Some(EndClass {
            workload,
            ip_lists: self.ip_list_bits(end.ip)?,
        })
    }

    fn ip_list_bits(&mut self, ip: IpAddr) -> Option<u64> {
        let lists = &self.doc.ip_lists;
        if lists.len() > 64 {
            return None;
        }
        if self.ip_lists.len() >= MEMO_ENTRIES {
            self.ip_lists.clear();
        }
        Some(*self.ip_lists.entry(ip).or_insert_with(|| {
            lists
                .iter()
                .enumerate()
                .filter(|(_, list)| list.contains(ip))
                .fold(0, |bits, (i, _)| bits | 1 << i)
        }))
    }
}

/// The names of the IP lists of `doc` that contain `ip` (for enriching addresses that
/// are no workload).
pub fn ip_lists_containing(doc: &PolicyDocument, ip: IpAddr) -> Vec<&str> {
    doc.ip_lists
        .iter()
        .filter(|l| l.contains(ip))
        .map(|l| l.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_port_index_offers_every_rule_that_covers_a_port_in_rule_order() {
        use super::super::{PortRange, protocol};
        let ranges = [
            vec![PortRange::tcp(443)],
            vec![PortRange {
                protocol: protocol::TCP,
                from: 8000,
                to: 8100,
            }],
            vec![PortRange {
                protocol: protocol::ANY,
                from: 53,
                to: 53,
            }],
            vec![PortRange::udp(53), PortRange::tcp(53)],
            vec![PortRange {
                protocol: protocol::TCP,
                from: 0,
                to: 0,
            }],
            vec![PortRange {
                protocol: protocol::TCP,
                from: 440,
                to: 450,
            }],
        ];
        let rules: Vec<ResolvedRule<'_>> = ranges
            .iter()
            .map(|ports| ResolvedRule {
                id: "r",
                scope: None,
                consumers_extra_scope: false,
                consumers: &[],
                providers: &[],
                ports: ports.clone(),
            })
            .collect();
        let index = PortIndex::new(rules.iter().enumerate());
        for protocol in [protocol::TCP, protocol::UDP, 1] {
            for port in [0, 53, 443, 445, 8050, 9000] {
                let candidates = index.candidates(protocol, port);
                assert!(candidates.windows(2).all(|w| w[0] < w[1]), "{candidates:?}");
                for (i, rule) in rules.iter().enumerate() {
                    if rule.ports.iter().any(|r| r.contains(protocol, port)) {
                        assert!(
                            candidates.contains(&i),
                            "rule {i} missing for {protocol}/{port}"
                        );
                    }
                }
            }
        }
    }

    use super::*;

    const POLICY: &str = r#"
ip_lists:
  - name: internet
    cidrs: [0.0.0.0/0]
    exclusions: [10.0.0.0/8]
services:
  - name: api
    ports: [tcp/8000-8100]
rulesets:
  - name: crm
    scope: [app=crm]
    rules:
      - id: web-to-api
        consumers: [{labels: [role=web]}]
        providers: [{labels: [role=api]}]
        services: [api]
      - id: internet-to-web
        consumers: [{ip_list: internet}]
        providers: [{labels: [role=web]}]
        services: [tcp/443]
        extra_scope: true
      - id: api-to-partner
        consumers: [{labels: [role=api]}]
        providers: [{ip_list: internet}]
        services: [tcp/443]
      - id: api-to-dns
        consumers: [{labels: [role=api]}]
        providers: [{workload: dns1}]
        services: [udp/53]
        extra_scope: true
deny_rules:
  - id: no-telnet
    consumers: [{any: true}]
    providers: [{any: true}]
    services: [tcp/23]
workloads:
  - {workload_id: web1, labels: {app: crm, role: web}}
  - {workload_id: api1, labels: {app: crm, role: api}, mode: full, enforce_outbound: true}
  - {workload_id: web2, labels: {app: shop, role: web}, mode: full}
  - {workload_id: dns1, labels: {app: crm, role: dns}, mode: selective}
  - {workload_id: lab1, labels: {app: lab}, mode: idle}
default_mode: visibility_only
"#;

    fn doc() -> PolicyDocument {
        PolicyDocument::load(POLICY, "test").unwrap()
    }

    fn w<'a>(id: &'a str, ip: &str) -> Endpoint<'a> {
        Endpoint::workload(ip.parse().unwrap(), id)
    }

    fn ip(ip: &str) -> Endpoint<'static> {
        Endpoint::address(ip.parse().unwrap())
    }

    const TCP: u32 = 6;
    const UDP: u32 = 17;

    #[test]
    fn allow_rules_scopes_and_modes() {
        let doc = doc();
        let d = Decider::new(&doc);
        let (web1, api1, web2) = (
            w("web1", "10.0.0.1"),
            w("api1", "10.0.0.2"),
            w("web2", "10.0.0.3"),
        );
        let v = d.explain(web1, api1, TCP, 8080);
        assert_eq!(
            (v.decision, v.rule_id),
            (Decision::Allowed, Some("web-to-api"))
        );
        // The port is outside the service; api1 is in full mode.
        assert_eq!(d.decide(web1, api1, TCP, 9000), Decision::Blocked);
        // web2 is a web, but of another app: the intra-scope rule does not cover it.
        assert_eq!(d.decide(web2, api1, TCP, 8080), Decision::Blocked);
        // Extra-scope IP list consumer.
        assert_eq!(d.decide(ip("8.8.8.8"), web1, TCP, 443), Decision::Allowed);
        // 10/8 is excluded from `internet`; web1 only watches.
        assert_eq!(
            d.decide(ip("10.9.9.9"), web1, TCP, 443),
            Decision::PotentiallyBlocked
        );
        assert_eq!(
            d.decide(ip("8.8.8.8"), web1, TCP, 22),
            Decision::PotentiallyBlocked
        );
        // Selective: only deny boundaries; idle: nothing.
        assert_eq!(
            d.decide(web2, w("dns1", "10.0.0.4"), TCP, 22),
            Decision::Allowed
        );
        assert_eq!(
            d.decide(ip("10.1.1.1"), w("lab1", "10.0.0.5"), TCP, 23),
            Decision::Allowed
        );
        // ...but the source's outbound deny boundary still holds.
        assert_eq!(
            d.decide(web2, w("lab1", "10.0.0.5"), TCP, 23),
            Decision::Blocked
        );
        // Unmanaged on both ends: nothing enforces.
        assert_eq!(
            d.decide(ip("10.1.1.1"), ip("10.1.1.2"), TCP, 22),
            Decision::Allowed
        );
        // A workload the policy does not list gets the default mode.
        assert_eq!(
            d.decide(ip("8.8.8.8"), w("new", "10.0.0.9"), TCP, 22),
            Decision::PotentiallyBlocked
        );
    }

    #[test]
    fn deny_boundaries_override_allows_by_mode() {
        let doc = doc();
        let d = Decider::new(&doc);
        let v = d.explain(ip("8.8.8.8"), w("api1", "10.0.0.2"), TCP, 23);
        assert_eq!(
            (v.decision, v.rule_id),
            (Decision::Blocked, Some("no-telnet"))
        );
        assert_eq!(
            d.decide(ip("8.8.8.8"), w("web1", "10.0.0.1"), TCP, 23),
            Decision::PotentiallyBlocked
        );
        assert_eq!(
            d.decide(ip("8.8.8.8"), w("dns1", "10.0.0.4"), TCP, 23),
            Decision::Blocked
        );
        // Outbound deny applies to a source without enforce_outbound too.
        assert_eq!(
            d.decide(w("web2", "10.0.0.3"), ip("8.8.8.8"), TCP, 23),
            Decision::Blocked
        );
    }

    #[test]
    fn outbound_default_deny_only_with_enforce_outbound() {
        let doc = doc();
        let d = Decider::new(&doc);
        let api1 = w("api1", "10.0.0.2");
        assert_eq!(d.decide(api1, ip("8.8.8.8"), UDP, 53), Decision::Blocked);
        // An IP-list provider inside a scoped ruleset: the peer is no workload, yet the
        // rule covers it (the enforcer resolves the list to its CIDRs).
        let v = d.explain(api1, ip("8.8.8.8"), TCP, 443);
        assert_eq!(
            (v.decision, v.rule_id),
            (Decision::Allowed, Some("api-to-partner"))
        );
        let v = d.explain(api1, w("dns1", "10.0.0.4"), UDP, 53);
        assert_eq!(
            (v.decision, v.rule_id),
            (Decision::Allowed, Some("api-to-dns"))
        );
        assert_eq!(
            d.decide(w("web1", "10.0.0.1"), ip("8.8.8.8"), UDP, 53),
            Decision::Allowed
        );
    }

    #[test]
    fn quarantine_blocks_both_ways_whatever_the_mode() {
        let mut doc = doc();
        doc.workloads[0].quarantined = true; // web1, visibility_only
        let d = Decider::new(&doc);
        let (web1, api1) = (w("web1", "10.0.0.1"), w("api1", "10.0.0.2"));
        assert_eq!(d.decide(web1, api1, TCP, 8080), Decision::Blocked);
        assert_eq!(d.decide(ip("8.8.8.8"), web1, TCP, 443), Decision::Blocked);
    }

    #[test]
    fn decision_text_round_trips_and_matches_the_proto() {
        for d in Decision::ALL {
            assert_eq!(d.as_str().parse::<Decision>().unwrap(), d);
            let proto: PolicyDecision = d.into();
            assert_eq!(crate::lake::decision_text(proto as i32), d.as_str());
            assert_eq!(Decision::from(proto), d);
        }
        assert!("maybe".parse::<Decision>().unwrap_err().contains("maybe"));
    }

    const SCOPES: &str = r#"
rulesets:
  - name: shop-prod
    scope: [app=shop, env=prod]
    rules:
      - id: shop-web-to-api
        consumers: [{labels: [role=web]}]
        providers: [{labels: [role=api]}]
        services: [tcp/8080]
      - id: shop-scrape
        consumers: [{labels: [role=monitoring]}]
        providers: [{any: true}]
        services: [tcp/9100]
        extra_scope: true
      - id: shop-api-out
        consumers: [{labels: [role=api]}]
        providers: [{ip_list: internet}]
        services: [tcp/1-65535]
  - name: crm-any-env
    scope: [app=crm]
    rules:
      - id: crm-web-to-api
        consumers: [{labels: [role=web]}]
        providers: [{labels: [role=api]}]
        services: [tcp/8080]
      - id: crm-any-to-db
        consumers: [{any: true}]
        providers: [{labels: [role=db]}]
        services: [tcp/5432]
  - name: mon
    scope: [role=monitoring]
    rules:
      - id: mon-in
        consumers: [{any: true}]
        providers: [{any: true}]
        services: [tcp/9090]
        extra_scope: true
workloads:
  - {workload_id: sweb, labels: {app: shop, env: prod, role: web}, mode: full, enforce_outbound: true}
  - {workload_id: sapi, labels: {app: shop, env: prod, role: api}, mode: full, enforce_outbound: true}
  - {workload_id: sapi2, labels: {app: shop, env: staging, role: api}, mode: visibility_only}
  - {workload_id: cweb, labels: {app: crm, env: staging, role: web}, mode: full, enforce_outbound: true}
  - {workload_id: capi, labels: {app: crm, env: prod, role: api}, mode: full}
  - {workload_id: cdb, labels: {app: crm, env: prod, role: db}, mode: selective}
  - {workload_id: mon, labels: {role: monitoring, env: prod}, mode: full, enforce_outbound: true}
  - {workload_id: bare, mode: full, enforce_outbound: true}
ip_lists:
  - name: internet
    cidrs: [0.0.0.0/0]
    exclusions: [10.0.0.0/8]
"#;

    #[test]
    fn the_scope_and_port_indexes_offer_every_rule_that_can_concern_a_host() {
        let mut doc = PolicyDocument::load(SCOPES, "scopes").unwrap();
        // What validation refuses, but a decider must still judge alike: a scope with two
        // values of one key, and a ruleset without scope.
        let mut both_envs = doc.rulesets[0].clone();
        both_envs.name = "shop-any-env".into();
        both_envs.scope = vec![
            Label::new("env", "staging"),
            Label::new("app", "shop"),
            Label::new("env", "prod"),
        ];
        for rule in &mut both_envs.rules {
            rule.id = format!("{}-both", rule.id);
            rule.services = vec![super::super::ServiceRef::Ports(PortRange::tcp(8443))];
        }
        let mut unscoped = doc.rulesets[1].clone();
        unscoped.name = "everyone".into();
        unscoped.scope = vec![];
        for rule in &mut unscoped.rules {
            rule.id = format!("{}-everyone", rule.id);
        }
        doc.rulesets.insert(0, both_envs);
        doc.rulesets.push(unscoped);
        let (indexed, every_rule) = (Decider::new(&doc), Decider::unindexed(&doc));
        let mut ends: Vec<Endpoint<'_>> = doc
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint::workload(IpAddr::from([10, 0, 0, i as u8 + 1]), &w.workload_id))
            .collect();
        ends.extend([ip("8.8.8.8"), ip("10.9.9.9"), w("unlisted", "10.0.0.99")]);
        let ports = [8080, 8443, 9100, 9090, 5432, 443, 22];
        let mut rules_named = std::collections::HashSet::new();
        for src in &ends {
            for dst in &ends {
                for port in ports {
                    let verdict = indexed.explain(*src, *dst, TCP, port);
                    assert_eq!(
                        verdict,
                        every_rule.explain(*src, *dst, TCP, port),
                        "{src:?} → {dst:?} tcp/{port}"
                    );
                    rules_named.extend(verdict.rule_id);
                }
            }
        }
        // Each rule decided something, so each kind of scope was looked up.
        for (_, rule) in doc.rules() {
            assert!(
                rules_named.contains(rule.id.as_str()),
                "{} never decided",
                rule.id
            );
        }
    }

    #[test]
    fn a_memo_decides_every_connection_as_its_decider_does() {
        let doc = doc();
        let d = Decider::new(&doc);
        let ends = [
            w("web1", "10.0.0.1"),
            w("web1", "8.8.4.4"), // a workload whose address is in an IP list
            w("api1", "10.0.0.2"),
            w("web2", "10.0.0.3"),
            w("dns1", "10.0.0.4"),
            w("lab1", "10.0.0.5"),
            w("new", "10.0.0.9"), // not listed: judged each time
            ip("8.8.8.8"),
            ip("1.1.1.1"),
            ip("10.1.1.1"),
            ip("fd00::1"),
        ];
        let services = [
            (TCP, 8080),
            (TCP, 8050),
            (TCP, 443),
            (TCP, 23),
            (UDP, 53),
            (TCP, 22),
        ];
        let mut memo = d.memo();
        // Twice: the second pass answers from the memo.
        for _ in 0..2 {
            for src in ends {
                for dst in ends {
                    for (protocol, port) in services {
                        assert_eq!(
                            memo.decide(&d, src, dst, protocol, port),
                            d.decide(src, dst, protocol, port),
                            "{src:?} → {dst:?} {protocol}/{port}"
                        );
                    }
                }
            }
        }
        for end in ends {
            assert_eq!(
                memo.ip_lists_containing(end.ip),
                ip_lists_containing(&doc, end.ip)
            );
        }
        // Asked with another document's decider, it answers as that decider does.
        let mut other = doc.clone();
        other.workloads[0].mode = Some(EnforcementMode::Full);
        let other = Decider::new(&other);
        let (web2, web1) = (w("web2", "10.0.0.3"), w("web1", "10.0.0.1"));
        assert_eq!(
            memo.decide(&d, web2, web1, TCP, 22),
            Decision::PotentiallyBlocked
        );
        assert_eq!(memo.decide(&other, web2, web1, TCP, 22), Decision::Blocked);
    }

    #[test]
    fn workloads_no_rule_tells_apart_share_a_memo_class_and_named_ones_do_not() {
        let mut doc = doc();
        let like = |id: &str, of: &str, mode: Option<EnforcementMode>| {
            let mut twin = doc
                .workloads
                .iter()
                .find(|w| w.workload_id == of)
                .unwrap()
                .clone();
            twin.workload_id = id.into();
            twin.mode = mode.or(twin.mode);
            twin
        };
        let twins = [
            like("web3", "web1", None),
            like("web4", "web1", Some(EnforcementMode::Full)),
            like("dns2", "dns1", None), // dns1 is named by `api-to-dns`
        ];
        doc.workloads.extend(twins);
        let d = Decider::new(&doc);
        let class = |id: &str| d.workloads[id].class;
        assert_eq!(class("web3"), class("web1"), "same labels and state");
        assert_ne!(class("web4"), class("web1"), "another mode");
        assert_ne!(class("dns2"), class("dns1"), "a rule names dns1");
        let mut memo = d.memo();
        let (api1, dns1, dns2) = (
            w("api1", "10.0.0.2"),
            w("dns1", "10.0.0.4"),
            w("dns2", "10.0.0.6"),
        );
        assert_eq!(memo.decide(&d, api1, dns1, UDP, 53), Decision::Allowed);
        assert_eq!(memo.decide(&d, api1, dns2, UDP, 53), Decision::Blocked);
        let ends: Vec<Endpoint<'_>> = doc
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint::workload(IpAddr::from([10, 0, 0, i as u8 + 1]), &w.workload_id))
            .chain([ip("8.8.8.8"), ip("10.1.1.1")])
            .collect();
        for src in &ends {
            for dst in &ends {
                for (protocol, port) in [(TCP, 8080), (TCP, 443), (TCP, 23), (UDP, 53), (TCP, 22)] {
                    assert_eq!(
                        memo.decide(&d, *src, *dst, protocol, port),
                        d.decide(*src, *dst, protocol, port),
                        "{src:?} → {dst:?} {protocol}/{port}"
                    );
                }
            }
        }
    }

    #[test]
    fn ip_list_membership() {
        let doc = doc();
        assert_eq!(
            ip_lists_containing(&doc, "1.1.1.1".parse().unwrap()),
            vec!["internet"]
        );
        assert!(ip_lists_containing(&doc, "10.0.0.1".parse().unwrap()).is_empty());
    }
}
