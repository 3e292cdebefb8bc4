//! The audit log: every change made through the API, every login and
//! enrollment attempt.

use std::sync::Arc;

use axum::extract::State;
use tether_proto::api::{AuditEntry, ErrorBody, Page};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiQuery;
use super::page::{PageQuery, PageRequest, Position};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// Who changed what, newest first, in pages.
#[utoipa::path(get, path = "/audit", tag = "audit", params(PageQuery),
    responses((status = 200, body = Page<AuditEntry>), (status = 401, body = ErrorBody)))]
async fn list_audit(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<AuditEntry>>, ApiError> {
    let page = PageRequest::new(&query, "audit".to_owned())?;
    let entries = state
        .store
        .list_audit(page.before()?.as_ref(), page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        entries,
        |record| Position::BeforeTimeAndId(record.at.timestamp_millis(), record.id.clone()),
        |record| AuditEntry {
            at: record.at,
            actor: record.actor,
            method: record.method,
            path: record.path,
            status: record.status,
            detail: record.detail,
        },
    )))
}
