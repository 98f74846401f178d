//! `/v1/ports`: the network interfaces of nodes, found by MAC address.

use crate::body::{parse_bool, JsonBody};
use crate::error::{ApiError, ApiResult};
use crate::fields::{port_field_version, PORT_CREATE_FIELDS, PORT_FIELDS, PORT_PATCH_FIELDS};
use crate::params::Params;
use crate::render::{self, PortView};
use crate::version::Version;
use crate::{AppState, BaseUrl};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferric_store::{NodeIdent, PortQuery};
use ferric_types::port::normalize_mac;
use ferric_types::Port;
use serde_json::{json, Map, Value};
use uuid::Uuid;

const MAX_LIMIT: u32 = 1000;
const PORT_SORT_KEYS: &[&str] = &["id", "uuid", "address", "created_at", "updated_at"];

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

fn check_port_field(key: &str, value: &mut Value) -> ApiResult<()> {
    match key {
        "address" => {
            let text = value.as_str().unwrap_or_default();
            let mac = normalize_mac(text)
                .ok_or_else(|| bad(format!("Expected a MAC address but received {value}.")))?;
            *value = Value::String(mac);
        }
        "node_uuid" | "uuid" => {
            let text = value.as_str().unwrap_or_default();
            Uuid::parse_str(text)
                .map_err(|_| bad(format!("Expected a UUID for {key} but received {value}.")))?;
        }
        "portgroup_uuid" => {
            if !value.is_null() {
                return Err(bad("Port groups are not supported by this service yet"));
            }
        }
        "extra" | "local_link_connection" => {
            if value.is_null() {
                *value = Value::Object(Map::new());
            }
            if !value.is_object() {
                return Err(bad(format!(
                    "Invalid value for field \"{key}\": expected an object"
                )));
            }
        }
        "pxe_enabled" | "is_smartnic" => {
            *value = Value::Bool(parse_bool(value).ok_or_else(|| {
                bad(format!(
                    "Invalid value for field \"{key}\": expected a boolean"
                ))
            })?);
        }
        _ => {
            if !value.is_null() && !value.is_string() {
                return Err(bad(format!(
                    "Invalid value for field \"{key}\": expected a string"
                )));
            }
        }
    }
    Ok(())
}

fn render_port(port: &Port, version: Version, base: &str, fields: Option<&[String]>) -> Value {
    render::port(
        port,
        PortView {
            version,
            base,
            fields,
        },
    )
}

pub async fn create(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let Value::Object(mut body) = body else {
        return Err(bad(
            "The request body must be a JSON object describing a port.",
        ));
    };
    // 1.94: a node may be named by name or UUID in `node`.
    if let Some(node) = body.remove("node") {
        version.require(94, "Field \"node\"")?;
        let ident = node
            .as_str()
            .ok_or_else(|| bad("Invalid value for field \"node\": expected a string"))?;
        let found = state
            .conductor
            .store()
            .get_node(&NodeIdent::parse(ident))
            .await?;
        body.insert("node_uuid".into(), Value::String(found.uuid.to_string()));
    }
    for key in body.keys() {
        if !PORT_CREATE_FIELDS.contains(&key.as_str()) {
            return Err(bad(format!(
                "Additional properties are not allowed ('{key}' was unexpected)"
            )));
        }
        version.require(port_field_version(key), &format!("Field \"{key}\""))?;
    }
    for required in ["address", "node_uuid"] {
        if !body.contains_key(required) {
            return Err(bad(format!("'{required}' is a required property")));
        }
    }
    for (key, value) in body.iter_mut() {
        check_port_field(key, value)?;
    }
    let node_uuid = Uuid::parse_str(body["node_uuid"].as_str().unwrap_or_default())
        .map_err(|_| bad("Invalid node_uuid"))?;
    // The node must exist; a port of an unknown node is a bad request.
    state
        .conductor
        .store()
        .get_node(&NodeIdent::Uuid(node_uuid))
        .await
        .map_err(|_| bad(format!("Node {node_uuid} could not be found.")))?;
    let uuid = match body.remove("uuid") {
        Some(Value::String(s)) => Uuid::parse_str(&s).map_err(|_| bad("Invalid uuid"))?,
        _ => Uuid::new_v4(),
    };
    let address = body["address"].as_str().unwrap_or_default().to_string();
    let mut doc = match serde_json::to_value(Port::new(uuid, address, node_uuid)) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    doc.extend(body);
    let port: Port = serde_json::from_value(Value::Object(doc))
        .map_err(|e| bad(format!("Invalid port: {e}")))?;
    state.conductor.store().create_port(&port).await?;
    let location = format!("{base}/v1/ports/{}", port.uuid);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(render_port(&port, version, &base, None)),
    )
        .into_response())
}

pub async fn list(
    state: State<AppState>,
    version: Version,
    base: BaseUrl,
    params: Params,
) -> ApiResult<Json<Value>> {
    let detail = params.bool("detail", 43, version)?.unwrap_or(false);
    list_ports(state, version, base, params, detail, None, "ports").await
}

pub async fn list_detail(
    state: State<AppState>,
    version: Version,
    base: BaseUrl,
    params: Params,
) -> ApiResult<Json<Value>> {
    list_ports(state, version, base, params, true, None, "ports/detail").await
}

pub async fn list_for_node(
    state: State<AppState>,
    version: Version,
    base: BaseUrl,
    Path(node): Path<String>,
    params: Params,
) -> ApiResult<Json<Value>> {
    let detail = params.bool("detail", 43, version)?.unwrap_or(false);
    let path = format!("nodes/{node}/ports");
    list_ports(state, version, base, params, detail, Some(node), &path).await
}

pub async fn list_detail_for_node(
    state: State<AppState>,
    version: Version,
    base: BaseUrl,
    Path(node): Path<String>,
    params: Params,
) -> ApiResult<Json<Value>> {
    let path = format!("nodes/{node}/ports/detail");
    list_ports(state, version, base, params, true, Some(node), &path).await
}

async fn list_ports(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    params: Params,
    detail: bool,
    node_in_path: Option<String>,
    path: &str,
) -> ApiResult<Json<Value>> {
    let mut fields = params.fields(PORT_FIELDS, port_field_version, version)?;
    if detail && fields.is_some() {
        return Err(bad(
            "Can not specify ?detail=True and fields in the same request.",
        ));
    }
    if !detail && fields.is_none() {
        fields = Some(vec!["uuid".to_string(), "address".to_string()]);
    }
    let node_ident = node_in_path
        .or_else(|| params.get("node").map(str::to_string))
        .or_else(|| params.get("node_uuid").map(str::to_string));
    let node_uuid = match node_ident {
        Some(ident) => Some(
            state
                .conductor
                .store()
                .get_node(&NodeIdent::parse(&ident))
                .await?
                .uuid,
        ),
        None => None,
    };
    let address = params
        .get("address")
        .map(|a| {
            normalize_mac(a).ok_or_else(|| bad(format!("Expected a MAC address but received {a}.")))
        })
        .transpose()?;
    let sort_key = params.get("sort_key").unwrap_or("id").to_string();
    if !PORT_SORT_KEYS.contains(&sort_key.as_str()) {
        return Err(bad(format!(
            "The sort_key value \"{sort_key}\" is an invalid field for sorting"
        )));
    }
    let limit = params.limit(MAX_LIMIT)?;
    let query = PortQuery {
        node_uuid,
        address,
        sort_key: Some(sort_key),
        sort_dir: params.sort_dir()?,
        marker: params.uuid("marker")?,
        limit: Some(limit),
    };
    let ports = state.conductor.store().list_ports(&query).await?;
    let rendered: Vec<Value> = ports
        .iter()
        .map(|p| render_port(p, version, &base, fields.as_deref()))
        .collect();
    let mut body = json!({ "ports": rendered });
    if ports.len() as u32 == limit {
        if let Some(last) = ports.last() {
            body["next"] = Value::String(format!(
                "{base}/v1/{path}?{}",
                params.next_query(limit, &last.uuid.to_string())
            ));
        }
    }
    Ok(Json(body))
}

async fn find_port(state: &AppState, ident: &str, version: Version) -> ApiResult<Port> {
    match Uuid::parse_str(ident) {
        Ok(uuid) => Ok(state.conductor.store().get_port(uuid).await?),
        Err(_) if version.at_least(88) => {
            Ok(state.conductor.store().get_port_by_name(ident).await?)
        }
        Err(_) => Err(ApiError::not_found(format!(
            "Port {ident} could not be found."
        ))),
    }
}

pub async fn show(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    params: Params,
) -> ApiResult<Json<Value>> {
    let fields = params.fields(PORT_FIELDS, port_field_version, version)?;
    let port = find_port(&state, &ident, version).await?;
    Ok(Json(render_port(&port, version, &base, fields.as_deref())))
}

pub async fn update(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let patch: json_patch::Patch = serde_json::from_value(body)
        .map_err(|e| bad(format!("Invalid JSON Patch document: {e}")))?;
    for op in &patch.0 {
        let path = match op {
            json_patch::PatchOperation::Add(o) => o.path.to_string(),
            json_patch::PatchOperation::Remove(o) => o.path.to_string(),
            json_patch::PatchOperation::Replace(o) => o.path.to_string(),
            json_patch::PatchOperation::Move(o) => o.path.to_string(),
            json_patch::PatchOperation::Copy(o) => o.path.to_string(),
            json_patch::PatchOperation::Test(o) => o.path.to_string(),
        };
        let root = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if !PORT_PATCH_FIELDS.contains(&root) {
            return Err(bad(if PORT_FIELDS.contains(&root) {
                format!("'/{root}' is an internal attribute and can not be updated")
            } else {
                format!(
                    "Adding a new attribute (/{root}) to the root of the resource is not allowed"
                )
            }));
        }
        version.require(port_field_version(root), &format!("Field \"{root}\""))?;
        if matches!(op, json_patch::PatchOperation::Remove(_))
            && matches!(root, "address" | "node_uuid")
        {
            return Err(bad(format!(
                "'/{root}' is a mandatory attribute and can not be removed"
            )));
        }
    }
    let port = find_port(&state, &ident, version).await?;
    let Ok(Value::Object(before)) = serde_json::to_value(&port) else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "port could not be read",
        ));
    };
    let mut doc = Value::Object(before.clone());
    json_patch::patch(&mut doc, &patch)
        .map_err(|e| bad(format!("Couldn't apply patch. Reason: {e}")))?;
    let Value::Object(mut after) = doc else {
        return Err(bad("the patch must keep the port an object"));
    };
    for (key, value) in after.iter_mut() {
        if before.get(key) != Some(value) {
            check_port_field(key, value)?;
        }
    }
    let patched: Port = serde_json::from_value(Value::Object(after))
        .map_err(|e| bad(format!("Invalid port after patch: {e}")))?;
    if patched.node_uuid != port.node_uuid {
        state
            .conductor
            .store()
            .get_node(&NodeIdent::Uuid(patched.node_uuid))
            .await
            .map_err(|_| bad(format!("Node {} could not be found.", patched.node_uuid)))?;
    }
    let saved = state.conductor.store().update_port(&patched).await?;
    Ok(Json(render_port(&saved, version, &base, None)))
}

pub async fn delete(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
) -> ApiResult<StatusCode> {
    let port = find_port(&state, &ident, version).await?;
    state.conductor.store().delete_port(port.uuid).await?;
    Ok(StatusCode::NO_CONTENT)
}
