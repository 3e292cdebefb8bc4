//! `GET /api/v1/time`: tetherd's clock, for agents to measure their own
//! clock's offset against (issue 19). No credentials: the time is no
//! secret, and an agent whose clock is off must reach it all the same.

use std::sync::Arc;

use tether_proto::host_time::ServerTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(server_time))
}

/// tetherd's clock, in milliseconds since the Unix epoch. Agents ask a few
/// times and keep the answer with the shortest round trip.
#[utoipa::path(get, path = "/time", tag = "session", security(()),
    responses((status = 200, description = "tetherd's time", body = ServerTime)))]
async fn server_time() -> axum::Json<ServerTime> {
    axum::Json(ServerTime {
        unix_millis: chrono::Utc::now().timestamp_millis(),
    })
}
