//! What network-booting nodes fetch over HTTP (Ironic serves these from its
//! `[deploy]http_root`): the iPXE entry script that DHCP points iPXE at,
//! each port's script (rendered from the node as it stands now), and the
//! deploy kernel and ramdisk configured on this server. No authentication,
//! as for any PXE server: nothing here holds a secret (the agent gets its
//! token from the lookup, once) except the ISOs of virtual media boots,
//! which carry the agent's token on their kernel command line: their URLs
//! are capabilities (128 random bits), answered 404 once deleted and never
//! logged.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferric_drivers::anaconda::LiveImage;
use ferric_drivers::ipxe::{normalize_mac, Loader};
use ferric_store::{NodeIdent, PortQuery};
use ferric_types::ProvisionState;

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
    port_boot_file(&state, &mac, Loader::Ipxe).await
}

/// `GET /boot/pxelinux/pxelinux.cfg/{name}`: PXELINUX asks for its UUID,
/// then `01-<mac>`, then IP prefixes and `default`; only `01-<mac>` of a
/// node of the pxe boot interface is answered.
pub async fn pxelinux_config(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let mac = name
        .strip_prefix("01-")
        .ok_or_else(|| ApiError::not_found("No PXELINUX configuration by that name."))?;
    port_boot_file(&state, mac, Loader::Pxelinux).await
}

/// `GET|HEAD /boot/pxelinux/{module}`: the PXELINUX modules it loads over
/// HTTP (ldlinux.c32).
pub async fn pxelinux_module(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let path = state
        .conductor
        .registry()
        .pxe()
        .pxelinux_module(&name)
        .ok_or_else(|| ApiError::not_found("No such PXELINUX module."))?;
    serve_local_file(path, &name, &method, &headers).await
}

/// The boot script or configuration of the node that owns port `mac`, if
/// the node boots with `loader`.
async fn port_boot_file(state: &AppState, mac: &str, loader: Loader) -> ApiResult<Response> {
    let not_found = || ApiError::not_found(format!("No boot configuration for {mac:?}."));
    let address = normalize_mac(mac).ok_or_else(not_found)?;
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
    let registry = state.conductor.registry();
    let (interface, boot) = match loader {
        Loader::Ipxe => ("ipxe", registry.ipxe()),
        Loader::Pxelinux => ("pxe", registry.pxe()),
    };
    if node.boot_interface.as_deref() != Some(interface) {
        return Err(not_found());
    }
    let script = boot.script(&node, &address)?;
    tracing::debug!(node = %node.uuid, mac = %address, interface, "served a boot configuration");
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
    serve_local_file(path, &name, &method, &headers).await
}

/// Serves a file of this server's configuration (never a path a request
/// named).
async fn serve_local_file(
    path: std::path::PathBuf,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let opened = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        Ok::<_, std::io::Error>((file, len))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (file, len) = opened.map_err(|e| {
        tracing::error!(file = %name, error = %e, "cannot open a boot file");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("The boot file {name} cannot be read."),
        )
    })?;
    file_response(file, len, None, method, headers).await
}

/// A node of the anaconda deploy while its installer runs (deploying, wait
/// call-back), with its token; anything else is 404 (`what` says what was
/// asked for, never echoing the request).
async fn installing_node(
    state: &AppState,
    ident: &str,
    what: &str,
) -> ApiResult<ferric_types::Node> {
    let not_found = || ApiError::not_found(format!("No {what} for that node."));
    let uuid = uuid::Uuid::parse_str(ident).map_err(|_| not_found())?;
    let node = match state
        .conductor
        .store()
        .get_node(&NodeIdent::Uuid(uuid))
        .await
    {
        Ok(node) => node,
        Err(ferric_store::StoreError::NodeNotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    let installing = matches!(
        node.provision_state,
        ProvisionState::Deploying | ProvisionState::WaitCallBack
    );
    if node.deploy_interface.as_deref() != Some("anaconda") || !installing {
        return Err(not_found());
    }
    Ok(node)
}

/// `GET /boot/kickstart/{node}`: the kickstart of a node the anaconda
/// deploy installs, rendered now (it carries the deployment's callback
/// token, so it is only answered while the installer runs).
pub async fn kickstart(
    State(state): State<AppState>,
    Path(node): Path<String>,
) -> ApiResult<Response> {
    let node = installing_node(&state, &node, "kickstart").await?;
    let kickstart = state
        .conductor
        .registry()
        .anaconda()
        .kickstart(&node)
        .map_err(|e| {
            tracing::warn!(node = %node.uuid, error = %e, "no kickstart");
            ApiError::not_found("No kickstart for that node.")
        })?;
    tracing::info!(node = %node.uuid, "served the kickstart");
    Ok(script_response(kickstart))
}

/// `GET|HEAD /boot/liveimg/{node}[.ext]`: the OS image of a node the
/// anaconda deploy installs: a redirect to its http(s) image_source, or the
/// file of a `file://` one. The extension is the node's
/// disk_file_extension, which tells the installer a tarball from a disk
/// image.
pub async fn liveimg(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let split = name.len().min(36);
    if !name.is_char_boundary(split) {
        return Err(ApiError::not_found("No OS image for that node."));
    }
    let (ident, ext) = name.split_at(split);
    let node = installing_node(&state, ident, "OS image").await?;
    if ext != ferric_drivers::anaconda::disk_file_extension(&node) {
        return Err(ApiError::not_found("No OS image for that node."));
    }
    let image = state
        .conductor
        .registry()
        .anaconda()
        .liveimg(&node)
        .map_err(|e| {
            tracing::warn!(node = %node.uuid, error = %e, "no OS image");
            ApiError::not_found("No OS image for that node.")
        })?;
    match image {
        LiveImage::Redirect(url) => {
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            let location = HeaderValue::from_str(&url)
                .map_err(|_| ApiError::not_found("No OS image for that node."))?;
            response.headers_mut().insert(header::LOCATION, location);
            Ok(response)
        }
        LiveImage::File(file) => {
            let len = file
                .metadata()
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .len();
            file_response(file, len, None, &method, &headers).await
        }
    }
}

/// `GET|HEAD /boot/agent/ferric-agent`: the static agent binary of
/// `[conductor.pxe] agent_binary`.
pub async fn agent_binary(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let path = state
        .conductor
        .registry()
        .ipxe()
        .options()
        .agent_binary
        .clone()
        .ok_or_else(|| ApiError::not_found("No agent binary is configured."))?;
    serve_local_file(path, "ferric-agent", &method, &headers).await
}

/// `GET|HEAD /boot/vmedia/{name}`: the ISO a BMC boots a node's deploy
/// ramdisk from (redfish-virtual-media). Anything but the name of an ISO
/// that exists now is 404, and the name is not echoed.
pub async fn vmedia_iso(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let not_found = || ApiError::not_found("No such virtual media image.");
    let path = state
        .conductor
        .registry()
        .redfish_vmedia()
        .iso_file(&name)
        .ok_or_else(not_found)?;
    let opened = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        Ok::<_, std::io::Error>((file, len))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (file, len) = match opened {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "cannot open a virtual media ISO");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The virtual media image cannot be read.",
            ));
        }
    };
    let mut response = file_response(file, len, None, &method, &headers).await?;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
