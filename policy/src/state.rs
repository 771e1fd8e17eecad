//! The policy state: the fold of control events, in topic order.
//!
//! [`PolicyState::apply`] checks an event against the state before changing anything: a
//! refused event (unattributed, replayed, conflicting, invalid, forged) leaves the state
//! exactly as it was and says why. Provisioning, quarantine and rollback produce a new
//! signed [`PolicyVersion`] inside the fold: its creation time and author come from the
//! event, and Ed25519 signatures are deterministic, so replaying the same events with the
//! same key rebuilds the same signed bytes.

use std::collections::{BTreeMap, BTreeSet};

use bulkhead_schemas::policy::{
    EnforcementMode, IpList, PolicyDocument, PolicySigner, PolicyVersion, Rule, Ruleset, Service,
    WorkloadPolicy,
};
use bulkhead_schemas::proto::{self, control_event::Event};
use prost::Message as _;
use serde::Serialize;

/// Why an event was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ControlError {
    #[error("control event has no {0}: every change must say who made it, when and its id")]
    Unattributed(&'static str),
    #[error("control event {0} was already applied: refusing a replay")]
    Replayed(String),
    #[error("control event {0} carries no change")]
    Empty(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the draft would be invalid: {0}")]
    Invalid(String),
    #[error("{0}")]
    Forged(String),
    #[error("{0}")]
    Refused(String),
}

/// One applied event as history shows it.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryEntry {
    pub event_id: String,
    pub at_unix_ns: u64,
    pub actor: String,
    pub reason: String,
    pub what: String,
}

/// A provisioned version and its signed envelope (the exact bytes on the policy topic).
#[derive(Clone, Debug)]
pub struct Provisioned {
    pub version: PolicyVersion,
    pub signed: proto::SignedPolicy,
}

impl Provisioned {
    pub fn signed_bytes(&self) -> Vec<u8> {
        self.signed.encode_to_vec()
    }
}

/// Review state of a recommendation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Review {
    Accepted,
    Rejected,
}

#[derive(Clone, Debug, Default)]
pub struct PolicyState {
    pub draft: PolicyDocument,
    pub versions: Vec<Provisioned>,
    pub reviews: BTreeMap<String, Review>,
    pub history: Vec<HistoryEntry>,
    /// Label rules by id (they assign labels from inventory; see `Engine::adopt_inventory`).
    pub label_rules: BTreeMap<String, proto::LabelRule>,
    /// Who last set or removed each (workload, label key): automatic sources
    /// ([`is_automatic`]) may change a label again, a person's choice stays.
    pub label_origin: BTreeMap<(String, String), String>,
    applied_ids: BTreeSet<String>,
}

/// Actors whose label assignments later inventory may replace: host-provided labels and
/// label rules. Manual assignments win over both.
pub fn is_automatic(actor: &str) -> bool {
    actor == INVENTORY_ACTOR || actor.starts_with(LABEL_RULE_ACTOR)
}

/// The actor of labels adopted from what hosts say of themselves.
pub const INVENTORY_ACTOR: &str = "inventory";
/// The actor prefix of labels a label rule assigned (`label-rule:<id>`).
pub const LABEL_RULE_ACTOR: &str = "label-rule:";

fn check_label_rule(rule: &proto::LabelRule) -> Result<(), ControlError> {
    let invalid = |why: String| ControlError::Invalid(format!("label rule {:?}: {why}", rule.id));
    if rule.id.trim().is_empty() {
        return Err(invalid("an id is required".into()));
    }
    if rule.assign.is_empty() {
        return Err(invalid("it assigns no label".into()));
    }
    for label in &rule.assign {
        if label.key.trim().is_empty() || label.value.trim().is_empty() {
            return Err(invalid(format!(
                "assigned label {:?}={:?} needs a key and a value",
                label.key, label.value
            )));
        }
    }
    if !rule.hostname_glob.is_empty() {
        glob::Pattern::new(&rule.hostname_glob)
            .map_err(|e| invalid(format!("hostname glob {:?}: {e}", rule.hostname_glob)))?;
    }
    if !rule.address_cidr.is_empty() {
        rule.address_cidr
            .parse::<ipnet::IpNet>()
            .map_err(|e| invalid(format!("address CIDR {:?}: {e}", rule.address_cidr)))?;
    }
    Ok(())
}

fn find_ruleset<'a>(
    doc: &'a mut PolicyDocument,
    name: &str,
) -> Result<&'a mut Ruleset, ControlError> {
    doc.rulesets
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or_else(|| ControlError::NotFound(format!("no ruleset {name:?} in the draft")))
}

fn workload<'a>(doc: &'a mut PolicyDocument, id: &str) -> &'a mut WorkloadPolicy {
    if let Some(i) = doc.workloads.iter().position(|w| w.workload_id == id) {
        return &mut doc.workloads[i];
    }
    doc.workloads.push(WorkloadPolicy {
        workload_id: id.to_string(),
        labels: BTreeMap::new(),
        mode: None,
        quarantined: false,
        enforce_outbound: false,
    });
    doc.workloads
        .sort_by(|a, b| a.workload_id.cmp(&b.workload_id));
    let i = doc
        .workloads
        .iter()
        .position(|w| w.workload_id == id)
        .expect("just added");
    &mut doc.workloads[i]
}

fn rule_from(rule: &Option<proto::Rule>) -> Result<Rule, ControlError> {
    let rule = rule
        .as_ref()
        .ok_or_else(|| ControlError::Invalid("the event has no rule".into()))?;
    Rule::try_from(rule).map_err(|e| ControlError::Invalid(e.to_string()))
}

impl PolicyState {
    pub fn active(&self) -> Option<&Provisioned> {
        self.versions.last()
    }

    pub fn version(&self, number: u64) -> Option<&Provisioned> {
        self.versions.iter().find(|p| p.version.version == number)
    }

    /// Applies one event, or refuses it and leaves the state unchanged. `signer` signs the
    /// versions that provisioning, quarantine and rollback produce.
    pub fn apply(
        &mut self,
        event: &proto::ControlEvent,
        signer: &PolicySigner,
    ) -> Result<(), ControlError> {
        if event.event_id.trim().is_empty() {
            return Err(ControlError::Unattributed("event_id"));
        }
        if event.actor.trim().is_empty() {
            return Err(ControlError::Unattributed("actor"));
        }
        if event.at_unix_ns == 0 {
            return Err(ControlError::Unattributed("time (at_unix_ns)"));
        }
        if self.applied_ids.contains(&event.event_id) {
            return Err(ControlError::Replayed(event.event_id.clone()));
        }
        let Some(kind) = &event.event else {
            return Err(ControlError::Empty(event.event_id.clone()));
        };
        let mut draft = self.draft.clone();
        let mut reviews = self.reviews.clone();
        let mut label_rules = self.label_rules.clone();
        let mut label_origin = self.label_origin.clone();
        let mut new_version: Option<PolicyDocument> = None;
        let what = match kind {
            Event::LabelAssigned(e) => {
                let label = e
                    .label
                    .as_ref()
                    .ok_or_else(|| ControlError::Invalid("label_assigned has no label".into()))?;
                workload(&mut draft, &e.workload_id)
                    .labels
                    .insert(label.key.clone(), label.value.clone());
                label_origin.insert(
                    (e.workload_id.clone(), label.key.clone()),
                    event.actor.clone(),
                );
                format!(
                    "label {}={} assigned to {}",
                    label.key, label.value, e.workload_id
                )
            }
            Event::LabelRemoved(e) => {
                let w = workload(&mut draft, &e.workload_id);
                if w.labels.remove(&e.key).is_none() {
                    return Err(ControlError::NotFound(format!(
                        "workload {} has no label {:?}",
                        e.workload_id, e.key
                    )));
                }
                label_origin.insert((e.workload_id.clone(), e.key.clone()), event.actor.clone());
                format!("label {} removed from {}", e.key, e.workload_id)
            }
            Event::RulesetDrafted(e) => {
                let proto_rs = e.ruleset.as_ref().ok_or_else(|| {
                    ControlError::Invalid("ruleset_drafted has no ruleset".into())
                })?;
                let scope = proto_rs.scope.iter().map(Into::into).collect();
                match draft.rulesets.iter_mut().find(|r| r.name == proto_rs.name) {
                    Some(existing) => {
                        existing.scope = scope;
                        existing.description = proto_rs.description.clone();
                    }
                    None => draft.rulesets.push(Ruleset {
                        name: proto_rs.name.clone(),
                        description: proto_rs.description.clone(),
                        scope,
                        rules: vec![],
                    }),
                }
                format!("ruleset {} drafted", proto_rs.name)
            }
            Event::RulesetDeleted(e) => {
                let before = draft.rulesets.len();
                draft.rulesets.retain(|r| r.name != e.ruleset);
                if draft.rulesets.len() == before {
                    return Err(ControlError::NotFound(format!(
                        "no ruleset {:?} in the draft",
                        e.ruleset
                    )));
                }
                format!("ruleset {} deleted", e.ruleset)
            }
            Event::RuleDrafted(e) => {
                let rule = rule_from(&e.rule)?;
                if let Some((rs, _)) = draft.rules().find(|(_, r)| r.id == rule.id) {
                    return Err(ControlError::Conflict(format!(
                        "rule {:?} already exists in ruleset {:?}: edit it instead of drafting it again",
                        rule.id, rs.name
                    )));
                }
                let id = rule.id.clone();
                find_ruleset(&mut draft, &e.ruleset)?.rules.push(rule);
                format!("rule {id} drafted in {}", e.ruleset)
            }
            Event::RuleEdited(e) => {
                let rule = rule_from(&e.rule)?;
                let rs = find_ruleset(&mut draft, &e.ruleset)?;
                let slot = rs
                    .rules
                    .iter_mut()
                    .find(|r| r.id == rule.id)
                    .ok_or_else(|| {
                        ControlError::NotFound(format!(
                            "no rule {:?} in ruleset {:?} to edit (deleted meanwhile?)",
                            rule.id, e.ruleset
                        ))
                    })?;
                let id = rule.id.clone();
                *slot = rule;
                format!("rule {id} edited in {}", e.ruleset)
            }
            Event::RuleDeleted(e) => {
                let rs = find_ruleset(&mut draft, &e.ruleset)?;
                let before = rs.rules.len();
                rs.rules.retain(|r| r.id != e.rule_id);
                if rs.rules.len() == before {
                    return Err(ControlError::NotFound(format!(
                        "no rule {:?} in ruleset {:?} to delete",
                        e.rule_id, e.ruleset
                    )));
                }
                format!("rule {} deleted from {}", e.rule_id, e.ruleset)
            }
            Event::IpListDrafted(e) => {
                let list = e
                    .ip_list
                    .as_ref()
                    .ok_or_else(|| ControlError::Invalid("ip_list_drafted has no list".into()))?;
                let cidrs = |v: &[String]| {
                    v.iter()
                        .map(|c| {
                            c.parse::<ipnet::IpNet>().map_err(|_| {
                                ControlError::Invalid(format!(
                                    "ip_lists[{}]: {c:?} is not a CIDR",
                                    list.name
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                let list = IpList {
                    name: list.name.clone(),
                    description: list.description.clone(),
                    cidrs: cidrs(&list.cidrs)?,
                    exclusions: cidrs(&list.exclusions)?,
                };
                let name = list.name.clone();
                match draft.ip_lists.iter_mut().find(|l| l.name == name) {
                    Some(existing) => *existing = list,
                    None => draft.ip_lists.push(list),
                }
                format!("IP list {name} drafted")
            }
            Event::ServiceDrafted(e) => {
                let svc = e.service.as_ref().ok_or_else(|| {
                    ControlError::Invalid("service_drafted has no service".into())
                })?;
                let service = Service {
                    name: svc.name.clone(),
                    description: svc.description.clone(),
                    ports: svc.ports.iter().map(Into::into).collect(),
                };
                let name = service.name.clone();
                match draft.services.iter_mut().find(|s| s.name == name) {
                    Some(existing) => *existing = service,
                    None => draft.services.push(service),
                }
                format!("service {name} drafted")
            }
            Event::LabelRuleSet(e) => {
                let rule = e
                    .rule
                    .as_ref()
                    .ok_or_else(|| ControlError::Invalid("label_rule_set has no rule".into()))?;
                check_label_rule(rule)?;
                label_rules.insert(rule.id.clone(), rule.clone());
                format!("label rule {} set", rule.id)
            }
            Event::LabelRuleDeleted(e) => {
                if label_rules.remove(&e.rule_id).is_none() {
                    return Err(ControlError::NotFound(format!(
                        "no label rule {:?}",
                        e.rule_id
                    )));
                }
                format!("label rule {} deleted", e.rule_id)
            }
            Event::DenyRuleDrafted(_) | Event::DenyRuleDeleted(_) => {
                return Err(ControlError::Refused(
                    "deny rules are not handled by this policy engine yet".into(),
                ));
            }
            Event::RecommendationAccepted(e) => {
                if reviews.contains_key(&e.recommendation_id) {
                    return Err(ControlError::Conflict(format!(
                        "recommendation {} was already {}",
                        e.recommendation_id,
                        if reviews[&e.recommendation_id] == Review::Accepted {
                            "accepted"
                        } else {
                            "rejected"
                        }
                    )));
                }
                let rule = rule_from(&e.rule)?;
                if draft.rules().any(|(_, r)| r.id == rule.id) {
                    return Err(ControlError::Conflict(format!(
                        "rule {:?} already exists in the draft",
                        rule.id
                    )));
                }
                find_ruleset(&mut draft, &e.ruleset)?.rules.push(rule);
                reviews.insert(e.recommendation_id.clone(), Review::Accepted);
                format!(
                    "recommendation {} accepted into {}",
                    e.recommendation_id, e.ruleset
                )
            }
            Event::RecommendationRejected(e) => {
                if reviews.contains_key(&e.recommendation_id) {
                    return Err(ControlError::Conflict(format!(
                        "recommendation {} was already reviewed",
                        e.recommendation_id
                    )));
                }
                reviews.insert(e.recommendation_id.clone(), Review::Rejected);
                format!("recommendation {} rejected", e.recommendation_id)
            }
            Event::EnforcementModeSet(e) => {
                let mode = proto::EnforcementMode::try_from(e.mode).map_err(|_| {
                    ControlError::Invalid(format!("unknown enforcement mode {}", e.mode))
                })?;
                let mode = match mode {
                    proto::EnforcementMode::Idle => EnforcementMode::Idle,
                    proto::EnforcementMode::VisibilityOnly => EnforcementMode::VisibilityOnly,
                    proto::EnforcementMode::Selective => EnforcementMode::Selective,
                    proto::EnforcementMode::Full => EnforcementMode::Full,
                    _ => {
                        return Err(ControlError::Invalid(
                            "enforcement mode is unspecified".into(),
                        ));
                    }
                };
                workload(&mut draft, &e.workload_id).mode = Some(mode);
                format!(
                    "mode of {} set to {mode} (takes effect when provisioned)",
                    e.workload_id
                )
            }
            Event::QuarantineSet(e) => {
                // Takes effect at once: a new version of the active policy with the flag.
                let mut doc = self
                    .active()
                    .map(|p| p.version.document.clone())
                    .unwrap_or_else(|| draft.clone());
                workload(&mut doc, &e.workload_id).quarantined = true;
                workload(&mut draft, &e.workload_id).quarantined = true;
                new_version = Some(doc);
                format!("{} quarantined", e.workload_id)
            }
            Event::QuarantineLifted(e) => {
                let mut doc = self
                    .active()
                    .map(|p| p.version.document.clone())
                    .unwrap_or_else(|| draft.clone());
                workload(&mut doc, &e.workload_id).quarantined = false;
                workload(&mut draft, &e.workload_id).quarantined = false;
                new_version = Some(doc);
                format!("quarantine of {} lifted", e.workload_id)
            }
            Event::PolicyProvisioned(e) => {
                let next = self.active().map_or(1, |p| p.version.version + 1);
                if e.version != next {
                    return Err(ControlError::Forged(format!(
                        "provisioning event claims version {} but the next version is {next}: forged or out of order",
                        e.version
                    )));
                }
                if draft.rulesets.iter().all(|r| r.rules.is_empty()) && draft.deny_rules.is_empty()
                {
                    return Err(ControlError::Refused(
                        "the draft has no rules: refusing to provision an empty policy".into(),
                    ));
                }
                if e.content_sha256 != draft.content_sha256() {
                    return Err(ControlError::Forged(format!(
                        "provisioning event's content hash {} is not the draft's {}: forged or out of order",
                        hex::encode(&e.content_sha256),
                        hex::encode(draft.content_sha256())
                    )));
                }
                new_version = Some(draft.clone());
                format!("version {next} provisioned")
            }
            Event::PolicyRolledBack(e) => {
                let old = self.version(e.to_version).ok_or_else(|| {
                    ControlError::NotFound(format!(
                        "no provisioned version {} to roll back to",
                        e.to_version
                    ))
                })?;
                let doc = old.version.document.clone();
                draft = doc.clone();
                new_version = Some(doc);
                format!("rolled back to the content of version {}", e.to_version)
            }
        };
        draft
            .validate()
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let provisioned = match new_version {
            Some(doc) => {
                doc.validate()
                    .map_err(|e| ControlError::Invalid(e.to_string()))?;
                let parent = self.active().map_or(0, |p| p.version.version);
                let mut version =
                    PolicyVersion::new(parent + 1, parent, &event.actor, &event.reason, doc);
                version.created_unix_ns = event.at_unix_ns;
                let signed = signer.sign(&version);
                Some(Provisioned { version, signed })
            }
            None => None,
        };
        // Everything checked: commit.
        self.draft = draft;
        self.reviews = reviews;
        self.label_rules = label_rules;
        self.label_origin = label_origin;
        self.versions.extend(provisioned);
        self.applied_ids.insert(event.event_id.clone());
        self.history.push(HistoryEntry {
            event_id: event.event_id.clone(),
            at_unix_ns: event.at_unix_ns,
            actor: event.actor.clone(),
            reason: event.reason.clone(),
            what,
        });
        Ok(())
    }

    /// Rules added to, removed from and changed in the draft relative to the active version.
    pub fn diff(&self) -> Diff {
        let empty = PolicyDocument::default();
        let active = self.active().map_or(&empty, |p| &p.version.document);
        let index = |doc: &PolicyDocument| -> BTreeMap<String, (String, Rule)> {
            doc.rules()
                .map(|(rs, r)| (r.id.clone(), (rs.name.clone(), r.clone())))
                .collect()
        };
        let (old, new) = (index(active), index(&self.draft));
        let entry = |(ruleset, rule): &(String, Rule)| DiffRule {
            ruleset: ruleset.clone(),
            rule: rule.clone(),
        };
        Diff {
            added: new
                .iter()
                .filter(|(id, _)| !old.contains_key(*id))
                .map(|(_, v)| entry(v))
                .collect(),
            removed: old
                .iter()
                .filter(|(id, _)| !new.contains_key(*id))
                .map(|(_, v)| entry(v))
                .collect(),
            changed: new
                .iter()
                .filter_map(|(id, v)| {
                    old.get(id).filter(|o| *o != v).map(|o| DiffChange {
                        before: entry(o),
                        after: entry(v),
                    })
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DiffRule {
    pub ruleset: String,
    pub rule: Rule,
}

#[derive(Clone, Debug, Serialize)]
pub struct DiffChange {
    pub before: DiffRule,
    pub after: DiffRule,
}

#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub added: Vec<DiffRule>,
    pub removed: Vec<DiffRule>,
    pub changed: Vec<DiffChange>,
}

/// The changes that put `rule` (the rule of recommendation `r`, possibly edited) into
/// `draft`: its IP lists and ruleset when missing, then the acceptance. Suspicious
/// findings are refused: they are for review, not for allowing.
pub fn accept_changes(
    draft: &PolicyDocument,
    r: &bulkhead_recommender::Recommendation,
    rule: Rule,
) -> Result<Vec<Event>, String> {
    if r.kind == bulkhead_recommender::Kind::Suspicious {
        return Err(format!(
            "recommendation {} is a suspicious pattern to review, not a rule to accept; reject it, or draft a rule by hand if the traffic is legitimate",
            r.id
        ));
    }
    let mut events = Vec::new();
    for list in &r.ip_lists {
        if draft.ip_lists.iter().any(|l| l == list) {
            continue;
        }
        events.push(Event::IpListDrafted(proto::IpListDrafted {
            ip_list: Some(proto::IpList {
                name: list.name.clone(),
                description: list.description.clone(),
                cidrs: list.cidrs.iter().map(ToString::to_string).collect(),
                exclusions: list.exclusions.iter().map(ToString::to_string).collect(),
            }),
        }));
    }
    if !draft.rulesets.iter().any(|rs| rs.name == r.ruleset) {
        events.push(Event::RulesetDrafted(proto::RulesetDrafted {
            ruleset: Some(proto::Ruleset {
                name: r.ruleset.clone(),
                description: "drafted from a recommendation".into(),
                scope: r.scope.iter().map(proto::Label::from).collect(),
                rules: vec![],
            }),
        }));
    }
    events.push(Event::RecommendationAccepted(
        proto::RecommendationAccepted {
            recommendation_id: r.id.clone(),
            ruleset: r.ruleset.clone(),
            rule: Some(proto::Rule::from(&rule)),
        },
    ));
    Ok(events)
}
