//! `/v1/drivers` and `/v1/conductors`.

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::version::Version;
use crate::{AppState, BaseUrl};
use axum::extract::{Path, State};
use axum::Json;
use ferric_drivers::HardwareType;
use ferric_types::INTERFACE_NAMES;
use serde_json::{json, Map, Value};

/// The minor version from which an interface shows in driver details.
fn interface_version(iface: &str) -> u32 {
    match iface {
        "network" => 30,
        "storage" => 33,
        "rescue" => 38,
        "bios" => 40,
        "firmware" => 86,
        _ => 30,
    }
}

fn alive_hosts(conductors: &[ferric_types::Conductor]) -> Vec<String> {
    conductors
        .iter()
        .filter(|c| c.alive)
        .map(|c| c.hostname.clone())
        .collect()
}

fn render_driver(
    hw: &HardwareType,
    hosts: &[String],
    base: &str,
    version: Version,
    detail: bool,
) -> Value {
    let mut out = json!({
        "name": hw.name,
        "hosts": hosts,
        "type": "dynamic",
        "links": [
            {"href": format!("{base}/v1/drivers/{}", hw.name), "rel": "self"},
            {"href": format!("{base}/drivers/{}", hw.name), "rel": "bookmark"},
        ],
    });
    if version.at_least(14) {
        out["properties"] = json!([
            {"href": format!("{base}/v1/drivers/{}/properties", hw.name), "rel": "self"},
            {"href": format!("{base}/drivers/{}/properties", hw.name), "rel": "bookmark"},
        ]);
    }
    if detail && version.at_least(30) {
        for iface in INTERFACE_NAMES {
            if !version.at_least(interface_version(iface)) {
                continue;
            }
            out[format!("default_{iface}_interface")] = json!(hw.default_for(iface));
            out[format!("enabled_{iface}_interfaces")] = json!(hw.supported(iface));
        }
    }
    out
}

pub async fn list(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    params: Params,
) -> ApiResult<Json<Value>> {
    let detail = params.bool("detail", 30, version)?.unwrap_or(false);
    if let Some(kind) = params.versioned("type", 30, version)? {
        if kind == "classic" {
            return Ok(Json(json!({ "drivers": [] })));
        }
        if kind != "dynamic" {
            return Err(ApiError::bad_request(format!(
                "Invalid driver type \"{kind}\": expected classic or dynamic"
            )));
        }
    }
    let conductors = state
        .conductor
        .store()
        .list_conductors(state.conductor.config().dead_conductor_after.as_secs())
        .await?;
    let hosts = alive_hosts(&conductors);
    let drivers: Vec<Value> = state
        .conductor
        .registry()
        .hardware_types()
        .iter()
        .map(|hw| render_driver(hw, &hosts, &base, version, detail))
        .collect();
    Ok(Json(json!({ "drivers": drivers })))
}

fn find_driver<'a>(state: &'a AppState, name: &str) -> ApiResult<&'a HardwareType> {
    state
        .conductor
        .registry()
        .hardware_type(name)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Could not find the following driver(s) or hardware type(s): {name}."
            ))
        })
}

pub async fn show(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let hw = find_driver(&state, &name)?;
    let conductors = state
        .conductor
        .store()
        .list_conductors(state.conductor.config().dead_conductor_after.as_secs())
        .await?;
    let hosts = alive_hosts(&conductors);
    Ok(Json(render_driver(hw, &hosts, &base, version, true)))
}

pub async fn properties(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let hw = find_driver(&state, &name)?;
    let mut props = Map::new();
    let specific = match hw.name {
        "ipmi" => ferric_drivers::ipmi::DRIVER_PROPERTIES,
        "redfish" => ferric_drivers::redfish::DRIVER_PROPERTIES,
        _ => &[],
    };
    for (key, description) in specific {
        props.insert((*key).into(), json!(description));
    }
    if hw.name == "fake-hardware" {
        props.insert(
            "fake_fail".into(),
            json!("Operations that fail, e.g. [\"power\", \"deploy\"]. Optional."),
        );
        props.insert("fake_wait".into(), json!("Phases that wait for an agent that never comes (deploy, clean, inspect). Optional."));
        props.insert(
            "fake_delay".into(),
            json!("Seconds every fake step and power action takes. Optional."),
        );
    }
    props.insert(
        "deploy_kernel".into(),
        json!("URL or path of the deploy kernel. Optional for fake-hardware."),
    );
    props.insert(
        "deploy_ramdisk".into(),
        json!("URL or path of the deploy ramdisk. Optional for fake-hardware."),
    );
    Ok(Json(Value::Object(props)))
}

fn render_conductor(c: &ferric_types::Conductor, base: &str, detail: bool) -> Value {
    let mut out = json!({
        "hostname": c.hostname,
        "conductor_group": c.conductor_group,
        "alive": c.alive,
        "links": [
            {"href": format!("{base}/v1/conductors/{}", c.hostname), "rel": "self"},
            {"href": format!("{base}/conductors/{}", c.hostname), "rel": "bookmark"},
        ],
    });
    if detail {
        out["drivers"] = json!(c.drivers);
        out["created_at"] = json!(c.created_at);
        out["updated_at"] = json!(c.updated_at);
    }
    out
}

pub async fn list_conductors(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    params: Params,
) -> ApiResult<Json<Value>> {
    version.require(49, "The conductors resource")?;
    let detail = params.bool("detail", 49, version)?.unwrap_or(false);
    let conductors = state
        .conductor
        .store()
        .list_conductors(state.conductor.config().dead_conductor_after.as_secs())
        .await?;
    let out: Vec<Value> = conductors
        .iter()
        .map(|c| render_conductor(c, &base, detail))
        .collect();
    Ok(Json(json!({ "conductors": out })))
}

pub async fn show_conductor(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    Path(hostname): Path<String>,
) -> ApiResult<Json<Value>> {
    version.require(49, "The conductors resource")?;
    let conductors = state
        .conductor
        .store()
        .list_conductors(state.conductor.config().dead_conductor_after.as_secs())
        .await?;
    let c = conductors
        .iter()
        .find(|c| c.hostname == hostname)
        .ok_or_else(|| ApiError::not_found(format!("Conductor {hostname} could not be found.")))?;
    Ok(Json(render_conductor(c, &base, true)))
}
