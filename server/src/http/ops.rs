//! For the operators: `GET /metrics` (Prometheus, behind the metrics token), `GET /readyz`,
//! and the middleware that counts every answer into [`crate::metrics`].

use std::{sync::Arc, time::Instant};

use axum::{
    Json,
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, ErrorCode};
use crate::metrics::{AuthFailure, Metrics, Route};

/// Counts each answer: sync requests by outcome and time, refusals of the rate limits by
/// route, refused logins, enrollments and token rotations by code. Answers without an error
/// code (a page's own HTML errors) count as their status only where it matters (none yet).
pub async fn observe(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    // A cheap clone (shared): the route's name is copied only when a metric keeps it.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(req).await;
    let Some(route) = route else {
        return response;
    };
    let route = route.as_str();
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    if route == "/v1/sync" {
        let seconds = started.elapsed().as_secs_f64();
        metrics.sync_answered(code.unwrap_or("ok"), seconds);
        // An answered sync logs its own line (device, bytes, changes); a refused one here,
        // except the rate limit's (a flood of those would flood the log: they are counted).
        if let Some(code) = code.filter(|c| *c != "rate_limited") {
            tracing::info!(
                status = response.status().as_u16(),
                code,
                ms = (seconds * 1000.0) as u64,
                "sync refused"
            );
        }
    }
    if code == Some("rate_limited") {
        metrics
            .rate_limited
            .get_or_create(&Route {
                route: route.to_string(),
            })
            .inc();
        return response;
    }
    let kind = match route {
        "/v1/login" | "/login" => "login",
        "/v1/enroll" => "enroll",
        "/v1/token" => "token",
        _ => return response,
    };
    // The client's own failures (4xx); an answer the server could not give is not one.
    if let Some(code) = code
        && response.status().is_client_error()
    {
        metrics
            .auth_failures
            .get_or_create(&AuthFailure { kind, code })
            .inc();
    }
    response
}

/// The digest of the metrics token a scraper must present (`Authorization: Bearer …`).
#[derive(Clone)]
pub struct MetricsToken([u8; 32]);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

impl MetricsToken {
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.trim().as_bytes()).into())
    }

    /// Whether `presented` is the token: the digests compare in constant time.
    fn admits(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        d.iter().zip(self.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// `GET /metrics`: every metric, with the gauges read from the store now. 404 when no
/// metrics token is configured (the route is not there for the world), 401 without it.
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(token) = &state.edge.metrics_token else {
        return Err(ApiError::NotFound {
            code: "not_found",
            message: "no such page".into(),
        });
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token.admits(presented) {
        return Err(ApiError::Unauthorized {
            code: "unauthenticated",
            message: "the metrics token is required".into(),
        });
    }
    let m = state.metrics.clone();
    m.writer_queue.set(state.writer.queued() as i64);
    let now = crate::access::now_ms();
    let (lag, quarantined) = state
        .readers
        .with(|s| Ok((s.read_model_lag()?, s.quarantined_count()?)))
        .await?;
    m.read_model_behind.set(lag.behind as i64);
    m.read_model_behind_seconds.set(lag.seconds_behind(now));
    m.quarantined.set(quarantined as i64);
    let last_syncs = state.access(|db| db.active_device_syncs()).await?;
    m.set_phones(last_syncs, now);
    let text = m.render();
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `GET /readyz`: 200 when the store answers and the read model counts every change older
/// than `--ready-lag` seconds; 503 with the reason otherwise (a load balancer sends phones
/// elsewhere meanwhile; `/healthz` says only that the process answers).
pub async fn readyz(State(state): State<AppState>) -> Response {
    let lag = state.readers.with(|s| s.read_model_lag()).await;
    let now = crate::access::now_ms();
    let (status, body) = match lag {
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "unavailable", "reason": "store" }),
        ),
        Ok(lag) => {
            let behind_s = lag.seconds_behind(now);
            let ready = behind_s <= state.edge.ready_lag.as_secs() as i64;
            (
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                serde_json::json!({
                    "status": if ready { "ready" } else { "behind" },
                    "read_model_behind_changes": lag.behind,
                    "read_model_behind_seconds": behind_s,
                }),
            )
        }
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_token_admits_itself_only() {
        let t = MetricsToken::new("s3cret\n");
        assert!(t.admits("s3cret"));
        assert!(!t.admits("s3cre"));
        assert!(!t.admits(""));
        assert_eq!(format!("{t:?}"), "MetricsToken(..)");
    }
}
