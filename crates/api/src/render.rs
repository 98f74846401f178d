//! Nodes and ports as a client of a given microversion sees them: newer
//! fields hidden, secrets masked, links added, `fields` applied.

use crate::fields::{is_secret_key, node_field_version, port_field_version, MASK};
use crate::version::Version;
use ferric_types::{Node, Port, ProvisionState};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

/// Builds `[{href, rel: self}, {href, rel: bookmark}]` for a resource.
pub fn links(base: &str, resource: &str, id: &str) -> Value {
    json!([
        {"href": format!("{base}/v1/{resource}/{id}"), "rel": "self"},
        {"href": format!("{base}/{resource}/{id}"), "rel": "bookmark"},
    ])
}

fn mask_url_credentials(value: &mut Value) {
    if let Value::String(s) = value {
        if let std::borrow::Cow::Owned(masked) = ferric_types::url::mask_credentials(s) {
            *s = masked;
        }
    }
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

/// Keys of `instance_info` that may hold URLs with credentials.
const URL_KEYS: &[&str] = &[
    "image_source",
    "image_url",
    "kernel",
    "ramdisk",
    "image_checksum",
];

/// A dict serialised with its secrets replaced by "******", at any depth,
/// without copying it.
struct Masked<'a> {
    map: &'a Map<String, Value>,
    /// Also hide credentials in the URLs of `URL_KEYS` (instance_info).
    urls: bool,
}

impl Serialize for Masked<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_map(Some(self.map.len()))?;
        for (key, value) in self.map {
            if is_secret_key(key) && !value.is_null() {
                out.serialize_entry(key, MASK)?;
            } else if self.urls && URL_KEYS.contains(&key.as_str()) && value.is_string() {
                let mut v = value.clone();
                mask_url_credentials(&mut v);
                out.serialize_entry(key, &v)?;
            } else {
                out.serialize_entry(key, &MaskedValue(value))?;
            }
        }
        out.end()
    }
}

struct MaskedValue<'a>(&'a Value);

impl Serialize for MaskedValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => Masked { map, urls: false }.serialize(s),
            Value::Array(items) => s.collect_seq(items.iter().map(MaskedValue)),
            // Credentials in URLs anywhere: image properties, stage 2 and
            // ISO URLs, the installer's kernel command line.
            Value::String(text) => ferric_types::url::mask_credentials(text).serialize(s),
            other => other.serialize(s),
        }
    }
}

/// `[{href, rel: self}, {href, rel: bookmark}]` for `<resource>/<id>[/<sub>]`.
struct Links<'a> {
    base: &'a str,
    path: &'a str,
    sub: Option<&'a str>,
}

impl Serialize for Links<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tail = match self.sub {
            Some(sub) => format!("{}/{sub}", self.path),
            None => self.path.to_string(),
        };
        let base = self.base;
        s.collect_seq([
            json!({"href": format!("{base}/v1/{tail}"), "rel": "self"}),
            json!({"href": format!("{base}/{tail}"), "rel": "bookmark"}),
        ])
    }
}

/// A node as a client sees it, serialised straight from the record: newer
/// fields left out, secrets masked, links added, `fields` applied.
pub struct NodeWire<'a> {
    pub node: &'a Node,
    pub view: NodeView<'a>,
}

impl NodeWire<'_> {
    fn include(&self, field: &str) -> bool {
        self.view.version.at_least(node_field_version(field))
            && self
                .view
                .fields
                .is_none_or(|fields| fields.iter().any(|f| f == field))
    }

    /// Before 1.2 "available" was called NOSTATE, shown as null.
    fn state_name(&self, state: Option<ProvisionState>) -> Option<ProvisionState> {
        match state {
            Some(ProvisionState::Available) if !self.view.version.at_least(2) => None,
            other => other,
        }
    }
}

impl Serialize for NodeWire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.node;
        let mut out = s.serialize_map(None)?;
        macro_rules! field {
            ($name:literal, $value:expr) => {
                if self.include($name) {
                    out.serialize_entry($name, $value)?;
                }
            };
        }
        field!("uuid", &n.uuid);
        field!("name", &n.name);
        field!("driver", &n.driver);
        field!(
            "driver_info",
            &Masked {
                map: &n.driver_info,
                urls: false
            }
        );
        field!(
            "driver_internal_info",
            &Masked {
                map: &n.driver_internal_info,
                urls: false
            }
        );
        field!("extra", &n.extra);
        field!(
            "instance_info",
            &Masked {
                map: &n.instance_info,
                urls: true
            }
        );
        field!("instance_uuid", &n.instance_uuid);
        field!("properties", &n.properties);
        field!("power_state", &n.power_state);
        field!("target_power_state", &n.target_power_state);
        field!("provision_state", &self.state_name(Some(n.provision_state)));
        field!(
            "target_provision_state",
            &self.state_name(n.target_provision_state)
        );
        field!("provision_updated_at", &n.provision_updated_at);
        field!("last_error", &n.last_error);
        field!("maintenance", &n.maintenance);
        field!("maintenance_reason", &n.maintenance_reason);
        field!("fault", &n.fault);
        field!("console_enabled", &n.console_enabled);
        field!("reservation", &n.reservation);
        field!("conductor", &self.view.conductor);
        field!("chassis_uuid", &n.chassis_uuid);
        field!("clean_step", &n.clean_step);
        field!("deploy_step", &n.deploy_step);
        field!("service_step", &n.service_step);
        field!("raid_config", &n.raid_config);
        field!("target_raid_config", &n.target_raid_config);
        field!("inspection_started_at", &n.inspection_started_at);
        field!("inspection_finished_at", &n.inspection_finished_at);
        field!("resource_class", &n.resource_class);
        field!("traits", &n.traits);
        field!("conductor_group", &n.conductor_group);
        field!("automated_clean", &n.automated_clean);
        field!("protected", &n.protected);
        field!("protected_reason", &n.protected_reason);
        field!("owner", &n.owner);
        field!("lessee", &n.lessee);
        field!("description", &n.description);
        field!("allocation_uuid", &n.allocation_uuid);
        field!("retired", &n.retired);
        field!("retired_reason", &n.retired_reason);
        field!("network_data", &n.network_data);
        field!("boot_mode", &n.boot_mode);
        field!("secure_boot", &n.secure_boot);
        field!("shard", &n.shard);
        field!("parent_node", &n.parent_node);
        field!("disable_power_off", &n.disable_power_off);
        field!("bios_interface", &n.bios_interface);
        field!("boot_interface", &n.boot_interface);
        field!("console_interface", &n.console_interface);
        field!("deploy_interface", &n.deploy_interface);
        field!("firmware_interface", &n.firmware_interface);
        field!("inspect_interface", &n.inspect_interface);
        field!("management_interface", &n.management_interface);
        field!("network_interface", &n.network_interface);
        field!("power_interface", &n.power_interface);
        field!("raid_interface", &n.raid_interface);
        field!("rescue_interface", &n.rescue_interface);
        field!("storage_interface", &n.storage_interface);
        field!("vendor_interface", &n.vendor_interface);
        field!("created_at", &n.created_at);
        field!("updated_at", &n.updated_at);

        let id = n.uuid.to_string();
        let path = format!("nodes/{id}");
        let base = self.view.base;
        out.serialize_entry(
            "links",
            &Links {
                base,
                path: &path,
                sub: None,
            },
        )?;
        if self.view.subresource_links && self.view.fields.is_none() {
            let version = self.view.version;
            for (sub, minor) in [
                ("ports", 1),
                ("states", 14),
                ("portgroups", 24),
                ("volume", 32),
            ] {
                if version.at_least(minor) {
                    out.serialize_entry(
                        sub,
                        &Links {
                            base,
                            path: &path,
                            sub: Some(sub),
                        },
                    )?;
                }
            }
        }
        out.end()
    }
}

/// A node as a JSON value (for single-node responses and tests).
pub fn node(node: &Node, view: NodeView<'_>) -> Value {
    serde_json::to_value(NodeWire { node, view }).unwrap_or(Value::Null)
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

    #[test]
    fn credentials_are_masked_in_every_url_of_a_text() {
        for (text, masked) in [
            ("http://u:p@h/x", "http://***@h/x"),
            (
                "inst.ks=http://h/k inst.repo=https://me:s3cr3t@mirror/os/ BOOTIF=1",
                "inst.ks=http://h/k inst.repo=https://***@mirror/os/ BOOTIF=1",
            ),
            ("http://h/a@b", "http://h/a@b"),
            ("no url here", "no url here"),
            ("a@b://c", "a@b://c"),
        ] {
            assert_eq!(ferric_types::url::mask_credentials(text), masked, "{text}");
        }
        let mut n = Node::new(
            uuid::Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::Active,
        );
        n.instance_info.insert(
            "image_properties".into(),
            serde_json::json!({"stage2_id": "http://u:p@m/install.img"}),
        );
        n.instance_info
            .insert("boot_iso".into(), serde_json::json!("https://u:p@m/x.iso"));
        n.driver_internal_info.insert(
            "anaconda_boot".into(),
            serde_json::json!({"params": "inst.repo=http://u:p@m/os/"}),
        );
        let shown = serde_json::to_string(&node(&n, view(90))).unwrap();
        assert!(!shown.contains("u:p"), "{shown}");
        assert_eq!(shown.matches("***@m").count(), 3, "{shown}");
    }

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
