//! Version discovery (`GET /`, `GET /v1/`) and the answers for unknown routes.

use crate::error::ApiError;
use crate::version::Version;
use crate::BaseUrl;
use axum::http::StatusCode;
use axum::Json;
use ferric_types::ApiVersion;
use serde_json::{json, Value};

fn version_object(base: &str) -> Value {
    json!({
        "id": "v1",
        "links": [{"href": format!("{base}/v1/"), "rel": "self"}],
        "status": "CURRENT",
        "min_version": ApiVersion::MIN.to_string(),
        "version": ApiVersion::MAX.to_string(),
    })
}

pub async fn root(BaseUrl(base): BaseUrl) -> Json<Value> {
    let v1 = version_object(&base);
    Json(json!({
        "name": "OpenStack Ironic API",
        "description": "Ironic is an OpenStack project which enables the provision and \
            management of baremetal machines. This endpoint is served by Ferric.",
        "default_version": v1,
        "versions": [v1],
    }))
}

pub async fn v1(BaseUrl(base): BaseUrl, version: Version) -> Json<Value> {
    let resource = |name: &str| {
        json!([
            {"href": format!("{base}/v1/{name}/"), "rel": "self"},
            {"href": format!("{base}/{name}/"), "rel": "bookmark"},
        ])
    };
    let mut body = json!({
        "id": "v1",
        "links": [
            {"href": format!("{base}/v1/"), "rel": "self"},
            {"href": "https://docs.openstack.org/ironic/latest/contributor/webapi.html",
             "rel": "describedby", "type": "text/html"},
        ],
        "media_types": [{"base": "application/json",
                         "type": "application/vnd.openstack.ironic.v1+json"}],
        "nodes": resource("nodes"),
        "ports": resource("ports"),
        "drivers": resource("drivers"),
        "version": version_object(&base),
    });
    if version.at_least(49) {
        body["conductors"] = resource("conductors");
    }
    Json(body)
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("The resource could not be found.")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "The method is not allowed for the requested URL.",
    )
}
