//! `image.install_bootloader` (IPA's `ImageExtension.install_bootloader`):
//! makes the written disk boot.
//!
//! - UEFI: the EFI system partition (by `efi_system_part_uuid`, else by its
//!   GPT type) is read (with mtools if the ramdisk has them, else mounted
//!   read-only), its boot loaders found (the loader a shim `BOOT*.CSV`
//!   names, else `bootx64.efi`, `grubaa64.efi`, ...), and a boot
//!   entry per loader is set with `efibootmgr` (replacing entries of the
//!   same label). Without `efibootmgr` in the ramdisk, as IPA, no entry is
//!   set and the firmware must find the loader by itself; the result says so.
//! - BIOS, whole-disk image (no root UUID, `0x00000000`, or the disk's own
//!   identifier): the image carries its boot loader; nothing to do.
//! - BIOS, partition image: `grub-install` in a chroot of the mounted root
//!   filesystem. That runs the image's programs as root inside the agent,
//!   so it is off unless enabled (IPA's `enable_bios_bootloader_install`,
//!   CVE-2026-43003).
//!
//! Every UUID given must name a partition of the disk (its GPT partition
//! GUID or its filesystem UUID): an unknown one is an error listing what
//! the disk has. PReP partitions (PowerPC) are not supported.

use crate::commands::CommandError;
use crate::deploy::partition_device;
use crate::download::chain;
use ferric_image::partition::{self, PartitionTable};
use ferric_image::writer::DiskWriter;
use serde_json::Value;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

/// GPT type GUID of an EFI system partition.
const EFI_SYSTEM_PARTITION: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// The root UUID IPA takes to mean "whole-disk image".
const NO_ROOT: &str = "0x00000000";
const TOOL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The boot loader files firmware starts (IPA's `BOOTLOADERS_EFI`); the
/// CSV files name shim's loader and its label.
const EFI_LOADERS: &[&str] = &[
    "bootx64.csv",
    "bootaa64.csv",
    "boot.csv",
    "bootia32.efi",
    "bootx64.efi",
    "bootia64.efi",
    "bootarm.efi",
    "bootaa64.efi",
    "bootriscv32.efi",
    "bootriscv64.efi",
    "bootriscv128.efi",
    "grubaa64.efi",
    "winload.efi",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    Bios,
    Uefi,
}

impl BootMode {
    /// How this machine booted: UEFI if the kernel shows EFI firmware.
    pub fn detect() -> BootMode {
        if Path::new("/sys/firmware/efi").exists() {
            BootMode::Uefi
        } else {
            BootMode::Bios
        }
    }

    fn name(self) -> &'static str {
        match self {
            BootMode::Bios => "bios",
            BootMode::Uefi => "uefi",
        }
    }
}

/// How boot loaders are installed.
#[derive(Debug, Clone)]
pub struct BootloaderOptions {
    /// Run `grub-install` in a chroot of a partition image's root
    /// filesystem. Default false: it runs the image's code as root in the
    /// agent (CVE-2026-43003).
    pub enable_bios_bootloader_install: bool,
    /// The machine's boot mode; `None` (default): detected.
    pub boot_mode: Option<BootMode>,
    /// The `efibootmgr` program: a path, or a name looked up in the usual
    /// system directories. Default `efibootmgr`.
    pub efibootmgr: PathBuf,
}

impl Default for BootloaderOptions {
    fn default() -> Self {
        BootloaderOptions {
            enable_bios_bootloader_install: false,
            boot_mode: None,
            efibootmgr: PathBuf::from("efibootmgr"),
        }
    }
}

/// The command's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub root_uuid: Option<String>,
    pub efi_system_part_uuid: Option<String>,
    pub target_boot_mode: Option<BootMode>,
    /// Report success even if installing failed (IPA's
    /// `ignore_bootloader_failure`).
    pub ignore_failure: bool,
}

fn valid_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok()
        || (text.len() == 10
            && text.starts_with("0x")
            && text[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        // vfat volume ids, as blkid prints them: ABCD-1234.
        || (text.len() == 9
            && text.as_bytes()[4] == b'-'
            && text.bytes().enumerate().all(|(i, b)| i == 4 || b.is_ascii_hexdigit()))
}

/// Checks the parameters (refused with 400 when wrong).
pub fn parse_request(params: &Value) -> Result<Request, CommandError> {
    fn invalid(details: impl Into<String>) -> CommandError {
        CommandError::invalid_params(details)
    }
    let Some(object) = params.as_object() else {
        return Err(invalid("install_bootloader takes an object of parameters"));
    };
    const KNOWN: &[&str] = &[
        "root_uuid",
        "efi_system_part_uuid",
        "prep_boot_part_uuid",
        "target_boot_mode",
        "ignore_bootloader_failure",
    ];
    if let Some(unknown) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(format!(
            "install_bootloader has no parameter {unknown:?}; it takes {}",
            KNOWN.join(", ")
        )));
    }
    let uuid = |key: &str| -> Result<Option<String>, CommandError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) if valid_uuid(s) => Ok(Some(s.to_ascii_lowercase())),
            Some(other) => Err(invalid(format!(
                "{key} must be a UUID (or an MBR disk signature 0xXXXXXXXX), not {other}"
            ))),
        }
    };
    if !object.contains_key("root_uuid") {
        return Err(invalid(
            "install_bootloader needs root_uuid (null for a whole-disk image)",
        ));
    }
    let root_uuid = uuid("root_uuid")?;
    let efi_system_part_uuid = uuid("efi_system_part_uuid")?;
    if uuid("prep_boot_part_uuid")?.is_some() {
        return Err(invalid(
            "prep_boot_part_uuid: PReP boot partitions (PowerPC) are not supported",
        ));
    }
    let target_boot_mode = match object.get("target_boot_mode") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "bios" => Some(BootMode::Bios),
        Some(Value::String(s)) if s == "uefi" => Some(BootMode::Uefi),
        Some(other) => {
            return Err(invalid(format!(
                "target_boot_mode must be \"bios\" or \"uefi\", not {other}"
            )))
        }
    };
    let ignore_failure = match object.get("ignore_bootloader_failure") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(format!(
                "ignore_bootloader_failure must be true or false, not {other}"
            )))
        }
    };
    Ok(Request {
        root_uuid,
        efi_system_part_uuid,
        target_boot_mode,
        ignore_failure,
    })
}

/// Why the boot loader could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    #[error("cannot read {device}")]
    Disk {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the partition table of {device}")]
    Table {
        device: String,
        #[source]
        source: ferric_image::Error,
    },
    #[error("{device} has no partition table; was an image written to it?")]
    NoTable { device: String },
    #[error("no partition of {device} has the {what} {uuid}; its partitions: {known}")]
    UnknownUuid {
        what: &'static str,
        uuid: String,
        device: String,
        known: String,
    },
    #[error("no EFI system partition on {device} and no efi_system_part_uuid given; is the image UEFI-capable?")]
    NoEsp { device: String },
    #[error("the EFI system partition {partition} holds no boot loader ({})", EFI_LOADERS.join(", "))]
    NoLoader { partition: String },
    #[error("{program} failed: {why}")]
    Tool { program: String, why: String },
    #[error("{0}")]
    Refused(String),
    #[error("cannot make a temporary mount point")]
    TempDir(#[source] std::io::Error),
}

impl BootloaderError {
    fn into_command_error(self) -> CommandError {
        match &self {
            BootloaderError::UnknownUuid { .. } | BootloaderError::NoEsp { .. } => {
                CommandError::new(
                    "DeviceNotFound",
                    "Error finding the disk or partition device to deploy the image onto",
                    chain(&self),
                )
                .with_code(404)
            }
            _ => CommandError::execution(chain(&self)),
        }
    }
}

/// A partition of the disk and what identifies it.
#[derive(Debug)]
struct Part {
    number: u32,
    device: String,
    part_uuid: Option<String>,
    fs_uuid: Option<String>,
    type_id: String,
}

impl Part {
    fn has(&self, uuid: &str) -> bool {
        [&self.part_uuid, &self.fs_uuid]
            .into_iter()
            .flatten()
            .any(|u| u.eq_ignore_ascii_case(uuid))
    }
}

/// Installs (or sets up) the boot loader of `device`. Blocking. The
/// answer says what was done.
pub fn install_bootloader(
    device: &str,
    request: &Request,
    options: &BootloaderOptions,
) -> Result<String, CommandError> {
    match install(device, request, options) {
        Ok(done) => Ok(done),
        Err(error) if request.ignore_failure => {
            let text = chain(&error);
            tracing::warn!(device, error = %text, "installing the boot loader failed; ignored as asked");
            Ok(format!(
                "installing the boot loader failed, ignored as asked: {text}"
            ))
        }
        Err(error) => Err(error.into_command_error()),
    }
}

fn install(
    device: &str,
    request: &Request,
    options: &BootloaderOptions,
) -> Result<String, BootloaderError> {
    let (table, parts) = partitions(device)?;
    let known = || {
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts
                .iter()
                .map(|p| {
                    format!(
                        "{} (partition UUID {}, filesystem UUID {})",
                        p.device,
                        p.part_uuid.as_deref().unwrap_or("none"),
                        p.fs_uuid.as_deref().unwrap_or("none")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let find = |what: &'static str, uuid: &str| {
        parts
            .iter()
            .find(|p| p.has(uuid))
            .ok_or_else(|| BootloaderError::UnknownUuid {
                what,
                uuid: uuid.to_owned(),
                device: device.to_owned(),
                known: known(),
            })
    };
    // A whole-disk image: no root UUID, IPA's zero one, or the disk's own.
    let root = match request.root_uuid.as_deref() {
        None | Some(NO_ROOT) => None,
        Some(uuid) if table.disk_id.eq_ignore_ascii_case(uuid) => None,
        Some(uuid) => Some(find("root UUID", uuid)?),
    };
    let esp = match &request.efi_system_part_uuid {
        Some(uuid) => Some(find("EFI system partition UUID", uuid)?),
        None => None,
    };

    let mode = options.boot_mode.unwrap_or_else(BootMode::detect);
    if let Some(target) = request.target_boot_mode.filter(|t| *t != mode) {
        tracing::warn!(
            target = target.name(),
            current = mode.name(),
            "boot mode mismatch: the boot loader may not work"
        );
    }
    match mode {
        BootMode::Uefi => {
            let esp = esp
                .or_else(|| parts.iter().find(|p| p.type_id == EFI_SYSTEM_PARTITION))
                .ok_or_else(|| BootloaderError::NoEsp {
                    device: device.to_owned(),
                })?;
            set_efi_entries(device, esp, options)
        }
        BootMode::Bios => match root {
            None => Ok(format!(
                "whole-disk image on {device}: its own boot loader is used; nothing installed"
            )),
            Some(_) if !options.enable_bios_bootloader_install => Err(BootloaderError::Refused(
                "installing a BIOS boot loader for a partition image (grub-install in a chroot of \
                 the image) is disabled: it runs the image's programs as root in the agent \
                 (CVE-2026-43003); enable it in the agent's configuration to allow it"
                    .to_owned(),
            )),
            Some(root) => grub_install(device, root),
        },
    }
}

/// The partition table, and the partitions with their filesystem UUIDs.
fn partitions(device: &str) -> Result<(PartitionTable, Vec<Part>), BootloaderError> {
    // The kernel must know the partitions written by the image (IPA
    // rescans too); devices without partition scanning refuse with EINVAL.
    if let Err(error) = DiskWriter::reread_partition_table(Path::new(device)) {
        tracing::debug!(device, %error, "the partition table was not re-read");
    }
    let disk_error = |source| BootloaderError::Disk {
        device: device.to_owned(),
        source,
    };
    let mut disk = File::open(device).map_err(disk_error)?;
    let size = disk.seek(SeekFrom::End(0)).map_err(disk_error)?;
    let table = partition::read_table(&mut disk, size)
        .map_err(|source| BootloaderError::Table {
            device: device.to_owned(),
            source,
        })?
        .ok_or_else(|| BootloaderError::NoTable {
            device: device.to_owned(),
        })?;
    let missing = |t: &PartitionTable| {
        t.partitions
            .iter()
            .any(|p| !Path::new(&partition_device(device, p.number)).exists())
    };
    if missing(&table) {
        // BLKRRPART leaves some devices (loop) without their partitions;
        // partx adds them one by one (BLKPG).
        if let Err(error) = tool("partx", &["-u", device]) {
            tracing::debug!(device, %error, "partx could not update the partitions");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while missing(&table) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let parts = table
        .partitions
        .iter()
        .map(|p| {
            let node = partition_device(device, p.number);
            Part {
                number: p.number,
                fs_uuid: filesystem_uuid(&node),
                device: node,
                part_uuid: p.uuid.clone(),
                type_id: p.type_id.to_ascii_lowercase(),
            }
        })
        .collect();
    Ok((table, parts))
}

/// The filesystem UUID blkid finds on `partition`, if any.
fn filesystem_uuid(partition: &str) -> Option<String> {
    if !Path::new(partition).exists() {
        return None;
    }
    let out = tool("blkid", &["-p", "-s", "UUID", "-o", "value", partition]).ok()?;
    let uuid = out.trim();
    (!uuid.is_empty()).then(|| uuid.to_owned())
}

/// Runs a program without a shell; its stdout, or an error with its stderr.
fn tool(program: &str, args: &[&str]) -> Result<String, BootloaderError> {
    tool_bytes(program, args).map(|out| String::from_utf8_lossy(&out).into_owned())
}

fn tool_bytes(program: &str, args: &[&str]) -> Result<Vec<u8>, BootloaderError> {
    let failed = |why: String| BootloaderError::Tool {
        program: program.to_owned(),
        why,
    };
    let out = Command::new(program)
        .args(args)
        .env("PATH", TOOL_PATH)
        .env("LC_ALL", "C")
        // mtools refuses FATs whose geometry looks odd to it otherwise.
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{} ({})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// `program` if it is a path, else where it is in the system directories.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    TOOL_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// An empty directory to mount on, removed when dropped (only if empty:
/// never the contents of a file system still mounted there).
struct MountPoint(PathBuf);

impl MountPoint {
    fn new() -> Result<MountPoint, BootloaderError> {
        let path = std::env::temp_dir().join(format!("ferric-mnt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&path).map_err(BootloaderError::TempDir)?;
        Ok(MountPoint(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A mount that is undone when dropped.
struct Mounted {
    target: PathBuf,
}

impl Mounted {
    fn new(source: &str, target: &Path, options: &[&str]) -> Result<Mounted, BootloaderError> {
        let target_text = target.to_string_lossy();
        let mut args: Vec<&str> = options.to_vec();
        args.push(source);
        args.push(&target_text);
        tool("mount", &args)?;
        Ok(Mounted {
            target: target.to_owned(),
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let target = self.target.to_string_lossy();
        if let Err(error) = tool("umount", &[&target]) {
            tracing::error!(%error, "cannot unmount {target}");
        }
    }
}

/// A file of an ESP (its path from the ESP's root) and, for shim CSVs,
/// its contents.
type EspFile = (String, Option<Vec<u8>>);

/// The files of an ESP, relative to its root, with the contents of the
/// shim CSVs among them. Read with mtools when the ramdisk has them (the
/// image's file system never reaches the kernel), else by mounting it
/// read-only.
fn esp_files(partition: &str) -> Result<Vec<EspFile>, BootloaderError> {
    let is_csv = |name: &str| name.to_ascii_lowercase().ends_with(".csv");
    if find_program(Path::new("mdir")).is_some() && find_program(Path::new("mcopy")).is_some() {
        let listing = tool("mdir", &["-/", "-b", "-i", partition, "::"])?;
        let mut files = Vec::new();
        for line in listing.lines() {
            let Some(path) = line.strip_prefix("::/").filter(|p| !p.ends_with('/')) else {
                continue;
            };
            let contents = if is_csv(path) {
                Some(tool_bytes(
                    "mcopy",
                    &["-n", "-i", partition, &format!("::/{path}"), "-"],
                )?)
            } else {
                None
            };
            files.push((path.to_owned(), contents));
        }
        return Ok(files);
    }
    let dir = MountPoint::new()?;
    let _mounted = Mounted::new(partition, dir.path(), &["-o", "ro"])?;
    let mut files = Vec::new();
    let mut dirs = vec![dir.path().to_owned()];
    while let Some(current) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(dir.path())
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let contents = if is_csv(&relative) {
                std::fs::read(&path).ok()
            } else {
                None
            };
            files.push((relative, contents));
        }
    }
    Ok(files)
}

/// The boot loaders among an ESP's files (IPA's `_get_efi_bootloaders`),
/// as (firmware path, label): the loader a shim CSV names, if there is a
/// CSV, else every known loader file.
fn efi_loaders(mut files: Vec<EspFile>) -> Vec<(String, String)> {
    files.sort();
    let known = |path: &str| {
        let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
        EFI_LOADERS.contains(&name.as_str())
    };
    let csv = files
        .iter()
        .filter(|(path, _)| known(path))
        .find_map(|(path, contents)| Some((path, read_csv(contents.as_deref()?)?)));
    if let Some((path, (file, label))) = csv {
        let folder = path.rsplit_once('/').map_or("", |(folder, _)| folder);
        let loader = if folder.is_empty() {
            file
        } else {
            format!("{folder}/{file}")
        };
        return vec![(efi_path(&loader), label)];
    }
    files
        .iter()
        .filter(|(path, _)| known(path) && !path.to_ascii_lowercase().ends_with(".csv"))
        .enumerate()
        .map(|(i, (path, _))| (efi_path(path), format!("ferric{}", i + 1)))
        .collect()
}

/// Reads a shim CSV (UTF-16): `loader,label,options,description`.
fn read_csv(bytes: &[u8]) -> Option<(String, String)> {
    let text = if bytes.len() >= 2 && (bytes[0] == 0xff || bytes.get(1) == Some(&0)) {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    };
    let text = text.trim_start_matches('\u{feff}');
    let mut fields = text.splitn(4, ',');
    let loader = fields.next()?.trim().to_owned();
    let label = fields.next()?.trim().to_owned();
    (!loader.is_empty() && !label.is_empty()).then_some((loader, label))
}

fn set_efi_entries(
    device: &str,
    esp: &Part,
    options: &BootloaderOptions,
) -> Result<String, BootloaderError> {
    let entries = efi_loaders(esp_files(&esp.device)?);
    if entries.is_empty() {
        return Err(BootloaderError::NoLoader {
            partition: esp.device.clone(),
        });
    }
    let loaders: Vec<String> = entries.iter().map(|(path, _)| path.clone()).collect();
    let Some(efibootmgr) = find_program(&options.efibootmgr) else {
        tracing::warn!("efibootmgr is not in the ramdisk; no EFI boot entry set");
        return Ok(format!(
            "found the EFI boot loader(s) {} on {}, but efibootmgr is not available: no boot \
             entry was set, the firmware must find the loader by itself",
            loaders.join(", "),
            esp.device
        ));
    };
    let program = efibootmgr.to_string_lossy().into_owned();
    let listing = tool(&program, &["-v"])?;
    let number = esp.number.to_string();
    for (path, label) in &entries {
        // Replace entries of the same label (from an earlier deployment).
        for line in listing.lines() {
            if let Some(num) = entry_with_label(line, label) {
                tool(&program, &["-b", num, "-B"])?;
            }
        }
        tracing::info!(device, partition = %number, loader = %path, label = %label, "adding an EFI boot entry");
        tool(
            &program,
            &[
                "-v", "-c", "-d", device, "-p", &number, "-w", "-L", label, "-l", path,
            ],
        )?;
    }
    Ok(format!(
        "EFI boot entries set for {} on {}",
        loaders.join(", "),
        esp.device
    ))
}

/// The number of an `efibootmgr -v` line (`Boot0003* label\tHD(...)`)
/// whose label is `label`.
fn entry_with_label<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let rest = line.strip_prefix("Boot")?;
    let (num, tail) = rest.split_at_checked(4)?;
    if !num.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tail = tail.strip_prefix('*').unwrap_or(tail).trim_start();
    let after = tail.strip_prefix(label)?;
    (after.is_empty() || after.starts_with(['\t', ' '])).then_some(num)
}

/// `EFI/BOOT/BOOTX64.EFI` as firmware spells it: `\EFI\BOOT\BOOTX64.EFI`.
fn efi_path(relative: &str) -> String {
    format!("\\{}", relative.trim_start_matches('/').replace('/', "\\"))
}

/// grub-install in a chroot of the image's root filesystem.
fn grub_install(device: &str, root: &Part) -> Result<String, BootloaderError> {
    let dir = MountPoint::new()?;
    let target = dir.path();
    let _root = Mounted::new(&root.device, target, &[])?;
    let mut binds = Vec::new();
    for fs in ["dev", "proc", "sys", "run"] {
        let inside = target.join(fs);
        if inside.is_dir() {
            binds.push(Mounted::new(&format!("/{fs}"), &inside, &["--bind"])?);
        }
    }
    let in_root = |names: &[&str]| {
        names.iter().find_map(|name| {
            ["usr/sbin", "usr/bin", "sbin", "bin"]
                .iter()
                .find(|dir| target.join(dir).join(name).is_file())
                .map(|_| (*name).to_owned())
        })
    };
    let Some(install) = in_root(&["grub2-install", "grub-install"]) else {
        return Err(BootloaderError::Refused(format!(
            "the image's root filesystem ({}) has neither grub2-install nor grub-install",
            root.device
        )));
    };
    let root_text = target.to_string_lossy().into_owned();
    tool("chroot", &[&root_text, &install, device])?;
    let (mkconfig, config) = if install == "grub2-install" {
        ("grub2-mkconfig", "/boot/grub2/grub.cfg")
    } else {
        ("grub-mkconfig", "/boot/grub/grub.cfg")
    };
    if in_root(&[mkconfig]).is_some() {
        tool("chroot", &[&root_text, mkconfig, "-o", config])?;
    }
    // Unmounted innermost first.
    drop(binds);
    Ok(format!(
        "{install} installed GRUB on {device} from {}",
        root.device
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parameters_are_checked() {
        let ok = parse_request(&json!({"root_uuid": null, "target_boot_mode": "uefi",
            "efi_system_part_uuid": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"}))
        .unwrap();
        assert_eq!(ok.target_boot_mode, Some(BootMode::Uefi));
        assert_eq!(
            ok.efi_system_part_uuid.as_deref(),
            Some(EFI_SYSTEM_PARTITION)
        );
        for bad in [
            json!({}),
            json!({"root_uuid": 5}),
            json!({"root_uuid": "../../etc"}),
            json!({"root_uuid": null, "target_boot_mode": "legacy"}),
            json!({"root_uuid": null, "prep_boot_part_uuid": "0x12345678"}),
            json!({"root_uuid": null, "surprise": 1}),
        ] {
            let error = parse_request(&bad).unwrap_err();
            assert_eq!(error.code, 400, "{bad}: {error}");
        }
    }

    #[test]
    fn efi_paths_use_backslashes() {
        assert_eq!(efi_path("EFI/BOOT/BOOTX64.EFI"), "\\EFI\\BOOT\\BOOTX64.EFI");
    }

    #[test]
    fn entries_are_found_by_label() {
        let line = "Boot0003* ferric1\tHD(1,GPT,...)/File(\\EFI\\BOOT\\BOOTX64.EFI)";
        assert_eq!(entry_with_label(line, "ferric1"), Some("0003"));
        assert_eq!(entry_with_label(line, "ferric"), None);
        assert_eq!(entry_with_label("BootOrder: 0003", "ferric1"), None);
    }
}
