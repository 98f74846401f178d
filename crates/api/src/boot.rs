//! What network-booting nodes fetch over HTTP (Ironic serves these from its
//! `[deploy]http_root`): the iPXE entry script that DHCP points iPXE at,
//! each port's script (rendered from the node as it stands now), and the
//! deploy kernel and ramdisk configured on this server. No authentication,
//! as for any PXE server: nothing here holds a secret (the agent gets its
//! token from the lookup, once).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferric_drivers::ipxe::normalize_mac;
use ferric_store::{NodeIdent, PortQuery};

use crate::error::{ApiError, ApiResult};
use crate::images::file_response;
use crate::AppState;

/// Where the routes live.
pub const BOOT_PATH: &str = "/boot";

fn script_response(script: String) -> Response {
    let mut response = script.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /boot/boot.ipxe`: chains to the booting MAC's own script.
pub async fn entry_script(State(state): State<AppState>) -> ApiResult<Response> {
    let script = state.conductor.registry().ipxe().entry_script()?;
    Ok(script_response(script))
}

/// `GET /boot/ipxe/{mac}`: the script of the node that owns the port.
pub async fn node_script(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> ApiResult<Response> {
    let not_found = || ApiError::not_found(format!("No iPXE script for {mac:?}."));
    let address = normalize_mac(&mac).ok_or_else(not_found)?;
    let store = state.conductor.store();
    let query = PortQuery {
        address: Some(address.clone()),
        ..Default::default()
    };
    let port = store
        .list_ports(&query)
        .await?
        .into_iter()
        .next()
        .ok_or_else(not_found)?;
    let node = store.get_node(&NodeIdent::Uuid(port.node_uuid)).await?;
    if node.boot_interface.as_deref() != Some("ipxe") {
        return Err(not_found());
    }
    let script = state.conductor.registry().ipxe().script(&node, &address)?;
    tracing::debug!(node = %node.uuid, mac = %address, "served an iPXE script");
    Ok(script_response(script))
}

/// `GET|HEAD /boot/deploy/{kernel|ramdisk}`: the configured deploy files.
pub async fn deploy_file(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let path = state
        .conductor
        .registry()
        .ipxe()
        .served_file(&name)
        .ok_or_else(|| ApiError::not_found(format!("No deploy {name:?} is configured.")))?
        .to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        Ok::<_, std::io::Error>((file, len))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (file, len) = opened.map_err(|e| {
        tracing::error!(file = %name, error = %e, "cannot open the deploy file");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("The deploy {name} cannot be read."),
        )
    })?;
    file_response(file, len, None, &method, &headers).await
}
