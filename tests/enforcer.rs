//! The enforcer end to end: hosts in network namespaces with real listeners, `bulkhead
//! enforce` running inside each host and reaching Kafka through its own rules, signed
//! policy published through the real broker, and connection attempts that really
//! succeed or time out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bulkhead_bench::lab::{self as support, Host, Process};
use bulkhead_enforcer::nft::Nft;
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{Consumer, ConsumerOptions, KafkaConfig, Producer};
use bulkhead_schemas::policy::{PolicyDocument, PolicySigner, PolicyVersion};
use bulkhead_schemas::proto::{self, EnforcerStatus, HostInventory};
use bulkhead_schemas::topics::{POLICY_KEY, Topic};
use prost::Message as _;

/// How long a status may take to show up before the test calls it "never" (not a timing
/// target: passing runs return as soon as the status shows; a loaded 2-core CI machine once
/// took longer than 40 s to restart an agent, so a slow start must not turn into a failure).
const SETTLE: Duration = Duration::from_secs(90);

/// Three hosts (web, app, db) with listeners, the topics, and a policy signer.
struct Lab {
    web: Host,
    app: Host,
    db: Host,
    kafka: KafkaConfig,
    producer: Producer,
    signer: PolicySigner,
    status: Consumer,
    state_dir: tempfile::TempDir,
}

async fn lab(test: &str) -> Option<Lab> {
    if !support::can_build_hosts() {
        return None;
    }
    let kafka = bulkhead_kafka::testkit::kafka()?.config(test);
    let (web, app, db) = (Host::new("web"), Host::new("app"), Host::new("db"));
    assert!(
        std::net::TcpStream::connect_timeout(
            &support::LAB_KAFKA.parse().unwrap(),
            Duration::from_secs(2)
        )
        .is_ok(),
        "the broker has no lab listener on {}: it was started by an older dev/kafka/up; restart it (dev/kafka/down && dev/kafka/up)",
        support::LAB_KAFKA
    );
    app.listen(8080);
    app.listen(9999);
    app.listen(7777);
    db.listen(5432);
    admin::ensure_all_topics(&kafka, &TopicOptions::default())
        .await
        .unwrap();
    let producer = Producer::new(&kafka).unwrap();
    for host in [&web, &app, &db] {
        let inventory = HostInventory {
            schema_version: 1,
            host_id: host.ns.clone(),
            hostname: host.name.clone(),
            interfaces: vec![proto::Interface {
                name: "eth0".into(),
                addresses: vec![format!("{}/16", host.ipv4), format!("{}/64", host.ipv6)],
                up: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        producer
            .send(
                &kafka.topic(Topic::Inventory),
                host.ns.as_bytes(),
                &inventory.encode_to_vec(),
            )
            .await
            .unwrap();
    }
    let status = Consumer::new(
        &kafka,
        &ConsumerOptions::group(format!("{}status", kafka.topic_prefix)),
    )
    .unwrap();
    status.subscribe(&[&kafka.topic(Topic::Status)]).unwrap();
    Some(Lab {
        web,
        app,
        db,
        kafka,
        producer,
        signer: PolicySigner::generate(),
        status,
        state_dir: tempfile::tempdir().unwrap(),
    })
}

impl Lab {
    /// The policy for this lab: web → app:8080 and app → db:5432 in scope app=crm, plus
    /// `extra` YAML under the ruleset's rules, and per-host settings.
    fn document(
        &self,
        modes: [&str; 3],
        app_quarantined: bool,
        extra_rules: &str,
        deny_rules: &str,
    ) -> PolicyDocument {
        let yaml = format!(
            r#"
rulesets:
  - name: crm
    scope: [app=crm]
    rules:
      - {{id: web-to-app, consumers: [{{labels: [role=web]}}], providers: [{{labels: [role=api]}}], services: [tcp/8080]}}
      - {{id: app-to-db, consumers: [{{labels: [role=api]}}], providers: [{{labels: [role=db]}}], services: [tcp/5432]}}
{extra_rules}
deny_rules: [{deny_rules}]
workloads:
  - {{workload_id: {web}, labels: {{app: crm, role: web}}, mode: {m0}}}
  - {{workload_id: {app}, labels: {{app: crm, role: api}}, mode: {m1}, quarantined: {app_quarantined}}}
  - {{workload_id: {db}, labels: {{app: crm, role: db}}, mode: {m2}}}
"#,
            web = self.web.ns,
            app = self.app.ns,
            db = self.db.ns,
            m0 = modes[0],
            m1 = modes[1],
            m2 = modes[2],
        );
        PolicyDocument::load(&yaml, "test policy").unwrap()
    }

    async fn publish_bytes(&self, bytes: &[u8]) {
        self.producer
            .send(
                &self.kafka.topic(Topic::Policy),
                POLICY_KEY.as_bytes(),
                bytes,
            )
            .await
            .unwrap();
    }

    async fn provision(&self, version: u64, document: PolicyDocument) -> Instant {
        let signed = self.signer.sign(&PolicyVersion::new(
            version,
            version - 1,
            "test",
            "",
            document,
        ));
        self.publish_bytes(&signed.encode_to_vec()).await;
        Instant::now()
    }

    fn enforce(&self, host: &Host) -> Process {
        let key = hex::encode(self.signer.verifying_key().as_bytes());
        host.spawn_bulkhead(
            env!("CARGO_BIN_EXE_bulkhead"),
            &[
                "enforce",
                "--kafka",
                support::LAB_KAFKA,
                "--topic-prefix",
                &self.kafka.topic_prefix,
                "--host-id",
                &host.ns,
                "--policy-key",
                &key,
                "--heartbeat-secs",
                "1",
                "--state-dir",
                self.state_dir.path().to_str().unwrap(),
                "--metrics-addr",
                "",
            ],
        )
    }

    /// Waits until `host` reports a status that satisfies `ok`; returns it.
    async fn status_of(
        &self,
        host: &Host,
        what: &str,
        ok: impl Fn(&EnforcerStatus) -> bool,
    ) -> EnforcerStatus {
        let deadline = Instant::now() + SETTLE;
        let mut last = None;
        while Instant::now() < deadline {
            let Ok(Ok(message)) =
                tokio::time::timeout(Duration::from_millis(500), self.status.recv()).await
            else {
                continue;
            };
            let Ok(status) = EnforcerStatus::decode(message.payload().unwrap_or_default()) else {
                continue;
            };
            if status.host_id == host.ns {
                if ok(&status) {
                    return status;
                }
                last = Some(status);
            }
        }
        panic!(
            "{} never reported {what} within {SETTLE:?}; last status: {last:#?}",
            host.name
        );
    }
}

fn at(host: &Host, port: u16) -> SocketAddr {
    SocketAddr::new(host.ipv4, port)
}

fn assert_connects(from: &Host, to: &Host, port: u16, expected: bool) {
    assert_connects_to(from, to, at(to, port), expected);
}

fn assert_connects_to(from: &Host, to: &Host, addr: SocketAddr, expected: bool) {
    assert!(
        from.eventually_connects(addr, expected, Duration::from_secs(5)),
        "{} → {} ({addr}) should {}",
        from.name,
        to.name,
        if expected { "connect" } else { "be blocked" }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn full_mode_allows_what_policy_allows_and_drops_the_rest() {
    let Some(lab) = lab("full").await else { return };
    lab.provision(1, lab.document(["full", "full", "full"], false, "", ""))
        .await;
    let (_app, _db) = (lab.enforce(&lab.app), lab.enforce(&lab.db));
    for host in [&lab.app, &lab.db] {
        let status = lab
            .status_of(host, "version 1 applied", |s| s.applied_version == 1)
            .await;
        assert_eq!(status.state, proto::EnforcerState::Ok as i32);
        assert_eq!(status.mode, proto::EnforcementMode::Full as i32);
        assert!(
            status.rule_count > 0 && status.set_elements > 0,
            "{status:?}"
        );
    }
    assert_connects(&lab.web, &lab.app, 8080, true);
    assert_connects(&lab.app, &lab.db, 5432, true);
    assert_connects(&lab.web, &lab.db, 5432, false);
    assert_connects(&lab.web, &lab.app, 9999, false);
    // The same over IPv6.
    assert_connects_to(
        &lab.web,
        &lab.app,
        SocketAddr::new(lab.app.ipv6, 8080),
        true,
    );
    assert_connects_to(&lab.web, &lab.db, SocketAddr::new(lab.db.ipv6, 5432), false);
    assert_connects_to(&lab.app, &lab.db, SocketAddr::new(lab.db.ipv6, 5432), true);
    let status = lab
        .status_of(&lab.db, "dropped packets", |s| s.dropped_packets > 0)
        .await;
    let default_deny = status
        .counters
        .iter()
        .find(|c| c.rule == "bulkhead:default-deny")
        .expect("per-rule counters");
    assert!(
        default_deny.packets > 0 && default_deny.bytes > 0,
        "{status:?}"
    );

    // Under default deny the enforcer still hears from Kafka: a new version gets through.
    let extra = "      - {id: web-to-app-9999, consumers: [{labels: [role=web]}], providers: [{labels: [role=api]}], services: [tcp/9999]}";
    lab.provision(2, lab.document(["full", "full", "full"], false, extra, ""))
        .await;
    lab.status_of(&lab.app, "version 2 applied", |s| s.applied_version == 2)
        .await;
    assert_connects(&lab.web, &lab.app, 9999, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn visibility_only_lets_traffic_through_and_counts_what_full_would_drop() {
    let Some(lab) = lab("visibility").await else {
        return;
    };
    lab.provision(
        1,
        lab.document(["full", "full", "visibility_only"], false, "", ""),
    )
    .await;
    let _db = lab.enforce(&lab.db);
    lab.status_of(&lab.db, "version 1 applied", |s| s.applied_version == 1)
        .await;
    assert_connects(&lab.web, &lab.db, 5432, true);
    let status = lab
        .status_of(&lab.db, "potentially blocked packets", |s| {
            s.potentially_blocked_packets > 0
        })
        .await;
    assert_eq!(status.dropped_packets, 0, "visibility_only never drops");
    assert_eq!(status.mode, proto::EnforcementMode::VisibilityOnly as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn selective_enforces_deny_boundaries_over_allow_rules() {
    let Some(lab) = lab("selective").await else {
        return;
    };
    let extra = "      - {id: web-to-app-9999, consumers: [{labels: [role=web]}], providers: [{labels: [role=api]}], services: [tcp/9999]}";
    let deny = "{id: no-9999, consumers: [{any: true}], providers: [{labels: [role=api]}], services: [tcp/9999]}";
    lab.provision(
        1,
        lab.document(["full", "selective", "full"], false, extra, deny),
    )
    .await;
    let _app = lab.enforce(&lab.app);
    lab.status_of(&lab.app, "version 1 applied", |s| s.applied_version == 1)
        .await;
    assert_connects(&lab.web, &lab.app, 9999, false); // allowed by a rule, denied by the boundary
    assert_connects(&lab.web, &lab.app, 8080, true);
    assert_connects(&lab.web, &lab.app, 7777, true); // no rule: selective does not default-deny
}

#[tokio::test(flavor = "multi_thread")]
async fn quarantine_cuts_everything_but_the_control_plane_and_lifts_again() {
    let Some(lab) = lab("quarantine").await else {
        return;
    };
    lab.provision(1, lab.document(["full", "full", "full"], false, "", ""))
        .await;
    let (_app, _db) = (lab.enforce(&lab.app), lab.enforce(&lab.db));
    lab.status_of(&lab.app, "version 1 applied", |s| s.applied_version == 1)
        .await;
    lab.status_of(&lab.db, "version 1 applied", |s| s.applied_version == 1)
        .await;
    assert_connects(&lab.web, &lab.app, 8080, true);
    assert_connects(&lab.app, &lab.db, 5432, true);

    let provisioned = lab
        .provision(2, lab.document(["full", "full", "full"], true, "", ""))
        .await;
    let deadline = provisioned + Duration::from_secs(5);
    while lab
        .web
        .connects(at(&lab.app, 8080), Duration::from_millis(150))
    {
        assert!(
            Instant::now() < deadline,
            "quarantine not in force 5 s after provisioning"
        );
    }
    eprintln!(
        "quarantine in force {:?} after provisioning",
        provisioned.elapsed()
    );
    assert_connects(&lab.app, &lab.db, 5432, false); // nothing leaves the quarantined host either
    // ... except its control-plane traffic: heartbeats keep coming, and it hears the lift.
    let status = lab
        .status_of(&lab.app, "quarantined heartbeat", |s| {
            s.applied_version == 2 && s.quarantined
        })
        .await;
    assert_eq!(status.state, proto::EnforcerState::Ok as i32);
    lab.provision(3, lab.document(["full", "full", "full"], false, "", ""))
        .await;
    lab.status_of(&lab.app, "version 3 applied", |s| {
        s.applied_version == 3 && !s.quarantined
    })
    .await;
    assert_connects(&lab.web, &lab.app, 8080, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_replayed_unsigned_and_malformed_policy_change_nothing() {
    let Some(lab) = lab("refusals").await else {
        return;
    };
    lab.provision(1, lab.document(["full", "full", "full"], false, "", ""))
        .await;
    let _app = lab.enforce(&lab.app);
    lab.status_of(&lab.app, "version 1 applied", |s| s.applied_version == 1)
        .await;
    assert_connects(&lab.web, &lab.app, 9999, false);

    let permissive = lab.document(["idle", "idle", "idle"], false, "", "");
    let attacker = PolicySigner::generate();
    let mut forged = attacker.sign(&PolicyVersion::new(2, 1, "mallory", "", permissive.clone()));
    forged.key_id = lab.signer.key_id().to_string();
    lab.publish_bytes(&forged.encode_to_vec()).await;
    let mut tampered = lab
        .signer
        .sign(&PolicyVersion::new(3, 1, "test", "", permissive.clone()));
    let last = tampered.payload.len() - 1;
    tampered.payload[last] ^= 0x40;
    lab.publish_bytes(&tampered.encode_to_vec()).await;
    let mut unsigned = lab
        .signer
        .sign(&PolicyVersion::new(4, 1, "test", "", permissive.clone()));
    unsigned.signature.clear();
    lab.publish_bytes(&unsigned.encode_to_vec()).await;
    let replay = lab
        .signer
        .sign(&PolicyVersion::new(1, 0, "test", "", permissive));
    lab.publish_bytes(&replay.encode_to_vec()).await;
    lab.publish_bytes(b"\x08\x01 definitely not a policy").await;

    let status = lab
        .status_of(&lab.app, "the refusals", |s| {
            s.rejected_version >= 4 && !s.last_error.is_empty()
        })
        .await;
    assert_eq!(status.applied_version, 1, "{status:?}");
    assert_connects(&lab.web, &lab.app, 9999, false); // still enforced: idle was never applied
    assert_connects(&lab.web, &lab.app, 8080, true);

    // A valid newer version still gets through after all that.
    let extra = "      - {id: web-to-app-9999, consumers: [{labels: [role=web]}], providers: [{labels: [role=api]}], services: [tcp/9999]}";
    lab.provision(5, lab.document(["full", "full", "full"], false, extra, ""))
        .await;
    lab.status_of(&lab.app, "version 5 applied", |s| {
        s.applied_version == 5 && s.last_error.is_empty()
    })
    .await;
    assert_connects(&lab.web, &lab.app, 9999, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_reconciles_refuses_rollback_and_remove_leaves_other_tables_alone() {
    let Some(lab) = lab("restart").await else {
        return;
    };
    lab.app.nft(&["add", "table", "inet", "other"]).unwrap();
    lab.app
        .nft(&[
            "add",
            "chain",
            "inet",
            "other",
            "keep",
            "{ type filter hook input priority 10; policy accept; }",
        ])
        .unwrap();
    lab.provision(1, lab.document(["full", "full", "full"], false, "", ""))
        .await;
    let mut app = lab.enforce(&lab.app);
    lab.status_of(&lab.app, "version 1 applied", |s| s.applied_version == 1)
        .await;
    lab.provision(2, lab.document(["full", "full", "full"], false, "", ""))
        .await;
    lab.status_of(&lab.app, "version 2 applied", |s| s.applied_version == 2)
        .await;
    assert!(
        app.terminate().success(),
        "SIGTERM exits cleanly: {}",
        app.log()
    );
    // Stopping the agent does not lift enforcement.
    assert_connects(&lab.web, &lab.app, 9999, false);

    // A replay of version 1 while the enforcer is down must not roll it back on restart.
    let permissive = lab.document(["idle", "idle", "idle"], false, "", "");
    lab.publish_bytes(
        &lab.signer
            .sign(&PolicyVersion::new(1, 0, "test", "", permissive))
            .encode_to_vec(),
    )
    .await;
    let _app = lab.enforce(&lab.app);
    let status = lab
        .status_of(&lab.app, "version 2 after restart", |s| {
            s.applied_version == 2 && s.rejected_version >= 1
        })
        .await;
    assert!(status.last_error.contains("not newer"), "{status:?}");
    let tables = lab.app.nft(&["list", "tables"]).unwrap();
    assert_eq!(tables.matches("table inet bulkhead").count(), 1, "{tables}");
    assert_connects(&lab.web, &lab.app, 9999, false);

    drop(_app);
    let mut remove = lab.app.spawn_bulkhead(
        env!("CARGO_BIN_EXE_bulkhead"),
        &[
            "enforce",
            "--remove",
            "--host-id",
            "x",
            "--policy-key",
            &hex::encode(lab.signer.verifying_key().as_bytes()),
        ],
    );
    assert!(remove.terminate_or_wait().success(), "{}", remove.log());
    assert!(
        lab.app.nft(&["list", "table", "inet", "bulkhead"]).is_err(),
        "the table is gone"
    );
    assert!(
        lab.app.nft(&["list", "table", "inet", "other"]).is_ok(),
        "other tables are untouched"
    );
    assert_connects(&lab.web, &lab.app, 9999, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_batch_and_changes_nothing() {
    let Some(lab) = lab("dry-run").await else {
        return;
    };
    lab.provision(1, lab.document(["full", "full", "full"], false, "", ""))
        .await;
    let key = hex::encode(lab.signer.verifying_key().as_bytes());
    let mut dry = lab.app.spawn_bulkhead(
        env!("CARGO_BIN_EXE_bulkhead"),
        &[
            "enforce",
            "--dry-run",
            "--kafka",
            support::LAB_KAFKA,
            "--topic-prefix",
            &lab.kafka.topic_prefix,
            "--host-id",
            &lab.app.ns,
            "--policy-key",
            &key,
        ],
    );
    assert!(dry.terminate_or_wait().success(), "{}", dry.log());
    let output = dry.log();
    assert!(
        output.contains("\"allow_in4_tcp\"") && output.contains("nft --check: accepted"),
        "{output}"
    );
    assert!(
        lab.app.nft(&["list", "table", "inet", "bulkhead"]).is_err(),
        "dry run created the table"
    );
}

/// A failed apply (nft refuses the batch) leaves the previous ruleset exactly as it was;
/// re-applying the same batch is idempotent.
#[test]
fn a_refused_batch_keeps_the_previous_ruleset() {
    if !support::can_build_hosts() {
        return;
    }
    let host = Host::new("atomic");
    let listing = |host: &Host| host.nft(&["list", "table", "inet", "bulkhead"]).unwrap();
    let doc = PolicyDocument::load(
        "rulesets: [{name: r, scope: [app=x], rules: [{id: a, consumers: [{any: true}], providers: [{any: true}], services: [tcp/80]}]}]\nworkloads: [{workload_id: h, labels: {app: x}, mode: full}]",
        "t",
    )
    .unwrap();
    let mut membership = bulkhead_enforcer::compile::Membership::default();
    membership.set("h", vec![host.ipv4]);
    let policy = bulkhead_enforcer::compile::compile(
        &PolicyVersion::new(1, 0, "t", "", doc),
        "h",
        &membership,
        &[],
    );
    let good = bulkhead_enforcer::render::render(&policy).batch;
    host.within({
        let good = good.clone();
        move || Nft::default().apply(&good).unwrap()
    });
    let before = listing(&host);
    host.within({
        let good = good.clone();
        move || Nft::default().apply(&good).unwrap()
    });
    assert_eq!(listing(&host), before, "re-apply is idempotent");

    let mut bad = good.clone();
    let mut objects = bad.objects.into_owned();
    let broken: nftables::schema::NfObject = serde_json::from_str(
        r#"{"add":{"rule":{"family":"inet","table":"bulkhead","chain":"input","expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"@no_such_set"}},{"accept":null}]}}}"#,
    )
    .unwrap();
    objects.push(broken);
    bad.objects = objects.into();
    let error = host.within(move || Nft::default().apply(&bad).unwrap_err());
    assert!(
        error.to_string().contains("no_such_set") || error.to_string().contains("No such file"),
        "{error}"
    );
    assert_eq!(listing(&host), before, "a refused batch changes nothing");
}

/// `bulkhead agent` on a host: one process that enforces the policy and publishes the
/// host's flows, under the host id the collector persisted.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_enforces_and_reports_flows_under_one_host_id() {
    let Some(lab) = lab("agent").await else {
        return;
    };
    lab.provision(1, lab.document(["full", "full", "full"], false, "", ""))
        .await;
    let id_file = lab.state_dir.path().join("host-id");
    std::fs::write(&id_file, &lab.app.ns).unwrap();
    let key = hex::encode(lab.signer.verifying_key().as_bytes());
    // `ip netns exec` remounts /sys without cgroup2, which the collector's socket hooks
    // need: mount one in that private mount namespace, then become the agent.
    let script = "mount -t cgroup2 none /sys/fs/cgroup && exec \"$0\" \"$@\"";
    let _agent = lab.app.spawn_bulkhead(
        "sh",
        &[
            "-c",
            script,
            env!("CARGO_BIN_EXE_bulkhead"),
            "agent",
            "--kafka",
            support::LAB_KAFKA,
            "--topic-prefix",
            &lab.kafka.topic_prefix,
            "--host-id-file",
            id_file.to_str().unwrap(),
            "--policy-key",
            &key,
            "--heartbeat-secs",
            "1",
            "--evict-interval",
            "1s",
            "--state-dir",
            lab.state_dir.path().to_str().unwrap(),
            "--metrics-addr",
            "",
        ],
    );
    lab.status_of(&lab.app, "version 1 applied by the agent", |s| {
        s.applied_version == 1
    })
    .await;
    assert_connects(&lab.web, &lab.app, 8080, true);
    assert_connects(&lab.web, &lab.app, 9999, false);

    // The same process reported the flows it saw, under the same host id.
    let flows = Consumer::new(
        &lab.kafka,
        &ConsumerOptions::group(format!("{}flows", lab.kafka.topic_prefix)),
    )
    .unwrap();
    flows.subscribe(&[&lab.kafka.topic(Topic::Flows)]).unwrap();
    let deadline = Instant::now() + SETTLE;
    let mut seen_ports = std::collections::BTreeSet::new();
    while !(seen_ports.contains(&8080) && seen_ports.contains(&9999)) {
        assert!(
            Instant::now() < deadline,
            "no flows to app:8080 and app:9999 from the agent; saw ports {seen_ports:?}"
        );
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), flows.recv()).await
        else {
            continue;
        };
        let batch = proto::FlowBatch::decode(message.payload().unwrap_or_default()).unwrap();
        assert_eq!(
            batch.host_id, lab.app.ns,
            "flows are published under the collector's host id"
        );
        seen_ports.extend(
            batch
                .records
                .iter()
                .filter(|r| r.direction == proto::Direction::Ingress as i32)
                .map(|r| r.dst_port),
        );
    }
}
