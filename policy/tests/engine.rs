//! The engine through its HTTP routes with the real broker: review, provisioning,
//! quarantine, rollback and export; bad input refused with clear errors; the state
//! rebuilt by replaying the control topic gives the same draft, history and signed bytes
//! as those on the policy topic.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bulkhead_kafka::require_kafka;
use bulkhead_kafka::{Consumer, ConsumerOptions};
use bulkhead_policy::{Engine, EngineConfig, router};
use bulkhead_schemas::policy::{PolicyVerifier, parse_verifying_key};
use bulkhead_schemas::topics::Topic;
use http_body_util::BodyExt as _;
use rdkafka::Message as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

/// The newest message on the policy topic.
async fn last_policy_message(config: &bulkhead_kafka::KafkaConfig) -> (Vec<u8>, Vec<u8>) {
    let topic = config.topic(Topic::Policy);
    let consumer =
        Consumer::new(config, &ConsumerOptions::group("policy-engine-test-reader")).unwrap();
    let marks = consumer
        .watermarks(&topic, Duration::from_secs(10))
        .unwrap();
    let (_, high) = marks[&0];
    consumer
        .assign(&[((topic, 0), high - 1)].into_iter().collect())
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    (m.key().unwrap().to_vec(), m.payload().unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn review_provision_quarantine_rollback_and_replay() {
    let kafka = require_kafka!();
    let config = kafka.config("policy-engine");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys/pce.pem");
    let engine_config = EngineConfig {
        kafka: config.clone(),
        key_file: key_file.clone(),
        lake: None,
    };
    let engine = Arc::new(Engine::start(engine_config.clone()).await.unwrap());
    assert!(
        key_file.exists() && key_file.with_extension("pub.pem").exists(),
        "the key is generated on first start"
    );
    let dc = common::datacenter(5, 8);
    let recs = common::recommendations(&dc);
    *engine.recommendations.write().await = recs.items.clone();
    let app = router(engine.clone());

    // Bad input: clear errors, nothing changes.
    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/policy/provision",
        Some(json!({"actor": "alice"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the draft has no rules"),
        "{body}"
    );
    let (status, body, _) = call(&app, "POST", "/api/v1/policy/provision", Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("\"actor\" is required"),
        "{body}"
    );
    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/policy/rulesets",
        Some(json!({"actor": "alice", "name": "crm", "scope": ["app=crm"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/policy/rulesets/crm/rules",
        Some(json!({"actor": "alice", "rule": {"id": "x", "consumers": [{"labels": ["team=a"]}], "providers": [{"any": true}], "services": ["tcp/70000"]}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("unknown label key \"team\"")
            && error.contains("port 70000 is out of range"),
        "{error}"
    );
    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/policy/rulesets/crm/rules",
        Some(json!({"actor": "alice", "rule": {"id": 5}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("rule.id"),
        "{body}"
    );
    let (status, _, _) = call(
        &app,
        "POST",
        "/api/v1/recommendations/rec-nope/accept",
        Some(json!({"actor": "alice"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/policy/simulate",
        Some(json!({"days": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("lake"), "{body}");
    let draft_before: Value = call(&app, "GET", "/api/v1/policy/draft", None).await.1;
    assert_eq!(
        draft_before["rulesets"][0]["rules"],
        json!([]),
        "refused rules left no trace"
    );

    // Label the workloads, review every recommendation.
    for w in &dc.workloads {
        let (status, body, _) = call(
            &app,
            "POST",
            &format!("/api/v1/workloads/{}/labels", w.id),
            Some(json!({"actor": "alice", "reason": "cmdb", "set": w.labels})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _, _) = call(
            &app,
            "POST",
            &format!("/api/v1/workloads/{}/mode", w.id),
            Some(json!({"actor": "alice", "mode": "full"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, pending, _) = call(&app, "GET", "/api/v1/recommendations?status=pending", None).await;
    assert_eq!(pending.as_array().unwrap().len(), recs.items.len());
    for r in &recs.items {
        let verb = if r.kind == bulkhead_recommender::Kind::Suspicious {
            "reject"
        } else {
            "accept"
        };
        if verb == "reject" {
            let (status, body, _) = call(
                &app,
                "POST",
                &format!("/api/v1/recommendations/{}/accept", r.id),
                Some(json!({"actor": "bob"})),
            )
            .await;
            assert_eq!(
                status,
                StatusCode::CONFLICT,
                "suspicious findings cannot be accepted: {body}"
            );
        }
        let (status, body, _) = call(
            &app,
            "POST",
            &format!("/api/v1/recommendations/{}/{verb}", r.id),
            Some(json!({"actor": "bob", "reason": "reviewed"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{verb} {}: {body}", r.id);
    }
    let first = &recs.rules().next().unwrap().id;
    let (status, body, _) = call(
        &app,
        "POST",
        &format!("/api/v1/recommendations/{first}/accept"),
        Some(json!({"actor": "bob"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, accepted, _) = call(&app, "GET", "/api/v1/recommendations?status=accepted", None).await;
    assert_eq!(accepted.as_array().unwrap().len(), recs.rules().count());
    let (_, diff, _) = call(&app, "GET", "/api/v1/policy/diff", None).await;
    assert_eq!(
        diff["added"].as_array().unwrap().len(),
        recs.rules().count()
    );

    // Provision: version 1 on the policy topic, signed with the key, verified.
    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/policy/provision",
        Some(json!({"actor": "carol", "reason": "go live"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1);
    let (key, payload) = last_policy_message(&config).await;
    assert_eq!(key, b"global");
    let public = std::fs::read_to_string(key_file.with_extension("pub.pem")).unwrap();
    let verifier = PolicyVerifier::new([parse_verifying_key(&public, "pub").unwrap()]);
    let v1 = verifier.verify_bytes(&payload, None).unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(
        hex::encode(v1.content_sha256),
        body["content_sha256"].as_str().unwrap()
    );
    assert_eq!(v1.provisioned_by, "carol");
    let (_, diff, _) = call(&app, "GET", "/api/v1/policy/diff", None).await;
    assert_eq!(diff["added"], json!([]));

    // Quarantine is provisioned at once; rollback is a new version with old content.
    let victim = &dc.workloads[10].id;
    let (status, body, _) = call(
        &app,
        "POST",
        &format!("/api/v1/workloads/{victim}/quarantine"),
        Some(json!({"actor": "soc", "reason": "malware", "on": true})),
    )
    .await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::OK, json!(2))
    );
    let v2 = verifier
        .verify_bytes(&last_policy_message(&config).await.1, Some(1))
        .unwrap();
    assert!(
        v2.document
            .workloads
            .iter()
            .any(|w| &w.workload_id == victim && w.quarantined)
    );
    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/policy/rollback",
        Some(json!({"actor": "carol", "version": 1})),
    )
    .await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::OK, json!(3))
    );
    let v3 = verifier
        .verify_bytes(&last_policy_message(&config).await.1, Some(2))
        .unwrap();
    assert_eq!(v3.content_sha256, v1.content_sha256);
    let (status, _, _) = call(
        &app,
        "POST",
        "/api/v1/policy/rollback",
        Some(json!({"actor": "carol", "version": 42})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, versions, _) = call(&app, "GET", "/api/v1/policy/versions", None).await;
    assert_eq!(versions.as_array().unwrap().len(), 3);
    let (_, history, _) = call(&app, "GET", "/api/v1/history", None).await;
    let history = history.as_array().unwrap();
    assert!(history.iter().any(|h| h["actor"] == "soc"
        && h["reason"] == "malware"
        && h["what"].as_str().unwrap().contains("quarantined")));

    // Export: valid against the Kubernetes schema.
    let (status, _, yaml) = call(
        &app,
        "GET",
        "/api/v1/policy/export?format=k8s&which=active&namespace=prod",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let file = dir.path().join("np.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate is needed (pip install kubernetes-validate==1.37.0)");
    assert!(
        out.status.success(),
        "NetworkPolicy export invalid:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        yaml.matches("kind: NetworkPolicy").count() >= recs.rules().count() / 2,
        "{yaml}"
    );

    // Replay: a new engine on the same topic rebuilds the same state and bytes.
    let state = engine.state().await;
    let again = Engine::start(engine_config).await.unwrap();
    let rebuilt = again.state().await;
    assert_eq!(rebuilt.draft, state.draft);
    assert_eq!(rebuilt.history.len(), state.history.len());
    assert_eq!(rebuilt.reviews, state.reviews);
    assert_eq!(rebuilt.versions.len(), 3);
    for (a, b) in rebuilt.versions.iter().zip(&state.versions) {
        assert_eq!(a.signed_bytes(), b.signed_bytes());
    }
    assert_eq!(
        rebuilt.active().unwrap().signed_bytes(),
        last_policy_message(&config).await.1
    );
}
