//! Which node and port fields exist at which microversion, which an
//! operator may set, and which are secret.

/// Node fields newer than 1.1, with the minor version that added them.
pub const NODE_VERSIONED_FIELDS: &[(&str, u32)] = &[
    ("driver_internal_info", 3),
    ("name", 5),
    ("inspection_finished_at", 6),
    ("inspection_started_at", 6),
    ("clean_step", 7),
    ("raid_config", 12),
    ("target_raid_config", 12),
    ("network_interface", 20),
    ("resource_class", 21),
    ("boot_interface", 31),
    ("console_interface", 31),
    ("deploy_interface", 31),
    ("inspect_interface", 31),
    ("management_interface", 31),
    ("power_interface", 31),
    ("raid_interface", 31),
    ("vendor_interface", 31),
    ("storage_interface", 33),
    ("traits", 37),
    ("rescue_interface", 38),
    ("bios_interface", 40),
    ("fault", 42),
    ("deploy_step", 44),
    ("conductor_group", 46),
    ("automated_clean", 47),
    ("protected", 48),
    ("protected_reason", 48),
    ("conductor", 49),
    ("owner", 50),
    ("description", 51),
    ("allocation_uuid", 52),
    ("retired", 61),
    ("retired_reason", 61),
    ("lessee", 65),
    ("network_data", 66),
    ("boot_mode", 75),
    ("secure_boot", 75),
    ("shard", 82),
    ("parent_node", 83),
    ("firmware_interface", 86),
    ("service_step", 87),
    ("disable_power_off", 95),
];

/// The minor version that added a node field; 1 for the original ones.
pub fn node_field_version(field: &str) -> u32 {
    NODE_VERSIONED_FIELDS
        .iter()
        .find(|(name, _)| *name == field)
        .map(|(_, minor)| *minor)
        .unwrap_or(1)
}

/// Every node field a client can see (plus `links` and sub-resource links).
pub const NODE_FIELDS: &[&str] = &[
    "uuid",
    "name",
    "driver",
    "driver_info",
    "driver_internal_info",
    "extra",
    "instance_info",
    "instance_uuid",
    "properties",
    "power_state",
    "target_power_state",
    "provision_state",
    "target_provision_state",
    "provision_updated_at",
    "last_error",
    "maintenance",
    "maintenance_reason",
    "fault",
    "console_enabled",
    "reservation",
    "conductor",
    "chassis_uuid",
    "clean_step",
    "deploy_step",
    "service_step",
    "raid_config",
    "target_raid_config",
    "inspection_started_at",
    "inspection_finished_at",
    "resource_class",
    "traits",
    "conductor_group",
    "automated_clean",
    "protected",
    "protected_reason",
    "owner",
    "lessee",
    "description",
    "allocation_uuid",
    "retired",
    "retired_reason",
    "network_data",
    "boot_mode",
    "secure_boot",
    "shard",
    "parent_node",
    "disable_power_off",
    "bios_interface",
    "boot_interface",
    "console_interface",
    "deploy_interface",
    "firmware_interface",
    "inspect_interface",
    "management_interface",
    "network_interface",
    "power_interface",
    "raid_interface",
    "rescue_interface",
    "storage_interface",
    "vendor_interface",
    "created_at",
    "updated_at",
];

/// Fields an operator may give when creating a node.
pub const NODE_CREATE_FIELDS: &[&str] = &[
    "uuid",
    "name",
    "driver",
    "driver_info",
    "extra",
    "instance_info",
    "instance_uuid",
    "properties",
    "maintenance",
    "console_enabled",
    "chassis_uuid",
    "resource_class",
    "conductor_group",
    "automated_clean",
    "protected",
    "protected_reason",
    "owner",
    "lessee",
    "description",
    "retired",
    "retired_reason",
    "network_data",
    "boot_mode",
    "secure_boot",
    "shard",
    "parent_node",
    "disable_power_off",
    "bios_interface",
    "boot_interface",
    "console_interface",
    "deploy_interface",
    "firmware_interface",
    "inspect_interface",
    "management_interface",
    "network_interface",
    "power_interface",
    "raid_interface",
    "rescue_interface",
    "storage_interface",
    "vendor_interface",
];

/// Top-level node fields a JSON Patch may change (Ironic's list).
pub const NODE_PATCH_FIELDS: &[&str] = &[
    "automated_clean",
    "bios_interface",
    "boot_interface",
    "chassis_uuid",
    "conductor_group",
    "console_interface",
    "deploy_interface",
    "description",
    "disable_power_off",
    "driver",
    "driver_info",
    "extra",
    "firmware_interface",
    "inspect_interface",
    "instance_info",
    "instance_uuid",
    "lessee",
    "maintenance",
    "management_interface",
    "name",
    "network_data",
    "network_interface",
    "owner",
    "parent_node",
    "power_interface",
    "properties",
    "protected",
    "protected_reason",
    "raid_interface",
    "rescue_interface",
    "resource_class",
    "retired",
    "retired_reason",
    "shard",
    "storage_interface",
    "vendor_interface",
];

/// Node fields that are booleans (Ironic accepts "true"/"false" strings).
pub const NODE_BOOL_FIELDS: &[&str] = &[
    "maintenance",
    "console_enabled",
    "protected",
    "retired",
    "disable_power_off",
    "automated_clean",
    "secure_boot",
];

/// Port fields newer than 1.1, with the minor version that added them.
pub const PORT_VERSIONED_FIELDS: &[(&str, u32)] = &[
    ("internal_info", 18),
    ("local_link_connection", 19),
    ("pxe_enabled", 19),
    ("portgroup_uuid", 24),
    ("physical_network", 34),
    ("is_smartnic", 53),
    ("name", 88),
];

pub fn port_field_version(field: &str) -> u32 {
    PORT_VERSIONED_FIELDS
        .iter()
        .find(|(name, _)| *name == field)
        .map(|(_, minor)| *minor)
        .unwrap_or(1)
}

pub const PORT_FIELDS: &[&str] = &[
    "uuid",
    "address",
    "node_uuid",
    "name",
    "extra",
    "internal_info",
    "local_link_connection",
    "pxe_enabled",
    "portgroup_uuid",
    "physical_network",
    "is_smartnic",
    "created_at",
    "updated_at",
];

pub const PORT_CREATE_FIELDS: &[&str] = &[
    "uuid",
    "address",
    "node_uuid",
    "name",
    "extra",
    "local_link_connection",
    "pxe_enabled",
    "portgroup_uuid",
    "physical_network",
    "is_smartnic",
];

pub const PORT_PATCH_FIELDS: &[&str] = &[
    "address",
    "node_uuid",
    "name",
    "extra",
    "local_link_connection",
    "pxe_enabled",
    "portgroup_uuid",
    "physical_network",
    "is_smartnic",
];

/// True for a dict key whose value is a secret (Ironic masks the same
/// kinds of keys with "******").
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "configdrive",
        "credential",
        "private_key",
        "encryption_key",
        "auth_key",
        "priv_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

pub const MASK: &str = "******";
