use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message as _;

use super::*;
use crate::proto;

const SAMPLE: &str = r#"
custom_label_keys: [team]
ip_lists:
  - name: internet
    cidrs: [0.0.0.0/0, "::/0"]
    exclusions: [10.0.0.0/8]
services:
  - name: https
    ports: [tcp/443]
  - name: dns
    ports: [udp/53, tcp/53]
rulesets:
  - name: crm-prod
    scope: [app=crm, env=prod]
    rules:
      - id: web-to-api
        consumers: [{labels: [role=web]}]
        providers: [{labels: [role=api, team=payments]}]
        services: [https, tcp/8080-8090]
      - id: internet-to-web
        consumers: [{ip_list: internet}]
        providers: [{labels: [role=web]}]
        services: [https]
        extra_scope: true
deny_rules:
  - id: no-telnet
    consumers: [{any: true}]
    providers: [{any: true}]
    services: [tcp/23]
workloads:
  - workload_id: host-1
    labels: {app: crm, env: prod, role: web}
    mode: full
  - workload_id: host-2
    labels: {app: crm, env: prod, role: api, team: payments}
    quarantined: true
default_mode: visibility_only
"#;

fn sample() -> PolicyDocument {
    PolicyDocument::load(SAMPLE, "sample.yaml").expect("the sample policy is valid")
}

#[test]
fn yaml_sample_reads_with_readable_forms() {
    let doc = sample();
    let rule = &doc.rulesets[0].rules[0];
    assert_eq!(rule.services[0], ServiceRef::Named("https".into()));
    assert_eq!(
        rule.services[1],
        ServiceRef::Ports(PortRange {
            protocol: 6,
            from: 8080,
            to: 8090
        })
    );
    assert_eq!(
        rule.consumers[0],
        Actor::Labels(vec![Label::new("role", "web")])
    );
    assert_eq!(doc.mode_of("host-1"), EnforcementMode::Full);
    assert_eq!(doc.mode_of("host-2"), EnforcementMode::VisibilityOnly);
    assert_eq!(doc.mode_of("unknown"), EnforcementMode::VisibilityOnly);
    assert!(doc.ip_lists[0].contains("8.8.8.8".parse().unwrap()));
    assert!(!doc.ip_lists[0].contains("10.1.1.1".parse().unwrap()));
}

#[test]
fn yaml_json_and_protobuf_round_trips_are_lossless() {
    let doc = sample();
    assert_eq!(
        PolicyDocument::load(&doc.to_yaml(), "again.yaml").unwrap(),
        doc
    );
    assert_eq!(
        PolicyDocument::load(&doc.to_json_pretty(), "again.json").unwrap(),
        doc
    );
    let bytes = proto::PolicyDocument::from(&doc).encode_to_vec();
    let back = PolicyDocument::try_from(&proto::PolicyDocument::decode(bytes.as_slice()).unwrap())
        .unwrap();
    assert_eq!(back, doc);
}

#[test]
fn content_hash_is_deterministic_and_sensitive() {
    let doc = sample();
    assert_eq!(doc.content_sha256(), sample().content_sha256());
    let mut changed = doc.clone();
    changed.workloads[0]
        .labels
        .insert("loc".into(), "paris".into());
    assert_ne!(changed.content_sha256(), doc.content_sha256());
}

#[test]
fn label_sets_or_within_a_key_and_within_across_keys() {
    let set = vec![
        Label::new("role", "web"),
        Label::new("role", "api"),
        Label::new("env", "prod"),
    ];
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(label_set_matches(
        &set,
        &labels(&[("role", "api"), ("env", "prod")])
    ));
    assert!(!label_set_matches(
        &set,
        &labels(&[("role", "db"), ("env", "prod")])
    ));
    assert!(!label_set_matches(&set, &labels(&[("role", "web")])));
}

fn problems(yaml: &str) -> String {
    match PolicyDocument::load(yaml, "bad.yaml") {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn validation_names_the_item_and_the_problem() {
    let unknown_key = problems(
        "rulesets: [{name: r, scope: [tier=web], rules: [{id: a, consumers: [{any: true}], providers: [{any: true}], services: [tcp/80]}]}]",
    );
    assert!(
        unknown_key.contains("rulesets[r].scope")
            && unknown_key.contains("unknown label key \"tier\""),
        "{unknown_key}"
    );

    let port = problems(
        "rulesets: [{name: r, scope: [app=x], rules: [{id: a, consumers: [{any: true}], providers: [{any: true}], services: [tcp/70000]}]}]",
    );
    assert!(
        port.contains("rulesets[r].rules[a].services[0]: port 70000 is out of range 1-65535"),
        "{port}"
    );

    let scope = problems("rulesets: [{name: r, scope: []}]");
    assert!(scope.contains("rulesets[r].scope: empty scope"), "{scope}");

    let cidr = problems("ip_lists: [{name: x, cidrs: [10.0.0.0/33]}]");
    assert!(
        cidr.contains("bad.yaml") && cidr.contains("ip_lists[0].cidrs[0]"),
        "{cidr}"
    );

    let reference = problems(
        "rulesets: [{name: r, scope: [app=x], rules: [{id: a, consumers: [{ip_list: nope}], providers: [{any: true}], services: [web]}]}]",
    );
    assert!(
        reference.contains("unknown IP list \"nope\"")
            && reference.contains("unknown service \"web\""),
        "{reference}"
    );
    assert!(
        reference.contains("2 problems"),
        "every problem is reported at once: {reference}"
    );

    let unknown_field = problems("rulesets: [{name: r, scop: [app=x]}]");
    assert!(unknown_field.contains("scop"), "{unknown_field}");

    let duplicate = problems(
        "deny_rules: [{id: a, consumers: [{any: true}], providers: [{any: true}], services: [icmp]}, {id: a, consumers: [{any: true}], providers: [{any: true}], services: [icmp/8]}]",
    );
    assert!(
        duplicate.contains("duplicate rule id \"a\"")
            && duplicate.contains("icmp/8: icmp has no ports; write icmp"),
        "{duplicate}"
    );
}

// ---- signatures ----

fn signed_sample(signer: &PolicySigner, version: u64) -> proto::SignedPolicy {
    signer.sign(&PolicyVersion::new(
        version,
        version - 1,
        "alice",
        "test",
        sample(),
    ))
}

#[test]
fn a_signed_policy_verifies_and_returns_the_version() {
    let signer = PolicySigner::generate();
    let verifier = PolicyVerifier::new([signer.verifying_key()]);
    let version = verifier
        .verify(&signed_sample(&signer, 3), Some(2))
        .unwrap();
    assert_eq!(version.version, 3);
    assert_eq!(version.document, sample());
    assert_eq!(version.content_sha256, sample().content_sha256());
}

#[test]
fn canonical_bytes_are_domain_prefix_then_payload() {
    let signer = PolicySigner::generate();
    let signed = signed_sample(&signer, 1);
    let message = signed_message(&signed.payload);
    assert!(message.starts_with(b"bulkhead.policy.v1\0"));
    assert_eq!(
        &message[SIGNATURE_DOMAIN.len()..],
        signed.payload.as_slice()
    );
    let signature = ed25519_dalek::Signature::from_slice(&signed.signature).unwrap();
    signer
        .verifying_key()
        .verify_strict(&message, &signature)
        .unwrap();
    // A signature over the bare payload (no domain) must not be accepted.
    use ed25519_dalek::Signer as _;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&signer.to_pkcs8_pem()).unwrap();
    let mut undomained = signed.clone();
    undomained.signature = key.sign(&signed.payload).to_bytes().to_vec();
    let verifier = PolicyVerifier::new([signer.verifying_key()]);
    assert!(matches!(
        verifier.verify(&undomained, None),
        Err(PolicyError::BadSignature { .. })
    ));
}

use ed25519_dalek::pkcs8::DecodePrivateKey as _;

#[test]
fn unsigned_forged_unknown_stale_and_malformed_policy_is_refused() {
    let signer = PolicySigner::generate();
    let verifier = PolicyVerifier::new([signer.verifying_key()]);
    let good = signed_sample(&signer, 5);

    let mut unsigned = good.clone();
    unsigned.signature.clear();
    assert!(matches!(
        verifier.verify(&unsigned, None),
        Err(PolicyError::Unsigned)
    ));

    let other = PolicySigner::generate();
    assert!(matches!(
        verifier.verify(&signed_sample(&other, 5), None),
        Err(PolicyError::UnknownKey { .. })
    ));

    // The attacker's key with our key's id: still a bad signature.
    let mut forged = signed_sample(&other, 5);
    forged.key_id = signer.key_id().to_string();
    assert!(matches!(
        verifier.verify(&forged, None),
        Err(PolicyError::BadSignature { .. })
    ));

    assert!(matches!(
        verifier.verify(&good, Some(5)),
        Err(PolicyError::Stale {
            version: 5,
            applied: 5
        })
    ));
    assert!(matches!(
        verifier.verify(&good, Some(9)),
        Err(PolicyError::Stale { .. })
    ));

    assert!(matches!(
        verifier.verify_bytes(b"\xff\xff garbage", None),
        Err(PolicyError::Malformed(_))
    ));

    // Validly signed but invalid content is refused too.
    let mut doc = sample();
    doc.rulesets[0].scope.clear();
    let invalid = signer.sign(&PolicyVersion::new(6, 5, "bob", "", doc));
    let err = verifier.verify(&invalid, Some(5)).unwrap_err();
    assert!(err.to_string().contains("empty scope"), "{err}");
}

#[test]
fn keys_round_trip_through_pem_and_hex() {
    let signer = PolicySigner::generate();
    let again = PolicySigner::from_pkcs8_pem(&signer.to_pkcs8_pem(), "key.pem").unwrap();
    assert_eq!(again.verifying_key(), signer.verifying_key());
    let from_pem = parse_verifying_key(&signer.public_key_pem(), "pub.pem").unwrap();
    let from_hex =
        parse_verifying_key(&hex::encode(signer.verifying_key().as_bytes()), "arg").unwrap();
    assert_eq!(from_pem, from_hex);
    let err = parse_verifying_key("abc", "--policy-key")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("--policy-key:"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Flipping any bit of the signed envelope's payload or signature is detected.
    #[test]
    fn any_tampered_bit_is_rejected(byte in any::<prop::sample::Index>(), bit in 0u8..8, in_signature in any::<bool>()) {
        let signer = PolicySigner::generate();
        let verifier = PolicyVerifier::new([signer.verifying_key()]);
        let mut signed = signed_sample(&signer, 2);
        let target = if in_signature { &mut signed.signature } else { &mut signed.payload };
        let i = byte.index(target.len());
        target[i] ^= 1 << bit;
        prop_assert!(verifier.verify(&signed, None).is_err());
    }

    #[test]
    fn generated_documents_round_trip_and_validate(doc in arb_document()) {
        prop_assert_eq!(doc.validate(), Ok(()));
        let bytes = proto::PolicyDocument::from(&doc).encode_to_vec();
        let back = PolicyDocument::try_from(&proto::PolicyDocument::decode(bytes.as_slice()).unwrap()).unwrap();
        prop_assert_eq!(&back, &doc);
        prop_assert_eq!(PolicyDocument::from_yaml(&doc.to_yaml(), "p").unwrap(), doc);
    }

    /// Any out-of-range port anywhere is reported, with the rule's path.
    #[test]
    fn out_of_range_ports_are_always_reported(doc in arb_document(), port in 65536u32..1_000_000) {
        let mut doc = doc;
        let ruleset = doc.rulesets[0].name.clone();
        let rule = doc.rulesets[0].rules[0].id.clone();
        doc.rulesets[0].rules[0].services.push(ServiceRef::Ports(PortRange { protocol: 6, from: port, to: port }));
        let err = doc.validate().unwrap_err().to_string();
        let expected = format!("rulesets[{ruleset}].rules[{rule}].services");
        prop_assert!(err.contains(&expected) && err.contains("out of range"), "{}", err);
    }
}

fn arb_label() -> impl Strategy<Value = Label> {
    (
        prop::sample::select(&STANDARD_LABEL_KEYS[..]),
        "[a-z][a-z0-9-]{0,8}",
    )
        .prop_map(|(k, v)| Label::new(k, v))
}

fn arb_port_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        (1u32..=65535).prop_map(|p| PortRange {
            protocol: 6,
            from: p,
            to: p
        }),
        (1u32..=60000, 0u32..5000).prop_map(|(a, d)| PortRange {
            protocol: 17,
            from: a,
            to: a + d
        }),
        Just(PortRange {
            protocol: 1,
            from: 0,
            to: 0
        }),
        Just(PortRange {
            protocol: 6,
            from: 0,
            to: 0
        }),
    ]
}

fn arb_actor() -> impl Strategy<Value = Actor> {
    prop_oneof![
        Just(Actor::Any),
        prop::collection::vec(arb_label(), 1..4).prop_map(Actor::Labels),
        Just(Actor::IpList("internet".into())),
        "[a-z0-9-]{1,12}".prop_map(Actor::Workload),
    ]
}

fn arb_rule(id: usize) -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(arb_actor(), 1..3),
        prop::collection::vec(arb_actor(), 1..3),
        prop::collection::vec(arb_port_range().prop_map(ServiceRef::Ports), 1..3),
        any::<bool>(),
    )
        .prop_map(move |(consumers, providers, services, extra_scope)| Rule {
            id: format!("rule-{id}"),
            description: String::new(),
            consumers,
            providers,
            services,
            extra_scope,
            disabled: false,
        })
}

fn arb_document() -> impl Strategy<Value = PolicyDocument> {
    let rules = (1usize..4).prop_flat_map(|n| (0..n).map(arb_rule).collect::<Vec<_>>());
    (
        rules,
        "[a-z]{1,8}",
        prop::sample::select(&EnforcementMode::ALL[..]),
        any::<bool>(),
    )
        .prop_map(|(rules, app, default_mode, quarantined)| PolicyDocument {
            custom_label_keys: vec![],
            ip_lists: vec![IpList {
                name: "internet".into(),
                description: String::new(),
                cidrs: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
                exclusions: vec![],
            }],
            services: vec![],
            rulesets: vec![Ruleset {
                name: format!("{app}-rs"),
                description: String::new(),
                scope: vec![Label::new("app", app.clone())],
                rules,
            }],
            deny_rules: vec![],
            workloads: vec![WorkloadPolicy {
                workload_id: "w1".into(),
                labels: [("app".to_string(), app)].into_iter().collect(),
                mode: Some(EnforcementMode::Full),
                quarantined,
                enforce_outbound: false,
            }],
            default_mode,
        })
}
