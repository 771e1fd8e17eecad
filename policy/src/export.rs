//! Export as Kubernetes `NetworkPolicy` (networking.k8s.io/v1), one per allow rule, all
//! in one namespace.
//!
//! Mapping: a rule's providers (with its ruleset's scope) become the `podSelector`
//! (one label value → `matchLabels`, several values of one key → `matchExpressions`
//! `In`); its consumers become `ingress.from` peers — label sets as `podSelector`
//! (extra-scope consumers with `namespaceSelector: {}`, i.e. any namespace), IP lists as
//! `ipBlock` (one per CIDR, with the exclusions that lie inside it as `except`), a
//! workload as the pod label `bulkhead.io/workload`, `any` as no `from` at all. Services
//! become `ports` (`endPort` for ranges). What NetworkPolicy cannot say is left out and
//! listed in the returned warnings: ICMP, deny rules (NetworkPolicy has no deny),
//! IP-list providers (egress), and rules whose provider is an IP list or `any` outside
//! a scope.

use std::collections::BTreeMap;

use bulkhead_schemas::policy::{Actor, Label, PolicyDocument, PortRange, ServiceRef, protocol};
use serde_json::{Value, json};

/// Pod label that carries the workload id.
pub const WORKLOAD_LABEL: &str = "bulkhead.io/workload";

fn selector(labels: &[Label]) -> Value {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in labels {
        let values = by_key.entry(&l.key).or_default();
        if !values.contains(&l.value.as_str()) {
            values.push(&l.value);
        }
    }
    let mut match_labels = serde_json::Map::new();
    let mut expressions = Vec::new();
    for (key, values) in by_key {
        if values.len() == 1 {
            match_labels.insert(key.to_string(), json!(values[0]));
        } else {
            expressions.push(json!({"key": key, "operator": "In", "values": values}));
        }
    }
    let mut out = serde_json::Map::new();
    if !match_labels.is_empty() {
        out.insert("matchLabels".into(), Value::Object(match_labels));
    }
    if !expressions.is_empty() {
        out.insert("matchExpressions".into(), Value::Array(expressions));
    }
    Value::Object(out)
}

fn workload_selector(id: &str) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(WORKLOAD_LABEL.to_string(), json!(id));
    json!({"matchLabels": Value::Object(labels)})
}

fn dns_name(text: &str) -> String {
    let mut name: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(253);
    name.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn ports(
    doc: &PolicyDocument,
    services: &[ServiceRef],
    warnings: &mut Vec<String>,
    rule: &str,
) -> Vec<Value> {
    let ranges: Vec<PortRange> = services
        .iter()
        .flat_map(|s| match s {
            ServiceRef::Ports(r) => vec![*r],
            ServiceRef::Named(name) => doc
                .services
                .iter()
                .find(|x| &x.name == name)
                .map(|x| x.ports.clone())
                .unwrap_or_default(),
        })
        .collect();
    let mut out = Vec::new();
    for r in ranges {
        let proto = match r.protocol {
            protocol::TCP => "TCP",
            protocol::UDP => "UDP",
            protocol::SCTP => "SCTP",
            _ => {
                warnings.push(format!(
                    "rule {rule}: {r} cannot be expressed in a NetworkPolicy; left out"
                ));
                continue;
            }
        };
        let mut port = json!({"protocol": proto});
        if !r.all_ports() {
            port["port"] = json!(r.from);
            if r.to > r.from {
                port["endPort"] = json!(r.to);
            }
        }
        out.push(port);
    }
    out
}

/// The NetworkPolicies of `doc` as one multi-document YAML text, and what was left out.
pub fn network_policies(doc: &PolicyDocument, namespace: &str) -> (Vec<Value>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    if !doc.deny_rules.is_empty() {
        warnings.push(format!(
            "{} deny rule(s) left out: NetworkPolicy has no deny",
            doc.deny_rules.len()
        ));
    }
    for (ruleset, rule) in doc.rules() {
        if rule.disabled {
            continue;
        }
        let mut provider_selectors = Vec::new();
        for provider in &rule.providers {
            match provider {
                Actor::Labels(set) => {
                    let mut labels = ruleset.scope.clone();
                    labels.extend(set.iter().cloned());
                    provider_selectors.push(selector(&labels));
                }
                Actor::Any => provider_selectors.push(selector(&ruleset.scope)),
                Actor::Workload(id) => provider_selectors.push(workload_selector(id)),
                Actor::IpList(name) => warnings.push(format!(
                    "rule {}: provider IP list {name} (egress) left out: exported policies are ingress only",
                    rule.id
                )),
            }
        }
        let mut from = Vec::new();
        let mut from_anyone = false;
        for consumer in &rule.consumers {
            match consumer {
                Actor::Any if rule.extra_scope => from_anyone = true,
                Actor::Any => from.push(json!({"podSelector": selector(&ruleset.scope)})),
                Actor::Labels(set) if rule.extra_scope => {
                    from.push(json!({"namespaceSelector": {}, "podSelector": selector(set)}))
                }
                Actor::Labels(set) => {
                    let mut labels = ruleset.scope.clone();
                    labels.extend(set.iter().cloned());
                    from.push(json!({"podSelector": selector(&labels)}));
                }
                Actor::Workload(id) => from
                    .push(json!({"namespaceSelector": {}, "podSelector": workload_selector(id)})),
                Actor::IpList(name) => match doc.ip_lists.iter().find(|l| &l.name == name) {
                    Some(list) => {
                        for cidr in &list.cidrs {
                            let except: Vec<String> = list
                                .exclusions
                                .iter()
                                .filter(|x| cidr.contains(*x) && x != &cidr)
                                .map(ToString::to_string)
                                .collect();
                            let mut block = json!({"cidr": cidr.to_string()});
                            if !except.is_empty() {
                                block["except"] = json!(except);
                            }
                            from.push(json!({"ipBlock": block}));
                        }
                    }
                    None => warnings.push(format!(
                        "rule {}: unknown IP list {name}; left out",
                        rule.id
                    )),
                },
            }
        }
        let ports = ports(doc, &rule.services, &mut warnings, &rule.id);
        let has_all_ports = rule
            .services
            .iter()
            .any(|s| matches!(s, ServiceRef::Ports(r) if r.protocol == protocol::ANY));
        if ports.is_empty() && !has_all_ports {
            continue;
        }
        for (i, pod_selector) in provider_selectors.into_iter().enumerate() {
            let mut ingress = serde_json::Map::new();
            if !from_anyone {
                if from.is_empty() {
                    continue;
                }
                ingress.insert("from".into(), Value::Array(from.clone()));
            }
            if !ports.is_empty() {
                ingress.insert("ports".into(), Value::Array(ports.clone()));
            }
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("-{i}")
            };
            out.push(json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": dns_name(&format!("{}-{}{suffix}", ruleset.name, rule.id)),
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/managed-by": "bulkhead"},
                    "annotations": {"bulkhead.io/ruleset": ruleset.name, "bulkhead.io/rule": rule.id},
                },
                "spec": {
                    "podSelector": pod_selector,
                    "policyTypes": ["Ingress"],
                    "ingress": [Value::Object(ingress)],
                },
            }));
        }
    }
    (out, warnings)
}

/// The policies as a multi-document YAML stream.
pub fn to_yaml(policies: &[Value]) -> String {
    policies
        .iter()
        .map(|p| {
            format!(
                "---\n{}",
                serde_yaml_ng::to_string(p).expect("JSON values always serialize")
            )
        })
        .collect()
}
