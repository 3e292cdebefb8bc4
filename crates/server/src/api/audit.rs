//! The audit log: every change made through the API, every login and
//! enrollment attempt.

use std::sync::Arc;

use axum::extract::State;
use tether_proto::api::{AuditEntry, ErrorBody};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::actions::LimitQuery;
use super::error::ApiError;
use super::extract::ApiQuery;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// Who changed what, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(LimitQuery),
    responses((status = 200, body = [AuditEntry]), (status = 401, body = ErrorBody)))]
async fn list_audit(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> Result<axum::Json<Vec<AuditEntry>>, ApiError> {
    let entries = state.store.list_audit(query.limit()?).await?;
    Ok(axum::Json(
        entries
            .into_iter()
            .map(|record| AuditEntry {
                at: record.at,
                actor: record.actor,
                method: record.method,
                path: record.path,
                status: record.status,
            })
            .collect(),
    ))
}
