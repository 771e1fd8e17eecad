//! Arrow Flight SQL over the same engine (`datafusion-flight-sql-server`): statements,
//! prepared statements, catalog metadata (`GetTables`, `GetSqlInfo`, …) for ADBC, JDBC
//! and every tool built on them. Each request gets a fresh session from [`Engine`]
//! (so the per-query memory cap applies), read-only SQL options, the per-query time
//! limit, and the bearer token when one is configured.

use async_trait::async_trait;
use datafusion::execution::SessionState;
use datafusion_flight_sql_server::service::FlightSqlService;
use datafusion_flight_sql_server::session::SessionStateProvider;
use tonic::{Request, Status};

use crate::engine::{Engine, read_only};
use crate::http::constant_time_eq;

/// Hands each Flight SQL request a session, after checking the token.
struct LakeSessions {
    engine: Engine,
    token: Option<String>,
}

#[async_trait]
impl SessionStateProvider for LakeSessions {
    async fn new_context(&self, request: &Request<()>) -> Result<SessionState, Status> {
        if let Some(token) = &self.token {
            let given = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                });
            match given {
                Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => {}
                Some(_) => {
                    metrics::counter!("bulkhead_analytics_flight_auth_failures_total").increment(1);
                    return Err(Status::unauthenticated("the bearer token is wrong"));
                }
                None => {
                    metrics::counter!("bulkhead_analytics_flight_auth_failures_total").increment(1);
                    return Err(Status::unauthenticated(
                        "this server needs 'authorization: Bearer <token>'",
                    ));
                }
            }
        }
        metrics::counter!("bulkhead_analytics_flight_requests_total").increment(1);
        Ok(self.engine.session().state())
    }
}

/// The Flight SQL service over `engine` (tonic service, ready to add to a server).
pub fn service(
    engine: Engine,
    token: Option<String>,
) -> arrow_flight::flight_service_server::FlightServiceServer<FlightSqlService> {
    let timeout = engine.limits().query_timeout;
    let service = FlightSqlService::new_with_provider(Box::new(LakeSessions { engine, token }))
        .with_sql_options(read_only())
        .with_sql_check(crate::sql_shape::check)
        .with_query_timeout(timeout);
    arrow_flight::flight_service_server::FlightServiceServer::new(service)
}
