//! `/v1/nodes`: the node resource and its sub-resources.

use crate::body::{parse_bool, JsonBody};
use crate::error::{ApiError, ApiResult};
use crate::fields::{
    node_field_version, NODE_BOOL_FIELDS, NODE_CREATE_FIELDS, NODE_FIELDS, NODE_PATCH_FIELDS,
};
use crate::params::Params;
use crate::render::{self, NodeView};
use crate::version::Version;
use crate::{AppState, BaseUrl};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferric_conductor::{ConductorError, ProvisionRequest};
use ferric_drivers::BootDevice;
use ferric_state_machine::Verb;
use ferric_store::{NodeIdent, NodeQuery, NODE_SORT_KEYS};
use ferric_types::kernel_params;
use ferric_types::{Node, PowerState, ProvisionState, Step};
use serde_json::{json, Map, Value};
use std::time::Duration;
use uuid::Uuid;

/// The most nodes one page holds (Ironic's `[api]max_limit`).
const MAX_LIMIT: u32 = 1000;
/// Fields of `GET /v1/nodes` without `detail`.
const DEFAULT_LIST_FIELDS: &[&str] = &[
    "uuid",
    "name",
    "instance_uuid",
    "power_state",
    "provision_state",
    "maintenance",
];
/// States in which a node may be patched although a transition is under way.
const UPDATE_ALLOWED_STATES: &[ProvisionState] = &[
    ProvisionState::DeployFailed,
    ProvisionState::Inspecting,
    ProvisionState::InspectFailed,
    ProvisionState::InspectWait,
    ProvisionState::CleanFailed,
    ProvisionState::Error,
    ProvisionState::Verifying,
    ProvisionState::AdoptFailed,
    ProvisionState::RescueFailed,
    ProvisionState::UnrescueFailed,
    ProvisionState::ServiceHold,
    ProvisionState::ServiceFailed,
];

fn render_one(
    state: &AppState,
    node: &Node,
    version: Version,
    base: &str,
    fields: Option<&[String]>,
) -> Value {
    let owner = state.conductor.owner_of(node.uuid);
    let view = NodeView {
        version,
        base,
        fields,
        subresource_links: true,
        conductor: owner.as_deref(),
    };
    render::node(node, view)
}

// ---- validation of node fields ----

/// Logical names: RFC 3986 unreserved characters, not a UUID.
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        && Uuid::parse_str(name).is_err();
    if valid {
        Ok(())
    } else {
        Err(format!(
            "Cannot use name \"{name}\": a node name may use only letters, digits and -._~, \
             must not look like a UUID, and is at most 255 characters"
        ))
    }
}

/// Checks (and normalises) one top-level node field given by an operator.
fn check_node_field(key: &str, value: &mut Value) -> Result<(), String> {
    let wrong = |expected: &str| format!("Invalid value for field \"{key}\": expected {expected}");
    match key {
        "driver_info" | "extra" | "instance_info" | "properties" | "network_data" => {
            if value.is_null() {
                *value = Value::Object(Map::new());
            }
            if !value.is_object() {
                return Err(wrong("an object"));
            }
            if matches!(key, "driver_info" | "instance_info") {
                check_kernel_params(key, value)?;
            }
        }
        "driver" => {
            if value.as_str().is_none_or(|s| s.is_empty()) {
                return Err(wrong("a non-empty string"));
            }
        }
        "uuid" | "instance_uuid" | "chassis_uuid" | "parent_node" => {
            if let Some(s) = value.as_str() {
                Uuid::parse_str(s)
                    .map_err(|_| format!("Expected a UUID for {key} but received {s}."))?;
            } else if !value.is_null() || key == "uuid" {
                return Err(wrong("a UUID"));
            }
        }
        "name" => match value {
            Value::Null => {}
            Value::String(s) => check_name(s)?,
            _ => return Err(wrong("a string")),
        },
        "description" => {
            if value.as_str().is_some_and(|s| s.len() > 4096) {
                return Err(
                    "Invalid value for field \"description\": longer than 4096 characters".into(),
                );
            }
            if !value.is_null() && !value.is_string() {
                return Err(wrong("a string"));
            }
        }
        "resource_class" => {
            if value.as_str().is_some_and(|s| s.len() > 80) {
                return Err(
                    "Invalid value for field \"resource_class\": longer than 80 characters".into(),
                );
            }
            if !value.is_null() && !value.is_string() {
                return Err(wrong("a string"));
            }
        }
        k if NODE_BOOL_FIELDS.contains(&k) => {
            if value.is_null() && matches!(k, "automated_clean" | "secure_boot") {
                return Ok(());
            }
            *value = Value::Bool(parse_bool(value).ok_or_else(|| wrong("a boolean"))?);
        }
        "conductor_group" => {
            if value.is_null() {
                *value = Value::String(String::new());
            }
            let s = value.as_str().ok_or_else(|| wrong("a string"))?;
            if s.len() > 255
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(wrong("letters, digits, - . _ (at most 255)"));
            }
        }
        _ => {
            if !value.is_null() && !value.is_string() {
                return Err(wrong("a string"));
            }
        }
    }
    Ok(())
}

/// The kernel command lines of driver_info and instance_info go into boot
/// scripts: one line, nothing iPXE would run or expand (the check is the
/// strictest boot loader's).
fn check_kernel_params(field: &str, value: &Value) -> Result<(), String> {
    for key in KERNEL_PARAM_KEYS {
        match value.get(*key) {
            None | Some(Value::Null) => {}
            Some(Value::String(params)) => {
                kernel_params::validate(params, kernel_params::BootLoader::Ipxe)
                    .map_err(|e| format!("Invalid {field}/{key}: {e}"))?;
            }
            Some(_) => return Err(format!("Invalid {field}/{key}: expected a string")),
        }
    }
    Ok(())
}

/// driver_info and instance_info keys that hold kernel parameters.
const KERNEL_PARAM_KEYS: &[&str] = &["kernel_append_params", "ramdisk_kernel_arguments"];

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

// ---- create, list, show ----

pub async fn create(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object describing a node.",
        ));
    };
    for key in body.keys() {
        if !NODE_CREATE_FIELDS.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Additional properties are not allowed ('{key}' was unexpected)"
            )));
        }
        version.require(node_field_version(key), &format!("Field \"{key}\""))?;
    }
    if !body.contains_key("driver") {
        return Err(ApiError::bad_request("'driver' is a required property"));
    }
    for (key, value) in body.iter_mut() {
        check_node_field(key, value).map_err(bad)?;
    }
    let uuid = match body.remove("uuid") {
        Some(Value::String(s)) => {
            Uuid::parse_str(&s).map_err(|_| bad(format!("Expected a UUID but received {s}.")))?
        }
        _ => Uuid::new_v4(),
    };
    // Nodes start in enroll since 1.11; older clients get them available.
    let initial = if version.at_least(11) {
        ProvisionState::Enroll
    } else {
        ProvisionState::Available
    };
    let driver = body["driver"].as_str().unwrap_or_default().to_string();
    let mut doc = match serde_json::to_value(Node::new(uuid, driver, initial)) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    doc.extend(body);
    let node: Node = serde_json::from_value(Value::Object(doc))
        .map_err(|e| bad(format!("Invalid node: {e}")))?;
    let node = state.conductor.create_node(node).await?;
    let location = format!("{base}/v1/nodes/{}", node.uuid);
    let rendered = render_one(&state, &node, version, &base, None);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(rendered),
    )
        .into_response())
}

pub async fn list(
    state: State<AppState>,
    version: Version,
    base: BaseUrl,
    params: Params,
) -> ApiResult<Response> {
    let detail = params.bool("detail", 43, version)?.unwrap_or(false);
    list_nodes(state, version, base, params, detail, "nodes").await
}

pub async fn list_detail(
    state: State<AppState>,
    version: Version,
    base: BaseUrl,
    params: Params,
) -> ApiResult<Response> {
    if params.get("detail").is_some() {
        return Err(ApiError::bad_request(
            "The detail parameter is not allowed on /v1/nodes/detail",
        ));
    }
    list_nodes(state, version, base, params, true, "nodes/detail").await
}

async fn list_nodes(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    params: Params,
    detail: bool,
    path: &str,
) -> ApiResult<Response> {
    let mut fields = params.fields(NODE_FIELDS, node_field_version, version)?;
    if detail && fields.is_some() {
        return Err(ApiError::bad_request(
            "Can not specify ?detail=True and fields in the same request.",
        ));
    }
    if !detail && fields.is_none() {
        fields = Some(DEFAULT_LIST_FIELDS.iter().map(|s| s.to_string()).collect());
    }
    let limit = params.limit(MAX_LIMIT)?;
    let sort_key = params.get("sort_key").unwrap_or("id").to_string();
    if !NODE_SORT_KEYS.contains(&sort_key.as_str()) {
        return Err(ApiError::bad_request(format!(
            "The sort_key value \"{sort_key}\" is an invalid field for sorting"
        )));
    }
    version.require(
        node_field_version(&sort_key),
        &format!("Sorting by \"{sort_key}\""),
    )?;
    let provision_state = params
        .versioned("provision_state", 9, version)?
        .map(|s| {
            s.parse::<ProvisionState>()
                .map_err(|_| bad(format!("Invalid provision state \"{s}\"")))
        })
        .transpose()?;
    let associated = params.bool("associated", 1, version)?;
    let query = NodeQuery {
        provision_state,
        driver: params.versioned("driver", 16, version)?.map(str::to_string),
        maintenance: params.bool("maintenance", 1, version)?,
        associated,
        instance_uuid: params.uuid("instance_uuid")?,
        resource_class: params
            .versioned("resource_class", 21, version)?
            .map(str::to_string),
        conductor_group: params
            .versioned("conductor_group", 46, version)?
            .map(str::to_string),
        owner: params.versioned("owner", 50, version)?.map(str::to_string),
        lessee: params.versioned("lessee", 65, version)?.map(str::to_string),
        shard: params.versioned("shard", 82, version)?.map(str::to_string),
        retired: params.bool("retired", 61, version)?,
        sort_key: Some(sort_key),
        sort_dir: params.sort_dir()?,
        marker: params.uuid("marker")?,
        limit: Some(limit),
        ..Default::default()
    };
    let nodes = state.conductor.store().list_nodes(&query).await?;
    let wants_conductor = version.at_least(49)
        && fields
            .as_ref()
            .is_none_or(|f| f.iter().any(|x| x == "conductor"));
    let owners: Vec<Option<String>> = nodes
        .iter()
        .map(|n| {
            wants_conductor
                .then(|| state.conductor.owner_of(n.uuid))
                .flatten()
        })
        .collect();
    let listed: Vec<render::NodeWire> = nodes
        .iter()
        .zip(&owners)
        .map(|(node, owner)| render::NodeWire {
            node,
            view: NodeView {
                version,
                base: &base,
                fields: fields.as_deref(),
                subresource_links: detail,
                conductor: owner.as_deref(),
            },
        })
        .collect();
    let next = match nodes.last() {
        Some(last) if nodes.len() as u32 == limit => Some(format!(
            "{base}/v1/{path}?{}",
            params.next_query(limit, &last.uuid.to_string())
        )),
        _ => None,
    };
    Ok(Json(NodeList {
        nodes: listed,
        next,
    })
    .into_response())
}

/// A page of `GET /v1/nodes`, serialised without an intermediate JSON tree.
#[derive(serde::Serialize)]
struct NodeList<'a> {
    nodes: Vec<render::NodeWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

pub async fn show(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    params: Params,
) -> ApiResult<Json<Value>> {
    let fields = params.fields(NODE_FIELDS, node_field_version, version)?;
    let node = state
        .conductor
        .store()
        .get_node(&node_ident(&ident, version)?)
        .await?;
    Ok(Json(render_one(
        &state,
        &node,
        version,
        &base,
        fields.as_deref(),
    )))
}

/// A node named by UUID, or by name from 1.5 on.
fn node_ident(ident: &str, version: Version) -> ApiResult<NodeIdent> {
    match NodeIdent::parse(ident) {
        NodeIdent::Name(_) if !version.at_least(5) => Err(ApiError::not_acceptable(format!(
            "Node names require API version 1.5 or later; \"{ident}\" is not a UUID"
        ))),
        id => Ok(id),
    }
}

// ---- update (JSON Patch) and delete ----

fn patch_root(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

pub async fn update(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    params: Params,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let reset_interfaces = params
        .bool("reset_interfaces", 45, version)?
        .unwrap_or(false);
    let patch: json_patch::Patch = serde_json::from_value(body)
        .map_err(|e| bad(format!("Invalid JSON Patch document: {e}")))?;
    let mut changes_driver = false;
    let mut only_removes_instance = !patch.0.is_empty();
    for op in &patch.0 {
        let (path, from) = match op {
            json_patch::PatchOperation::Add(o) => (o.path.to_string(), None),
            json_patch::PatchOperation::Remove(o) => (o.path.to_string(), None),
            json_patch::PatchOperation::Replace(o) => (o.path.to_string(), None),
            json_patch::PatchOperation::Move(o) => (o.path.to_string(), Some(o.from.to_string())),
            json_patch::PatchOperation::Copy(o) => (o.path.to_string(), Some(o.from.to_string())),
            json_patch::PatchOperation::Test(o) => (o.path.to_string(), None),
        };
        let is_remove_instance =
            matches!(op, json_patch::PatchOperation::Remove(_)) && path == "/instance_uuid";
        only_removes_instance &= is_remove_instance;
        for p in std::iter::once(path.as_str()).chain(from.as_deref()) {
            let root = patch_root(p);
            if !NODE_PATCH_FIELDS.contains(&root) {
                return Err(bad(if NODE_FIELDS.contains(&root) {
                    format!("'/{root}' is an internal attribute and can not be updated")
                } else {
                    format!("Adding a new attribute (/{root}) to the root of the resource is not allowed")
                }));
            }
            version.require(node_field_version(root), &format!("Field \"{root}\""))?;
            if root == "driver" {
                changes_driver = true;
                if matches!(op, json_patch::PatchOperation::Remove(_)) {
                    return Err(bad(
                        "'/driver' is a mandatory attribute and can not be removed".into(),
                    ));
                }
            }
        }
    }
    if reset_interfaces && !changes_driver {
        return Err(bad(
            "The reset_interfaces parameter can be provided only when changing the driver".into(),
        ));
    }
    let ident = node_ident(&ident, version)?;
    let node = state
        .conductor
        .update_node(&ident, |node| {
            let exempt = node.maintenance && only_removes_instance;
            if !exempt
                && node.target_provision_state.is_some()
                && !UPDATE_ALLOWED_STATES.contains(&node.provision_state)
            {
                return Err(ConductorError::Conflict(format!(
                    "Node {} can not be updated while a state transition is in progress.",
                    node.uuid
                )));
            }
            let Ok(Value::Object(before)) = serde_json::to_value(&*node) else {
                return Err(ConductorError::InvalidParameter(
                    "node could not be read".into(),
                ));
            };
            let mut doc = Value::Object(before.clone());
            json_patch::patch(&mut doc, &patch).map_err(|e| {
                ConductorError::InvalidParameter(format!("Couldn't apply patch. Reason: {e}"))
            })?;
            let Value::Object(mut after) = doc else {
                return Err(ConductorError::InvalidParameter(
                    "the patch must keep the node an object".into(),
                ));
            };
            for (key, value) in after.iter_mut() {
                if before.get(key) != Some(value) {
                    check_node_field(key, value).map_err(ConductorError::InvalidParameter)?;
                }
            }
            let mut patched: Node = serde_json::from_value(Value::Object(after)).map_err(|e| {
                ConductorError::InvalidParameter(format!("Invalid node after patch: {e}"))
            })?;
            if reset_interfaces {
                for iface in ferric_types::INTERFACE_NAMES {
                    if patched.interface(iface) == node.interface(iface) {
                        patched.set_interface(iface, None);
                    }
                }
            }
            *node = patched;
            Ok(())
        })
        .await?;
    Ok(Json(render_one(&state, &node, version, &base, None)))
}

pub async fn delete(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .conductor
        .delete_node(&node_ident(&ident, version)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- validate and states ----

pub async fn validate(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
) -> ApiResult<Json<Value>> {
    let results = state
        .conductor
        .validate_node(&node_ident(&ident, version)?)
        .await?;
    let mut out = Map::new();
    for (iface, result) in results {
        let minor = node_field_version(&format!("{iface}_interface")).min(31);
        let visible = match iface {
            "bios" => version.at_least(40),
            "firmware" => version.at_least(86),
            "storage" => version.at_least(33),
            "rescue" => version.at_least(38),
            _ => {
                version.at_least(minor)
                    || matches!(
                        iface,
                        "power"
                            | "deploy"
                            | "management"
                            | "boot"
                            | "console"
                            | "inspect"
                            | "network"
                            | "raid"
                    )
            }
        };
        if visible {
            out.insert(
                iface.to_string(),
                serde_json::to_value(result).unwrap_or(Value::Null),
            );
        }
    }
    Ok(Json(Value::Object(out)))
}

pub async fn states(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
) -> ApiResult<Json<Value>> {
    let node = state
        .conductor
        .store()
        .get_node(&node_ident(&ident, version)?)
        .await?;
    let provision = |s: Option<ProvisionState>| match s {
        Some(ProvisionState::Available) if !version.at_least(2) => Value::Null,
        other => json!(other),
    };
    let mut out = json!({
        "console_enabled": node.console_enabled,
        "last_error": node.last_error,
        "power_state": node.power_state,
        "provision_state": provision(Some(node.provision_state)),
        "provision_updated_at": node.provision_updated_at,
        "target_power_state": node.target_power_state,
        "target_provision_state": provision(node.target_provision_state),
    });
    if version.at_least(12) {
        out["raid_config"] = json!(node.raid_config);
        out["target_raid_config"] = json!(node.target_raid_config);
    }
    if version.at_least(75) {
        out["boot_mode"] = json!(node.boot_mode);
        out["secure_boot"] = json!(node.secure_boot);
    }
    Ok(Json(out))
}

fn accepted(base: &str, uuid_or_name: &str) -> Response {
    let location = format!("{base}/v1/nodes/{uuid_or_name}/states");
    (StatusCode::ACCEPTED, [(header::LOCATION, location)]).into_response()
}

fn only_keys(body: &Map<String, Value>, allowed: &[&str]) -> ApiResult<()> {
    for key in body.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(bad(format!(
                "Additional properties are not allowed ('{key}' was unexpected)"
            )));
        }
    }
    Ok(())
}

fn object(body: Value, what: &str) -> ApiResult<Map<String, Value>> {
    match body {
        Value::Object(m) => Ok(m),
        _ => Err(bad(format!(
            "The request body must be a JSON object {what}"
        ))),
    }
}

pub async fn set_power(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let body = object(body, "with a power \"target\"")?;
    only_keys(&body, &["target", "timeout"])?;
    let target = body
        .get("target")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("'target' is a required property".into()))?;
    let target: PowerState = match target {
        "power on" | "power off" | "rebooting" | "soft power off" | "soft rebooting" => target
            .parse()
            .map_err(|_| bad(format!("Invalid power target {target}")))?,
        other => {
            return Err(bad(format!(
                "Invalid power state {other}; valid targets are: power on, power off, rebooting, \
                 soft power off, soft rebooting"
            )))
        }
    };
    if matches!(target, PowerState::SoftPowerOff | PowerState::SoftRebooting) {
        version.require(27, "Soft power actions")?;
    }
    let timeout = match body.get("timeout") {
        None | Some(Value::Null) => None,
        Some(v) => {
            version.require(27, "The power \"timeout\"")?;
            let secs = v
                .as_u64()
                .filter(|s| *s > 0)
                .ok_or_else(|| bad(format!("Invalid timeout {v}: expected a positive integer")))?;
            Some(Duration::from_secs(secs))
        }
    };
    state
        .conductor
        .set_power_state(&node_ident(&ident, version)?, target, timeout)
        .await?;
    Ok(accepted(&base, &ident))
}

fn parse_steps(value: &Value, what: &str) -> ApiResult<Vec<Step>> {
    let items = value
        .as_array()
        .ok_or_else(|| bad(format!("Invalid {what}: expected a list of steps")))?;
    items
        .iter()
        .map(|item| {
            serde_json::from_value::<Step>(item.clone()).map_err(|e| {
                bad(format!(
                    "Invalid {what}: each step needs \"interface\" and \"step\", optional \"args\" \
                     (an object) and \"priority\" (an integer): {e}"
                ))
            })
        })
        .collect()
}

/// Checks a config drive's shape: a string (gzip+base64 or URL) or, from
/// 1.56, a dict of the four config drive parts (`vendor_data` from 1.59).
fn check_configdrive(value: &Value, version: Version) -> ApiResult<()> {
    match value {
        Value::String(_) | Value::Null => Ok(()),
        Value::Object(map) => {
            version.require(56, "A config drive given as a JSON object")?;
            for key in map.keys() {
                match key.as_str() {
                    "meta_data" | "network_data" | "user_data" => {}
                    "vendor_data" => version.require(59, "The config drive's vendor_data")?,
                    other => {
                        return Err(bad(format!(
                            "Invalid config drive: unknown key \"{other}\"; allowed are meta_data, \
                             network_data, user_data, vendor_data"
                        )))
                    }
                }
            }
            for key in ["meta_data", "network_data", "vendor_data"] {
                if map.get(key).is_some_and(|v| !v.is_object() && !v.is_null()) {
                    return Err(bad(format!(
                        "Invalid config drive: {key} must be a JSON object"
                    )));
                }
            }
            if map
                .get("user_data")
                .is_some_and(|v| !(v.is_string() || v.is_object() || v.is_array() || v.is_null()))
            {
                return Err(bad(
                    "Invalid config drive: user_data must be a string, an object or a list".into(),
                ));
            }
            Ok(())
        }
        _ => Err(bad(
            "Invalid config drive: expected a string or a JSON object".into(),
        )),
    }
}

pub async fn set_provision(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let body = object(body, "with a provision \"target\"")?;
    only_keys(
        &body,
        &[
            "target",
            "configdrive",
            "clean_steps",
            "deploy_steps",
            "service_steps",
            "rescue_password",
            "disable_ramdisk",
            "runbook",
        ],
    )?;
    let target = body
        .get("target")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("'target' is a required property".into()))?;
    let verb = Verb::from_wire(target).ok_or_else(|| {
        bad(format!(
            "\"{target}\" is not a valid provision state target"
        ))
    })?;
    version.require(
        verb.min_version(),
        &format!("The provision target \"{target}\""),
    )?;
    let mut request = ProvisionRequest::new(verb);
    let deploying = matches!(verb, Verb::Active | Verb::Deploy | Verb::Rebuild);
    if let Some(cd) = body.get("configdrive").filter(|v| !v.is_null()) {
        if !deploying {
            return Err(bad(
                "Adding a config drive is only supported when setting provision state to active, deploy or rebuild".into(),
            ));
        }
        if verb == Verb::Rebuild {
            version.require(35, "A config drive with rebuild")?;
        }
        check_configdrive(cd, version)?;
        request.configdrive = Some(cd.clone());
    }
    if let Some(v) = body.get("clean_steps").filter(|v| !v.is_null()) {
        if verb != Verb::Clean {
            return Err(bad(
                "\"clean_steps\" is only valid when setting target provision state to clean".into(),
            ));
        }
        request.clean_steps = Some(parse_steps(v, "clean_steps")?);
    } else if verb == Verb::Clean {
        return Err(bad(
            "\"clean_steps\" is required when setting target provision state to clean".into(),
        ));
    }
    if let Some(v) = body.get("deploy_steps").filter(|v| !v.is_null()) {
        version.require(69, "\"deploy_steps\"")?;
        if !deploying {
            return Err(bad("\"deploy_steps\" is only valid when setting target provision state to active, deploy or rebuild".into()));
        }
        request.deploy_steps = Some(parse_steps(v, "deploy_steps")?);
    }
    if let Some(v) = body.get("service_steps").filter(|v| !v.is_null()) {
        if verb != Verb::Service {
            return Err(bad(
                "\"service_steps\" is only valid when setting target provision state to service"
                    .into(),
            ));
        }
        request.service_steps = Some(parse_steps(v, "service_steps")?);
    } else if verb == Verb::Service {
        return Err(bad(
            "\"service_steps\" is required when setting target provision state to service".into(),
        ));
    }
    if let Some(v) = body.get("rescue_password").filter(|v| !v.is_null()) {
        if verb != Verb::Rescue {
            return Err(bad(
                "\"rescue_password\" is only valid when setting target provision state to rescue"
                    .into(),
            ));
        }
        let password = v
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| bad("A non-empty \"rescue_password\" is required".into()))?;
        request.rescue_password = Some(password.to_string());
    } else if verb == Verb::Rescue {
        return Err(bad("A non-empty \"rescue_password\" is required when setting target provision state to rescue".into()));
    }
    if let Some(v) = body.get("disable_ramdisk").filter(|v| !v.is_null()) {
        version.require(70, "\"disable_ramdisk\"")?;
        request.disable_ramdisk = Some(
            parse_bool(v)
                .ok_or_else(|| bad("Invalid disable_ramdisk: expected a boolean".into()))?,
        );
    }
    if body.get("runbook").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::not_acceptable(
            "Runbooks require API version 1.92 or later and are not supported by this service",
        ));
    }
    let ident = node_ident(&ident, version)?;
    if verb == Verb::Abort {
        // Aborting a deploy that waits for its agent is API 1.110, newer
        // than this service speaks.
        let node = state.conductor.store().get_node(&ident).await?;
        if node.provision_state == ProvisionState::WaitCallBack {
            return Err(bad(format!(
                "The requested action \"abort\" can not be performed on node \"{}\" while it is in state \"wait call-back\".",
                node.uuid
            )));
        }
    }
    state.conductor.provision(&ident, request).await?;
    Ok(accepted(&base, &ident_text(&ident)))
}

fn ident_text(ident: &NodeIdent) -> String {
    match ident {
        NodeIdent::Uuid(u) => u.to_string(),
        NodeIdent::Name(n) => n.clone(),
    }
}

// ---- management ----

pub async fn get_boot_device(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
) -> ApiResult<Json<Value>> {
    let info = state
        .conductor
        .get_boot_device(&node_ident(&ident, version)?)
        .await?;
    Ok(Json(json!(info)))
}

pub async fn supported_boot_devices(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
) -> ApiResult<Json<Value>> {
    let devices = state
        .conductor
        .supported_boot_devices(&node_ident(&ident, version)?)
        .await?;
    Ok(Json(json!({ "supported_boot_devices": devices })))
}

pub async fn set_boot_device(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<StatusCode> {
    let body = object(body, "with a \"boot_device\"")?;
    only_keys(&body, &["boot_device", "persistent"])?;
    let device: BootDevice = body
        .get("boot_device")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("'boot_device' is a required property".into()))?
        .parse()
        .map_err(|e: ferric_drivers::DriverError| bad(e.to_string()))?;
    let persistent = match body.get("persistent") {
        None | Some(Value::Null) => false,
        Some(v) => {
            parse_bool(v).ok_or_else(|| bad("Invalid persistent: expected a boolean".into()))?
        }
    };
    state
        .conductor
        .set_boot_device(&node_ident(&ident, version)?, device, persistent)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_maintenance(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("The request body is not valid JSON: {e}")))?;
        let map = object(value, "")?;
        only_keys(&map, &["reason"])?;
        match map.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("Invalid reason: expected a string".into())),
        }
    };
    state
        .conductor
        .set_maintenance(&node_ident(&ident, version)?, true, reason)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn unset_maintenance(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .conductor
        .set_maintenance(&node_ident(&ident, version)?, false, None)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

// ---- traits (1.37) ----

/// Traits: standard (`HW_...`) or custom (`CUSTOM_[A-Z0-9_]+`), at most 255 characters.
fn check_trait(t: &str) -> ApiResult<()> {
    let custom_ok = t.strip_prefix("CUSTOM_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    });
    let standard_ok = !t.starts_with("CUSTOM_")
        && !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if t.len() <= 255 && (custom_ok || standard_ok) {
        Ok(())
    } else {
        Err(bad(format!(
            "Invalid trait \"{t}\": a trait is a standard one (upper case letters, digits, _) or CUSTOM_ followed by them"
        )))
    }
}

pub async fn list_traits(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
) -> ApiResult<Json<Value>> {
    version.require(37, "Node traits")?;
    let node = state
        .conductor
        .store()
        .get_node(&node_ident(&ident, version)?)
        .await?;
    Ok(Json(json!({ "traits": node.traits })))
}

async fn change_traits(
    state: &AppState,
    version: Version,
    ident: &str,
    change: impl FnOnce(&mut Vec<String>),
) -> ApiResult<StatusCode> {
    version.require(37, "Node traits")?;
    state
        .conductor
        .update_node(&node_ident(ident, version)?, |node| {
            change(&mut node.traits);
            node.traits.sort();
            node.traits.dedup();
            if node.traits.len() > 50 {
                return Err(ConductorError::InvalidParameter(
                    "A node can have at most 50 traits".into(),
                ));
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_traits(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<StatusCode> {
    let body = object(body, "with \"traits\"")?;
    only_keys(&body, &["traits"])?;
    let traits: Vec<String> = body
        .get("traits")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("'traits' is a required property and must be a list".into()))?
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("Each trait must be a string".into()))
        })
        .collect::<ApiResult<_>>()?;
    for t in &traits {
        check_trait(t)?;
    }
    change_traits(&state, version, &ident, |all| *all = traits).await
}

pub async fn add_trait(
    State(state): State<AppState>,
    version: Version,
    Path((ident, trait_name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_trait(&trait_name)?;
    change_traits(&state, version, &ident, |all| all.push(trait_name)).await
}

pub async fn delete_trait(
    State(state): State<AppState>,
    version: Version,
    Path((ident, trait_name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    version.require(37, "Node traits")?;
    let node = state
        .conductor
        .store()
        .get_node(&node_ident(&ident, version)?)
        .await?;
    if !node.traits.contains(&trait_name) {
        return Err(ApiError::not_found(format!(
            "Node {} doesn't have a trait '{trait_name}'",
            node.uuid
        )));
    }
    change_traits(&state, version, &ident, |all| {
        all.retain(|t| *t != trait_name)
    })
    .await
}

pub async fn delete_all_traits(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
) -> ApiResult<StatusCode> {
    change_traits(&state, version, &ident, Vec::clear).await
}
