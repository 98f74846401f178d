//! Ferric's HTTP API: the OpenStack Ironic v1 REST API.
//!
//! `router(state)` builds the whole service, so tests drive it without a
//! socket. Version negotiation wraps every route; every error leaves
//! through [`error::ApiError`].

mod body;
mod boot;
mod drivers;
pub mod error;
mod fields;
mod images;
mod nodes;
mod params;
mod ports;
mod ramdisk;
pub mod render;
mod root;
pub mod version;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{get, post, put};
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

/// Routes `path` and `path/` alike: clients such as python-ironicclient
/// ask for collections with a trailing slash.
fn both(
    router: Router<AppState>,
    path: &str,
    method: axum::routing::MethodRouter<AppState>,
) -> Router<AppState> {
    if path == "/" || path.ends_with('/') {
        return router.route(path, method);
    }
    router
        .route(path, method.clone())
        .route(&format!("{path}/"), method)
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let routes: Vec<(&str, axum::routing::MethodRouter<AppState>)> = vec![
        ("/", get(root::root)),
        ("/v1/nodes", get(nodes::list).post(nodes::create)),
        ("/v1/nodes/detail", get(nodes::list_detail)),
        (
            "/v1/nodes/{node}",
            get(nodes::show).patch(nodes::update).delete(nodes::delete),
        ),
        ("/v1/nodes/{node}/validate", get(nodes::validate)),
        ("/v1/nodes/{node}/states", get(nodes::states)),
        ("/v1/nodes/{node}/states/power", put(nodes::set_power)),
        (
            "/v1/nodes/{node}/states/provision",
            put(nodes::set_provision),
        ),
        (
            "/v1/nodes/{node}/management/boot_device",
            get(nodes::get_boot_device).put(nodes::set_boot_device),
        ),
        (
            "/v1/nodes/{node}/management/boot_device/supported",
            get(nodes::supported_boot_devices),
        ),
        (
            "/v1/nodes/{node}/maintenance",
            put(nodes::set_maintenance).delete(nodes::unset_maintenance),
        ),
        (
            "/v1/nodes/{node}/traits",
            get(nodes::list_traits)
                .put(nodes::set_traits)
                .delete(nodes::delete_all_traits),
        ),
        (
            "/v1/nodes/{node}/traits/{trait_name}",
            put(nodes::add_trait).delete(nodes::delete_trait),
        ),
        ("/v1/nodes/{node}/ports", get(ports::list_for_node)),
        (
            "/v1/nodes/{node}/ports/detail",
            get(ports::list_detail_for_node),
        ),
        ("/v1/ports", get(ports::list).post(ports::create)),
        ("/v1/ports/detail", get(ports::list_detail)),
        (
            "/v1/ports/{port}",
            get(ports::show).patch(ports::update).delete(ports::delete),
        ),
        ("/v1/drivers", get(drivers::list)),
        ("/v1/drivers/{driver}", get(drivers::show)),
        ("/v1/drivers/{driver}/properties", get(drivers::properties)),
        ("/v1/conductors", get(drivers::list_conductors)),
        ("/v1/conductors/{hostname}", get(drivers::show_conductor)),
        ("/v1/lookup", get(ramdisk::lookup)),
        ("/v1/heartbeat/{node}", post(ramdisk::heartbeat)),
        ("/v1", get(root::v1)),
    ];
    let mut router = Router::new();
    for (path, method) in routes {
        router = both(router, path, method);
    }
    // Cached images for deploy agents (image_download_source=local); GET
    // routes answer HEAD too.
    let image_path = format!("{}/{{name}}", ferric_drivers::direct::IMAGES_PATH);
    router = router.route(&image_path, get(images::serve));
    // Network boot (ipxe and pxe boot interfaces).
    router = router
        .route(
            &format!("{}/boot.ipxe", boot::BOOT_PATH),
            get(boot::entry_script),
        )
        .route(
            &format!("{}/ipxe/{{mac}}", boot::BOOT_PATH),
            get(boot::node_script),
        )
        .route(
            &format!("{}/deploy/{{name}}", boot::BOOT_PATH),
            get(boot::deploy_file),
        )
        .route(
            &format!("{}/pxelinux/pxelinux.cfg/{{name}}", boot::BOOT_PATH),
            get(boot::pxelinux_config),
        )
        .route(
            &format!("{}/pxelinux/{{name}}", boot::BOOT_PATH),
            get(boot::pxelinux_module),
        )
        // The anaconda deploy's kickstarts and OS images.
        .route(
            &format!("{}/{{node}}", ferric_drivers::anaconda::KICKSTART_PATH),
            get(boot::kickstart),
        )
        .route(
            &format!("{}/{{name}}", ferric_drivers::anaconda::LIVEIMG_PATH),
            get(boot::liveimg),
        )
        // The static agent, for live systems that fetch it (ferric ignition).
        .route(
            &format!("{}/agent/ferric-agent", boot::BOOT_PATH),
            get(boot::agent_binary),
        )
        // Virtual media boot ISOs (redfish-virtual-media boot interface).
        .route(
            &format!("{}/{{name}}", ferric_drivers::redfish_vmedia::VMEDIA_PATH),
            get(boot::vmedia_iso),
        );
    router
        .fallback(root::not_found)
        .method_not_allowed_fallback(root::method_not_allowed)
        .layer(axum::middleware::from_fn(version::middleware))
        .with_state(state)
}
