//! The HTTP JSON API (docs/http-api.md): query, explorer, map, workloads, tables, plus
//! health, readiness, metrics and the OpenAPI document. Every error is
//! `{"error": "...", "code": "..."}`; bad input is a 4xx, never a 500.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arrow_array::{Array as _, Int64Array, RecordBatch, StringArray};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures::StreamExt as _;
use serde::Deserialize;
use serde::ser::SerializeSeq as _;
use serde_json::{Value, json};

use crate::engine::{Engine, QueryError};
use crate::output;
use crate::queries::{self, BadRequest, RowLimits};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Engine,
    pub rows: RowLimits,
}

/// An API error: status, message, stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    code: &'static str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", e.0)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let status = match e {
            QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
            QueryError::ReadOnly(_) => StatusCode::FORBIDDEN,
            QueryError::Memory(_) | QueryError::Timeout(_) => StatusCode::UNPROCESSABLE_ENTITY,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

/// Parses a JSON body, naming the problem (the default extractor's rejection is text).
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request needs a JSON body",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("request body: {e}"),
        )
    })
}

/// Routes that need the token (when one is configured).
pub fn api_routes(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/query", post(query))
        .route("/api/v1/explorer", post(explorer))
        .route("/api/v1/map", get(map))
        .route("/api/v1/workloads", get(workloads))
        .route("/api/v1/tables", get(tables))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Routes open to anyone: probes and the API description.
pub fn public_routes(state: ApiState) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(crate::openapi::document()) }),
        )
        .with_state(state)
}

/// JSON 404 for unknown API paths (so they never fall through to the console).
pub fn api_not_found() -> Router {
    Router::new().route(
        "/api/{*rest}",
        any(|request: Request| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no API endpoint {} {}",
                    request.method(),
                    request.uri().path()
                ),
            )
        }),
    )
}

/// Checks `Authorization: Bearer <token>` (constant-time comparison).
pub async fn require_token(
    State(token): State<Arc<String>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is wrong",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs 'Authorization: Bearer <token>'",
        )
        .into_response(),
    }
}

/// Equal without revealing where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts requests by status class.
pub async fn count_requests(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("bulkhead_analytics_http_requests_total", "status" => class).increment(1);
    response
}

/// The Prometheus recorder of this process (installed once).
pub fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "cannot install the Prometheus recorder"))
                .ok()
        })
        .as_ref()
}

async fn metrics() -> Response {
    match prometheus() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_metrics",
            "another metrics recorder is installed in this process",
        )
        .into_response(),
    }
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if let Some(root) = state.engine.lake().location().local_dir()
        && !root.is_dir()
    {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the lake {} does not exist yet", root.display()),
        )
        .into_response();
    }
    let ready = async {
        state.engine.collect("SELECT 1").await?;
        state.engine.tables().await
    };
    match ready.await {
        Ok(tables) => axum::Json(json!({"status": "ready", "tables": tables})).into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string())
            .into_response(),
    }
}

async fn tables(State(state): State<ApiState>) -> Response {
    let existing = match state.engine.tables().await {
        Ok(existing) => existing,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let tables: Vec<Value> = bulkhead_schemas::lake::TABLES
        .iter()
        .filter(|t| existing.contains(&t.name))
        .map(|t| {
            json!({
                "name": t.name,
                "description": t.description,
                "partition_columns": t.partition_columns,
                "columns": output::columns(&(t.schema)()),
            })
        })
        .collect();
    axum::Json(tables).into_response()
}

/// `POST /api/v1/query` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
    pub limit: Option<usize>,
    /// Stream NDJSON (also chosen by `Accept: application/x-ndjson`).
    #[serde(default)]
    pub stream: bool,
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"))
}

async fn query(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    match run_query(state, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run_query(state: ApiState, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let request: QueryRequest = json_body(&body)?;
    if request.sql.trim().is_empty() {
        return Err(BadRequest("sql: empty query".into()).into());
    }
    let limit = state.rows.check(request.limit)?;
    let started = Instant::now();
    let stream = state.engine.stream(&request.sql).await?;
    if request.stream || wants_ndjson(&headers) {
        return Ok(ndjson(stream, limit, started, request.sql));
    }
    let (batches, truncated) = take_rows(stream, limit, &request.sql).await?;
    Ok(table_response(&batches, truncated, started)?.into_response())
}

/// Reads at most `limit` rows, then stops the query; says whether rows were left.
async fn take_rows(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    limit: usize,
    sql: &str,
) -> Result<((arrow_schema::SchemaRef, Vec<RecordBatch>), bool), ApiError> {
    let schema = stream.schema();
    let mut batches = Vec::new();
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| ApiError::from(stream_error(e, sql)))?;
        if rows + batch.num_rows() > limit {
            batches.push(batch.slice(0, limit - rows));
            return Ok(((schema, batches), true));
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    Ok(((schema, batches), false))
}

fn stream_error(e: datafusion::error::DataFusionError, sql: &str) -> QueryError {
    if let datafusion::error::DataFusionError::External(inner) = &e
        && let Some(q) = inner.downcast_ref::<QueryError>()
    {
        return match q {
            QueryError::Timeout(d) => QueryError::Timeout(*d),
            other => QueryError::Internal(other.to_string()),
        };
    }
    QueryError::from_datafusion(e, sql)
}

fn table_response(
    batches: &(arrow_schema::SchemaRef, Vec<RecordBatch>),
    truncated: bool,
    started: Instant,
) -> Result<axum::Json<Value>, ApiError> {
    let mut rows = Vec::new();
    for b in &batches.1 {
        rows.extend(output::json_rows(b).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("encoding rows: {e}"),
            )
        })?);
    }
    Ok(axum::Json(json!({
        "columns": output::columns(&batches.0),
        "rows": rows,
        "truncated": truncated,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    })))
}

/// NDJSON: `{"columns":[...]}`, then one JSON array per row, then
/// `{"truncated":bool,"elapsed_ms":n,"rows":n}` — or `{"error":...}` as the last line if
/// the query fails midway.
fn ndjson(
    stream: datafusion::execution::SendableRecordBatchStream,
    limit: usize,
    started: Instant,
    sql: String,
) -> Response {
    let header_line = format!(
        "{}\n",
        json!({"columns": output::columns(&stream.schema())})
    );
    struct S {
        stream: Option<datafusion::execution::SendableRecordBatchStream>,
        rows: usize,
    }
    let lines = futures::stream::unfold(
        S {
            stream: Some(stream),
            rows: 0,
        },
        move |mut s| {
            let sql = sql.clone();
            async move {
                let stream = s.stream.as_mut()?;
                let line = match stream.next().await {
                    None => {
                        s.stream = None;
                        json!({"truncated": false, "rows": s.rows, "elapsed_ms": started.elapsed().as_millis() as u64}).to_string() + "\n"
                    }
                    Some(Err(e)) => {
                        s.stream = None;
                        let e = stream_error(e, &sql);
                        json!({"error": e.to_string(), "code": e.code()}).to_string() + "\n"
                    }
                    Some(Ok(batch)) => {
                        let end = |rows: usize| {
                            json!({"truncated": true, "rows": rows, "elapsed_ms": started.elapsed().as_millis() as u64}).to_string() + "\n"
                        };
                        let room = limit - s.rows;
                        if batch.num_rows() > 0 && room == 0 {
                            // Stop the query: dropping the stream cancels it.
                            s.stream = None;
                            return Some((Ok(Bytes::from(end(s.rows))), s));
                        }
                        let keep = batch.num_rows().min(room);
                        let mut text = String::new();
                        match output::json_rows(&batch.slice(0, keep)) {
                            Ok(rows) => {
                                for r in rows {
                                    text.push_str(&r.to_string());
                                    text.push('\n');
                                }
                            }
                            Err(e) => {
                                s.stream = None;
                                text = json!({"error": format!("encoding rows: {e}"), "code": "internal"}).to_string() + "\n";
                                return Some((Ok(Bytes::from(text)), s));
                            }
                        }
                        s.rows += keep;
                        if keep < batch.num_rows() {
                            s.stream = None;
                            text.push_str(&end(s.rows));
                        }
                        text
                    }
                };
                Some((Ok::<_, Infallible>(Bytes::from(line)), s))
            }
        },
    );
    let body = futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from(header_line)) })
        .chain(lines);
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Label keys the lake knows: the standard four and those in `workloads` (else `edges`).
async fn known_label_keys(engine: &Engine) -> Result<BTreeSet<String>, ApiError> {
    let mut keys: BTreeSet<String> = queries::STANDARD_LABEL_KEYS
        .iter()
        .map(|k| k.to_string())
        .collect();
    let sql = if engine.has_table("workloads").await? {
        queries::WORKLOAD_LABEL_KEYS_SQL
    } else if engine.has_table("edges").await? {
        queries::EDGE_LABEL_KEYS_SQL
    } else {
        return Ok(keys);
    };
    for batch in engine.collect(sql).await? {
        for row in output::json_rows(&batch).unwrap_or_default() {
            if let Some(k) = row.get(0).and_then(Value::as_str) {
                keys.insert(k.to_string());
            }
        }
    }
    Ok(keys)
}

async fn explorer(State(state): State<ApiState>, body: Bytes) -> Response {
    let run = async {
        let request: queries::ExplorerRequest = json_body(&body)?;
        let limit = state.rows.check(request.limit)?;
        let keys = known_label_keys(&state.engine).await?;
        let sql = queries::explorer_sql(&request, &keys, limit)?;
        if !state.engine.has_table("flows").await? {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_table",
                "the lake has no flows table yet (bulkhead ingest creates it)",
            ));
        }
        let started = Instant::now();
        let stream = state.engine.stream(&sql).await?;
        let (batches, truncated) = take_rows(stream, limit, &sql).await?;
        table_response(&batches, truncated, started)
    };
    match run.await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}

fn rows_of(batches: &[RecordBatch]) -> Result<Vec<Vec<Value>>, ApiError> {
    let mut out = Vec::new();
    for b in batches {
        for row in output::json_rows(b).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("encoding rows: {e}"),
            )
        })? {
            if let Value::Array(cells) = row {
                out.push(cells);
            }
        }
    }
    Ok(out)
}

async fn map(
    State(state): State<ApiState>,
    params: Result<Query<queries::MapRequest>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let run = async {
        let Query(request) = params.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("query string: {}", e.body_text()),
            )
        })?;
        let keys = known_label_keys(&state.engine).await?;
        let group = queries::group_keys(&request, &keys)?;
        let range = queries::TimeRange::parse(request.from.as_deref(), request.to.as_deref())?;
        if !state.engine.has_table("edges").await? {
            return Ok::<_, ApiError>(
                axum::Json(json!({"nodes": [], "edges": [], "group_by": group})).into_response(),
            );
        }
        let (edges_sql, nodes_sql) = queries::map_sql(&group, &range);
        let (edges, nodes) = tokio::try_join!(
            state.engine.collect(&edges_sql),
            state.engine.collect(&nodes_sql)
        )?;
        let body = MapJson {
            nodes: MapNodes::new(&nodes)?,
            edges: MapEdges::new(&edges)?,
            group_by: &group,
        };
        let json = serde_json::to_vec(&body).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("encoding the map: {e}"),
            )
        })?;
        Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
    };
    match run.await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}

/// The map response, written straight from the two queries' Arrow columns: the map of a
/// large estate has hundreds of thousands of edges, and a detour through
/// `serde_json::Value` per cell cost seconds.
#[derive(serde::Serialize)]
struct MapJson<'a> {
    nodes: MapNodes,
    edges: MapEdges,
    group_by: &'a [String],
}

/// `map_sql`'s edge rows: source, target, port, protocol, then six counts (flows, bytes,
/// and flows per decision in `queries::DECISIONS` order).
struct MapEdges(
    Vec<(
        StringArray,
        StringArray,
        Int64Array,
        StringArray,
        [Int64Array; 6],
    )>,
);

/// `map_sql`'s node rows: id, workloads.
struct MapNodes(Vec<(StringArray, Int64Array)>);

fn map_column<T: Clone + 'static>(
    batch: &RecordBatch,
    i: usize,
    to: &arrow_schema::DataType,
) -> Result<T, ApiError> {
    let internal = |why: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("map column {i}: {why}"),
        )
    };
    let column = batch
        .columns()
        .get(i)
        .ok_or_else(|| internal("missing".into()))?;
    let cast = datafusion::arrow::compute::cast(column, to).map_err(|e| internal(e.to_string()))?;
    cast.as_any()
        .downcast_ref::<T>()
        .cloned()
        .ok_or_else(|| internal(format!("not {to}")))
}

impl MapEdges {
    fn new(batches: &[RecordBatch]) -> Result<Self, ApiError> {
        use arrow_schema::DataType::{Int64, Utf8};
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let count = |i| map_column::<Int64Array>(b, i, &Int64);
            out.push((
                map_column(b, 0, &Utf8)?,
                map_column(b, 1, &Utf8)?,
                map_column(b, 2, &Int64)?,
                map_column(b, 3, &Utf8)?,
                [
                    count(4)?,
                    count(5)?,
                    count(6)?,
                    count(7)?,
                    count(8)?,
                    count(9)?,
                ],
            ));
        }
        Ok(Self(out))
    }
}

impl MapNodes {
    fn new(batches: &[RecordBatch]) -> Result<Self, ApiError> {
        use arrow_schema::DataType::{Int64, Utf8};
        batches
            .iter()
            .map(|b| Ok((map_column(b, 0, &Utf8)?, map_column(b, 1, &Int64)?)))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

fn cell<A: arrow_array::Array>(array: &A, i: usize) -> Option<usize> {
    array.is_valid(i).then_some(i)
}

fn text(array: &StringArray, i: usize) -> Option<&str> {
    cell(array, i).map(|i| array.value(i))
}

impl serde::Serialize for MapEdges {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Decisions {
            allowed: Option<i64>,
            potentially_blocked: Option<i64>,
            blocked: Option<i64>,
            unknown: Option<i64>,
        }
        #[derive(serde::Serialize)]
        struct Edge<'a> {
            source: Option<&'a str>,
            target: Option<&'a str>,
            port: Option<i64>,
            protocol: Option<&'a str>,
            flows: Option<i64>,
            bytes: Option<i64>,
            decisions: Decisions,
        }
        let rows = self.0.iter().map(|(_, _, port, _, _)| port.len()).sum();
        let mut seq = s.serialize_seq(Some(rows))?;
        for (source, target, port, protocol, counts) in &self.0 {
            for i in 0..port.len() {
                let n = |k: usize| cell(&counts[k], i).map(|i| counts[k].value(i));
                seq.serialize_element(&Edge {
                    source: text(source, i),
                    target: text(target, i),
                    port: cell(port, i).map(|i| port.value(i)),
                    protocol: text(protocol, i),
                    flows: n(0),
                    bytes: n(1),
                    decisions: Decisions {
                        allowed: n(2),
                        potentially_blocked: n(3),
                        blocked: n(4),
                        unknown: n(5),
                    },
                })?;
            }
        }
        seq.end()
    }
}

impl serde::Serialize for MapNodes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Node<'a> {
            id: &'a str,
            kind: &'static str,
            labels: BTreeMap<String, String>,
            workloads: Option<i64>,
        }
        let rows = self.0.iter().map(|(id, _)| id.len()).sum();
        let mut seq = s.serialize_seq(Some(rows))?;
        for (ids, workloads) in &self.0 {
            for i in 0..ids.len() {
                let id = if ids.is_valid(i) { ids.value(i) } else { "" };
                seq.serialize_element(&Node {
                    id,
                    kind: queries::node_kind(id),
                    labels: queries::node_labels(id),
                    workloads: cell(workloads, i).map(|i| workloads.value(i)),
                })?;
            }
        }
        seq.end()
    }
}

async fn workloads(State(state): State<ApiState>) -> Response {
    let run = async {
        if !state.engine.has_table("workloads").await? {
            return Ok::<_, ApiError>(axum::Json(json!([])));
        }
        let mut status: BTreeMap<String, Value> = BTreeMap::new();
        if state.engine.has_table("status").await? {
            for r in rows_of(&state.engine.collect(queries::STATUS_SQL).await?)? {
                let host = r[0].as_str().unwrap_or_default().to_string();
                status.insert(
                    host,
                    json!({
                        "last_heartbeat": r[1], "heartbeat_age_s": r[2], "applied_version": r[3],
                        "rule_count": r[4], "last_error": r[5], "mode": r[6],
                    }),
                );
            }
        }
        let list: Vec<Value> = rows_of(&state.engine.collect(queries::WORKLOADS_SQL).await?)?
            .into_iter()
            .map(|r| {
                let id = r[0].as_str().unwrap_or_default().to_string();
                let enforcer = status.remove(&id).unwrap_or(Value::Null);
                json!({
                    "id": id, "hostname": r[1],
                    "ips": if r[2].is_null() { json!([]) } else { r[2].clone() },
                    "labels": if r[3].is_null() { json!({}) } else { r[3].clone() },
                    "mode": r[4], "quarantined": r[5], "enforcer": enforcer,
                })
            })
            .collect();
        Ok(axum::Json(Value::Array(list)))
    };
    match run.await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}
