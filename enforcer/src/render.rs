//! A [`HostPolicy`] as one nftables transaction on the table `inet bulkhead`.
//!
//! The batch is `add table; delete table; add table; sets; chains; rules`: nft applies it
//! atomically, so the host goes from the old ruleset to the new one with no moment in
//! between, and nothing outside the `bulkhead` table is touched. Matching uses sets —
//! `saddr . dport` concatenations with intervals for port-carrying protocols,
//! `saddr . l4proto` for whole protocols, address intervals for "everything" — so the
//! cost of a packet does not grow with the number of rules.
//!
//! Input chain, in order: loopback, control plane, (quarantine: drop everything else),
//! established/related, deny boundaries, allow sets, IPv6 neighbour discovery, then the
//! mode's verdict: `full` drops (counted), `visibility_only` counts and logs what `full`
//! would drop, `selective` lets it pass. The output chain mirrors it when the host
//! enforces outbound, is quarantined, or has outbound deny boundaries.

use std::borrow::Cow;
use std::collections::HashSet;

use bulkhead_schemas::policy::EnforcementMode;
use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range,
};
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{AnonymousCounter, Counter, Log, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::compile::{HostPolicy, Matchers};
use crate::ranges::{AddrRange, PortSpan};

/// The one table Bulkhead owns.
pub const TABLE: &str = "bulkhead";

/// Comments on the rules whose counters the status reports.
pub mod counters {
    pub const QUARANTINE: &str = "bulkhead:quarantine";
    pub const DENY_BOUNDARY: &str = "bulkhead:deny-boundary";
    pub const DEFAULT_DENY: &str = "bulkhead:default-deny";
    pub const POTENTIALLY_BLOCKED: &str = "bulkhead:potentially-blocked";
}

/// A rendered ruleset and its size.
#[derive(Debug)]
pub struct Rendered {
    pub batch: Nftables<'static>,
    pub rules: usize,
    pub set_elements: usize,
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

/// The batch that removes the table if it exists (and does nothing otherwise).
pub fn removal() -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(vec![
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
        ]),
    }
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(Some(AnonymousCounter::default())))
}

fn addr_expr(range: &AddrRange) -> Expression<'static> {
    if range.start == range.end {
        return Expression::String(range.first().to_string().into());
    }
    let width = if range.v6 { 128 } else { 32 };
    let size = range.end - range.start;
    // A CIDR when the range is aligned and its size is a power of two.
    if size
        .checked_add(1)
        .is_none_or(|n| n.is_power_of_two() && range.start.is_multiple_of(n))
    {
        let host_bits = 128 - size.leading_zeros();
        return Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(range.first().to_string().into())),
            len: width - host_bits.min(width),
        }));
    }
    Expression::Range(Box::new(Range {
        range: [
            Expression::String(range.first().to_string().into()),
            Expression::String(range.last().to_string().into()),
        ],
    }))
}

fn port_expr((from, to): PortSpan) -> Expression<'static> {
    if from == to {
        Expression::Number(from.into())
    } else {
        Expression::Range(Box::new(Range {
            range: [
                Expression::Number(from.into()),
                Expression::Number(to.into()),
            ],
        }))
    }
}

fn l4_name(protocol: u8) -> &'static str {
    match protocol {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => unreachable!("only port-carrying protocols get port sets"),
    }
}

struct Builder {
    objects: Vec<NfObject<'static>>,
    rules: usize,
    set_elements: usize,
    set_names: HashSet<String>,
}

#[derive(Clone, Copy)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn chain(self) -> &'static str {
        match self {
            Dir::In => "input",
            Dir::Out => "output",
        }
    }
    /// The peer's address field and the port field of a packet in this direction.
    fn peer(self) -> &'static str {
        match self {
            Dir::In => "saddr",
            Dir::Out => "daddr",
        }
    }
    fn iface(self) -> MetaKey {
        match self {
            Dir::In => MetaKey::Iifname,
            Dir::Out => MetaKey::Oifname,
        }
    }
}

impl Builder {
    fn add(&mut self, object: NfListObject<'static>) {
        self.objects.push(NfObject::CmdObject(NfCmd::Add(object)));
    }

    fn set(
        &mut self,
        name: String,
        set_type: SetTypeValue<'static>,
        elements: Vec<Expression<'static>>,
    ) -> Option<String> {
        if elements.is_empty() {
            return None;
        }
        self.set_elements += elements.len();
        self.set_names.insert(name.clone());
        self.add(NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.clone().into(),
            handle: None,
            set_type,
            policy: None,
            flags: Some(HashSet::from([SetFlag::Interval])),
            elem: Some(Cow::Owned(elements)),
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })));
        Some(name)
    }

    fn rule(&mut self, chain: &str, expr: Vec<Statement<'static>>, comment: Option<&'static str>) {
        self.rules += 1;
        self.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: chain.to_string().into(),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: comment.map(Cow::Borrowed),
        }));
    }

    fn base_chain(&mut self, dir: Dir) {
        self.add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: dir.chain().into(),
            newname: None,
            handle: None,
            _type: Some(NfChainType::Filter),
            hook: Some(match dir {
                Dir::In => NfHook::Input,
                Dir::Out => NfHook::Output,
            }),
            prio: Some(0),
            dev: None,
            policy: Some(NfChainPolicy::Accept),
        }));
    }

    /// One rule per non-empty set of `matchers`, each ending in `verdict`.
    fn matcher_rules(
        &mut self,
        dir: Dir,
        prefix: &str,
        matchers: &Matchers,
        verdict: &[Statement<'static>],
        comment: Option<&'static str>,
    ) {
        for (family, v6, ip) in [("4", false, "ip"), ("6", true, "ip6")] {
            let addr_type = if v6 {
                SetType::Ipv6Addr
            } else {
                SetType::Ipv4Addr
            };
            for (protocol, rects) in &matchers.ports {
                let elements = rects
                    .disjoint()
                    .into_iter()
                    .filter(|(a, _)| a.v6 == v6)
                    .map(|(a, p)| {
                        Expression::Named(NamedExpression::Concat(vec![
                            addr_expr(&a),
                            port_expr(p),
                        ]))
                    })
                    .collect();
                let name = format!("{prefix}{family}_{}", l4_name(*protocol));
                let set_type =
                    SetTypeValue::Concatenated(Cow::Owned(vec![addr_type, SetType::InetService]));
                if let Some(name) = self.set(name, set_type, elements) {
                    let left = Expression::Named(NamedExpression::Concat(vec![
                        field(ip, dir.peer()),
                        field(l4_name(*protocol), "dport"),
                    ]));
                    let mut expr =
                        vec![matches(left, Expression::String(format!("@{name}").into()))];
                    expr.extend_from_slice(verdict);
                    self.rule(dir.chain(), expr, comment);
                }
            }
            let mut proto_elements = Vec::new();
            for (protocol, addrs) in &matchers.protocols {
                for a in crate::ranges::merge(addrs.clone())
                    .into_iter()
                    .filter(|a| a.v6 == v6)
                {
                    proto_elements.push(Expression::Named(NamedExpression::Concat(vec![
                        addr_expr(&a),
                        Expression::Number((*protocol).into()),
                    ])));
                }
            }
            let set_type =
                SetTypeValue::Concatenated(Cow::Owned(vec![addr_type, SetType::InetProto]));
            if let Some(name) =
                self.set(format!("{prefix}{family}_proto"), set_type, proto_elements)
            {
                let left = Expression::Named(NamedExpression::Concat(vec![
                    field(ip, dir.peer()),
                    meta(MetaKey::L4proto),
                ]));
                let mut expr = vec![matches(left, Expression::String(format!("@{name}").into()))];
                expr.extend_from_slice(verdict);
                self.rule(dir.chain(), expr, comment);
            }
            let all: Vec<Expression<'static>> = crate::ranges::merge(matchers.all.clone())
                .iter()
                .filter(|a| a.v6 == v6)
                .map(addr_expr)
                .collect();
            if let Some(name) = self.set(
                format!("{prefix}{family}_all"),
                SetTypeValue::Single(addr_type),
                all,
            ) {
                let mut expr = vec![matches(
                    field(ip, dir.peer()),
                    Expression::String(format!("@{name}").into()),
                )];
                expr.extend_from_slice(verdict);
                self.rule(dir.chain(), expr, comment);
            }
        }
    }

    fn control_plane(&mut self, policy: &HostPolicy) {
        for (family, v6) in [("4", false), ("6", true)] {
            let elements = policy
                .control_plane
                .iter()
                .filter(|a| a.v6 == v6)
                .map(addr_expr)
                .collect();
            let addr_type = if v6 {
                SetType::Ipv6Addr
            } else {
                SetType::Ipv4Addr
            };
            self.set(
                format!("control_plane{family}"),
                SetTypeValue::Single(addr_type),
                elements,
            );
        }
    }

    /// The first rules of a chain: loopback, control plane, quarantine, established.
    fn preamble(&mut self, dir: Dir, quarantined: bool) {
        self.rule(
            dir.chain(),
            vec![
                matches(meta(dir.iface()), Expression::String("lo".into())),
                Statement::Accept(None),
            ],
            None,
        );
        for (family, ip) in [("4", "ip"), ("6", "ip6")] {
            let name = format!("control_plane{family}");
            if self.set_names.contains(&name) {
                let expr = vec![
                    matches(
                        field(ip, dir.peer()),
                        Expression::String(format!("@{name}").into()),
                    ),
                    Statement::Accept(None),
                ];
                self.rule(dir.chain(), expr, None);
            }
        }
        if quarantined {
            // Before "established": quarantine cuts live connections too.
            self.rule(
                dir.chain(),
                vec![counter(), Statement::Drop(None)],
                Some(counters::QUARANTINE),
            );
            return;
        }
        let state = Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        }));
        let established = Expression::List(vec![
            Expression::String("established".into()),
            Expression::String("related".into()),
        ]);
        self.rule(
            dir.chain(),
            vec![
                Statement::Match(Match {
                    left: state,
                    right: established,
                    op: Operator::IN,
                }),
                Statement::Accept(None),
            ],
            None,
        );
    }

    /// IPv6 neighbour discovery and path MTU: without them IPv6 breaks under default deny.
    fn icmpv6_essentials(&mut self, dir: Dir) {
        let types = [
            "packet-too-big",
            "nd-router-solicit",
            "nd-router-advert",
            "nd-neighbor-solicit",
            "nd-neighbor-advert",
        ];
        let set = Expression::Named(NamedExpression::Set(
            types
                .iter()
                .map(|t| nftables::expr::SetItem::Element(Expression::String((*t).into())))
                .collect(),
        ));
        self.rule(
            dir.chain(),
            vec![
                matches(field("icmpv6", "type"), set),
                Statement::Accept(None),
            ],
            None,
        );
    }

    fn chain(
        &mut self,
        dir: Dir,
        policy: &HostPolicy,
        allow: &Matchers,
        deny: &Matchers,
        default_deny: bool,
    ) {
        let tag = match dir {
            Dir::In => "in",
            Dir::Out => "out",
        };
        self.base_chain(dir);
        self.preamble(dir, policy.quarantined);
        if policy.quarantined {
            return;
        }
        let drop = vec![counter(), Statement::Drop(None)];
        // What a deny boundary does, and the last rule after the allows, by mode.
        let (deny_verdict, deny_comment, last_rule) = match policy.mode {
            EnforcementMode::Idle => return,
            EnforcementMode::VisibilityOnly => {
                let limit = Statement::Limit(nftables::stmt::Limit {
                    rate: 10,
                    rate_unit: None,
                    per: Some("second".into()),
                    burst: Some(20),
                    burst_unit: None,
                    inv: None,
                });
                let log = Statement::Log(Some(Log {
                    prefix: Some("bulkhead potentially blocked: ".into()),
                    ..Log::new(None)
                }));
                (
                    vec![counter()],
                    counters::POTENTIALLY_BLOCKED,
                    Some((vec![counter(), limit, log], counters::POTENTIALLY_BLOCKED)),
                )
            }
            EnforcementMode::Selective => (drop, counters::DENY_BOUNDARY, None),
            EnforcementMode::Full => (
                drop.clone(),
                counters::DENY_BOUNDARY,
                Some((drop, counters::DEFAULT_DENY)),
            ),
        };
        self.matcher_rules(
            dir,
            &format!("deny_{tag}"),
            deny,
            &deny_verdict,
            Some(deny_comment),
        );
        if let (true, Some((statements, comment))) = (default_deny, last_rule) {
            self.matcher_rules(
                dir,
                &format!("allow_{tag}"),
                allow,
                &[Statement::Accept(None)],
                None,
            );
            self.icmpv6_essentials(dir);
            self.rule(dir.chain(), statements, Some(comment));
        }
    }
}

/// The nftables transaction for `policy`. An `idle`, unquarantined host gets the removal
/// batch: no table at all.
pub fn render(policy: &HostPolicy) -> Rendered {
    if policy.mode == EnforcementMode::Idle && !policy.quarantined {
        return Rendered {
            batch: removal(),
            rules: 0,
            set_elements: 0,
        };
    }
    let mut b = Builder {
        objects: removal().objects.into_owned(),
        rules: 0,
        set_elements: 0,
        set_names: HashSet::new(),
    };
    b.add(NfListObject::Table(table()));
    b.control_plane(policy);
    b.chain(
        Dir::In,
        policy,
        &policy.inbound_allow,
        &policy.inbound_deny,
        true,
    );
    let outbound =
        policy.quarantined || policy.enforce_outbound || !policy.outbound_deny.is_empty();
    if outbound {
        b.chain(
            Dir::Out,
            policy,
            &policy.outbound_allow,
            &policy.outbound_deny,
            policy.enforce_outbound,
        );
    }
    Rendered {
        batch: Nftables {
            objects: Cow::Owned(b.objects),
        },
        rules: b.rules,
        set_elements: b.set_elements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Membership, compile};
    use bulkhead_schemas::policy::{PolicyDocument, PolicyVersion};

    fn policy(mode: &str, quarantined: bool) -> HostPolicy {
        let yaml = format!(
            r#"
rulesets:
  - name: crm
    scope: [app=crm]
    rules:
      - {{id: a, consumers: [{{labels: [role=web]}}], providers: [{{labels: [role=api]}}], services: [tcp/8080, udp/53, icmp]}}
      - {{id: b, consumers: [{{labels: [role=web]}}], providers: [{{labels: [role=api]}}], services: [tcp/8000-8100]}}
deny_rules:
  - {{id: d, consumers: [{{any: true}}], providers: [{{any: true}}], services: [tcp/23]}}
workloads:
  - {{workload_id: web, labels: {{app: crm, role: web}}}}
  - {{workload_id: api, labels: {{app: crm, role: api}}, mode: {mode}, quarantined: {quarantined}}}
"#
        );
        let doc = PolicyDocument::load(&yaml, "t").unwrap();
        let mut membership = Membership::default();
        membership.set(
            "web",
            vec!["10.9.0.1".parse().unwrap(), "fd00:9::1".parse().unwrap()],
        );
        membership.set("api", vec!["10.9.0.2".parse().unwrap()]);
        let cp = [AddrRange::from_ip("10.250.0.1".parse().unwrap())];
        compile(
            &PolicyVersion::new(1, 0, "t", "", doc),
            "api",
            &membership,
            &cp,
        )
    }

    fn json(rendered: &Rendered) -> String {
        serde_json::to_string(&rendered.batch).unwrap()
    }

    #[test]
    fn full_mode_renders_sets_and_a_counted_default_deny() {
        let rendered = render(&policy("full", false));
        let text = json(&rendered);
        for needle in [
            "allow_in4_tcp",
            "allow_in6_tcp",
            "allow_in4_udp",
            "allow_in4_proto",
            "deny_in4_tcp",
            "control_plane4",
            "bulkhead:default-deny",
            "nd-neighbor-solicit",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        // 8080 lies inside 8000-8100: one element, not two overlapping ones.
        assert!(
            text.contains(r#"{"concat":["10.9.0.1",{"range":[8000,8100]}]}"#),
            "{text}"
        );
        assert!(!text.contains(r#"{"concat":["10.9.0.1",8080]}"#), "{text}");
        assert!(
            text.starts_with(r#"{"nftables":[{"add":{"table""#)
                && text.contains(r#"{"delete":{"table""#)
        );
        assert!(rendered.rules > 5 && rendered.set_elements >= 5);
    }

    #[test]
    fn modes_change_the_verdicts() {
        let visibility = json(&render(&policy("visibility_only", false)));
        assert!(
            visibility.contains("bulkhead potentially blocked")
                && !visibility.contains("default-deny")
        );
        assert!(
            !visibility.contains(r#""drop""#),
            "visibility_only never drops: {visibility}"
        );
        let selective = json(&render(&policy("selective", false)));
        assert!(
            selective.contains("deny-boundary")
                && !selective.contains("allow_in4")
                && !selective.contains("default-deny")
        );
        let idle = render(&policy("idle", false));
        assert_eq!(idle.rules, 0);
        assert_eq!(
            json(&idle),
            json(&Rendered {
                batch: removal(),
                rules: 0,
                set_elements: 0
            })
        );
    }

    #[test]
    fn quarantine_keeps_only_loopback_and_control_plane_both_ways() {
        let text = json(&render(&policy("full", true)));
        assert!(text.contains(r#""hook":"input""#) && text.contains(r#""hook":"output""#));
        assert!(
            text.contains("bulkhead:quarantine")
                && !text.contains("allow_in4")
                && !text.contains("established")
        );
        assert!(text.contains(r#""right":"@control_plane4""#));
    }

    #[test]
    fn addresses_render_as_the_tightest_form() {
        let r = |a: &str, b: &str| {
            let (a, b): (std::net::IpAddr, std::net::IpAddr) =
                (a.parse().unwrap(), b.parse().unwrap());
            let (x, y) = (AddrRange::from_ip(a), AddrRange::from_ip(b));
            serde_json::to_string(&addr_expr(&AddrRange { end: y.end, ..x })).unwrap()
        };
        assert_eq!(
            r("10.0.0.0", "10.255.255.255"),
            r#"{"prefix":{"addr":"10.0.0.0","len":8}}"#
        );
        assert_eq!(r("10.0.0.1", "10.0.0.1"), r#""10.0.0.1""#);
        assert_eq!(
            r("10.0.0.1", "10.0.0.5"),
            r#"{"range":["10.0.0.1","10.0.0.5"]}"#
        );
        assert_eq!(
            r("0.0.0.0", "255.255.255.255"),
            r#"{"prefix":{"addr":"0.0.0.0","len":0}}"#
        );
        assert_eq!(
            r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            r#"{"prefix":{"addr":"::","len":0}}"#
        );
    }
}
