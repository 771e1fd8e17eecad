//! The policy engine's part of the HTTP API (HTTP-API.md), paths under `/api/v1`. Every
//! mutating call takes `{"actor": "...", "reason": "...", ...}` and becomes control
//! events; errors are `{"error": "..."}` with 400 (bad input), 404 (unknown object), 409
//! (conflict with the state) or 502 (Kafka unreachable).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bulkhead_recommender::Recommendation;
use bulkhead_schemas::policy::{EnforcementMode, Label, Rule};
use bulkhead_schemas::proto::{self, control_event::Event};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{Engine, EngineError};
use crate::state::{ControlError, Review};

pub type AppState = Arc<Engine>;

/// An error response.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::BadInput(_) => StatusCode::BAD_REQUEST,
            EngineError::NotFound(_) => StatusCode::NOT_FOUND,
            EngineError::Kafka(_) => StatusCode::BAD_GATEWAY,
            EngineError::Refused(c) => match c {
                ControlError::NotFound(_) => StatusCode::NOT_FOUND,
                ControlError::Conflict(_)
                | ControlError::Replayed(_)
                | ControlError::Forged(_)
                | ControlError::Refused(_) => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            },
        };
        ApiError(status, e.to_string())
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Parses a JSON body, naming the field and the problem (axum's own rejection is plain
/// text without the path).
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        bad(format!(
            "{what} request body at {}: {}",
            e.path(),
            e.inner()
        ))
    })
}

#[derive(Deserialize)]
struct Attribution {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    reason: String,
}

/// The routes (already prefixed with `/api/v1`).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/recommendations", get(list_recommendations))
        .route(
            "/api/v1/recommendations/{id}",
            get(show_recommendation).put(edit_recommendation),
        )
        .route("/api/v1/recommendations/{id}/accept", post(accept))
        .route("/api/v1/recommendations/{id}/reject", post(reject))
        .route("/api/v1/policy/draft", get(draft))
        .route("/api/v1/policy/active", get(active))
        .route("/api/v1/policy/diff", get(diff))
        .route("/api/v1/policy/simulate", post(simulate))
        .route("/api/v1/policy/provision", post(provision))
        .route("/api/v1/policy/versions", get(versions))
        .route("/api/v1/policy/rollback", post(rollback))
        .route("/api/v1/policy/export", get(export))
        .route("/api/v1/policy/rulesets", post(draft_ruleset))
        .route("/api/v1/policy/rulesets/{ruleset}/rules", post(draft_rule))
        .route(
            "/api/v1/policy/rulesets/{ruleset}/rules/{id}",
            axum::routing::put(edit_rule).delete(delete_rule),
        )
        .route("/api/v1/workloads/{id}/labels", post(set_labels))
        .route("/api/v1/workloads/{id}/mode", post(set_mode))
        .route("/api/v1/workloads/{id}/quarantine", post(quarantine))
        .route("/api/v1/history", get(history))
        .route("/api/v1/labels/suggestions", get(label_suggestions))
        .route(
            "/api/v1/labels/rules",
            get(list_label_rules).post(set_label_rule),
        )
        .route(
            "/api/v1/labels/rules/{id}",
            axum::routing::delete(delete_label_rule),
        )
        .with_state(state)
}

/// Labels for workloads that miss scope or role labels, from their behaviour in the
/// last day of edges, judged against the draft's labels (proposals: accepting one is a
/// `POST /workloads/{id}/labels`).
async fn label_suggestions(State(engine): State<AppState>) -> ApiResult {
    let Some(lake) = engine.config.lake.clone() else {
        return Ok(Json(json!([])));
    };
    let since_us = (bulkhead_schemas::now_unix_ns() / 1000) as i64 - 86_400_000_000;
    let Ok((edges, _)) = bulkhead_recommender::lake::load_edges(&lake, since_us).await else {
        // No edges table yet: nothing to learn from.
        return Ok(Json(json!([])));
    };
    let labels = engine.draft_labels().await;
    let suggestions = tokio::task::spawn_blocking(move || {
        let sums = bulkhead_recommender::aggregate(edges)?;
        anyhow::Ok(bulkhead_recommender::suggest::suggest_labels(
            &sums, &labels,
        ))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "cannot read the edges: {}",
                bulkhead_schemas::error_line(e.as_ref())
            ),
        )
    })?;
    Ok(Json(
        serde_json::to_value(suggestions).expect("suggestions serialize"),
    ))
}

#[derive(Deserialize)]
struct StatusQuery {
    status: Option<String>,
}

fn with_status(r: &Recommendation, review: Option<Review>) -> Value {
    let mut v = serde_json::to_value(r).expect("recommendations serialize");
    v["status"] = json!(match review {
        None => "pending",
        Some(Review::Accepted) => "accepted",
        Some(Review::Rejected) => "rejected",
    });
    v
}

async fn list_recommendations(
    State(engine): State<AppState>,
    Query(q): Query<StatusQuery>,
) -> ApiResult {
    let wanted = match q.status.as_deref() {
        None => None,
        Some(s @ ("pending" | "accepted" | "rejected")) => Some(s.to_string()),
        Some(other) => {
            return Err(bad(format!(
                "status {other:?}: expected pending, accepted or rejected"
            )));
        }
    };
    let state = engine.state().await;
    let items: Vec<Value> = engine
        .recommendations
        .read()
        .await
        .iter()
        .map(|r| with_status(r, state.reviews.get(&r.id).copied()))
        .filter(|v| wanted.as_deref().is_none_or(|w| v["status"] == w))
        .collect();
    Ok(Json(Value::Array(items)))
}

async fn find_recommendation(engine: &Engine, id: &str) -> Result<Recommendation, ApiError> {
    engine
        .recommendations
        .read()
        .await
        .iter()
        .find(|r| r.id == id)
        .cloned()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no recommendation {id:?}")))
}

async fn show_recommendation(State(engine): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let r = find_recommendation(&engine, &id).await?;
    let review = engine.state().await.reviews.get(&id).copied();
    Ok(Json(with_status(&r, review)))
}

/// The events that put `rule` (of recommendation `r`) into the draft.
async fn accept_events(
    engine: &Engine,
    r: &Recommendation,
    rule: Rule,
) -> Result<Vec<Event>, ApiError> {
    crate::state::accept_changes(&engine.state().await.draft, r, rule)
        .map_err(|e| ApiError(StatusCode::CONFLICT, e))
}

async fn accept(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let who: Attribution = body(&bytes, "accept")?;
    let r = find_recommendation(&engine, &id).await?;
    let events = accept_events(&engine, &r, r.rule.clone()).await?;
    engine.submit(&who.actor, &who.reason, events).await?;
    Ok(Json(
        json!({"accepted": id, "ruleset": r.ruleset, "rule": r.rule}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    reason: String,
    rule: Rule,
}

/// Accepts the recommendation with an edited rule (the event records what was accepted).
async fn edit_recommendation(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let edit: EditBody = body(&bytes, "edit")?;
    let r = find_recommendation(&engine, &id).await?;
    let events = accept_events(&engine, &r, edit.rule.clone()).await?;
    engine.submit(&edit.actor, &edit.reason, events).await?;
    Ok(Json(
        json!({"accepted": id, "ruleset": r.ruleset, "rule": edit.rule}),
    ))
}

async fn reject(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let who: Attribution = body(&bytes, "reject")?;
    find_recommendation(&engine, &id).await?;
    let event = Event::RecommendationRejected(proto::RecommendationRejected {
        recommendation_id: id.clone(),
    });
    engine.submit(&who.actor, &who.reason, vec![event]).await?;
    Ok(Json(json!({"rejected": id})))
}

async fn draft(State(engine): State<AppState>) -> ApiResult {
    Ok(Json(
        serde_json::to_value(&engine.state().await.draft).expect("documents serialize"),
    ))
}

async fn active(State(engine): State<AppState>) -> ApiResult {
    let state = engine.state().await;
    let active = state.active().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "no policy has been provisioned yet".into(),
        )
    })?;
    Ok(Json(
        serde_json::to_value(&active.version.document).expect("documents serialize"),
    ))
}

async fn diff(State(engine): State<AppState>) -> ApiResult {
    Ok(Json(
        serde_json::to_value(engine.state().await.diff()).expect("diffs serialize"),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulateBody {
    #[serde(default = "one")]
    days: f64,
}

fn one() -> f64 {
    1.0
}

async fn simulate(State(engine): State<AppState>, bytes: axum::body::Bytes) -> ApiResult {
    let request: SimulateBody = if bytes.is_empty() {
        SimulateBody { days: 1.0 }
    } else {
        body(&bytes, "simulate")?
    };
    if !(request.days > 0.0 && request.days <= 366.0) {
        return Err(bad(format!(
            "days {}: expected more than 0 and at most 366",
            request.days
        )));
    }
    let lake = engine
        .config
        .lake
        .clone()
        .ok_or_else(|| bad("simulation needs the lake (serve --lake)"))?;
    let since_us =
        (bulkhead_schemas::now_unix_ns() / 1000) as i64 - (request.days * 86_400e6) as i64;
    let flows = crate::simulate::load_flows(&lake, since_us)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "cannot read flows from the lake: {}",
                    bulkhead_schemas::error_line(e.as_ref())
                ),
            )
        })?;
    let state = engine.state().await;
    let result = crate::simulate::simulate(
        state.active().map(|p| &p.version.document),
        &state.draft,
        &flows,
    );
    Ok(Json(
        serde_json::to_value(result).expect("simulations serialize"),
    ))
}

async fn provision(State(engine): State<AppState>, bytes: axum::body::Bytes) -> ApiResult {
    let who: Attribution = body(&bytes, "provision")?;
    let event = Event::PolicyProvisioned(proto::PolicyProvisioned {
        version: 0,
        content_sha256: vec![],
    });
    let produced = engine.submit(&who.actor, &who.reason, vec![event]).await?;
    let p = produced
        .last()
        .ok_or_else(|| bad("nothing was provisioned"))?;
    Ok(Json(
        json!({"version": p.version.version, "content_sha256": hex::encode(p.version.content_sha256)}),
    ))
}

async fn versions(State(engine): State<AppState>) -> ApiResult {
    let state = engine.state().await;
    let items: Vec<Value> = state
        .versions
        .iter()
        .map(|p| {
            json!({
                "version": p.version.version,
                "parent_version": p.version.parent_version,
                "created_unix_ns": p.version.created_unix_ns,
                "provisioned_by": p.version.provisioned_by,
                "note": p.version.note,
                "content_sha256": hex::encode(p.version.content_sha256),
                "key_id": p.signed.key_id,
                "rules": p.version.document.rules().count(),
            })
        })
        .collect();
    Ok(Json(Value::Array(items)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    reason: String,
    version: u64,
}

async fn rollback(State(engine): State<AppState>, bytes: axum::body::Bytes) -> ApiResult {
    let request: RollbackBody = body(&bytes, "rollback")?;
    let event = Event::PolicyRolledBack(proto::PolicyRolledBack {
        to_version: request.version,
    });
    let produced = engine
        .submit(&request.actor, &request.reason, vec![event])
        .await?;
    let p = produced
        .last()
        .ok_or_else(|| bad("nothing was provisioned"))?;
    Ok(Json(
        json!({"version": p.version.version, "content_sha256": hex::encode(p.version.content_sha256), "content_of": request.version}),
    ))
}

#[derive(Deserialize)]
struct ExportQuery {
    format: Option<String>,
    which: Option<String>,
    namespace: Option<String>,
}

async fn export(
    State(engine): State<AppState>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let state = engine.state().await;
    let doc = match q.which.as_deref().unwrap_or("active") {
        "draft" => state.draft.clone(),
        "active" => state
            .active()
            .map(|p| p.version.document.clone())
            .ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    "no policy has been provisioned yet (export the draft with which=draft)".into(),
                )
            })?,
        other => return Err(bad(format!("which {other:?}: expected draft or active"))),
    };
    match q.format.as_deref().unwrap_or("yaml") {
        "yaml" => Ok(doc.to_yaml().into_response()),
        "json" => {
            Ok(Json(serde_json::to_value(&doc).expect("documents serialize")).into_response())
        }
        "k8s" => {
            let (policies, warnings) =
                crate::export::network_policies(&doc, q.namespace.as_deref().unwrap_or("default"));
            let mut text = String::new();
            for w in warnings {
                text.push_str(&format!("# warning: {w}\n"));
            }
            text.push_str(&crate::export::to_yaml(&policies));
            Ok(text.into_response())
        }
        other => Err(bad(format!("format {other:?}: expected yaml, json or k8s"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesetBody {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    reason: String,
    name: String,
    scope: Vec<Label>,
    #[serde(default)]
    description: String,
}

async fn draft_ruleset(State(engine): State<AppState>, bytes: axum::body::Bytes) -> ApiResult {
    let r: RulesetBody = body(&bytes, "ruleset")?;
    let event = Event::RulesetDrafted(proto::RulesetDrafted {
        ruleset: Some(proto::Ruleset {
            name: r.name.clone(),
            description: r.description,
            scope: r.scope.iter().map(proto::Label::from).collect(),
            rules: vec![],
        }),
    });
    engine.submit(&r.actor, &r.reason, vec![event]).await?;
    Ok(Json(json!({"drafted": r.name})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    reason: String,
    rule: Rule,
}

async fn draft_rule(
    State(engine): State<AppState>,
    Path(ruleset): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let r: RuleBody = body(&bytes, "rule")?;
    let event = Event::RuleDrafted(proto::RuleDrafted {
        ruleset: ruleset.clone(),
        rule: Some(proto::Rule::from(&r.rule)),
    });
    engine.submit(&r.actor, &r.reason, vec![event]).await?;
    Ok(Json(json!({"drafted": r.rule.id, "ruleset": ruleset})))
}

async fn edit_rule(
    State(engine): State<AppState>,
    Path((ruleset, id)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let r: RuleBody = body(&bytes, "rule")?;
    if r.rule.id != id {
        return Err(bad(format!(
            "rule id {:?} in the body is not the {id:?} of the path",
            r.rule.id
        )));
    }
    let event = Event::RuleEdited(proto::RuleEdited {
        ruleset: ruleset.clone(),
        rule: Some(proto::Rule::from(&r.rule)),
    });
    engine.submit(&r.actor, &r.reason, vec![event]).await?;
    Ok(Json(json!({"edited": id, "ruleset": ruleset})))
}

async fn delete_rule(
    State(engine): State<AppState>,
    Path((ruleset, id)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let who: Attribution = body(&bytes, "delete")?;
    let event = Event::RuleDeleted(proto::RuleDeleted {
        ruleset: ruleset.clone(),
        rule_id: id.clone(),
    });
    engine.submit(&who.actor, &who.reason, vec![event]).await?;
    Ok(Json(json!({"deleted": id, "ruleset": ruleset})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsBody {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

async fn set_labels(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let r: LabelsBody = body(&bytes, "labels")?;
    if r.set.is_empty() && r.remove.is_empty() {
        return Err(bad(
            "labels: nothing to do (give \"set\" and/or \"remove\")",
        ));
    }
    let mut events: Vec<Event> = r
        .set
        .iter()
        .map(|(k, v)| {
            Event::LabelAssigned(proto::LabelAssigned {
                workload_id: id.clone(),
                label: Some(proto::Label::from(&Label::new(k, v))),
            })
        })
        .collect();
    events.extend(r.remove.iter().map(|k| {
        Event::LabelRemoved(proto::LabelRemoved {
            workload_id: id.clone(),
            key: k.clone(),
        })
    }));
    engine.submit(&r.actor, &r.reason, events).await?;
    let state = engine.state().await;
    let labels = state
        .draft
        .workloads
        .iter()
        .find(|w| w.workload_id == id)
        .map(|w| w.labels.clone())
        .unwrap_or_default();
    Ok(Json(json!({"workload": id, "labels": labels})))
}

/// A label rule as the API reads and writes it.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct LabelRuleBody {
    id: String,
    /// Glob on the hostname ("web-*"); empty: any.
    #[serde(default)]
    hostname_glob: String,
    /// A label the host must provide ("key=value"); empty: no condition.
    #[serde(default)]
    host_label: String,
    /// A CIDR one of the workload's addresses must be in; empty: no condition.
    #[serde(default)]
    address_cidr: String,
    /// The labels assigned where the rule matches.
    assign: BTreeMap<String, String>,
    /// Rules apply in ascending priority; a later one wins per key.
    #[serde(default)]
    priority: i32,
    #[serde(default, skip_serializing)]
    actor: String,
    #[serde(default, skip_serializing)]
    reason: String,
}

impl LabelRuleBody {
    fn to_proto(&self) -> Result<proto::LabelRule, ApiError> {
        let host_label = match self.host_label.trim() {
            "" => None,
            text => {
                let label: Label = text.parse().map_err(|e| {
                    bad(format!(
                        "label rule {:?}: host_label {text:?}: {e}",
                        self.id
                    ))
                })?;
                Some(proto::Label::from(&label))
            }
        };
        Ok(proto::LabelRule {
            id: self.id.clone(),
            hostname_glob: self.hostname_glob.clone(),
            host_label,
            address_cidr: self.address_cidr.clone(),
            assign: self
                .assign
                .iter()
                .map(|(k, v)| proto::Label::from(&Label::new(k, v)))
                .collect(),
            priority: self.priority,
        })
    }

    fn from_proto(rule: &proto::LabelRule) -> Self {
        Self {
            id: rule.id.clone(),
            hostname_glob: rule.hostname_glob.clone(),
            host_label: rule
                .host_label
                .as_ref()
                .filter(|l| !l.key.is_empty())
                .map(|l| format!("{}={}", l.key, l.value))
                .unwrap_or_default(),
            address_cidr: rule.address_cidr.clone(),
            assign: rule
                .assign
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect(),
            priority: rule.priority,
            actor: String::new(),
            reason: String::new(),
        }
    }
}

async fn list_label_rules(State(engine): State<AppState>) -> ApiResult {
    let state = engine.state().await;
    let rules: Vec<LabelRuleBody> = state
        .label_rules
        .values()
        .map(LabelRuleBody::from_proto)
        .collect();
    Ok(Json(json!(rules)))
}

/// Sets a label rule and labels the inventory with it at once.
async fn set_label_rule(State(engine): State<AppState>, bytes: axum::body::Bytes) -> ApiResult {
    let r: LabelRuleBody = body(&bytes, "label rule")?;
    let rule = r.to_proto()?;
    engine
        .submit(
            &r.actor,
            &r.reason,
            vec![Event::LabelRuleSet(proto::LabelRuleSet {
                rule: Some(rule),
            })],
        )
        .await?;
    let labelled = relabel(&engine).await?;
    Ok(Json(json!({"rule": r.id, "labels_changed": labelled})))
}

async fn delete_label_rule(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let who: Attribution = body(&bytes, "label rule deletion")?;
    engine
        .submit(
            &who.actor,
            &who.reason,
            vec![Event::LabelRuleDeleted(proto::LabelRuleDeleted {
                rule_id: id.clone(),
            })],
        )
        .await?;
    Ok(Json(json!({"deleted": id})))
}

/// Applies host labels and label rules to the lake's inventory (none without a lake).
async fn relabel(engine: &Engine) -> Result<usize, ApiError> {
    let Some(lake) = &engine.config.lake else {
        return Ok(0);
    };
    let inventory = bulkhead_recommender::lake::inventory(lake)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "cannot read the workloads table: {}",
                    bulkhead_schemas::error_line(e.as_ref())
                ),
            )
        })?;
    Ok(engine.adopt_inventory(&inventory).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    reason: String,
    mode: EnforcementMode,
}

async fn set_mode(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let r: ModeBody = body(&bytes, "mode")?;
    let mode = match r.mode {
        EnforcementMode::Idle => proto::EnforcementMode::Idle,
        EnforcementMode::VisibilityOnly => proto::EnforcementMode::VisibilityOnly,
        EnforcementMode::Selective => proto::EnforcementMode::Selective,
        EnforcementMode::Full => proto::EnforcementMode::Full,
    };
    let event = Event::EnforcementModeSet(proto::EnforcementModeSet {
        workload_id: id.clone(),
        mode: mode as i32,
    });
    engine.submit(&r.actor, &r.reason, vec![event]).await?;
    Ok(Json(
        json!({"workload": id, "mode": r.mode, "effective": "when the draft is provisioned"}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineBody {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    reason: String,
    on: bool,
}

async fn quarantine(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult {
    let r: QuarantineBody = body(&bytes, "quarantine")?;
    let event = if r.on {
        Event::QuarantineSet(proto::QuarantineSet {
            workload_id: id.clone(),
        })
    } else {
        Event::QuarantineLifted(proto::QuarantineLifted {
            workload_id: id.clone(),
        })
    };
    let produced = engine.submit(&r.actor, &r.reason, vec![event]).await?;
    let version = produced.last().map(|p| p.version.version);
    Ok(Json(
        json!({"workload": id, "quarantined": r.on, "version": version}),
    ))
}

async fn history(State(engine): State<AppState>) -> ApiResult {
    Ok(Json(
        serde_json::to_value(&engine.state().await.history).expect("history serializes"),
    ))
}
