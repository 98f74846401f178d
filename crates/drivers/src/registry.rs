//! Hardware types, the interfaces they support, and the choice of
//! implementation for one node.

use crate::agent_client::AgentClient;
use crate::anaconda::{Anaconda, AnacondaDeploy, AnacondaOptions};
use crate::direct::{DirectDeploy, DirectOptions};
use crate::fake::{FakeBoot, FakeDeploy, FakeInspect, FakeManagement, FakePower};
use crate::image_cache::ImageCache;
use crate::interfaces::*;
use crate::ipmi::{IpmiManagement, IpmiOptions, IpmiPower, IpmiTool};
use crate::ipxe::{IpxeBoot, Loader, PxeOptions};
use crate::ramdisk_deploy::RamdiskDeploy;
use crate::redfish::{RedfishClient, RedfishManagement, RedfishOptions, RedfishPower};
use crate::redfish_vmedia::RedfishVirtualMediaBoot;
use crate::DriverError;
use ferric_types::{Node, Port, INTERFACE_NAMES};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A hardware type: for each interface, the implementations it supports;
/// the first one is the default.
#[derive(Debug, Clone)]
pub struct HardwareType {
    pub name: &'static str,
    pub interfaces: BTreeMap<&'static str, Vec<&'static str>>,
}

impl HardwareType {
    /// Implementations of `interface` this hardware type supports.
    pub fn supported(&self, interface: &str) -> &[&'static str] {
        self.interfaces
            .get(interface)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The default implementation of `interface`.
    pub fn default_for(&self, interface: &str) -> Option<&'static str> {
        self.supported(interface).first().copied()
    }

    fn fake_hardware() -> HardwareType {
        let interfaces = BTreeMap::from([
            ("bios", vec!["no-bios", "fake"]),
            ("boot", vec!["fake", "ipxe", "pxe"]),
            ("console", vec!["no-console", "fake"]),
            (
                "deploy",
                vec!["fake", "direct", "custom-agent", "ramdisk", "anaconda"],
            ),
            ("firmware", vec!["no-firmware", "fake"]),
            ("inspect", vec!["fake", "no-inspect"]),
            ("management", vec!["fake"]),
            ("network", vec!["noop", "flat"]),
            ("power", vec!["fake"]),
            ("raid", vec!["no-raid", "fake"]),
            ("rescue", vec!["no-rescue", "fake"]),
            ("storage", vec!["noop"]),
            ("vendor", vec!["no-vendor", "fake"]),
        ]);
        HardwareType {
            name: "fake-hardware",
            interfaces,
        }
    }

    /// Ironic's `ipmi`: power and management through ipmitool, network
    /// boot through iPXE; the deploy interface defaults to `direct`, as in
    /// Ironic.
    fn ipmi() -> HardwareType {
        let interfaces = BTreeMap::from([
            ("bios", vec!["no-bios"]),
            ("boot", vec!["ipxe", "pxe", "fake"]),
            ("console", vec!["no-console"]),
            (
                "deploy",
                vec!["direct", "custom-agent", "ramdisk", "anaconda", "fake"],
            ),
            ("firmware", vec!["no-firmware"]),
            ("inspect", vec!["no-inspect"]),
            ("management", vec!["ipmitool"]),
            ("network", vec!["noop", "flat"]),
            ("power", vec!["ipmitool"]),
            ("raid", vec!["no-raid"]),
            ("rescue", vec!["no-rescue"]),
            ("storage", vec!["noop"]),
            ("vendor", vec!["no-vendor"]),
        ]);
        HardwareType {
            name: "ipmi",
            interfaces,
        }
    }

    /// Ironic's `redfish`: power and management over the Redfish API,
    /// network boot through iPXE or boot from virtual media; deploy
    /// `direct` by default.
    fn redfish() -> HardwareType {
        let interfaces = BTreeMap::from([
            ("bios", vec!["no-bios"]),
            ("boot", vec!["ipxe", "pxe", "redfish-virtual-media", "fake"]),
            ("console", vec!["no-console"]),
            (
                "deploy",
                vec!["direct", "custom-agent", "ramdisk", "anaconda", "fake"],
            ),
            ("firmware", vec!["no-firmware"]),
            ("inspect", vec!["no-inspect"]),
            ("management", vec!["redfish"]),
            ("network", vec!["noop", "flat"]),
            ("power", vec!["redfish"]),
            ("raid", vec!["no-raid"]),
            ("rescue", vec!["no-rescue"]),
            ("storage", vec!["noop"]),
            ("vendor", vec!["no-vendor"]),
        ]);
        HardwareType {
            name: "redfish",
            interfaces,
        }
    }
}

/// The result of validating one interface of a node, as
/// `GET /v1/nodes/{node}/validate` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InterfaceValidation {
    /// None when the interface is not supported (`no-*`).
    pub result: Option<bool>,
    pub reason: Option<String>,
}

/// The interfaces of one node.
#[derive(Clone)]
pub struct NodeDriver {
    pub hardware_type: &'static str,
    /// Chosen implementation per interface name.
    pub implementations: BTreeMap<&'static str, String>,
    pub power: Arc<dyn PowerInterface>,
    pub management: Arc<dyn ManagementInterface>,
    pub boot: Arc<dyn BootInterface>,
    pub deploy: Arc<dyn DeployInterface>,
    /// None for `no-inspect`.
    pub inspect: Option<Arc<dyn InspectInterface>>,
    /// The node's ports, which the conductor loads before it works on the
    /// node (boot interfaces need their MAC addresses).
    pub ports: Vec<Port>,
}

impl NodeDriver {
    /// What the boot interface's calls take.
    pub fn boot_context(&self) -> BootContext<'_> {
        BootContext {
            management: self.management.as_ref(),
            ports: &self.ports,
        }
    }

    /// What the deploy interface's steps take.
    pub fn step_context(&self) -> StepContext<'_> {
        StepContext {
            power: self.power.as_ref(),
            management: self.management.as_ref(),
            boot: self.boot.as_ref(),
            ports: &self.ports,
        }
    }

    /// Validates every interface, as Ironic's validate call does.
    pub fn validate(&self, node: &Node) -> BTreeMap<&'static str, InterfaceValidation> {
        let check = |r: Result<(), DriverError>| match r {
            Ok(()) => InterfaceValidation {
                result: Some(true),
                reason: None,
            },
            Err(e) => InterfaceValidation {
                result: Some(false),
                reason: Some(e.to_string()),
            },
        };
        let mut out = BTreeMap::new();
        for (&iface, implementation) in &self.implementations {
            let result = match iface {
                "power" => check(self.power.validate(node)),
                "management" => check(self.management.validate(node)),
                "boot" => check(self.boot.validate(node)),
                "deploy" => check(self.deploy.validate(node)),
                "inspect" => match &self.inspect {
                    Some(i) => check(i.validate(node)),
                    None => unsupported(implementation),
                },
                _ if implementation.starts_with("no-") => unsupported(implementation),
                _ => InterfaceValidation {
                    result: Some(true),
                    reason: None,
                },
            };
            out.insert(iface, result);
        }
        out
    }
}

fn unsupported(implementation: &str) -> InterfaceValidation {
    InterfaceValidation {
        result: None,
        reason: Some(format!("not supported ({implementation})")),
    }
}

/// Every enabled hardware type and the shared implementation objects.
pub struct DriverRegistry {
    hardware_types: Vec<HardwareType>,
    fake_power: Arc<FakePower>,
    fake_management: Arc<FakeManagement>,
    ipmi_power: Arc<IpmiPower>,
    ipmi_management: Arc<IpmiManagement>,
    redfish_power: Arc<RedfishPower>,
    redfish_management: Arc<RedfishManagement>,
    redfish_client: Arc<RedfishClient>,
    ipxe: Arc<IpxeBoot>,
    pxe: Arc<IpxeBoot>,
    /// Where the virtual media boot interface keeps its ISOs.
    vmedia_dir: Option<PathBuf>,
    vmedia: Arc<RedfishVirtualMediaBoot>,
    agent: AgentClient,
    direct: Arc<DirectOptions>,
    anaconda_options: AnacondaOptions,
    anaconda: Arc<Anaconda>,
}

impl DriverRegistry {
    /// The hardware types Ferric knows.
    pub fn known_hardware_types() -> Vec<HardwareType> {
        vec![
            HardwareType::fake_hardware(),
            HardwareType::ipmi(),
            HardwareType::redfish(),
        ]
    }

    /// A registry with the named hardware types enabled; `direct` is how
    /// the direct deploy interface handles images. The ipmitool interfaces
    /// use [`IpmiOptions::default`] until [`Self::with_ipmi_options`].
    pub fn new(enabled: &[String], direct: DirectOptions) -> Result<DriverRegistry, DriverError> {
        let known = Self::known_hardware_types();
        let mut hardware_types = Vec::new();
        for name in enabled {
            let hw = known.iter().find(|h| h.name == name).ok_or_else(|| {
                DriverError::InvalidParameter(format!(
                    "unknown hardware type {name}; known: {}",
                    known.iter().map(|h| h.name).collect::<Vec<_>>().join(", ")
                ))
            })?;
            hardware_types.push(hw.clone());
        }
        let ipmi = Arc::new(IpmiTool::new(IpmiOptions::default()));
        let redfish = Arc::new(RedfishClient::new(RedfishOptions::default()));
        Ok(DriverRegistry {
            hardware_types,
            fake_power: Arc::default(),
            fake_management: Arc::default(),
            ipmi_power: Arc::new(IpmiPower::new(ipmi.clone())),
            ipmi_management: Arc::new(IpmiManagement::new(ipmi)),
            redfish_power: Arc::new(RedfishPower::new(redfish.clone())),
            redfish_management: Arc::new(RedfishManagement::new(redfish.clone())),
            vmedia: Arc::new(RedfishVirtualMediaBoot::new(
                redfish.clone(),
                PxeOptions::default(),
                None,
            )),
            redfish_client: redfish,
            ipxe: Arc::new(IpxeBoot::new(PxeOptions::default())?),
            pxe: Arc::new(IpxeBoot::with_loader(
                PxeOptions::default(),
                Loader::Pxelinux,
            )?),
            vmedia_dir: None,
            agent: AgentClient::default(),
            anaconda: Arc::new(Anaconda::new(
                AnacondaOptions::default(),
                PxeOptions::default(),
                direct.image_cache.as_ref().map(|c| c.config().clone()),
            )?),
            anaconda_options: AnacondaOptions::default(),
            direct: Arc::new(direct),
        })
    }

    /// How the ipmitool interfaces reach BMCs (Ironic's `[ipmi]` options).
    pub fn with_ipmi_options(mut self, options: IpmiOptions) -> DriverRegistry {
        let tool = Arc::new(IpmiTool::new(options));
        self.ipmi_power = Arc::new(IpmiPower::new(tool.clone()));
        self.ipmi_management = Arc::new(IpmiManagement::new(tool));
        self
    }

    /// How the redfish interfaces talk to BMCs (Ironic's `[redfish]`).
    pub fn with_redfish_options(mut self, options: RedfishOptions) -> DriverRegistry {
        let client = Arc::new(RedfishClient::new(options));
        self.redfish_power = Arc::new(RedfishPower::new(client.clone()));
        self.redfish_management = Arc::new(RedfishManagement::new(client.clone()));
        self.redfish_client = client;
        self.rebuild_vmedia();
        self
    }

    /// Where the redfish-virtual-media boot interface builds and serves
    /// its ISOs (created, private to ferricd's user); without one it
    /// refuses to prepare nodes.
    pub fn with_virtual_media_dir(mut self, dir: PathBuf) -> DriverRegistry {
        self.vmedia_dir = Some(dir);
        self.rebuild_vmedia();
        self
    }

    /// The redfish-virtual-media boot interface, whose ISOs ferricd serves.
    pub fn redfish_vmedia(&self) -> &RedfishVirtualMediaBoot {
        &self.vmedia
    }

    /// The virtual media interface shares the redfish client and the
    /// `[conductor.pxe]` options: made again when either changes.
    fn rebuild_vmedia(&mut self) {
        self.vmedia = Arc::new(RedfishVirtualMediaBoot::new(
            self.redfish_client.clone(),
            self.ipxe.options().clone(),
            self.vmedia_dir.clone(),
        ));
    }

    /// How the ipxe boot interface boots nodes (Ironic's `[pxe]` options);
    /// refused when they are inconsistent or the template does not compile.
    pub fn with_pxe_options(mut self, options: PxeOptions) -> Result<DriverRegistry, DriverError> {
        self.pxe = Arc::new(IpxeBoot::with_loader(options.clone(), Loader::Pxelinux)?);
        self.ipxe = Arc::new(IpxeBoot::new(options)?);
        self.rebuild_vmedia();
        self.rebuild_anaconda()
    }

    /// How the anaconda deploy interface installs nodes (`[conductor.anaconda]`);
    /// refused when the default template cannot be read or compiled.
    pub fn with_anaconda_options(
        mut self,
        options: AnacondaOptions,
    ) -> Result<DriverRegistry, DriverError> {
        self.anaconda_options = options;
        self.rebuild_anaconda()
    }

    /// The anaconda deploy shares the `[conductor.pxe]` options and the
    /// `file://` policy: made again when they change.
    fn rebuild_anaconda(mut self) -> Result<DriverRegistry, DriverError> {
        self.anaconda = Arc::new(Anaconda::new(
            self.anaconda_options.clone(),
            self.ipxe.options().clone(),
            self.direct.image_cache.as_ref().map(|c| c.config().clone()),
        )?);
        Ok(self)
    }

    /// The anaconda deploy, which renders the kickstarts ferricd serves.
    pub fn anaconda(&self) -> &Anaconda {
        &self.anaconda
    }

    /// The ipxe boot interface, which also renders the boot scripts
    /// ferricd serves.
    pub fn ipxe(&self) -> &IpxeBoot {
        &self.ipxe
    }

    /// The pxe boot interface, which renders PXELINUX configurations.
    pub fn pxe(&self) -> &IpxeBoot {
        &self.pxe
    }

    /// The image cache of `image_download_source=local`, if configured.
    pub fn image_cache(&self) -> Option<&ImageCache> {
        self.direct.image_cache.as_ref()
    }

    pub fn hardware_types(&self) -> &[HardwareType] {
        &self.hardware_types
    }

    pub fn hardware_type(&self, name: &str) -> Option<&HardwareType> {
        self.hardware_types.iter().find(|h| h.name == name)
    }

    fn require_hardware_type(&self, name: &str) -> Result<&HardwareType, DriverError> {
        self.hardware_type(name).ok_or_else(|| {
            DriverError::InvalidParameter(format!(
                "Could not find the following driver(s) or hardware type(s): {name}."
            ))
        })
    }

    /// Checks the node's hardware type and each `<iface>_interface` it
    /// names, and fills the empty ones with the hardware type's defaults.
    pub fn resolve_interfaces(&self, node: &mut Node) -> Result<(), DriverError> {
        let hw = self.require_hardware_type(&node.driver)?;
        for &iface in INTERFACE_NAMES {
            match node.interface(iface).map(str::to_string) {
                Some(chosen) => {
                    if !hw.supported(iface).contains(&chosen.as_str()) {
                        return Err(DriverError::InvalidParameter(format!(
                            "Could not find a suitable implementation of the {iface} interface \
                             \"{chosen}\" for hardware type {}; supported: {}",
                            hw.name,
                            hw.supported(iface).join(", ")
                        )));
                    }
                }
                None => {
                    node.set_interface(iface, hw.default_for(iface).map(str::to_string));
                }
            }
        }
        Ok(())
    }

    /// The interface objects for a node whose interfaces are resolved.
    pub fn node_driver(&self, node: &Node) -> Result<NodeDriver, DriverError> {
        let hw = self.require_hardware_type(&node.driver)?;
        let mut implementations = BTreeMap::new();
        for &iface in INTERFACE_NAMES {
            let chosen = node
                .interface(iface)
                .or_else(|| hw.default_for(iface))
                .unwrap_or("none");
            implementations.insert(iface, chosen.to_string());
        }
        let inspect: Option<Arc<dyn InspectInterface>> = match implementations["inspect"].as_str() {
            "fake" => Some(Arc::new(FakeInspect)),
            _ => None,
        };
        let deploy: Arc<dyn DeployInterface> = match implementations["deploy"].as_str() {
            "direct" => Arc::new(DirectDeploy::new(self.agent.clone(), self.direct.clone())),
            "custom-agent" => Arc::new(DirectDeploy::custom_agent(
                self.agent.clone(),
                self.direct.clone(),
            )),
            "ramdisk" => Arc::new(RamdiskDeploy::new(DirectDeploy::new(
                self.agent.clone(),
                self.direct.clone(),
            ))),
            "anaconda" => Arc::new(AnacondaDeploy::new(
                self.anaconda.clone(),
                DirectDeploy::new(self.agent.clone(), self.direct.clone()),
            )),
            _ => Arc::new(FakeDeploy),
        };
        let power: Arc<dyn PowerInterface> = match implementations["power"].as_str() {
            "ipmitool" => self.ipmi_power.clone(),
            "redfish" => self.redfish_power.clone(),
            _ => self.fake_power.clone(),
        };
        let management: Arc<dyn ManagementInterface> = match implementations["management"].as_str()
        {
            "ipmitool" => self.ipmi_management.clone(),
            "redfish" => self.redfish_management.clone(),
            _ => self.fake_management.clone(),
        };
        let boot: Arc<dyn BootInterface> = match implementations["boot"].as_str() {
            "ipxe" => self.ipxe.clone(),
            "pxe" => self.pxe.clone(),
            "redfish-virtual-media" => self.vmedia.clone(),
            _ => Arc::new(FakeBoot),
        };
        Ok(NodeDriver {
            hardware_type: hw.name,
            implementations,
            power,
            management,
            boot,
            deploy,
            inspect,
            ports: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_types::ProvisionState;

    fn registry() -> DriverRegistry {
        DriverRegistry::new(&["fake-hardware".to_string()], DirectOptions::default()).unwrap()
    }

    #[test]
    fn defaults_fill_empty_interfaces() {
        let mut node = Node::new(
            uuid::Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::Enroll,
        );
        registry().resolve_interfaces(&mut node).unwrap();
        assert_eq!(node.power_interface.as_deref(), Some("fake"));
        assert_eq!(node.rescue_interface.as_deref(), Some("no-rescue"));
        assert_eq!(node.inspect_interface.as_deref(), Some("fake"));
    }

    #[test]
    fn unsupported_interface_and_unknown_driver_are_refused() {
        let mut node = Node::new(
            uuid::Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::Enroll,
        );
        node.deploy_interface = Some("ansible".into());
        let err = registry().resolve_interfaces(&mut node).unwrap_err();
        assert!(
            err.to_string().contains("deploy interface \"ansible\""),
            "{err}"
        );
        let mut node = Node::new(uuid::Uuid::new_v4(), "no-such", ProvisionState::Enroll);
        assert!(registry().resolve_interfaces(&mut node).is_err());
        assert!(DriverRegistry::new(&["no-such".to_string()], DirectOptions::default()).is_err());
    }

    #[test]
    fn ipmi_nodes_get_the_ipmitool_interfaces() {
        let reg = DriverRegistry::new(
            &["fake-hardware".to_string(), "ipmi".to_string()],
            DirectOptions::default(),
        )
        .unwrap();
        let mut node = Node::new(uuid::Uuid::new_v4(), "ipmi", ProvisionState::Enroll);
        reg.resolve_interfaces(&mut node).unwrap();
        assert_eq!(node.power_interface.as_deref(), Some("ipmitool"));
        assert_eq!(node.management_interface.as_deref(), Some("ipmitool"));
        assert_eq!(node.deploy_interface.as_deref(), Some("direct"));
        assert_eq!(node.boot_interface.as_deref(), Some("ipxe"));
        let driver = reg.node_driver(&node).unwrap();
        let checks = driver.validate(&node);
        assert_eq!(checks["power"].result, Some(false));
        assert!(checks["power"]
            .reason
            .as_deref()
            .unwrap()
            .contains("ipmi_address"));
        node.driver_info
            .insert("ipmi_address".into(), serde_json::json!("192.0.2.1"));
        let checks = driver.validate(&node);
        assert_eq!(checks["power"].result, Some(true));
        assert_eq!(checks["management"].result, Some(true));
        assert!(driver.power.supports_soft_power());

        // fake-hardware nodes keep the fake interfaces; ipmitool is not theirs.
        let mut fake = Node::new(
            uuid::Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::Enroll,
        );
        fake.power_interface = Some("ipmitool".into());
        assert!(reg.resolve_interfaces(&mut fake).is_err());
    }

    #[test]
    fn redfish_nodes_get_the_redfish_interfaces() {
        let reg = DriverRegistry::new(&["redfish".to_string()], DirectOptions::default()).unwrap();
        let mut node = Node::new(uuid::Uuid::new_v4(), "redfish", ProvisionState::Enroll);
        reg.resolve_interfaces(&mut node).unwrap();
        assert_eq!(node.power_interface.as_deref(), Some("redfish"));
        assert_eq!(node.management_interface.as_deref(), Some("redfish"));
        assert_eq!(node.boot_interface.as_deref(), Some("ipxe"));
        let driver = reg.node_driver(&node).unwrap();
        let checks = driver.validate(&node);
        assert_eq!(checks["power"].result, Some(false));
        node.driver_info.insert(
            "redfish_address".into(),
            serde_json::json!("https://192.0.2.1"),
        );
        assert_eq!(driver.validate(&node)["power"].result, Some(true));

        // Virtual media boot, once asked for; without a server URL, deploy
        // files and an ISO directory it says why not.
        node.boot_interface = Some("redfish-virtual-media".into());
        reg.resolve_interfaces(&mut node).unwrap();
        let boot = &reg.node_driver(&node).unwrap().validate(&node)["boot"];
        assert_eq!(boot.result, Some(false));
        assert!(
            boot.reason.as_deref().unwrap().contains("directory"),
            "{boot:?}"
        );
        let reg = reg.with_virtual_media_dir(PathBuf::from("/nonexistent/vmedia"));
        let boot = &reg.node_driver(&node).unwrap().validate(&node)["boot"];
        assert!(
            boot.reason.as_deref().unwrap().contains("http_url"),
            "{boot:?}"
        );
        let mut ipmi = Node::new(uuid::Uuid::new_v4(), "ipmi", ProvisionState::Enroll);
        ipmi.boot_interface = Some("redfish-virtual-media".into());
        let all = DriverRegistry::new(
            &["ipmi".to_string(), "redfish".to_string()],
            DirectOptions::default(),
        )
        .unwrap();
        assert!(all.resolve_interfaces(&mut ipmi).is_err());
    }

    #[test]
    fn validation_reports_failures_and_unsupported_interfaces() {
        let reg = registry();
        let mut node = Node::new(
            uuid::Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::Enroll,
        );
        reg.resolve_interfaces(&mut node).unwrap();
        let driver = reg.node_driver(&node).unwrap();
        let ok = driver.validate(&node);
        assert_eq!(ok["power"].result, Some(true));
        assert_eq!(ok["rescue"].result, None);
        node.driver_info
            .insert("fake_fail".into(), serde_json::json!(["validate"]));
        let bad = driver.validate(&node);
        assert_eq!(bad["power"].result, Some(false));
        assert!(bad["deploy"]
            .reason
            .as_deref()
            .unwrap()
            .contains("fake_fail"));
    }
}
