//! Semantic checks of a [`PolicyDocument`]: every problem found, each with the path of
//! the item at fault (names rather than indices where items have names).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::{
    Actor, DenyRule, Label, PolicyDocument, PortRange, Rule, STANDARD_LABEL_KEYS, ServiceRef,
    protocol,
};

/// One problem: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationIssue {
    /// e.g. `rulesets[crm-prod].rules[web-to-api].services[1]`.
    pub path: String,
    pub problem: String,
}

/// All problems of a document (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationIssue>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid policy ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.0 {
            write!(f, "\n  {}: {}", issue.path, issue.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

struct Checker<'a> {
    doc: &'a PolicyDocument,
    label_keys: HashSet<&'a str>,
    ip_lists: HashSet<&'a str>,
    services: HashSet<&'a str>,
    issues: Vec<ValidationIssue>,
}

impl Checker<'_> {
    fn issue(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        self.issues.push(ValidationIssue {
            path: path.into(),
            problem: problem.into(),
        });
    }

    fn name(&mut self, path: &str, what: &str, name: &str, seen: &mut HashSet<String>) {
        if name.trim().is_empty() {
            self.issue(path, format!("{what} has an empty name"));
        } else if !seen.insert(name.to_string()) {
            self.issue(path, format!("duplicate {what} name {name:?}"));
        }
    }

    fn label(&mut self, path: &str, label: &Label) {
        self.label_kv(path, &label.key, &label.value);
    }

    fn label_kv(&mut self, path: &str, key: &str, value: &str) {
        if !self.label_keys.contains(key) {
            self.issue(
                path,
                format!("unknown label key {key:?} (standard keys: role, app, env, loc; declare others in custom_label_keys)"),
            );
        }
        if value.trim().is_empty() {
            self.issue(path, format!("label {key:?} has an empty value"));
        }
    }

    fn port_range(&mut self, path: &str, range: &PortRange) {
        if range.protocol > 255 {
            self.issue(
                path,
                format!("protocol {} is out of range 0-255", range.protocol),
            );
            return;
        }
        if !protocol::has_ports(range.protocol) && range.protocol != protocol::ANY {
            if !range.all_ports() {
                let bare = PortRange {
                    from: 0,
                    to: 0,
                    ..*range
                };
                self.issue(path, format!("{range}: {bare} has no ports; write {bare}"));
            }
            return;
        }
        if range.protocol == protocol::ANY && !range.all_ports() {
            self.issue(path, "ports need a protocol (tcp/..., udp/...), not any");
            return;
        }
        if range.all_ports() {
            return;
        }
        for port in [range.from, range.to] {
            if !(1..=65535).contains(&port) {
                self.issue(path, format!("port {port} is out of range 1-65535"));
                return;
            }
        }
        if range.from > range.to {
            self.issue(
                path,
                format!("port range {}-{} is reversed", range.from, range.to),
            );
        }
    }

    fn actors(&mut self, path: &str, role: &str, actors: &[Actor]) {
        if actors.is_empty() {
            self.issue(
                path,
                format!(
                    "no {role}: a rule needs at least one (use {{any: true}} to mean everyone)"
                ),
            );
        }
        for (i, actor) in actors.iter().enumerate() {
            let path = format!("{path}[{i}]");
            match actor {
                Actor::Any => {}
                Actor::Labels(labels) => {
                    if labels.is_empty() {
                        self.issue(&path, "empty label set (use {any: true} to mean everyone)");
                    }
                    for label in labels {
                        self.label(&path, label);
                    }
                }
                Actor::IpList(name) => {
                    if !self.ip_lists.contains(name.as_str()) {
                        self.issue(&path, format!("unknown IP list {name:?}"));
                    }
                }
                Actor::Workload(id) => {
                    if id.trim().is_empty() {
                        self.issue(&path, "empty workload id");
                    }
                }
            }
        }
    }

    fn services(&mut self, path: &str, services: &[ServiceRef]) {
        if services.is_empty() {
            self.issue(
                path,
                "no services: a rule needs at least one (use `any` for every service)",
            );
        }
        for (i, service) in services.iter().enumerate() {
            let path = format!("{path}[{i}]");
            match service {
                ServiceRef::Named(name) => {
                    if !self.services.contains(name.as_str()) {
                        self.issue(&path, format!("unknown service {name:?}"));
                    }
                }
                ServiceRef::Ports(range) => self.port_range(&path, range),
            }
        }
    }

    fn rule_id(&mut self, path: &str, id: &str, seen: &mut HashSet<String>) {
        if id.trim().is_empty() {
            self.issue(path, "rule has an empty id");
        } else if !seen.insert(id.to_string()) {
            self.issue(
                path,
                format!("duplicate rule id {id:?} (ids are unique across rulesets and deny rules)"),
            );
        }
    }

    fn rule(&mut self, path: &str, rule: &Rule) {
        self.actors(&format!("{path}.consumers"), "consumers", &rule.consumers);
        self.actors(&format!("{path}.providers"), "providers", &rule.providers);
        self.services(&format!("{path}.services"), &rule.services);
    }

    fn deny_rule(&mut self, path: &str, rule: &DenyRule) {
        self.actors(&format!("{path}.consumers"), "consumers", &rule.consumers);
        self.actors(&format!("{path}.providers"), "providers", &rule.providers);
        self.services(&format!("{path}.services"), &rule.services);
    }
}

fn valid_key_syntax(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl PolicyDocument {
    /// Checks everything a parser cannot: references resolve, names are unique, label keys
    /// are known, ports are in range, scopes and rule sides are not empty. Returns every
    /// problem at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Checker {
            doc: self,
            label_keys: STANDARD_LABEL_KEYS.into_iter().collect(),
            ip_lists: self.ip_lists.iter().map(|l| l.name.as_str()).collect(),
            services: self.services.iter().map(|s| s.name.as_str()).collect(),
            issues: Vec::new(),
        };

        for (i, key) in self.custom_label_keys.iter().enumerate() {
            let path = format!("custom_label_keys[{i}]");
            if !valid_key_syntax(key) {
                c.issue(
                    &path,
                    format!("label key {key:?} must be 1-64 characters of a-z, 0-9, _ and -"),
                );
            } else if STANDARD_LABEL_KEYS.contains(&key.as_str()) {
                c.issue(
                    &path,
                    format!("{key:?} is a standard key; do not declare it"),
                );
            } else if !c.label_keys.insert(key.as_str()) {
                c.issue(&path, format!("duplicate label key {key:?}"));
            }
        }

        let mut seen = HashSet::new();
        for list in &c.doc.ip_lists {
            let path = format!("ip_lists[{}]", list.name);
            c.name(&path, "IP list", &list.name, &mut seen);
            if list.cidrs.is_empty() {
                c.issue(&path, "IP list has no CIDRs");
            }
        }

        let mut seen = HashSet::new();
        for service in &c.doc.services {
            let path = format!("services[{}]", service.name);
            c.name(&path, "service", &service.name, &mut seen);
            if protocol::parse(&service.name).is_some() || service.name.contains('/') {
                c.issue(
                    &path,
                    format!(
                        "service name {:?} reads as a port range; choose another",
                        service.name
                    ),
                );
            }
            if service.ports.is_empty() {
                c.issue(&path, "service has no ports");
            }
            for (i, range) in service.ports.iter().enumerate() {
                c.port_range(&format!("{path}.ports[{i}]"), range);
            }
        }

        let mut ruleset_names = HashSet::new();
        let mut rule_ids = HashSet::new();
        for ruleset in &c.doc.rulesets {
            let path = format!("rulesets[{}]", ruleset.name);
            c.name(&path, "ruleset", &ruleset.name, &mut ruleset_names);
            if ruleset.scope.is_empty() {
                c.issue(
                    format!("{path}.scope"),
                    "empty scope: a ruleset applies to workloads carrying its scope labels (e.g. [app=crm, env=prod])",
                );
            }
            let mut scope_keys = BTreeMap::new();
            for label in &ruleset.scope {
                c.label(&format!("{path}.scope"), label);
                if let Some(other) = scope_keys.insert(label.key.as_str(), label.value.as_str()) {
                    c.issue(
                        format!("{path}.scope"),
                        format!("scope has two values for {:?} ({other:?} and {:?}); a scope takes one per key", label.key, label.value),
                    );
                }
            }
            for rule in &ruleset.rules {
                let rule_path = format!("{path}.rules[{}]", rule.id);
                c.rule_id(&rule_path, &rule.id, &mut rule_ids);
                c.rule(&rule_path, rule);
            }
        }

        for rule in &c.doc.deny_rules {
            let path = format!("deny_rules[{}]", rule.id);
            c.rule_id(&path, &rule.id, &mut rule_ids);
            c.deny_rule(&path, rule);
        }

        let mut seen = HashSet::new();
        for workload in &c.doc.workloads {
            let path = format!("workloads[{}]", workload.workload_id);
            if workload.workload_id.trim().is_empty() {
                c.issue(&path, "workload has an empty id");
            } else if !seen.insert(workload.workload_id.clone()) {
                c.issue(
                    &path,
                    format!("duplicate workload {:?}", workload.workload_id),
                );
            }
            for (key, value) in &workload.labels {
                c.label_kv(&format!("{path}.labels"), key, value);
            }
        }

        if c.issues.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(c.issues))
        }
    }
}
