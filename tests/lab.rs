//! `bulkhead lab` end to end, as root, with real namespaces and the real broker: `lab up`
//! builds the estate with an agent on every estate host, `lab traffic` switches the
//! background traffic on, each host's flows arrive on the flows topic under its host id
//! with the programs and ports the lab's ground truth says, and `lab down` leaves no
//! namespace and no process behind (twice: it is idempotent).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bulkhead_bench::demo_lab::{LabState, alive};
use bulkhead_bench::lab as support;
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{Consumer, ConsumerOptions};
use bulkhead_schemas::proto::{self, FlowBatch};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;

/// A lab octet of its own, so this test never meets a demo lab (240) on the same bridge.
const NET: &str = "251";

fn bulkhead(state_dir: &Path, prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .args(["--state-dir", state_dir.to_str().unwrap()])
        .args(["--topic-prefix", prefix])
        .env_remove("BULKHEAD_CONFIG")
        .output()
        .expect("the bulkhead binary runs")
}

fn ok(output: Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("bhl{NET}-")))
        .map(String::from)
        .collect()
}

/// Removes the lab even when an assertion fails, and shows the agents' logs then.
struct Down<'a> {
    state_dir: &'a Path,
    prefix: String,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.state_dir.join("logs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                eprintln!("---- {} ----", entry.path().display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let _ = bulkhead(self.state_dir, &self.prefix, &["lab", "down", "--net", NET]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lab_up_traffic_flows_and_down() {
    if !support::can_build_hosts() {
        return;
    }
    let Some(kit) = bulkhead_kafka::testkit::kafka() else {
        return;
    };
    let kafka = kit.config("lab");
    assert!(
        std::net::TcpStream::connect_timeout(
            &support::LAB_KAFKA.parse().unwrap(),
            Duration::from_secs(2)
        )
        .is_ok(),
        "the broker has no lab listener on {}: restart it with dev/kafka/down && dev/kafka/up",
        support::LAB_KAFKA
    );
    admin::ensure_all_topics(&kafka, &TopicOptions::default())
        .await
        .unwrap();
    let flows = Consumer::new(
        &kafka,
        &ConsumerOptions::group(format!("{}lab-test", kafka.topic_prefix)),
    )
    .unwrap();
    flows.subscribe(&[&kafka.topic(Topic::Flows)]).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("lab");
    let prefix = kafka.topic_prefix.clone();
    let _down = Down {
        state_dir: &state_dir,
        prefix: prefix.clone(),
    };
    let up = ok(
        bulkhead(&state_dir, &prefix, &["lab", "up", "--net", NET]),
        "lab up",
    );
    assert!(up.contains("db-crm"), "{up}");
    let again = bulkhead(&state_dir, &prefix, &["lab", "up", "--net", NET]);
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already up"),
        "a second `lab up` must refuse, not build over the first"
    );
    let state: LabState = serde_json::from_str(&ok(
        bulkhead(&state_dir, &prefix, &["lab", "status", "--json"]),
        "lab status",
    ))
    .unwrap();
    assert_eq!(state.hosts.len(), 10);
    let mut pids = Vec::new();
    for h in &state.hosts {
        assert!(namespaces().contains(&h.ns), "{} has no namespace", h.name);
        for (what, &pid) in &h.pids {
            assert!(alive(pid), "{}'s {what} ({pid}) is not running", h.name);
            pids.push(pid);
        }
        assert_eq!(h.pids.contains_key("agent"), h.agent);
    }
    ok(
        bulkhead(&state_dir, &prefix, &["lab", "traffic", "--for", "90s"]),
        "lab traffic",
    );

    // What each host must report: (direction, port, process), from the lab's ground truth.
    use proto::Direction::{Egress, Ingress};
    let tcp = 6;
    let udp = 17;
    let expected: BTreeMap<&str, Vec<(proto::Direction, u32, u32, &str)>> = [
        (
            "web-crm",
            vec![
                (Ingress, tcp, 443, "nginx"),
                (Egress, tcp, 8080, "nginx"),
                (Egress, udp, 53, "nginx"),
            ],
        ),
        (
            "app-crm",
            vec![(Ingress, tcp, 8080, "java"), (Egress, tcp, 5432, "java")],
        ),
        (
            "db-crm",
            vec![
                (Ingress, tcp, 5432, "postgres"),
                (Ingress, tcp, 9100, "node_exporter"),
            ],
        ),
        ("app-shop", vec![(Egress, tcp, 3306, "java")]),
        ("db-shop", vec![(Ingress, tcp, 3306, "mysqld")]),
        ("dns", vec![(Ingress, udp, 53, "dnsmasq")]),
        ("monitoring", vec![(Egress, tcp, 9100, "prometheus")]),
        ("rogue", vec![(Egress, tcp, 5432, "psql")]),
    ]
    .into();
    let mut seen: BTreeMap<String, BTreeSet<(i32, u32, u32, String)>> = BTreeMap::new();
    let missing = |seen: &BTreeMap<String, BTreeSet<(i32, u32, u32, String)>>| {
        let mut missing = Vec::new();
        for (host, wants) in &expected {
            for (dir, proto_, port, process) in wants {
                let found = seen.get(*host).is_some_and(|s| {
                    s.contains(&(*dir as i32, *proto_, *port, process.to_string()))
                });
                if !found {
                    missing.push(format!("{host} {dir:?} {proto_}/{port} by {process}"));
                }
            }
        }
        missing
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = missing(&seen);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flows never arrived for: {left:?}\nseen: {seen:#?}"
        );
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), flows.recv()).await
        else {
            continue;
        };
        let batch = FlowBatch::decode(message.payload().unwrap_or_default()).unwrap();
        assert!(
            state.host(&batch.host_id).is_some_and(|h| h.agent),
            "a batch from {:?}, which is no lab agent host",
            batch.host_id
        );
        let entry = seen.entry(batch.host_id.clone()).or_default();
        for r in &batch.records {
            // Both ways the destination port is the service's: the local one coming in,
            // the remote one going out.
            entry.insert((r.direction, r.protocol, r.dst_port, r.process_name.clone()));
        }
    }
    // The internet host has no agent: nothing may be published under its name.
    assert!(!seen.contains_key("internet"));

    let down = ok(
        bulkhead(&state_dir, &prefix, &["lab", "down", "--net", NET]),
        "lab down",
    );
    assert!(down.contains("10 namespaces"), "{down}");
    assert!(namespaces().is_empty(), "left behind: {:?}", namespaces());
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived lab down");
    }
    assert!(!state_dir.exists(), "the state directory is still there");
    let twice = ok(
        bulkhead(&state_dir, &prefix, &["lab", "down", "--net", NET]),
        "a second lab down",
    );
    assert!(twice.contains("0 namespaces"), "{twice}");
}

#[test]
fn the_lab_bridge_keeps_its_mac_while_hosts_come_and_go() {
    if !support::can_build_hosts() {
        return;
    }
    // Hosts' ARP caches hold the gateway's MAC: a bridge that took its ports' lowest MAC
    // cut them off from the broker's lab listener whenever another host came or went.
    let mac = || {
        std::fs::read_to_string(format!("/sys/class/net/{}/address", support::LAB_BRIDGE))
            .unwrap()
            .trim()
            .to_string()
    };
    let first = support::Host::new("mac-a");
    assert_eq!(mac(), support::LAB_BRIDGE_MAC);
    let second = support::Host::new("mac-b");
    drop(first);
    assert_eq!(mac(), support::LAB_BRIDGE_MAC);
    drop(second);
    assert_eq!(mac(), support::LAB_BRIDGE_MAC);
}
