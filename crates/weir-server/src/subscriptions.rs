//! Reserved subscription APIs (PROTOCOL.md §6–7). Placeholder until the
//! subscription engine lands.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use weir_storage::Storage;

use crate::AppState;
use crate::config::ServerConfig;
use crate::error::ApiError;

/// The subscription engine.
pub struct Subscriptions {}

impl Subscriptions {
    pub fn start(_storage: Arc<dyn Storage>, _config: Arc<ServerConfig>) -> Arc<Subscriptions> {
        Arc::new(Subscriptions {})
    }
}

pub async fn dispatch(_st: AppState, _path: &str, _req: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such control API",
    )
    .into_response()
}
