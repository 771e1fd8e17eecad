//! Enforcer benchmarks, each beside its baseline in the same run:
//!
//! - **apply latency** (compile + render + `nft` transaction) for 10, 1,000 and 10,000
//!   rules and for 100,000 set elements, alternating with the apply of an empty
//!   full-mode table (the fixed cost of one nft transaction);
//! - **packet cost**: TCP connections per second through a host enforcing 10,000 rules
//!   vs. the same host with no table, alternating;
//! - **provision → active**: from a signed version acknowledged by Kafka to the rules
//!   being in force on a host (a real `bulkhead enforce` in a namespace, probed with
//!   connection attempts).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bulkhead_enforcer::compile::{Membership, compile};
use bulkhead_enforcer::nft::Nft;
use bulkhead_enforcer::render::{removal, render};
use bulkhead_schemas::policy::{
    Actor, EnforcementMode, IpList, Label, PolicyDocument, PolicyVersion, PortRange, Rule, Ruleset,
    ServiceRef, WorkloadPolicy,
};

use crate::lab::Host;
use crate::stats::Summary;

/// A policy with `rules` rules, each allowing one client workload to the server on its
/// own port, plus `list_elements` addresses in an IP list allowed to tcp/443.
pub fn synthetic_policy(
    rules: usize,
    list_elements: usize,
    client: Option<IpAddr>,
) -> (PolicyVersion, Membership) {
    let labels = |role: &str| -> BTreeMap<String, String> {
        [
            ("app".to_string(), "bench".to_string()),
            ("role".to_string(), role.to_string()),
        ]
        .into()
    };
    let mut membership = Membership::default();
    let mut workloads = vec![WorkloadPolicy {
        workload_id: "server".into(),
        labels: labels("server"),
        mode: Some(EnforcementMode::Full),
        quarantined: false,
        enforce_outbound: false,
    }];
    let mut ruleset = Ruleset {
        name: "bench".into(),
        description: String::new(),
        scope: vec![Label::new("app", "bench")],
        rules: vec![],
    };
    for i in 0..rules {
        let id = format!("c{i}");
        let ip = match (i + 1 == rules, client) {
            (true, Some(ip)) => ip,
            _ => IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + i as u32 * 2)),
        };
        membership.set(&id, vec![ip]);
        workloads.push(WorkloadPolicy {
            workload_id: id.clone(),
            labels: labels("client"),
            mode: None,
            quarantined: false,
            enforce_outbound: false,
        });
        let port = if i + 1 == rules {
            8080
        } else {
            1024 + (i % 60_000) as u16
        };
        ruleset.rules.push(Rule {
            id: format!("r{i}"),
            description: String::new(),
            consumers: vec![Actor::Workload(id)],
            providers: vec![Actor::Labels(vec![Label::new("role", "server")])],
            services: vec![ServiceRef::Ports(PortRange::tcp(port))],
            extra_scope: false,
            disabled: false,
        });
    }
    let mut ip_lists = vec![];
    if list_elements > 0 {
        ip_lists.push(IpList {
            name: "partners".into(),
            description: String::new(),
            // Every other address, so that nothing merges: one set element each.
            cidrs: (0..list_elements)
                .map(|i| ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i as u32 * 2))))
                .collect(),
            exclusions: vec![],
        });
        ruleset.rules.push(Rule {
            id: "partners".into(),
            description: String::new(),
            consumers: vec![Actor::IpList("partners".into())],
            providers: vec![Actor::Labels(vec![Label::new("role", "server")])],
            services: vec![ServiceRef::Ports(PortRange::tcp(443))],
            extra_scope: true,
            disabled: false,
        });
    }
    let doc = PolicyDocument {
        ip_lists,
        rulesets: vec![ruleset],
        workloads,
        default_mode: EnforcementMode::Idle,
        ..Default::default()
    };
    (PolicyVersion::new(1, 0, "bench", "", doc), membership)
}

/// One apply-latency row.
#[derive(Debug, serde::Serialize)]
pub struct ApplyRow {
    pub case: String,
    pub set_elements: usize,
    pub compile_render_ms: Summary,
    pub nft_apply_ms: Summary,
    pub total_ms: Summary,
    pub baseline_empty_apply_ms: Summary,
    pub ratio_to_baseline: f64,
}

/// Apply latency by size, each case alternating with the empty-table baseline.
pub fn apply_latency(host: &Host, cases: &[(usize, usize)], reps: usize) -> Vec<ApplyRow> {
    let (empty, empty_membership) = synthetic_policy(0, 0, None);
    let mut rows = Vec::new();
    for &(rules, elements) in cases {
        let (policy, membership) = synthetic_policy(rules, elements, None);
        let (mut prep, mut apply, mut total, mut base) = (vec![], vec![], vec![], vec![]);
        let mut set_elements = 0;
        for _ in 0..reps {
            let started = Instant::now();
            let rendered = render(&compile(&policy, "server", &membership, &[]));
            let prepared = started.elapsed();
            set_elements = rendered.set_elements;
            let applied = host.within(move || {
                let t = Instant::now();
                Nft::default()
                    .apply(&rendered.batch)
                    .expect("nft applies the benchmark ruleset");
                t.elapsed()
            });
            prep.push(prepared);
            apply.push(applied);
            total.push(prepared + applied);
            let baseline = render(&compile(&empty, "server", &empty_membership, &[]));
            base.push(host.within(move || {
                let t = Instant::now();
                Nft::default()
                    .apply(&baseline.batch)
                    .expect("nft applies the empty ruleset");
                t.elapsed()
            }));
        }
        let (total, base) = (
            Summary::of_durations_ms(&total),
            Summary::of_durations_ms(&base),
        );
        let row = ApplyRow {
            case: if elements > 0 {
                format!("{elements} IP-list elements")
            } else {
                format!("{rules} rules")
            },
            set_elements,
            compile_render_ms: Summary::of_durations_ms(&prep),
            nft_apply_ms: Summary::of_durations_ms(&apply),
            ratio_to_baseline: total.median / base.median,
            total_ms: total,
            baseline_empty_apply_ms: base,
        };
        println!(
            "apply {:>22} ({:>6} elements): total ms {} | compile+render median {:.2} | nft median {:.2} | baseline (empty table) median {:.2} → {:.1}×",
            row.case,
            row.set_elements,
            row.total_ms,
            row.compile_render_ms.median,
            row.nft_apply_ms.median,
            row.baseline_empty_apply_ms.median,
            row.ratio_to_baseline
        );
        rows.push(row);
    }
    host.within(|| Nft::default().apply(&removal()).expect("remove"));
    rows
}

/// Setup latency (µs) of every TCP connection from `client` to `server` during
/// `window`. Each connection is closed with a reset (SO_LINGER 0) so that TIME-WAIT
/// sockets do not pile up and slow later rounds; medians are compared because one lost
/// SYN costs a whole retransmit timeout and would swamp a rate over a short window.
fn connect_latencies(client: &Host, server: SocketAddr, window: Duration) -> Vec<f64> {
    use std::os::fd::AsRawFd as _;
    client.within(move || {
        crate::lab::pin_to_cpu(0);
        let started = Instant::now();
        let mut out = Vec::new();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        while started.elapsed() < window {
            let t = Instant::now();
            if let Ok(stream) =
                std::net::TcpStream::connect_timeout(&server, Duration::from_secs(1))
            {
                out.push(t.elapsed().as_secs_f64() * 1e6);
                // SAFETY: a valid socket and a correctly sized linger struct.
                unsafe {
                    libc::setsockopt(
                        stream.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
        }
        out
    })
}

#[derive(Debug, serde::Serialize)]
pub struct PacketCost {
    pub rules: usize,
    pub many_rules_connect_us: Summary,
    pub ten_rules_connect_us: Summary,
    pub no_table_connect_us: Summary,
    /// Connections per second implied by each median setup latency.
    pub many_rules_conn_per_s: f64,
    pub ten_rules_conn_per_s: f64,
    pub no_table_conn_per_s: f64,
    /// many rules / no table: the whole cost of enforcing (conntrack included).
    pub ratio_to_no_table: f64,
    /// many rules / 10 rules: what the number of rules costs (1.0 = nothing).
    pub ratio_to_ten_rules: f64,
}

/// TCP connection setup through a server enforcing `rules` rules (full mode, the client
/// allowed by the last one), the same with 10 rules, and with no table, in alternating
/// rounds. Any table turns on connection tracking, which has a cost of its own; the
/// 10-rule case separates that from the cost of the number of rules.
pub fn packet_cost(
    client: &Host,
    server: &Host,
    rules: usize,
    rounds: usize,
    window: Duration,
) -> PacketCost {
    // Client on CPU 0, acceptor on the last CPU: left to the scheduler, whichever case
    // ran while the two shared a core measured differently (bimodal medians between runs).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    server.listen_on_cpu(8080, Some(cpus - 1));
    let target = SocketAddr::new(server.ipv4, 8080);
    let batch_for = |n: usize| {
        let (policy, membership) = synthetic_policy(n, 0, Some(client.ipv4));
        render(&compile(&policy, "server", &membership, &[])).batch
    };
    let cases = [Some(batch_for(rules)), Some(batch_for(10)), None];
    let mut samples: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        for (case, batch) in cases.iter().enumerate() {
            let batch = batch.clone().unwrap_or_else(removal);
            server.within(move || Nft::default().apply(&batch).expect("apply"));
            samples[case].extend(connect_latencies(client, target, window));
        }
    }
    server.within(|| Nft::default().apply(&removal()).expect("remove"));
    let [many, ten, none] = samples.map(Summary::of);
    let rate = |s: &Summary| 1e6 / s.median;
    let result = PacketCost {
        rules,
        many_rules_conn_per_s: rate(&many),
        ten_rules_conn_per_s: rate(&ten),
        no_table_conn_per_s: rate(&none),
        ratio_to_no_table: rate(&many) / rate(&none),
        ratio_to_ten_rules: rate(&many) / rate(&ten),
        many_rules_connect_us: many,
        ten_rules_connect_us: ten,
        no_table_connect_us: none,
    };
    println!(
        "packet cost: connect µs with {rules} rules {} | 10 rules {} | no table {} → {:.0} / {:.0} / {:.0} conn/s; {rules} vs 10 rules {:.3}, vs no table {:.3}",
        result.many_rules_connect_us,
        result.ten_rules_connect_us,
        result.no_table_connect_us,
        result.many_rules_conn_per_s,
        result.ten_rules_conn_per_s,
        result.no_table_conn_per_s,
        result.ratio_to_ten_rules,
        result.ratio_to_no_table
    );
    result
}

#[derive(Debug, serde::Serialize)]
pub struct ProvisionLatency {
    pub provision_to_active_ms: Summary,
    pub baseline_kafka_round_trip_ms: Summary,
}

/// From a signed version sent to Kafka to the rules being in force on a host running a
/// real `bulkhead enforce`, toggling an allow rule each round; beside the bare Kafka
/// produce → consume latency on the same broker (the floor any provisioning path pays).
pub async fn provision_latency(
    bulkhead: &str,
    kafka: &bulkhead_kafka::KafkaConfig,
    lab_kafka: &str,
    rounds: usize,
) -> ProvisionLatency {
    use bulkhead_kafka::rdkafka::Message as _;
    use bulkhead_kafka::{Consumer, ConsumerOptions, Producer};
    use bulkhead_schemas::policy::PolicySigner;
    use bulkhead_schemas::topics::{POLICY_KEY, Topic};
    use prost::Message as _;

    let (client, server) = (Host::new("pclient"), Host::new("pserver"));
    server.listen(8080);
    let target = SocketAddr::new(server.ipv4, 8080);
    bulkhead_kafka::admin::ensure_all_topics(kafka, &Default::default())
        .await
        .expect("topics");
    let producer = Producer::new(kafka).expect("producer");
    for (id, host) in [("server", &server), ("c0", &client)] {
        let inventory = bulkhead_schemas::proto::HostInventory {
            schema_version: 1,
            host_id: id.into(),
            interfaces: vec![bulkhead_schemas::proto::Interface {
                addresses: vec![format!("{}/16", host.ipv4)],
                ..Default::default()
            }],
            ..Default::default()
        };
        producer
            .send(
                &kafka.topic(Topic::Inventory),
                id.as_bytes(),
                &inventory.encode_to_vec(),
            )
            .await
            .expect("inventory");
    }
    let signer = PolicySigner::generate();
    let document = |allow: bool| {
        let (mut policy, _) = synthetic_policy(1, 0, Some(client.ipv4));
        if !allow {
            policy.document.rulesets[0].rules[0].services =
                vec![ServiceRef::Ports(PortRange::tcp(9))];
        }
        policy.document
    };
    let policy_topic = kafka.topic(Topic::Policy);
    let publish = |version: u64, allow: bool| {
        let signed = signer.sign(&PolicyVersion::new(
            version,
            version - 1,
            "bench",
            "",
            document(allow),
        ));
        let producer = producer.clone();
        let topic = policy_topic.clone();
        async move {
            producer
                .send(&topic, POLICY_KEY.as_bytes(), &signed.encode_to_vec())
                .await
                .expect("publish policy")
        }
    };
    publish(1, true).await;
    let state = std::env::temp_dir().join(format!("bulkhead-bench-{}", std::process::id()));
    let key = hex::encode(signer.verifying_key().as_bytes());
    let _enforcer = server.spawn_bulkhead(
        bulkhead,
        &[
            "enforce",
            "--kafka",
            lab_kafka,
            "--topic-prefix",
            &kafka.topic_prefix,
            "--host-id",
            "server",
            "--policy-key",
            &key,
            "--state-dir",
            state.to_str().unwrap(),
            "--metrics-addr",
            "",
        ],
    );
    assert!(
        client.eventually_connects(target, true, Duration::from_secs(30)),
        "the enforcer never applied version 1"
    );

    let baseline_topic = kafka.topic(Topic::Status);
    let consumer = Consumer::new(
        kafka,
        &ConsumerOptions::group(format!("{}bench", kafka.topic_prefix)),
    )
    .expect("consumer");
    let marks = consumer
        .watermarks(&baseline_topic, Duration::from_secs(10))
        .expect("watermarks");
    consumer
        .assign(
            &marks
                .iter()
                .map(|(p, (_, high))| ((baseline_topic.clone(), *p), *high))
                .collect(),
        )
        .expect("assign");

    let (mut latencies, mut baseline) = (vec![], vec![]);
    for round in 0..rounds {
        let version = round as u64 + 2;
        let allow = version % 2 == 1;
        let started = Instant::now();
        publish(version, allow).await;
        let probe = move || {
            std::net::TcpStream::connect_timeout(&target, Duration::from_millis(25)).is_ok()
        };
        loop {
            if client.within(probe) == allow {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "version {version} never took effect"
            );
        }
        latencies.push(started.elapsed());

        let started = Instant::now();
        producer
            .send(&baseline_topic, b"bench", b"ping")
            .await
            .expect("baseline produce");
        loop {
            let message = consumer.recv().await.expect("baseline consume");
            if message.key() == Some(b"bench") {
                break;
            }
        }
        baseline.push(started.elapsed());
    }
    let result = ProvisionLatency {
        provision_to_active_ms: Summary::of_durations_ms(&latencies),
        baseline_kafka_round_trip_ms: Summary::of_durations_ms(&baseline),
    };
    println!(
        "provision → active: ms {} | baseline Kafka produce → consume: ms {}",
        result.provision_to_active_ms, result.baseline_kafka_round_trip_ms
    );
    let _ = std::fs::remove_dir_all(state);
    result
}
