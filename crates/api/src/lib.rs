//! Ferric's HTTP API: the OpenStack Ironic v1 REST API.
//!
//! `router(state)` builds the whole service, so tests drive it without a
//! socket. Version negotiation wraps every route; every error leaves
//! through [`error::ApiError`].

mod body;
mod drivers;
pub mod error;
mod fields;
mod nodes;
mod params;
mod ports;
pub mod render;
mod root;
pub mod version;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{get, put};
use axum::Router;
use error::ApiError;
use ferric_conductor::Conductor;
use std::sync::Arc;

/// Settings of the API layer.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// The URL clients reach this API at, used in links; default: taken
    /// from each request's Host header.
    pub public_url: Option<String>,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub conductor: Conductor,
    pub config: Arc<ApiConfig>,
}

impl AppState {
    pub fn new(conductor: Conductor, config: ApiConfig) -> Self {
        AppState {
            conductor,
            config: Arc::new(config),
        }
    }
}

/// The base URL of links in responses (`http://host:port`, no trailing slash).
pub struct BaseUrl(pub String);

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(url) = &state.config.public_url {
            return Ok(BaseUrl(url.trim_end_matches('/').to_string()));
        }
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
            .unwrap_or("localhost:6385");
        Ok(BaseUrl(format!("http://{host}")))
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root::root))
        .route("/v1", get(root::v1))
        .route("/v1/", get(root::v1))
        .route("/v1/nodes", get(nodes::list).post(nodes::create))
        .route("/v1/nodes/detail", get(nodes::list_detail))
        .route(
            "/v1/nodes/{node}",
            get(nodes::show).patch(nodes::update).delete(nodes::delete),
        )
        .route("/v1/nodes/{node}/validate", get(nodes::validate))
        .route("/v1/nodes/{node}/states", get(nodes::states))
        .route("/v1/nodes/{node}/states/power", put(nodes::set_power))
        .route(
            "/v1/nodes/{node}/states/provision",
            put(nodes::set_provision),
        )
        .route(
            "/v1/nodes/{node}/management/boot_device",
            get(nodes::get_boot_device).put(nodes::set_boot_device),
        )
        .route(
            "/v1/nodes/{node}/management/boot_device/supported",
            get(nodes::supported_boot_devices),
        )
        .route(
            "/v1/nodes/{node}/maintenance",
            put(nodes::set_maintenance).delete(nodes::unset_maintenance),
        )
        .route(
            "/v1/nodes/{node}/traits",
            get(nodes::list_traits)
                .put(nodes::set_traits)
                .delete(nodes::delete_all_traits),
        )
        .route(
            "/v1/nodes/{node}/traits/{trait_name}",
            put(nodes::add_trait).delete(nodes::delete_trait),
        )
        .route("/v1/nodes/{node}/ports", get(ports::list_for_node))
        .route(
            "/v1/nodes/{node}/ports/detail",
            get(ports::list_detail_for_node),
        )
        .route("/v1/ports", get(ports::list).post(ports::create))
        .route("/v1/ports/detail", get(ports::list_detail))
        .route(
            "/v1/ports/{port}",
            get(ports::show).patch(ports::update).delete(ports::delete),
        )
        .route("/v1/drivers", get(drivers::list))
        .route("/v1/drivers/{driver}", get(drivers::show))
        .route("/v1/drivers/{driver}/properties", get(drivers::properties))
        .route("/v1/conductors", get(drivers::list_conductors))
        .route("/v1/conductors/{hostname}", get(drivers::show_conductor))
        .fallback(root::not_found)
        .method_not_allowed_fallback(root::method_not_allowed)
        .layer(axum::middleware::from_fn(version::middleware))
        .with_state(state)
}
