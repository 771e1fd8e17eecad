//! Lossless conversion between the policy model and its protobuf form. Model → proto
//! always succeeds; proto → model fails only on what protobuf cannot rule out (an actor
//! or service with nothing set, an unparsable CIDR, an unknown enum value), naming where.

use std::collections::BTreeMap;

use super::{
    Actor, DenyRule, EnforcementMode, IpList, Label, PolicyDocument, PolicyError, PolicyVersion,
    PortRange, Rule, Ruleset, Service, ServiceRef, ValidationErrors, ValidationIssue,
};
use crate::proto;

impl From<&Label> for proto::Label {
    fn from(l: &Label) -> Self {
        proto::Label {
            key: l.key.clone(),
            value: l.value.clone(),
        }
    }
}

impl From<&proto::Label> for Label {
    fn from(l: &proto::Label) -> Self {
        Label::new(l.key.clone(), l.value.clone())
    }
}

impl From<&PortRange> for proto::PortRange {
    fn from(r: &PortRange) -> Self {
        proto::PortRange {
            protocol: r.protocol,
            port_from: r.from,
            port_to: r.to,
        }
    }
}

impl From<&proto::PortRange> for PortRange {
    fn from(r: &proto::PortRange) -> Self {
        PortRange {
            protocol: r.protocol,
            from: r.port_from,
            to: r.port_to,
        }
    }
}

impl From<&Actor> for proto::Actor {
    fn from(a: &Actor) -> Self {
        use proto::actor::Actor as P;
        let actor = match a {
            Actor::Any => P::Any(true),
            Actor::Labels(labels) => P::Labels(proto::LabelSet {
                labels: labels.iter().map(Into::into).collect(),
            }),
            Actor::IpList(name) => P::IpList(name.clone()),
            Actor::Workload(id) => P::Workload(id.clone()),
        };
        proto::Actor { actor: Some(actor) }
    }
}

impl From<&ServiceRef> for proto::ServiceRef {
    fn from(s: &ServiceRef) -> Self {
        use proto::service_ref::Service as P;
        let service = match s {
            ServiceRef::Named(name) => P::Name(name.clone()),
            ServiceRef::Ports(range) => P::Ports(range.into()),
        };
        proto::ServiceRef {
            service: Some(service),
        }
    }
}

impl From<EnforcementMode> for proto::EnforcementMode {
    fn from(m: EnforcementMode) -> Self {
        match m {
            EnforcementMode::Idle => proto::EnforcementMode::Idle,
            EnforcementMode::VisibilityOnly => proto::EnforcementMode::VisibilityOnly,
            EnforcementMode::Selective => proto::EnforcementMode::Selective,
            EnforcementMode::Full => proto::EnforcementMode::Full,
        }
    }
}

fn rule_to_proto(r: &Rule) -> proto::Rule {
    proto::Rule {
        id: r.id.clone(),
        description: r.description.clone(),
        consumers: r.consumers.iter().map(Into::into).collect(),
        providers: r.providers.iter().map(Into::into).collect(),
        services: r.services.iter().map(Into::into).collect(),
        extra_scope: r.extra_scope,
        disabled: r.disabled,
    }
}

impl From<&Rule> for proto::Rule {
    fn from(r: &Rule) -> Self {
        rule_to_proto(r)
    }
}

impl From<&PolicyDocument> for proto::PolicyDocument {
    fn from(d: &PolicyDocument) -> Self {
        proto::PolicyDocument {
            custom_label_keys: d.custom_label_keys.clone(),
            ip_lists: d
                .ip_lists
                .iter()
                .map(|l| proto::IpList {
                    name: l.name.clone(),
                    description: l.description.clone(),
                    cidrs: l.cidrs.iter().map(ToString::to_string).collect(),
                    exclusions: l.exclusions.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            services: d
                .services
                .iter()
                .map(|s| proto::Service {
                    name: s.name.clone(),
                    description: s.description.clone(),
                    ports: s.ports.iter().map(Into::into).collect(),
                })
                .collect(),
            rulesets: d
                .rulesets
                .iter()
                .map(|rs| proto::Ruleset {
                    name: rs.name.clone(),
                    description: rs.description.clone(),
                    scope: rs.scope.iter().map(Into::into).collect(),
                    rules: rs.rules.iter().map(rule_to_proto).collect(),
                })
                .collect(),
            deny_rules: d
                .deny_rules
                .iter()
                .map(|r| proto::DenyRule {
                    id: r.id.clone(),
                    description: r.description.clone(),
                    consumers: r.consumers.iter().map(Into::into).collect(),
                    providers: r.providers.iter().map(Into::into).collect(),
                    services: r.services.iter().map(Into::into).collect(),
                    disabled: r.disabled,
                })
                .collect(),
            workloads: d
                .workloads
                .iter()
                .map(|w| proto::WorkloadPolicy {
                    workload_id: w.workload_id.clone(),
                    labels: w.labels.clone(),
                    mode: w
                        .mode
                        .map_or(proto::EnforcementMode::Unspecified, Into::into)
                        as i32,
                    quarantined: w.quarantined,
                    enforce_outbound: w.enforce_outbound,
                })
                .collect(),
            default_mode: proto::EnforcementMode::from(d.default_mode) as i32,
        }
    }
}

impl From<&PolicyVersion> for proto::PolicyVersion {
    fn from(v: &PolicyVersion) -> Self {
        proto::PolicyVersion {
            schema_version: crate::SCHEMA_VERSION,
            version: v.version,
            parent_version: v.parent_version,
            created_unix_ns: v.created_unix_ns,
            provisioned_by: v.provisioned_by.clone(),
            note: v.note.clone(),
            content_sha256: v.content_sha256.to_vec(),
            document: Some((&v.document).into()),
        }
    }
}

/// Collects conversion problems with their paths.
#[derive(Default)]
struct Issues(Vec<ValidationIssue>);

impl Issues {
    fn push(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        self.0.push(ValidationIssue {
            path: path.into(),
            problem: problem.into(),
        });
    }

    fn actors(&mut self, path: &str, actors: &[proto::Actor]) -> Vec<Actor> {
        use proto::actor::Actor as P;
        let mut out = Vec::with_capacity(actors.len());
        for (i, a) in actors.iter().enumerate() {
            match &a.actor {
                Some(P::Any(_)) => out.push(Actor::Any),
                Some(P::Labels(set)) => {
                    out.push(Actor::Labels(set.labels.iter().map(Into::into).collect()))
                }
                Some(P::IpList(name)) => out.push(Actor::IpList(name.clone())),
                Some(P::Workload(id)) => out.push(Actor::Workload(id.clone())),
                None => self.push(format!("{path}[{i}]"), "actor has nothing set"),
            }
        }
        out
    }

    fn services(&mut self, path: &str, services: &[proto::ServiceRef]) -> Vec<ServiceRef> {
        use proto::service_ref::Service as P;
        let mut out = Vec::with_capacity(services.len());
        for (i, s) in services.iter().enumerate() {
            match &s.service {
                Some(P::Name(name)) => out.push(ServiceRef::Named(name.clone())),
                Some(P::Ports(range)) => out.push(ServiceRef::Ports(range.into())),
                None => self.push(format!("{path}[{i}]"), "service has nothing set"),
            }
        }
        out
    }

    fn cidrs(&mut self, path: &str, cidrs: &[String]) -> Vec<ipnet::IpNet> {
        cidrs
            .iter()
            .filter_map(|text| match parse_cidr(text) {
                Ok(net) => Some(net),
                Err(e) => {
                    self.push(path, e);
                    None
                }
            })
            .collect()
    }

    fn mode(&mut self, path: &str, value: i32) -> Option<EnforcementMode> {
        match proto::EnforcementMode::try_from(value) {
            Ok(proto::EnforcementMode::Unspecified) => None,
            Ok(proto::EnforcementMode::Idle) => Some(EnforcementMode::Idle),
            Ok(proto::EnforcementMode::VisibilityOnly) => Some(EnforcementMode::VisibilityOnly),
            Ok(proto::EnforcementMode::Selective) => Some(EnforcementMode::Selective),
            Ok(proto::EnforcementMode::Full) => Some(EnforcementMode::Full),
            Err(_) => {
                self.push(path, format!("unknown enforcement mode {value}"));
                None
            }
        }
    }
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (e.g. 10.0.0.0/8) or an IP address"))
}

fn proto_rule(issues: &mut Issues, path: &str, r: &proto::Rule) -> Rule {
    Rule {
        id: r.id.clone(),
        description: r.description.clone(),
        consumers: issues.actors(&format!("{path}.consumers"), &r.consumers),
        providers: issues.actors(&format!("{path}.providers"), &r.providers),
        services: issues.services(&format!("{path}.services"), &r.services),
        extra_scope: r.extra_scope,
        disabled: r.disabled,
    }
}

impl TryFrom<&proto::Rule> for Rule {
    type Error = ValidationErrors;
    fn try_from(r: &proto::Rule) -> Result<Self, Self::Error> {
        let mut issues = Issues::default();
        let rule = proto_rule(&mut issues, &format!("rule[{}]", r.id), r);
        if issues.0.is_empty() {
            Ok(rule)
        } else {
            Err(ValidationErrors(issues.0))
        }
    }
}

impl TryFrom<&proto::PolicyDocument> for PolicyDocument {
    type Error = ValidationErrors;
    fn try_from(d: &proto::PolicyDocument) -> Result<Self, Self::Error> {
        let mut issues = Issues::default();
        let ip_lists = d
            .ip_lists
            .iter()
            .map(|l| {
                let path = format!("ip_lists[{}]", l.name);
                IpList {
                    name: l.name.clone(),
                    description: l.description.clone(),
                    cidrs: issues.cidrs(&format!("{path}.cidrs"), &l.cidrs),
                    exclusions: issues.cidrs(&format!("{path}.exclusions"), &l.exclusions),
                }
            })
            .collect();
        let services = d
            .services
            .iter()
            .map(|s| Service {
                name: s.name.clone(),
                description: s.description.clone(),
                ports: s.ports.iter().map(Into::into).collect(),
            })
            .collect();
        let rulesets = d
            .rulesets
            .iter()
            .map(|rs| Ruleset {
                name: rs.name.clone(),
                description: rs.description.clone(),
                scope: rs.scope.iter().map(Into::into).collect(),
                rules: rs
                    .rules
                    .iter()
                    .map(|r| {
                        proto_rule(
                            &mut issues,
                            &format!("rulesets[{}].rules[{}]", rs.name, r.id),
                            r,
                        )
                    })
                    .collect(),
            })
            .collect();
        let deny_rules = d
            .deny_rules
            .iter()
            .map(|r| {
                let path = format!("deny_rules[{}]", r.id);
                DenyRule {
                    id: r.id.clone(),
                    description: r.description.clone(),
                    consumers: issues.actors(&format!("{path}.consumers"), &r.consumers),
                    providers: issues.actors(&format!("{path}.providers"), &r.providers),
                    services: issues.services(&format!("{path}.services"), &r.services),
                    disabled: r.disabled,
                }
            })
            .collect();
        let workloads = d
            .workloads
            .iter()
            .map(|w| super::WorkloadPolicy {
                workload_id: w.workload_id.clone(),
                labels: w
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>(),
                mode: issues.mode(&format!("workloads[{}].mode", w.workload_id), w.mode),
                quarantined: w.quarantined,
                enforce_outbound: w.enforce_outbound,
            })
            .collect();
        let default_mode = issues
            .mode("default_mode", d.default_mode)
            .unwrap_or_default();
        if !issues.0.is_empty() {
            return Err(ValidationErrors(issues.0));
        }
        Ok(PolicyDocument {
            custom_label_keys: d.custom_label_keys.clone(),
            ip_lists,
            services,
            rulesets,
            deny_rules,
            workloads,
            default_mode,
        })
    }
}

impl TryFrom<&proto::PolicyVersion> for PolicyVersion {
    type Error = PolicyError;
    fn try_from(v: &proto::PolicyVersion) -> Result<Self, Self::Error> {
        if v.schema_version > crate::SCHEMA_VERSION {
            return Err(PolicyError::UnsupportedSchemaVersion {
                found: v.schema_version,
                supported: crate::SCHEMA_VERSION,
            });
        }
        let content_sha256 = <[u8; 32]>::try_from(v.content_sha256.as_slice()).map_err(|_| {
            PolicyError::Malformed(format!(
                "content_sha256 has {} bytes, not 32",
                v.content_sha256.len()
            ))
        })?;
        let document = v
            .document
            .as_ref()
            .ok_or_else(|| PolicyError::Malformed("no document".into()))?;
        Ok(PolicyVersion {
            version: v.version,
            parent_version: v.parent_version,
            created_unix_ns: v.created_unix_ns,
            provisioned_by: v.provisioned_by.clone(),
            note: v.note.clone(),
            content_sha256,
            document: document.try_into()?,
        })
    }
}
