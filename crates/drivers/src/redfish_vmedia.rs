//! The `redfish-virtual-media` boot interface (Ironic's name): the deploy
//! ramdisk boots from an ISO that the node's BMC inserts into its virtual
//! CD drive, so neither DHCP nor PXE is needed.
//!
//! As in Ironic:
//! - `prepare_ramdisk` makes a fresh agent token and marks it pregenerated:
//!   the agent reads it from its kernel command line (`ipa-agent-token`),
//!   lookups only answer `******`, and power actions keep it (see the
//!   conductor's `agent.rs`). It ejects whatever the BMC has inserted,
//!   builds an ISO of the deploy kernel and ramdisk with the node's kernel
//!   parameters, `ipa-api-url` and the token ([`ferric_image::bootiso`]),
//!   inserts it and sets the boot device to the CD once.
//! - `clean_up_ramdisk`, `prepare_instance` and `clean_up_instance` eject
//!   the media and delete the ISO. Booting the disk afterwards is the
//!   deploy interface's (`direct` sets it in prepare_instance_boot).
//!
//! The ISO holds the agent token, so its URL is a capability:
//! `{http_url}/boot/vmedia/{name}.iso` where `name` is 128 random bits in
//! hex, kept in the node's driver_internal_info under a key the API masks
//! (it contains "secret"). ISOs live in a directory only ferricd's user
//! can read, and neither the token nor the name is logged, nor put in
//! error messages.
//!
//! The deploy kernel and ramdisk are the server's (`[conductor.pxe]
//! deploy_kernel` and `deploy_ramdisk`): the ISO is built here. A node whose
//! driver_info names its own (URLs, for iPXE) is refused with the reason,
//! rather than downloading them on every deploy.
//!
//! One conductor builds and serves a node's ISO: with several ferricd
//! sharing a database, `http_url` must reach the conductor that prepared
//! the node.

use crate::interfaces::*;
use crate::ipmi::BootMode;
use crate::ipxe::PxeOptions;
use crate::redfish::{RedfishClient, VirtualMediaDevice};
use crate::DriverError;
use async_trait::async_trait;
use base64::Engine;
use ferric_image::bootiso::{self, IsoOptions};
use ferric_types::kernel_params::{self, BootLoader};
use ferric_types::Node;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where ferricd serves the ISOs.
pub const VMEDIA_PATH: &str = "/boot/vmedia";

/// The name of the node's ISO; "secret" makes the API mask it.
const ISO_KEY: &str = "redfish_vmedia_iso_secret";
/// The conductor's keys for the agent token (crates/conductor/src/agent.rs).
const TOKEN_KEY: &str = "agent_secret_token";
const TOKEN_PREGENERATED_KEY: &str = "agent_secret_token_pregenerated";

/// What error messages show instead of an ISO's name.
const HIDDEN: &str = "<secret>";

/// An ISO file name as ferricd makes them: 32 lower-case hex digits and
/// ".iso". Anything else is not one of ours.
pub fn is_iso_file_name(name: &str) -> bool {
    name.strip_suffix(".iso").is_some_and(|stem| {
        stem.len() == 32
            && stem
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// 128 random bits in hex: the ISO's name, unguessable.
fn new_iso_name() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 random bytes, URL-safe base64, as the conductor's lookup makes them
/// (Ironic's `secrets.token_urlsafe(32)`).
pub(crate) fn new_agent_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn invalid(message: String) -> DriverError {
    DriverError::InvalidParameter(message)
}

/// `error` with every occurrence of `secret` hidden.
fn hide(error: DriverError, secret: &str) -> DriverError {
    let clean = |text: String| text.replace(secret, HIDDEN);
    match error {
        DriverError::InvalidParameter(m) => DriverError::InvalidParameter(clean(m)),
        DriverError::Unsupported(m) => DriverError::Unsupported(clean(m)),
        DriverError::Failed(m) => DriverError::Failed(clean(m)),
        DriverError::Timeout { operation, timeout } => DriverError::Timeout {
            operation: clean(operation),
            timeout,
        },
    }
}

/// The `redfish-virtual-media` boot interface.
pub struct RedfishVirtualMediaBoot {
    client: Arc<RedfishClient>,
    options: PxeOptions,
    /// Where ISOs are built and served from; none: the interface refuses.
    dir: Option<PathBuf>,
}

impl RedfishVirtualMediaBoot {
    /// `options` are the ipxe interface's `[conductor.pxe]` (http_url,
    /// api_url, deploy files, kernel_append_params); `dir` holds the ISOs.
    pub fn new(
        client: Arc<RedfishClient>,
        options: PxeOptions,
        dir: Option<PathBuf>,
    ) -> RedfishVirtualMediaBoot {
        RedfishVirtualMediaBoot {
            client,
            options,
            dir,
        }
    }

    /// The file of a served ISO, if `name` is one of ours (whether it
    /// exists is the caller's to find out).
    pub fn iso_file(&self, name: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        is_iso_file_name(name).then(|| dir.join(name))
    }

    fn dir(&self) -> Result<&Path, DriverError> {
        self.dir.as_deref().ok_or_else(|| {
            invalid(
                "the redfish-virtual-media boot interface has no directory for its ISOs \
                 (the conductor's image_cache_dir)"
                    .into(),
            )
        })
    }

    /// The server's deploy kernel or ramdisk (`key` is `deploy_kernel` or
    /// `deploy_ramdisk`), which must exist.
    fn deploy_file(&self, node: &Node, key: &str) -> Result<&Path, DriverError> {
        if node.driver_info.get(key).is_some_and(|v| !v.is_null()) {
            return Err(invalid(format!(
                "driver_info {key} is not supported by the redfish-virtual-media boot interface: \
                 its ISO is built from files on the server; remove it and set [conductor.pxe] \
                 {key}"
            )));
        }
        let configured = match key {
            "deploy_kernel" => &self.options.deploy_kernel,
            _ => &self.options.deploy_ramdisk,
        };
        let path = configured.as_deref().ok_or_else(|| {
            invalid(format!(
                "no deploy {}: set [conductor.pxe] {key} to a file on the server",
                key.trim_start_matches("deploy_")
            ))
        })?;
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => Ok(path),
            Ok(_) => Err(invalid(format!(
                "[conductor.pxe] {key} {} is not a file",
                path.display()
            ))),
            Err(e) => Err(invalid(format!(
                "[conductor.pxe] {key} {} cannot be read: {e}",
                path.display()
            ))),
        }
    }

    fn boot_mode(&self, node: &Node) -> Result<BootMode, DriverError> {
        BootMode::of_node(node, self.client.options().default_boot_mode)
    }

    /// The kernel command line of the node's ISO.
    fn kernel_command_line(&self, node: &Node, token: &str) -> Result<String, DriverError> {
        let params = format!(
            "{} ipa-api-url={} ipa-agent-token={token}",
            self.options.append_params(node, BootLoader::Quoted)?,
            self.options.api_url()?
        );
        let params = params.trim().to_string();
        kernel_params::validate(&params, BootLoader::Quoted)
            .map_err(|e| invalid(format!("the deploy ramdisk's kernel parameters: {e}")))?;
        Ok(params)
    }

    /// Builds the node's ISO of the deploy kernel and ramdisk.
    async fn build_iso(&self, node: &Node, name: &str, append: String) -> Result<u64, DriverError> {
        let kernel = self.deploy_file(node, "deploy_kernel")?.to_path_buf();
        let initrd = self.deploy_file(node, "deploy_ramdisk")?.to_path_buf();
        self.build_iso_of(node, name, kernel, initrd, append).await
    }

    /// Builds an ISO of `kernel` and `initrd` as `{dir}/{name}.iso`,
    /// private to this user, on a blocking thread.
    async fn build_iso_of(
        &self,
        node: &Node,
        name: &str,
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    ) -> Result<u64, DriverError> {
        let dir = self.dir()?.to_path_buf();
        let options = IsoOptions {
            kernel,
            initrd,
            output: dir.join(format!(".tmp-{name}.iso")),
            append,
            uefi: self.boot_mode(node)? == BootMode::Uefi,
        };
        let done = dir.join(format!("{name}.iso"));
        let built = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            create_private_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let result = bootiso::build_iso(&options)
                .map_err(|e| error_chain(&e))
                .and_then(|report| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(
                        &options.output,
                        std::fs::Permissions::from_mode(0o600),
                    )
                    .and_then(|()| std::fs::rename(&options.output, &done))
                    .map_err(|e| format!("storing the ISO in {}: {e}", dir.display()))
                    .map(|()| report.size)
                });
            if result.is_err() {
                let _ = std::fs::remove_file(&options.output);
            }
            result
        })
        .await
        .map_err(|e| DriverError::Failed(format!("building the virtual media ISO: {e}")))?;
        built.map_err(|e| {
            hide(
                DriverError::Failed(format!("building the virtual media ISO: {e}")),
                name,
            )
        })
    }

    /// The ramdisk deploy's instance from instance_info `kernel` and
    /// `ramdisk`: both downloaded (at most [`MAX_INSTANCE_FILE`] each) and
    /// built into an ISO with the server's kernel parameters and
    /// `ramdisk_kernel_arguments`, served at an unguessable URL like the
    /// deploy ISOs. Returns the ISO's name.
    async fn build_instance_iso(&self, node: &mut Node) -> Result<String, DriverError> {
        let text = |key: &str| {
            node.instance_info
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let (Some(kernel_url), Some(ramdisk_url)) = (text("kernel"), text("ramdisk")) else {
            return Err(invalid(
                "the ramdisk deploy over virtual media needs instance_info boot_iso, or kernel \
                 and ramdisk (http(s) URLs)"
                    .into(),
            ));
        };
        for (key, url) in [("kernel", &kernel_url), ("ramdisk", &ramdisk_url)] {
            crate::ipxe::check_url(url)
                .map_err(|e| invalid(format!("instance_info {key}: {e}")))?;
        }
        let arguments = text("ramdisk_kernel_arguments").unwrap_or_default();
        let append = format!(
            "{} {arguments}",
            self.options.append_params(node, BootLoader::Quoted)?
        )
        .trim()
        .to_string();
        kernel_params::validate(&append, BootLoader::Quoted)
            .map_err(|e| invalid(format!("the instance ramdisk's kernel parameters: {e}")))?;
        let dir = self.dir()?.to_path_buf();
        create_private_dir(&dir)
            .map_err(|e| DriverError::Failed(format!("creating {}: {e}", dir.display())))?;
        let name = new_iso_name();
        let kernel = dir.join(format!(".tmp-{name}.kernel"));
        let initrd = dir.join(format!(".tmp-{name}.initrd"));
        let built = async {
            download(&kernel_url, &kernel).await?;
            bootiso::check_kernel(&kernel)
                .map_err(|e| invalid(format!("instance_info kernel: {}", error_chain(&e))))?;
            download(&ramdisk_url, &initrd).await?;
            node.driver_internal_info
                .insert(ISO_KEY.into(), Value::String(name.clone()));
            self.build_iso_of(node, &name, kernel.clone(), initrd.clone(), append)
                .await
        }
        .await;
        let _ = std::fs::remove_file(&kernel);
        let _ = std::fs::remove_file(&initrd);
        let size = built?;
        tracing::info!(node = %node.uuid, size, "instance ramdisk ISO built");
        Ok(name)
    }

    /// Inserts the ISO this server built as `name` (its URL kept out of
    /// errors).
    async fn insert_own_iso(&self, node: &Node, name: &str) -> Result<(), DriverError> {
        let url = format!("{}{VMEDIA_PATH}/{name}.iso", self.options.http_url()?);
        self.client
            .insert_virtual_media(node, &url, VirtualMediaDevice::Cd)
            .await
            .map_err(|e| hide(e, name))?;
        Ok(())
    }

    /// Deletes the node's ISO, if it has one.
    async fn remove_iso(&self, node: &mut Node) -> Result<(), DriverError> {
        let Some(name) = node
            .driver_internal_info
            .remove(ISO_KEY)
            .and_then(|v| v.as_str().map(str::to_string))
        else {
            return Ok(());
        };
        let Some(path) = self.iso_file(&format!("{name}.iso")) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                tracing::info!(node = %node.uuid, "virtual media ISO deleted");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(hide(
                DriverError::Failed(format!(
                    "deleting the virtual media ISO {}: {e}",
                    path.display()
                )),
                &name,
            )),
        }
    }

    /// Ejects every virtual media of the node and deletes its ISO (even
    /// when the BMC fails to eject: the first error is returned).
    async fn eject_and_remove(&self, node: &mut Node) -> Result<(), DriverError> {
        let ejected = self.eject_all(node).await;
        let removed = self.remove_iso(node).await;
        ejected.and(removed)
    }

    /// Ejects every virtual media of the node; a BMC that echoes the
    /// node's ISO URL in its refusal does not get it into the message.
    async fn eject_all(&self, node: &Node) -> Result<(), DriverError> {
        let result = self.client.eject_virtual_media(node, None).await;
        match (result, node.driver_internal_info.get(ISO_KEY)) {
            (Err(e), Some(Value::String(name))) => Err(hide(e, name)),
            (result, _) => result.map(|_| ()),
        }
    }
}

/// The largest instance kernel or ramdisk downloaded for an ISO.
const MAX_INSTANCE_FILE: u64 = 2 << 30;

/// Downloads `url` into `dest` (created 0600), at most
/// [`MAX_INSTANCE_FILE`] bytes; messages show the URL without credentials.
async fn download(url: &str, dest: &Path) -> Result<(), DriverError> {
    use tokio::io::AsyncWriteExt;
    let shown = ferric_types::url::mask_credentials(url).into_owned();
    let failed = |why: String| DriverError::Failed(format!("downloading {shown}: {why}"));
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(crate::agent_client::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dest)
        .await
        .map_err(|e| failed(format!("{}: {e}", dest.display())))?;
    let mut total = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| failed(crate::agent_client::error_chain(&e)))?
    {
        total += chunk.len() as u64;
        if total > MAX_INSTANCE_FILE {
            return Err(failed(format!("larger than {MAX_INSTANCE_FILE} bytes")));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| failed(format!("{}: {e}", dest.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| failed(format!("{}: {e}", dest.display())))
}

/// Creates `dir` (and its parents) if needed, readable by this user only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[async_trait]
impl BootInterface for RedfishVirtualMediaBoot {
    /// Checks without talking to the BMC: its driver_info, where the ISO
    /// is served and built from, and the kernel parameters.
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        self.client.driver_info(node)?;
        self.dir()?;
        self.options.http_url()?;
        self.options.api_url()?;
        let kernel = self.deploy_file(node, "deploy_kernel")?;
        bootiso::check_kernel(kernel).map_err(|e| {
            invalid(format!(
                "[conductor.pxe] deploy_kernel: {}",
                error_chain(&e)
            ))
        })?;
        self.deploy_file(node, "deploy_ramdisk")?;
        // A command line with a token as long as a real one.
        self.kernel_command_line(node, &new_agent_token())?;
        let uefi = self.boot_mode(node)? == BootMode::Uefi;
        bootiso::check_boot_loaders(uefi)
            .map_err(|e| invalid(format!("virtual media ISOs cannot be built: {e}")))?;
        Ok(())
    }

    async fn prepare_ramdisk(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError> {
        self.validate(node)?;
        self.eject_all(node).await?;
        self.remove_iso(node).await?;

        let token = new_agent_token();
        let append = self.kernel_command_line(node, &token)?;
        node.driver_internal_info
            .insert(TOKEN_KEY.into(), Value::String(token));
        node.driver_internal_info
            .insert(TOKEN_PREGENERATED_KEY.into(), Value::Bool(true));
        let name = new_iso_name();
        // Recorded first: a failure from here on leaves nothing behind.
        node.driver_internal_info
            .insert(ISO_KEY.into(), Value::String(name.clone()));
        let size = self.build_iso(node, &name, append).await?;
        tracing::info!(node = %node.uuid, size, "virtual media ISO built");
        self.insert_own_iso(node, &name).await?;
        context
            .management
            .set_boot_device(node, BootDevice::Cdrom, false)
            .await
    }

    async fn clean_up_ramdisk(
        &self,
        node: &mut Node,
        _context: BootContext<'_>,
    ) -> Result<(), DriverError> {
        // The token stays: the agent still runs, and the conductor forgets
        // it when the operation ends.
        self.eject_and_remove(node).await
    }

    async fn prepare_instance(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError> {
        // Local boot: the deploy interface sets the disk as boot device.
        self.eject_and_remove(node).await?;
        if node.deploy_interface.as_deref() != Some("ramdisk") {
            return Ok(());
        }
        // The ramdisk deploy's instance is an ISO the BMC boots, for as
        // long as the node is deployed.
        let given = node
            .instance_info
            .get("boot_iso")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        match given {
            Some(iso) => {
                crate::ipxe::check_url(&iso)
                    .map_err(|e| invalid(format!("instance_info boot_iso: {e}")))?;
                self.client
                    .insert_virtual_media(node, &iso, VirtualMediaDevice::Cd)
                    .await?;
            }
            None => {
                let name = self.build_instance_iso(node).await?;
                self.insert_own_iso(node, &name).await?;
            }
        }
        context
            .management
            .set_boot_device(node, BootDevice::Cdrom, true)
            .await
    }

    async fn clean_up_instance(
        &self,
        node: &mut Node,
        _context: BootContext<'_>,
    ) -> Result<(), DriverError> {
        self.eject_and_remove(node).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redfish::RedfishOptions;
    use ferric_types::ProvisionState;
    use serde_json::json;

    fn kernel_file(dir: &Path) -> PathBuf {
        // Just enough of a bzImage setup header for check_kernel.
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        image[0x300..0x310].copy_from_slice(b"6.1.0-test-amd64");
        let path = dir.join("vmlinuz");
        std::fs::write(&path, image).unwrap();
        path
    }

    fn boot(dir: &Path) -> RedfishVirtualMediaBoot {
        let ramdisk = dir.join("initrd");
        std::fs::write(&ramdisk, b"ramdisk").unwrap();
        RedfishVirtualMediaBoot::new(
            Arc::new(RedfishClient::new(RedfishOptions::default())),
            PxeOptions {
                http_url: Some("http://10.0.0.1:6385/".into()),
                deploy_kernel: Some(kernel_file(dir)),
                deploy_ramdisk: Some(ramdisk),
                kernel_append_params: "console=ttyS0".into(),
                ..PxeOptions::default()
            },
            Some(dir.join("vmedia")),
        )
    }

    fn node() -> Node {
        let mut node = Node::new(uuid::Uuid::new_v4(), "redfish", ProvisionState::Deploying);
        node.driver_info
            .insert("redfish_address".into(), json!("http://127.0.0.1:1"));
        node
    }

    #[test]
    fn iso_names_are_random_hex_and_nothing_else_is_served() {
        let names: std::collections::BTreeSet<String> = (0..100).map(|_| new_iso_name()).collect();
        assert_eq!(names.len(), 100);
        for name in &names {
            assert!(is_iso_file_name(&format!("{name}.iso")), "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let boot = boot(dir.path());
        let name = format!("{}.iso", new_iso_name());
        assert_eq!(
            boot.iso_file(&name),
            Some(dir.path().join("vmedia").join(&name))
        );
        for bad in [
            "../vmedia/0123456789abcdef0123456789abcdef.iso".to_string(),
            "0123456789ABCDEF0123456789ABCDEF.iso".to_string(),
            "0123456789abcdef0123456789abcde.iso".to_string(),
            "0123456789abcdef0123456789abcdef".to_string(),
            ".tmp-0123456789abcdef0123456789abcdef.iso".to_string(),
            "0123456789abcdef0123456789abcdef.iso.tmp".to_string(),
            String::new(),
        ] {
            assert!(!is_iso_file_name(&bad), "{bad}");
            assert_eq!(boot.iso_file(&bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_are_long_url_safe_and_fresh() {
        let a = new_agent_token();
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, new_agent_token());
    }

    #[test]
    fn the_command_line_carries_the_api_url_and_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let boot = boot(dir.path());
        let mut node = node();
        let line = boot.kernel_command_line(&node, "tok-en_1").unwrap();
        assert_eq!(
            line,
            "console=ttyS0 ipa-api-url=http://10.0.0.1:6385 ipa-agent-token=tok-en_1"
        );
        node.driver_info.insert(
            "kernel_append_params".into(),
            json!("%default% ipa-debug=1"),
        );
        let line = boot.kernel_command_line(&node, "t").unwrap();
        assert!(
            line.starts_with("console=ttyS0 ipa-debug=1 ipa-api-url="),
            "{line}"
        );
    }

    #[test]
    fn validation_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let boot = boot(dir.path());
        let node = node();
        if bootiso::check_boot_loaders(true).is_ok() {
            boot.validate(&node).unwrap();
        }

        let mut no_bmc = node.clone();
        no_bmc.driver_info.remove("redfish_address");
        let err = boot.validate(&no_bmc).unwrap_err().to_string();
        assert!(err.contains("redfish_address"), "{err}");

        let mut url_files = node.clone();
        url_files
            .driver_info
            .insert("deploy_kernel".into(), json!("http://h/k"));
        let err = boot.validate(&url_files).unwrap_err().to_string();
        assert!(
            err.contains("driver_info deploy_kernel") && err.contains("[conductor.pxe]"),
            "{err}"
        );

        let mut quoted = node.clone();
        quoted
            .driver_info
            .insert("kernel_append_params".into(), json!("a=\"b c\""));
        let err = boot.validate(&quoted).unwrap_err().to_string();
        assert!(err.contains("kernel_append_params"), "{err}");

        std::fs::remove_file(dir.path().join("vmlinuz")).unwrap();
        let err = boot.validate(&node).unwrap_err().to_string();
        assert!(
            err.contains("deploy_kernel") && err.contains("cannot be read"),
            "{err}"
        );
        std::fs::write(dir.path().join("vmlinuz"), b"text").unwrap();
        let err = boot.validate(&node).unwrap_err().to_string();
        assert!(err.contains("not an x86 Linux kernel"), "{err}");

        let nowhere = RedfishVirtualMediaBoot::new(
            Arc::new(RedfishClient::new(RedfishOptions::default())),
            PxeOptions::default(),
            Some(dir.path().join("vmedia")),
        );
        let err = nowhere.validate(&node).unwrap_err().to_string();
        assert!(err.contains("http_url"), "{err}");
        let err = nowhere.deploy_file(&node, "deploy_ramdisk").unwrap_err();
        assert!(err.to_string().contains("no deploy ramdisk"), "{err}");
    }

    #[test]
    fn errors_never_show_the_iso_name() {
        let name = new_iso_name();
        let err = hide(
            DriverError::Failed(format!(
                "BMC could not insert http://h/boot/vmedia/{name}.iso: 404"
            )),
            &name,
        );
        assert!(!err.to_string().contains(&name), "{err}");
        assert!(err.to_string().contains("<secret>.iso"), "{err}");
    }

    #[tokio::test]
    async fn removing_the_iso_deletes_the_file_and_forgets_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let boot = boot(dir.path());
        let mut node = node();
        let name = new_iso_name();
        let path = dir.path().join("vmedia").join(format!("{name}.iso"));
        create_private_dir(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"iso").unwrap();
        node.driver_internal_info
            .insert(ISO_KEY.into(), json!(name));
        boot.remove_iso(&mut node).await.unwrap();
        assert!(!path.exists());
        assert!(!node.driver_internal_info.contains_key(ISO_KEY));
        // Nothing recorded, or a name that is not ours: nothing to delete.
        boot.remove_iso(&mut node).await.unwrap();
        node.driver_internal_info
            .insert(ISO_KEY.into(), json!("../../etc/passwd"));
        boot.remove_iso(&mut node).await.unwrap();
    }
}
