//! The analyst's policy workflow through the `bulkhead` binary, end to end on a real
//! broker and a real lake: a generated datacenter published as collectors would, ingested
//! into the lake, `bulkhead recommend` over its edges, `bulkhead serve` owning the policy,
//! and the `bulkhead policy …` / `labels …` clients reviewing, simulating, provisioning,
//! quarantining and rolling back. The signed versions on the policy topic verify with the
//! engine's public key, and a restarted `serve` rebuilds the same versions from the topic.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bulkhead_analytics::{Engine, LakeLocation, Limits};
use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{Consumer, ConsumerOptions, KafkaConfig, Offsets};
use bulkhead_schemas::policy::{PolicySigner, PolicyVerifier};
use bulkhead_schemas::topics::Topic;
use serde_json::Value;

fn bulkhead(config: &KafkaConfig, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    command
        .args(args)
        .env("BULKHEAD_KAFKA", &config.brokers)
        .env("BULKHEAD_TOPIC_PREFIX", &config.topic_prefix)
        .env("BULKHEAD_LOG", "warn")
        .env_remove("BULKHEAD_CONFIG")
        .env_remove("BULKHEAD_API")
        .stdin(Stdio::null());
    command
}

fn run(config: &KafkaConfig, args: &[&str]) -> Output {
    bulkhead(config, args).output().expect("bulkhead runs")
}

fn ok(config: &KafkaConfig, args: &[&str]) -> String {
    let out = run(config, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bulkhead {}: {}{}",
        args.join(" "),
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A loopback port nobody listens on (bound once, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serve {
    child: Child,
    api: String,
}

impl Serve {
    fn start(config: &KafkaConfig, lake: &Path, key: &Path, log: &Path) -> Serve {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = bulkhead(
            config,
            &["serve", "--flight-listen", "", "--recommend-every", "0"],
        )
        .arg("--listen")
        .arg(&listen)
        .arg("--lake")
        .arg(lake)
        .arg("--policy-key-file")
        .arg(key)
        .arg("--console-dir")
        .arg(lake.join("no-console"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
        let mut serve = Serve {
            child,
            api: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&listen).is_err() {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!(
                    "serve exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "serve did not listen on {listen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        serve
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

async fn get(api: &str, path: &str) -> Value {
    let response = reqwest::get(format!("{api}{path}")).await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "GET {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    let batches = engine
        .collect(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    bulkhead_analytics::output::json_rows(&batches[0]).unwrap()[0][0]
        .as_i64()
        .unwrap()
}

/// The policy versions on the topic, each verified with the engine's public key.
async fn provisioned_versions(config: &KafkaConfig, verifier: &PolicyVerifier) -> Vec<u64> {
    let consumer = Consumer::new(config, &ConsumerOptions::group("policy-e2e-check")).unwrap();
    let topic = config.topic(Topic::Policy);
    let marks = consumer
        .watermarks(&topic, Duration::from_secs(10))
        .unwrap();
    let (low, high) = marks[&0];
    consumer
        .assign(&Offsets::from([((topic.clone(), 0), low)]))
        .unwrap();
    let mut versions = Vec::new();
    let mut next = low;
    while next < high {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{topic}: nothing after offset {next} of {high}"))
            .unwrap();
        next = message.offset() + 1;
        let version = verifier
            .verify_bytes(message.payload().unwrap_or_default(), None)
            .unwrap_or_else(|e| panic!("a policy version on {topic} does not verify: {e}"));
        versions.push(version.version);
    }
    versions
}

#[tokio::test(flavor = "multi_thread")]
async fn recommend_review_simulate_provision_quarantine_rollback_through_the_cli() {
    let Some(kafka) = bulkhead_kafka::testkit::kafka() else {
        return;
    };
    let config = kafka.config("policy-e2e");
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let key = dir.path().join("policy.pem");

    // A datacenter as its collectors would publish it.
    let published = ok(
        &config,
        &["gen", "--model", "datacenter", "--apps", "8", "--seed", "7"],
    );
    let flows: i64 = published
        .split("published ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("gen did not say how many flows it published: {published}"));

    // Ingest until every flow is in the lake.
    let ingest_log = dir.path().join("ingest.log");
    let mut ingest = bulkhead(
        &config,
        &["ingest", "--metrics-addr", "", "--group", "policy-e2e"],
    )
    .args(["--commit-interval-secs", "1", "--lake"])
    .arg(&lake)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&ingest_log).unwrap())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(Some(status)) = ingest.try_wait() {
            panic!(
                "ingest exited ({status}): {}",
                std::fs::read_to_string(&ingest_log).unwrap_or_default()
            );
        }
        let engine = Engine::new(LakeLocation::new(&lake), Limits::default()).unwrap();
        if engine.tables().await.unwrap().contains(&"edges")
            && count(&engine, "SELECT count(*) FROM flows").await >= flows
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lake did not reach {flows} flows"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(ingest.id() as i32, libc::SIGTERM) };
    let _ = ingest.wait();

    let lake_arg = lake.to_str().unwrap();
    let recommended = ok(
        &config,
        &["recommend", "--lake", lake_arg, "--since", "48h"],
    );
    assert!(recommended.contains("published "), "{recommended}");

    let serve_log = dir.path().join("serve.log");
    let serve = Serve::start(&config, &lake, &key, &serve_log);
    let api = serve.api.clone();
    let client = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--api",
            &api,
            "--actor",
            "e2e-analyst",
            "--reason",
            "policy e2e test",
        ]);
        run(&config, &all)
    };
    let client_ok = |args: &[&str]| {
        let out = client(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "bulkhead {}: {text}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };

    // Bad input first: nothing to provision, an unknown recommendation.
    let empty = client(&["policy", "provision"]);
    assert!(!empty.status.success());
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("no rules"),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    let unknown = client(&["policy", "accept", "no-such-id"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no-such-id"));

    let listed = client_ok(&["policy", "list", "--status", "pending"]);
    let pending = get(&api, "/api/v1/recommendations?status=pending").await;
    let rules = pending
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] != "suspicious")
        .count();
    assert!(rules >= 8, "one rule per app at least: {listed}");
    assert!(
        pending
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "suspicious"),
        "the injected scans are flagged for review: {listed}"
    );
    let accepted = client_ok(&["policy", "accept", "--all"]);
    assert_eq!(
        accepted
            .lines()
            .filter(|l| l.starts_with("accepted "))
            .count(),
        rules
    );
    assert!(
        !get(&api, "/api/v1/policy/diff")
            .await
            .to_string()
            .is_empty()
    );

    // The workloads carry their host-provided labels (adopted at start) and go to full
    // enforcement with this version.
    let draft = get(&api, "/api/v1/policy/draft").await;
    let workloads: Vec<String> = draft["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["labels"]["app"].is_string())
        .map(|w| w["workload_id"].as_str().unwrap().to_string())
        .collect();
    assert!(workloads.len() >= 8 * 3, "host labels adopted: {draft}");
    let mut mode = vec!["labels", "mode", "full"];
    mode.extend(workloads.iter().map(String::as_str));
    client_ok(&mode);

    // Simulation: against no active policy, the draft blocks what the scans and lateral
    // movement tried, and allows every legitimate flow.
    let simulated = client_ok(&["policy", "simulate", "--days", "2"]);
    assert!(
        simulated.lines().any(|l| l.starts_with("total")),
        "{simulated}"
    );
    let simulation = simulation(&api).await;
    let totals = &simulation["totals"];
    assert!(totals["flows"].as_u64().unwrap() > 0, "{simulation}");
    assert!(
        totals["newly_blocked"].as_u64().unwrap() > 0,
        "the injected traffic is blocked: {simulation}"
    );
    assert!(
        totals["newly_blocked"].as_u64().unwrap() * 4 < totals["flows"].as_u64().unwrap(),
        "most traffic is legitimate and stays allowed: {simulation}"
    );

    let provisioned = client_ok(&["policy", "provision"]);
    assert!(
        provisioned.contains("provisioned version 1"),
        "{provisioned}"
    );
    let exported = client_ok(&["policy", "export", "--format", "k8s"]);
    assert!(exported.contains("kind: NetworkPolicy"), "{exported}");

    // Quarantine is itself a provisioned version; rollback provisions an earlier content.
    let workload = &workloads[0];
    let quarantined = client_ok(&["labels", "quarantine", workload]);
    assert!(quarantined.contains("version 2"), "{quarantined}");
    let rolled_back = client_ok(&["policy", "rollback", "1"]);
    assert!(
        rolled_back.contains("provisioned version 3"),
        "{rolled_back}"
    );
    let history = client_ok(&["policy", "history"]);
    assert!(
        history.contains("e2e-analyst") && history.contains("policy e2e test"),
        "{history}"
    );

    // A workload that lost its role is suggested it back from how it behaves.
    let strays = &workloads[workloads.len() - 1];
    let role = draft["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| &w["workload_id"] == strays)
        .map(|w| w["labels"]["role"].clone())
        .unwrap();
    client_ok(&["labels", "set", strays, "--remove", "role"]);
    let suggestions = get(&api, "/api/v1/labels/suggestions").await;
    let suggestion = suggestions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| &s["workload_id"] == strays)
        .unwrap_or_else(|| panic!("no suggestion for {strays}: {suggestions}"));
    assert_eq!(suggestion["set"]["role"], role, "{suggestion}");

    // A label rule on a host-provided label labels the inventory at once; a bad one is
    // refused with its problem named.
    let app = draft["workloads"][0]["labels"]["app"]
        .as_str()
        .unwrap()
        .to_string();
    let host_label = format!("app={app}");
    let set = client_ok(&[
        "labels",
        "rule-set",
        "loc-dc1",
        "--host-label",
        &host_label,
        "--assign",
        "loc=dc1",
    ]);
    assert!(set.contains("labels changed"), "{set}");
    let relabelled = get(&api, "/api/v1/policy/draft").await;
    for w in relabelled["workloads"].as_array().unwrap() {
        let in_app = w["labels"]["app"] == app.as_str();
        assert_eq!(w["labels"]["loc"] == "dc1", in_app, "{w}");
    }
    let refused = client(&[
        "labels",
        "rule-set",
        "bad",
        "--hostname-glob",
        "web-[",
        "--assign",
        "loc=x",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("hostname glob"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        get(&api, "/api/v1/labels/rules")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    client_ok(&["labels", "rule-delete", "loc-dc1"]);

    let versions_before = get(&api, "/api/v1/policy/versions").await;
    serve.stop();

    // What the enforcers receive: three versions, each signed by the engine's key.
    let signer =
        PolicySigner::from_pkcs8_pem(&std::fs::read_to_string(&key).unwrap(), "policy.pem")
            .unwrap();
    let verifier = PolicyVerifier::new([signer.verifying_key()]);
    assert_eq!(
        provisioned_versions(&config, &verifier).await,
        vec![1, 2, 3]
    );

    // A restarted engine rebuilds the same versions by replaying the control topic.
    let serve = Serve::start(&config, &lake, &key, &serve_log);
    assert_eq!(
        get(&serve.api, "/api/v1/policy/versions").await,
        versions_before
    );
    // Relabelling from inventory at start leaves what a person chose: the removed role
    // stays removed, though the host still provides it.
    let draft = get(&serve.api, "/api/v1/policy/draft").await;
    let stray = draft["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| &w["workload_id"] == strays)
        .unwrap();
    assert!(stray["labels"]["role"].is_null(), "{stray}");
    serve.stop();
}

async fn simulation(api: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{api}/api/v1/policy/simulate"))
        .json(&serde_json::json!({"days": 2}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "simulate: {status} {text}");
    serde_json::from_str(&text).unwrap()
}
