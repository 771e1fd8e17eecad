//! The recommender on small hand-made estates: each test is one rule of the lifting.

use std::collections::BTreeMap;

use bulkhead_recommender::{EdgeRow, Kind, Options, WorkloadLabels, edges_frame, recommend};
use bulkhead_schemas::policy::{Actor, Label};
use polars::prelude::IntoLazy as _;

const HOUR_US: i64 = 3_600_000_000;

fn labels(pairs: &[(&str, &str, &str, &str)]) -> WorkloadLabels {
    pairs
        .iter()
        .map(|(id, role, app, env)| {
            let map: BTreeMap<String, String> = [("role", role), ("app", app), ("env", env)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (id.to_string(), map)
        })
        .collect()
}

fn edge(src: &str, dst: &str, port: i32, flows: i64, bytes_per_flow: i64, first_h: i64) -> EdgeRow {
    let end = |s: &str| -> (Option<String>, Option<String>) {
        if s.parse::<std::net::IpAddr>().is_ok() {
            (None, Some(s.to_string()))
        } else {
            (Some(s.to_string()), Some("10.9.9.9".to_string()))
        }
    };
    let (src_workload, src_ip) = end(src);
    let (dst_workload, dst_ip) = end(dst);
    EdgeRow {
        src_workload,
        src_ip,
        dst_workload,
        dst_ip,
        dst_port: port,
        protocol: if port == 53 || port == 123 { 17 } else { 6 },
        process: Some("server".into()),
        flows,
        packets: flows * 3,
        bytes: flows * bytes_per_flow,
        first_seen_us: first_h * HOUR_US,
        last_seen_us: 24 * HOUR_US,
    }
}

fn run(rows: &[EdgeRow], labels: &WorkloadLabels) -> bulkhead_recommender::Recommendations {
    let frame = edges_frame(rows).unwrap().lazy();
    recommend(frame, labels, &Options::default()).unwrap()
}

#[test]
fn groups_generalise_only_above_the_support_threshold() {
    // 4 web hosts, 2 api hosts. All 4 webs call the api: label rule. Only 1 of 4 webs
    // calls the db directly: stays that one workload.
    let l = labels(&[
        ("w1", "web", "crm", "prod"),
        ("w2", "web", "crm", "prod"),
        ("w3", "web", "crm", "prod"),
        ("w4", "web", "crm", "prod"),
        ("a1", "api", "crm", "prod"),
        ("a2", "api", "crm", "prod"),
        ("d1", "db", "crm", "prod"),
    ]);
    let mut rows = Vec::new();
    for w in ["w1", "w2", "w3", "w4"] {
        rows.push(edge(w, "a1", 8080, 50, 2000, 0));
        rows.push(edge(w, "a2", 8080, 50, 2000, 0));
    }
    rows.push(edge("w1", "d1", 5432, 30, 4000, 0));
    let out = run(&rows, &l);
    assert_eq!(out.suspicious().count(), 0);
    let rules: Vec<_> = out.rules().collect();
    assert_eq!(rules.len(), 2, "{rules:#?}");
    let web_api = rules
        .iter()
        .find(|r| r.rule.services[0].to_string() == "tcp/8080")
        .unwrap();
    assert_eq!(web_api.kind, Kind::IntraScope);
    assert_eq!(
        web_api.rule.consumers,
        vec![Actor::Labels(vec![Label::new("role", "web")])]
    );
    assert_eq!(
        web_api.rule.providers,
        vec![Actor::Labels(vec![Label::new("role", "api")])]
    );
    assert_eq!(web_api.ruleset, "crm-prod");
    assert_eq!(web_api.evidence.flows, 400);
    assert_eq!(web_api.evidence.consumer_workloads, 4);
    assert!(web_api.confidence > 0.8, "{}", web_api.confidence);
    let web_db = rules
        .iter()
        .find(|r| r.rule.services[0].to_string() == "tcp/5432")
        .unwrap();
    assert_eq!(
        web_db.rule.consumers,
        vec![Actor::Workload("w1".into())],
        "1 of 4 webs is under the 50% threshold"
    );
    assert!(web_db.rationale.contains("1 of 4"), "{}", web_db.rationale);
    let total: f64 = rules.iter().map(|r| r.coverage).sum();
    assert!(
        (total - 1.0).abs() < 1e-9,
        "rules cover every flow: {total}"
    );
}

#[test]
fn shared_services_get_explicit_rules_and_ports_merge() {
    // 4 apps, every host uses DNS over udp/53 and tcp/53.
    let mut pairs = vec![("dns1", "dns", "infra", "prod")];
    let apps = ["a", "b", "c", "d"];
    let hosts: Vec<String> = apps
        .iter()
        .flat_map(|a| [format!("{a}-web"), format!("{a}-db")])
        .collect();
    for (i, h) in hosts.iter().enumerate() {
        let app = apps[i / 2];
        pairs.push((
            h.as_str(),
            if i % 2 == 0 { "web" } else { "db" },
            app,
            if app == "d" { "staging" } else { "prod" },
        ));
    }
    let l = labels(&pairs);
    let mut rows = Vec::new();
    for h in &hosts {
        rows.push(edge(h, "dns1", 53, 100, 120, 0));
        rows.push(edge(h, "dns1", 53, 5, 900, 0));
        rows.last_mut().unwrap().protocol = 6;
    }
    let out = run(&rows, &l);
    let rules: Vec<_> = out.rules().collect();
    assert_eq!(rules.len(), 1, "{rules:#?}");
    let dns = rules[0];
    assert_eq!(dns.kind, Kind::SharedService);
    assert_eq!(dns.ruleset, "infra-prod");
    assert!(dns.rule.extra_scope);
    assert_eq!(
        dns.rule.consumers,
        vec![Actor::Labels(vec![
            Label::new("env", "prod"),
            Label::new("env", "staging")
        ])]
    );
    let services: Vec<String> = dns.rule.services.iter().map(ToString::to_string).collect();
    assert_eq!(services, ["tcp/53", "udp/53"]);
    assert!(
        dns.rationale.contains("shared service"),
        "{}",
        dns.rationale
    );
}

#[test]
fn scans_and_new_lateral_edges_are_flagged_not_recommended() {
    let mut pairs = vec![
        ("w1", "web", "crm", "prod"),
        ("w2", "web", "crm", "prod"),
        ("a1", "api", "crm", "prod"),
    ];
    let targets: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    for t in &targets {
        pairs.push((t.as_str(), "db", "hr", "prod"));
    }
    let l = labels(&pairs);
    let mut rows = vec![
        edge("w1", "a1", 8080, 40, 3000, 0),
        edge("w2", "a1", 8080, 40, 3000, 0),
    ];
    // w2 scans 12 hosts on 6 ports with tiny flows, in the last hour.
    for (i, t) in targets.iter().enumerate() {
        rows.push(edge("w2", t, 20 + (i % 6) as i32, 1, 80, 23));
    }
    // w1 reaches one hr db on 5432 for the first time, twice, in the last hour.
    rows.push(edge("w1", "t0", 5432, 2, 3000, 23));
    let out = run(&rows, &l);
    let suspicious: Vec<_> = out.suspicious().collect();
    assert_eq!(suspicious.len(), 2, "{suspicious:#?}");
    let scan = suspicious
        .iter()
        .find(|s| s.rule.consumers == vec![Actor::Workload("w2".into())])
        .unwrap();
    assert!(scan.rationale.contains("scan"), "{}", scan.rationale);
    assert_eq!(scan.evidence.provider_workloads, 12);
    let lateral = suspicious
        .iter()
        .find(|s| s.rule.consumers == vec![Actor::Workload("w1".into())])
        .unwrap();
    assert!(
        lateral.rationale.contains("lateral"),
        "{}",
        lateral.rationale
    );
    assert!(lateral.rule.disabled);
    // Only the legitimate web → api rule is recommended.
    let rules: Vec<_> = out.rules().collect();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].rule.services[0].to_string(), "tcp/8080");
}

#[test]
fn traffic_leaving_the_estate_becomes_ip_lists_never_any() {
    let l = labels(&[("a1", "app", "pay", "prod"), ("w1", "web", "pay", "prod")]);
    let mut rows = vec![edge("a1", "192.0.2.10", 443, 30, 5000, 0)];
    for i in 1..=8 {
        rows.push(edge(&format!("198.51.100.{i}"), "w1", 443, 10, 3000, 0));
    }
    let out = run(&rows, &l);
    let rules: Vec<_> = out.rules().collect();
    assert_eq!(rules.len(), 2, "{rules:#?}");
    let egress = rules
        .iter()
        .find(|r| r.rule.consumers == vec![Actor::Labels(vec![Label::new("role", "app")])])
        .unwrap();
    assert_eq!(egress.kind, Kind::IpList);
    assert_eq!(egress.ip_lists.len(), 1);
    assert_eq!(
        egress.ip_lists[0].cidrs,
        vec!["192.0.2.10/32".parse().unwrap()]
    );
    let ingress = rules
        .iter()
        .find(|r| r.rule.providers == vec![Actor::Labels(vec![Label::new("role", "web")])])
        .unwrap();
    assert_eq!(
        ingress.rule.consumers,
        vec![Actor::IpList("internet".into())]
    );
    assert!(ingress.rule.extra_scope);
    assert!(
        ingress.rationale.contains("8 distinct public addresses"),
        "{}",
        ingress.rationale
    );
    for r in &rules {
        assert!(!r.rule.consumers.contains(&Actor::Any) && !r.rule.providers.contains(&Actor::Any));
    }
}

#[test]
fn recommendations_convert_to_the_table_and_the_wire() {
    let l = labels(&[("w1", "web", "crm", "prod"), ("a1", "api", "crm", "prod")]);
    let out = run(&[edge("w1", "a1", 8080, 10, 1000, 0)], &l);
    let batch = bulkhead_recommender::lake::recommendations_batch(&out.items).unwrap();
    assert_eq!(batch.num_rows(), 1);
    assert_eq!(
        batch.schema(),
        bulkhead_schemas::lake::recommendations_schema()
    );
    let wire = out.items[0].to_proto();
    assert_eq!(wire.id, out.items[0].id);
    assert_eq!(wire.evidence.unwrap().flows, 10);
    assert_eq!(out.items[0].key(), "app=crm,env=prod");
}

#[test]
fn labels_analysts_assign_lie_over_what_the_edges_carried() {
    // The hosts declared no labels: the edges carried none, so nothing generalises.
    let rows = [
        edge("w1", "a1", 8080, 50, 2000, 0),
        edge("w2", "a1", 8080, 50, 2000, 0),
    ];
    let unlabelled = run(&rows, &WorkloadLabels::new());
    assert_eq!(unlabelled.rules().count(), 0, "{:#?}", unlabelled.items);
    // The draft labels them (a CMDB import): the rule is at the label level.
    let mut seen: WorkloadLabels = [(
        "w1".to_string(),
        BTreeMap::from([("env".into(), "dev".into())]),
    )]
    .into();
    bulkhead_recommender::lay_labels_over(
        &mut seen,
        &labels(&[
            ("w1", "web", "crm", "prod"),
            ("w2", "web", "crm", "prod"),
            ("a1", "api", "crm", "prod"),
        ]),
    );
    assert_eq!(seen["w1"]["env"], "prod", "the assigned value wins");
    let rules: Vec<_> = run(&rows, &seen).rules().cloned().collect();
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert_eq!(
        rules[0].rule.consumers,
        vec![Actor::Labels(vec![Label::new("role", "web")])],
        "{rules:#?}"
    );
}
