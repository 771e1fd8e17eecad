//! The policy state as a fold: bad input is refused with a clear error and leaves the
//! state unchanged; provisioning signs deterministically.

use bulkhead_policy::state::{ControlError, PolicyState};
use bulkhead_schemas::policy::{PolicySigner, PolicyVerifier};
use bulkhead_schemas::proto::{self, control_event::Event};

fn signer() -> PolicySigner {
    use ed25519_dalek::SigningKey;
    PolicySigner::new(SigningKey::from_bytes(&[7u8; 32]))
}

fn event(n: u64, change: Event) -> proto::ControlEvent {
    proto::ControlEvent {
        schema_version: 1,
        event_id: format!("event-{n}"),
        at_unix_ns: 1_764_115_200_000_000_000 + n,
        actor: "alice".into(),
        reason: "test".into(),
        event: Some(change),
    }
}

fn label(k: &str, v: &str) -> proto::Label {
    proto::Label {
        key: k.into(),
        value: v.into(),
    }
}

fn ruleset(name: &str, scope: &[(&str, &str)]) -> Event {
    Event::RulesetDrafted(proto::RulesetDrafted {
        ruleset: Some(proto::Ruleset {
            name: name.into(),
            description: String::new(),
            scope: scope.iter().map(|(k, v)| label(k, v)).collect(),
            rules: vec![],
        }),
    })
}

fn rule_yaml(yaml: &str) -> proto::Rule {
    let rule: bulkhead_schemas::policy::Rule = serde_yaml_ng::from_str(yaml).unwrap();
    proto::Rule::from(&rule)
}

fn web_to_api() -> proto::Rule {
    rule_yaml(
        "{id: web-to-api, consumers: [{labels: [role=web]}], providers: [{labels: [role=api]}], services: [tcp/8080]}",
    )
}

fn provision(state: &PolicyState) -> Event {
    Event::PolicyProvisioned(proto::PolicyProvisioned {
        version: state.active().map_or(1, |a| a.version.version + 1),
        content_sha256: state.draft.content_sha256().to_vec(),
    })
}

/// A state with one ruleset, one rule, labels, and version 1 provisioned.
fn base() -> (PolicyState, Vec<proto::ControlEvent>) {
    let s = signer();
    let mut state = PolicyState::default();
    let mut events = vec![
        event(1, ruleset("crm-prod", &[("app", "crm"), ("env", "prod")])),
        event(
            2,
            Event::RuleDrafted(proto::RuleDrafted {
                ruleset: "crm-prod".into(),
                rule: Some(web_to_api()),
            }),
        ),
        event(
            3,
            Event::LabelAssigned(proto::LabelAssigned {
                workload_id: "h1".into(),
                label: Some(label("app", "crm")),
            }),
        ),
    ];
    for e in &events {
        state.apply(e, &s).unwrap();
    }
    let p = event(4, provision(&state));
    state.apply(&p, &s).unwrap();
    events.push(p);
    (state, events)
}

fn assert_refused(state: &mut PolicyState, e: proto::ControlEvent, wanted: &str) -> ControlError {
    let before = format!("{:?}", state);
    let err = state.apply(&e, &signer()).unwrap_err();
    assert!(
        err.to_string().contains(wanted),
        "error {err:?} should mention {wanted:?}"
    );
    assert_eq!(
        before,
        format!("{:?}", state),
        "a refused event must leave the state unchanged"
    );
    err
}

#[test]
fn provisioning_signs_a_verifiable_version_and_replay_gives_the_same_bytes() {
    let (state, events) = base();
    let active = state.active().unwrap();
    assert_eq!(active.version.version, 1);
    assert_eq!(active.version.provisioned_by, "alice");
    let verifier = PolicyVerifier::new([signer().verifying_key()]);
    let verified = verifier.verify_bytes(&active.signed_bytes(), None).unwrap();
    assert_eq!(verified.document, state.draft);
    let mut again = PolicyState::default();
    for e in &events {
        again.apply(e, &signer()).unwrap();
    }
    assert_eq!(
        again.active().unwrap().signed_bytes(),
        active.signed_bytes()
    );
    assert_eq!(again.draft, state.draft);
    assert_eq!(again.history.len(), 4);
    assert_eq!(again.history[1].what, "rule web-to-api drafted in crm-prod");
}

#[test]
fn invalid_rules_are_refused_with_the_reason() {
    let (mut state, _) = base();
    let bad_key = rule_yaml(
        "{id: r2, consumers: [{labels: [team=x]}], providers: [{labels: [role=api]}], services: [tcp/80]}",
    );
    assert_refused(
        &mut state,
        event(
            10,
            Event::RuleDrafted(proto::RuleDrafted {
                ruleset: "crm-prod".into(),
                rule: Some(bad_key),
            }),
        ),
        "unknown label key \"team\"",
    );
    let bad_port = rule_yaml(
        "{id: r3, consumers: [{labels: [role=web]}], providers: [{labels: [role=api]}], services: [tcp/70000]}",
    );
    assert_refused(
        &mut state,
        event(
            11,
            Event::RuleDrafted(proto::RuleDrafted {
                ruleset: "crm-prod".into(),
                rule: Some(bad_port),
            }),
        ),
        "port 70000 is out of range 1-65535",
    );
    let bad_cidr = Event::IpListDrafted(proto::IpListDrafted {
        ip_list: Some(proto::IpList {
            name: "partners".into(),
            description: String::new(),
            cidrs: vec!["10.0.0.0/33".into()],
            exclusions: vec![],
        }),
    });
    assert_refused(
        &mut state,
        event(12, bad_cidr),
        "\"10.0.0.0/33\" is not a CIDR",
    );
    let unknown_list = rule_yaml(
        "{id: r4, consumers: [{ip_list: nowhere}], providers: [{labels: [role=api]}], services: [tcp/80]}",
    );
    assert_refused(
        &mut state,
        event(
            13,
            Event::RuleDrafted(proto::RuleDrafted {
                ruleset: "crm-prod".into(),
                rule: Some(unknown_list),
            }),
        ),
        "unknown IP list \"nowhere\"",
    );
}

#[test]
fn conflicting_edits_are_refused() {
    let (mut state, _) = base();
    // Drafting an id that exists.
    assert_refused(
        &mut state,
        event(
            20,
            Event::RuleDrafted(proto::RuleDrafted {
                ruleset: "crm-prod".into(),
                rule: Some(web_to_api()),
            }),
        ),
        "already exists",
    );
    // Editing a rule another analyst deleted meanwhile.
    let s = signer();
    state
        .apply(
            &event(
                21,
                Event::RuleDeleted(proto::RuleDeleted {
                    ruleset: "crm-prod".into(),
                    rule_id: "web-to-api".into(),
                }),
            ),
            &s,
        )
        .unwrap();
    assert_refused(
        &mut state,
        event(
            22,
            Event::RuleEdited(proto::RuleEdited {
                ruleset: "crm-prod".into(),
                rule: Some(web_to_api()),
            }),
        ),
        "deleted meanwhile",
    );
    // Reviewing the same recommendation twice.
    state
        .apply(
            &event(
                23,
                Event::RecommendationRejected(proto::RecommendationRejected {
                    recommendation_id: "rec-1".into(),
                }),
            ),
            &s,
        )
        .unwrap();
    assert_refused(
        &mut state,
        event(
            24,
            Event::RecommendationRejected(proto::RecommendationRejected {
                recommendation_id: "rec-1".into(),
            }),
        ),
        "already reviewed",
    );
}

#[test]
fn empty_drafts_forged_and_replayed_events_are_refused() {
    let mut empty = PolicyState::default();
    let p = event(1, provision(&empty));
    assert_refused(&mut empty, p, "the draft has no rules");

    let (mut state, events) = base();
    // Replayed: an event id already applied.
    assert_refused(&mut state, events[1].clone(), "already applied");
    // Forged: a provisioning event whose hash is not the draft's, or with a wrong version.
    let mut forged = provision(&state);
    if let Event::PolicyProvisioned(p) = &mut forged {
        p.content_sha256 = vec![0; 32];
    }
    assert_refused(&mut state, event(30, forged), "forged");
    let mut skipped = provision(&state);
    if let Event::PolicyProvisioned(p) = &mut skipped {
        p.version = 7;
    }
    assert_refused(&mut state, event(31, skipped), "next version is 2");
    // Unattributed.
    let mut anonymous = event(32, provision(&state));
    anonymous.actor = " ".into();
    assert_refused(&mut state, anonymous, "no actor");
}

#[test]
fn quarantine_takes_effect_at_once_and_rollback_is_a_new_version() {
    let (mut state, _) = base();
    let s = signer();
    // A draft change that is not provisioned yet.
    state
        .apply(
            &event(
                40,
                Event::RuleDeleted(proto::RuleDeleted {
                    ruleset: "crm-prod".into(),
                    rule_id: "web-to-api".into(),
                }),
            ),
            &s,
        )
        .unwrap();
    state
        .apply(
            &event(
                41,
                Event::QuarantineSet(proto::QuarantineSet {
                    workload_id: "h1".into(),
                }),
            ),
            &s,
        )
        .unwrap();
    let v2 = &state.active().unwrap().version;
    assert_eq!(v2.version, 2);
    assert!(
        v2.document
            .workloads
            .iter()
            .any(|w| w.workload_id == "h1" && w.quarantined)
    );
    assert_eq!(
        v2.document.rules().count(),
        1,
        "quarantine provisions the active policy, not pending draft edits"
    );
    state
        .apply(
            &event(
                42,
                Event::PolicyRolledBack(proto::PolicyRolledBack { to_version: 1 }),
            ),
            &s,
        )
        .unwrap();
    let v3 = &state.active().unwrap().version;
    assert_eq!((v3.version, v3.parent_version), (3, 2));
    assert_eq!(
        v3.content_sha256,
        state.version(1).unwrap().version.content_sha256
    );
    assert_refused(
        &mut state,
        event(
            43,
            Event::PolicyRolledBack(proto::PolicyRolledBack { to_version: 9 }),
        ),
        "no provisioned version 9",
    );
    let diff = state.diff();
    assert!(diff.added.is_empty() && diff.removed.is_empty() && diff.changed.is_empty());
}
