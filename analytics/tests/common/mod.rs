//! Shared by the analytics tests (`analytics/tests/serve.rs`, and by path the workspace's
//! `tests/analytics.rs`): requests to the API's router, and small Delta tables of the
//! lake's schemas (`workloads`, `status`).

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Int32Builder, Int64Builder, ListBuilder, MapBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

/// Appends `batch` to the lake table `name` under `dir` (created with the table's
/// partition columns on first write).
pub async fn write_table(dir: &Path, name: &str, batch: RecordBatch) {
    let spec = bulkhead_schemas::lake::table(name).unwrap();
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    let table = deltalake::DeltaTable::try_from_url(url::Url::from_directory_path(&path).unwrap())
        .await
        .unwrap();
    table
        .write(vec![batch])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .with_partition_columns(spec.partition_columns.iter().map(|c| c.to_string()))
        .await
        .unwrap_or_else(|e| panic!("writing {name}: {e}"));
}

/// One request to `app` (a JSON body, a bearer token if given): status and body text.
pub async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).to_string())
}

/// [`call`] without a token, the response parsed as JSON.
pub async fn call_json(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = call(app, method, uri, body.as_deref(), None).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{uri}: {e}: {text}"));
    (status, value)
}

/// The response is the status `expect` with an `error` message that mentions `needle`.
pub fn assert_error(status: StatusCode, value: &Value, expect: u16, needle: &str, what: &str) {
    assert_eq!(status.as_u16(), expect, "{what}: {value}");
    let message = value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error message: {value}"));
    assert!(
        message.contains(needle),
        "{what}: {message:?} should mention {needle:?}"
    );
}

/// A host as the `workloads` table's tests need it.
pub struct Workload {
    pub id: String,
    pub hostname: String,
    pub addresses: Vec<String>,
    /// `tcp/5432`, …
    pub port: String,
    pub labels: Vec<(String, String)>,
}

/// `workloads` rows: Linux hosts in visibility only, not quarantined, observed at
/// `observed_us`, with the same labels as workload and as host.
pub fn workloads_batch(workloads: &[Workload], observed_us: i64) -> RecordBatch {
    let (mut id, mut hostname, mut os, mut agent) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut addresses = ListBuilder::new(StringBuilder::new());
    let mut ports = ListBuilder::new(StringBuilder::new());
    let labels_builder = || MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let (mut labels, mut host_labels) = (labels_builder(), labels_builder());
    let mut mode = StringBuilder::new();
    let mut quarantined = BooleanBuilder::new();
    let mut observed = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for w in workloads {
        id.append_value(&w.id);
        hostname.append_value(&w.hostname);
        os.append_value("linux");
        agent.append_value("test");
        for address in &w.addresses {
            addresses.values().append_value(address);
        }
        addresses.append(true);
        ports.values().append_value(&w.port);
        ports.append(true);
        for b in [&mut labels, &mut host_labels] {
            for (k, v) in &w.labels {
                b.keys().append_value(k);
                b.values().append_value(v);
            }
            b.append(true).unwrap();
        }
        mode.append_value("visibility_only");
        quarantined.append_value(false);
        observed.append_value(observed_us);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(hostname.finish()),
        Arc::new(os.finish()),
        Arc::new(agent.finish()),
        Arc::new(addresses.finish()),
        Arc::new(ports.finish()),
        Arc::new(labels.finish()),
        Arc::new(host_labels.finish()),
        Arc::new(mode.finish()),
        Arc::new(quarantined.finish()),
        Arc::new(observed.finish()),
    ];
    RecordBatch::try_new(bulkhead_schemas::lake::workloads_schema(), columns).unwrap()
}

/// `status` rows: each of `host_ids` reports policy `version` applied at `at_us`, in
/// visibility only, with the same rule counts.
pub fn status_batch(host_ids: &[&str], at_us: i64, version: i64) -> RecordBatch {
    let mut host_id = StringBuilder::new();
    let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut state, mut mode, mut last_error) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut applied = Int64Builder::new();
    let mut quarantined = BooleanBuilder::new();
    let (mut rules, mut elements) = (Int32Builder::new(), Int32Builder::new());
    let (mut rejected, mut dropped, mut pb, mut duration) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    for id in host_ids {
        host_id.append_value(id);
        at.append_value(at_us);
        state.append_value("applied");
        applied.append_value(version);
        mode.append_value("visibility_only");
        quarantined.append_value(false);
        rules.append_value(12);
        elements.append_value(4);
        last_error.append_null();
        rejected.append_value(0);
        dropped.append_value(0);
        pb.append_value(7);
        duration.append_value(1500);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(host_id.finish()),
        Arc::new(at.finish()),
        Arc::new(state.finish()),
        Arc::new(applied.finish()),
        Arc::new(mode.finish()),
        Arc::new(quarantined.finish()),
        Arc::new(rules.finish()),
        Arc::new(elements.finish()),
        Arc::new(last_error.finish()),
        Arc::new(rejected.finish()),
        Arc::new(dropped.finish()),
        Arc::new(pb.finish()),
        Arc::new(duration.finish()),
    ];
    RecordBatch::try_new(bulkhead_schemas::lake::status_schema(), columns).unwrap()
}
