//! The OpenAPI 3.1 description served at `/openapi.json` (the analytics endpoints; the
//! routers mounted from other components describe themselves in their own docs).

use serde_json::{Value, json};

fn error_responses() -> Value {
    json!({
        "400": {"description": "Bad input (the message names the field and the problem)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "401": {"description": "Missing or wrong bearer token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    })
}

fn with_errors(ok: Value, extra: &[(&str, &str)]) -> Value {
    let mut responses = error_responses();
    let map = responses.as_object_mut().expect("an object");
    map.insert("200".into(), ok);
    for (code, text) in extra {
        map.insert(
            (*code).into(),
            json!({"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    responses
}

/// The document.
pub fn document() -> Value {
    let table = json!({"description": "Rows", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Table"}}}});
    let filter = json!({
        "type": "object", "minProperties": 1, "maxProperties": 1,
        "properties": {
            "label": {"type": "string", "example": "app=crm"},
            "ip": {"type": "string", "example": "10.0.0.1"},
            "cidr": {"type": "string", "example": "10.0.0.0/8"},
            "workload": {"type": "string", "description": "host id"}
        }
    });
    let side = json!({"type": "object", "properties": {
        "include": {"type": "array", "items": filter.clone()},
        "exclude": {"type": "array", "items": filter}
    }});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Bulkhead API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Flow lake queries, the Explorer, the dependency map and workloads. Authenticate with 'Authorization: Bearer <token>' when the server has a token."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "code": {"type": "string"}}},
                "Table": {"type": "object", "properties": {
                    "columns": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}},
                    "rows": {"type": "array", "items": {"type": "array"}},
                    "truncated": {"type": "boolean"},
                    "elapsed_ms": {"type": "integer"}
                }}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "The process is up"}}}},
            "/readyz": {"get": {"summary": "Readiness: the lake is readable", "security": [], "responses": {"200": {"description": "Ready, with the tables that exist"}, "503": {"description": "Not ready, with the reason"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text exposition format"}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/api/v1/tables": {"get": {"summary": "The lake tables that exist, with columns", "responses": with_errors(json!({"description": "Tables"}), &[])}},
            "/api/v1/query": {"post": {
                "summary": "Run a read-only SQL query",
                "description": "At most `limit` rows (default 1000, max set by --max-rows). With `stream: true` or 'Accept: application/x-ndjson' the answer is NDJSON: a {\"columns\"} line, one JSON array per row, and a closing {\"truncated\",\"rows\",\"elapsed_ms\"} line (or {\"error\"} if the query fails midway).",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["sql"], "properties": {
                    "sql": {"type": "string", "example": "SELECT dst_port, count(*) FROM flows GROUP BY 1"},
                    "limit": {"type": "integer", "minimum": 1},
                    "stream": {"type": "boolean"}
                }}}}},
                "responses": with_errors(table, &[("403", "A statement that writes (DDL, DML, COPY, SET)"), ("422", "The query hit its memory or time limit")])
            }},
            "/api/v1/explorer": {"post": {
                "summary": "Flows aggregated by source, destination, port, protocol, process and decision",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {
                    "sources": side.clone(), "destinations": side,
                    "services": {"type": "array", "items": {"type": "string", "example": "tcp/443"}},
                    "from": {"type": "string", "format": "date-time"},
                    "to": {"type": "string", "format": "date-time"},
                    "decisions": {"type": "array", "items": {"enum": ["allowed", "potentially_blocked", "blocked", "unknown"]}},
                    "limit": {"type": "integer", "minimum": 1}
                }}}}},
                "responses": with_errors(json!({"description": "Columns src, dst, port, protocol, process, flows, bytes, first_seen, last_seen, decision", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Table"}}}}), &[("404", "The lake has no flows table yet")])
            }},
            "/api/v1/map": {"get": {
                "summary": "The application-dependency map from the edges table, nodes grouped by label keys",
                "parameters": [
                    {"name": "group_by", "in": "query", "schema": {"type": "string", "default": "app"}, "example": "app,env"},
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}}
                ],
                "responses": with_errors(json!({"description": "{nodes:[{id,kind,labels,workloads}], edges:[{source,target,port,protocol,flows,bytes,decisions}]}"}), &[])
            }},
            "/api/v1/workloads": {"get": {
                "summary": "Workloads with labels, mode and enforcer status",
                "responses": with_errors(json!({"description": "[{id,hostname,ips,labels,mode,quarantined,enforcer}]"}), &[])
            }}
        }
    })
}
