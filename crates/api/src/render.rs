//! Nodes and ports as a client of a given microversion sees them: newer
//! fields hidden, secrets masked, links added, `fields` applied.

use crate::fields::{is_secret_key, node_field_version, port_field_version, MASK};
use crate::version::Version;
use ferric_types::{Node, Port};
use serde_json::{json, Map, Value};

/// Builds `[{href, rel: self}, {href, rel: bookmark}]` for a resource.
pub fn links(base: &str, resource: &str, id: &str) -> Value {
    json!([
        {"href": format!("{base}/v1/{resource}/{id}"), "rel": "self"},
        {"href": format!("{base}/{resource}/{id}"), "rel": "bookmark"},
    ])
}

/// Replaces secret values in a dict, at any depth, with "******".
pub fn mask_secrets(map: &mut Map<String, Value>) {
    for (key, value) in map.iter_mut() {
        if is_secret_key(key) && !value.is_null() {
            *value = Value::String(MASK.to_string());
        } else if let Value::Object(inner) = value {
            mask_secrets(inner);
        } else if let Value::Array(items) = value {
            for item in items {
                if let Value::Object(inner) = item {
                    mask_secrets(inner);
                }
            }
        }
    }
}

/// Hides the credentials of a URL (`http://user:pass@host` -> `http://***@host`).
fn mask_url_credentials(value: &mut Value) {
    if let Value::String(s) = value {
        if let Some((scheme, rest)) = s.split_once("://") {
            if let Some((userinfo, host)) = rest.split_once('@') {
                if !userinfo.contains('/') {
                    *s = format!("{scheme}://***@{host}");
                }
            }
        }
    }
}

fn object_mut<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    map.get_mut(key).and_then(Value::as_object_mut)
}

/// What to include when rendering a node.
#[derive(Clone, Copy)]
pub struct NodeView<'a> {
    pub version: Version,
    pub base: &'a str,
    /// Only these fields (plus links); None for all.
    pub fields: Option<&'a [String]>,
    /// Add the `ports`, `states`, ... sub-resource links (show and detail).
    pub subresource_links: bool,
    /// The conductor that manages the node (1.49 `conductor` field).
    pub conductor: Option<&'a str>,
}

pub fn node(node: &Node, view: NodeView<'_>) -> Value {
    let mut map = match serde_json::to_value(node) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let version = view.version;
    map.retain(|k, _| version.at_least(node_field_version(k)));
    if map.contains_key("conductor") {
        map.insert("conductor".into(), json!(view.conductor));
    }
    if let Some(info) = object_mut(&mut map, "driver_info") {
        mask_secrets(info);
    }
    if let Some(info) = object_mut(&mut map, "driver_internal_info") {
        mask_secrets(info);
    }
    if let Some(info) = object_mut(&mut map, "instance_info") {
        mask_secrets(info);
        for key in [
            "image_source",
            "image_url",
            "kernel",
            "ramdisk",
            "image_checksum",
        ] {
            if let Some(v) = info.get_mut(key) {
                mask_url_credentials(v);
            }
        }
    }
    if !version.at_least(2) {
        // Before 1.2 "available" was called NOSTATE, shown as null.
        for key in ["provision_state", "target_provision_state"] {
            if map.get(key).and_then(Value::as_str) == Some("available") {
                map.insert(key.into(), Value::Null);
            }
        }
    }
    if let Some(fields) = view.fields {
        map.retain(|k, _| fields.iter().any(|f| f == k));
    }
    let id = node.uuid.to_string();
    map.insert("links".into(), links(view.base, "nodes", &id));
    if view.subresource_links && view.fields.is_none() {
        let sub = |name: &str| {
            json!([
                {"href": format!("{}/v1/nodes/{id}/{name}", view.base), "rel": "self"},
                {"href": format!("{}/nodes/{id}/{name}", view.base), "rel": "bookmark"},
            ])
        };
        map.insert("ports".into(), sub("ports"));
        if version.at_least(14) {
            map.insert("states".into(), sub("states"));
        }
        if version.at_least(24) {
            map.insert("portgroups".into(), sub("portgroups"));
        }
        if version.at_least(32) {
            map.insert("volume".into(), sub("volume"));
        }
    }
    Value::Object(map)
}

/// What to include when rendering a port.
#[derive(Clone, Copy)]
pub struct PortView<'a> {
    pub version: Version,
    pub base: &'a str,
    pub fields: Option<&'a [String]>,
}

pub fn port(port: &Port, view: PortView<'_>) -> Value {
    let mut map = match serde_json::to_value(port) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    map.retain(|k, _| view.version.at_least(port_field_version(k)));
    if let Some(fields) = view.fields {
        map.retain(|k, _| fields.iter().any(|f| f == k));
    }
    map.insert(
        "links".into(),
        links(view.base, "ports", &port.uuid.to_string()),
    );
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_types::{ApiVersion, ProvisionState};

    fn view(minor: u32) -> NodeView<'static> {
        NodeView {
            version: Version(ApiVersion::v1(minor)),
            base: "http://h:6385",
            fields: None,
            subresource_links: true,
            conductor: Some("c1"),
        }
    }

    fn sample() -> Node {
        let mut n = Node::new(
            uuid::Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::Available,
        );
        n.driver_info
            .insert("ipmi_password".into(), json!("s3cret"));
        n.driver_info
            .insert("ipmi_address".into(), json!("10.0.0.1"));
        n.driver_internal_info
            .insert("agent_secret_token".into(), json!("tok"));
        n.instance_info
            .insert("configdrive".into(), json!({"user_data": "x"}));
        n.instance_info
            .insert("image_source".into(), json!("http://u:p@host/img"));
        n
    }

    #[test]
    fn secrets_are_masked_everywhere() {
        let v = node(&sample(), view(95));
        let text = v.to_string();
        for secret in ["s3cret", "\"tok\"", "user_data", "u:p@"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(v["driver_info"]["ipmi_address"], "10.0.0.1");
        assert_eq!(v["instance_info"]["image_source"], "http://***@host/img");
    }

    #[test]
    fn newer_fields_are_hidden_and_old_clients_see_nostate() {
        let old = node(&sample(), view(1));
        assert!(old.get("name").is_none());
        assert!(old.get("driver_internal_info").is_none());
        assert!(old["provision_state"].is_null());
        assert!(old.get("states").is_none());
        let new = node(&sample(), view(95));
        assert_eq!(new["provision_state"], "available");
        assert_eq!(new["conductor"], "c1");
        assert!(new.get("disable_power_off").is_some());
        assert!(new.get("states").is_some());
    }

    #[test]
    fn fields_selects_and_keeps_links() {
        let fields = vec!["uuid".to_string(), "name".to_string()];
        let mut v = view(95);
        v.fields = Some(&fields);
        let out = node(&sample(), v);
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(out.get("links").is_some());
    }
}
