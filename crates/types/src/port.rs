//! The port record: one network interface of a node, found by MAC address.

use crate::timestamp::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub uuid: Uuid,
    /// MAC address, lower case, colon separated.
    pub address: String,
    pub node_uuid: Uuid,
    pub name: Option<String>,
    #[serde(default)]
    pub extra: Map<String, Value>,
    #[serde(default)]
    pub internal_info: Map<String, Value>,
    #[serde(default)]
    pub local_link_connection: Map<String, Value>,
    #[serde(default = "default_true")]
    pub pxe_enabled: bool,
    pub portgroup_uuid: Option<Uuid>,
    pub physical_network: Option<String>,
    #[serde(default)]
    pub is_smartnic: bool,
    pub created_at: Timestamp,
    pub updated_at: Option<Timestamp>,
}

fn default_true() -> bool {
    true
}

impl Port {
    pub fn new(uuid: Uuid, address: impl Into<String>, node_uuid: Uuid) -> Self {
        Port {
            uuid,
            address: address.into(),
            node_uuid,
            name: None,
            extra: Map::new(),
            internal_info: Map::new(),
            local_link_connection: Map::new(),
            pxe_enabled: true,
            portgroup_uuid: None,
            physical_network: None,
            is_smartnic: false,
            created_at: Timestamp::now(),
            updated_at: None,
        }
    }
}

/// Normalises a MAC address to `aa:bb:cc:dd:ee:ff`; None if it is not one.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = String::with_capacity(17);
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if i > 0 {
            out.push(':');
        }
        out.push_str(&p.to_ascii_lowercase());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_normalised_or_refused() {
        assert_eq!(
            normalize_mac("52:54:00:AB:cd:01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(
            normalize_mac("52-54-00-ab-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "525400abcd01",
            "52:54:00:ab:cd:001",
        ] {
            assert_eq!(normalize_mac(bad), None, "{bad}");
        }
    }
}
