//! Bootable ISOs of a kernel and an initramfs: El Torito BIOS boot with
//! isolinux and, unless asked otherwise, UEFI boot with GRUB, both hybrid
//! (the ISO boots from a USB stick too). Made by `ferric ramdisk iso` and by
//! the `redfish-virtual-media` boot interface, which inserts one into a
//! BMC's virtual CD drive.
//!
//! The tools are Debian's: xorriso, isolinux and syslinux-common, and for
//! UEFI grub-mkimage (grub-common) with grub-efi-amd64-bin, mkfs.vfat
//! (dosfstools) and mtools. A missing one is named with its package.
//!
//! The kernel command line goes into both boot loaders' configurations, so
//! it is checked with [`kernel_params::validate`] for quoting boot loaders
//! first. It may hold a secret (the agent token of a virtual media boot):
//! the staging directory is private to this user (mode 0700) and removed
//! afterwards; where the ISO itself goes is the caller's choice.

use ferric_types::kernel_params::{self, BootLoader, KernelParamsError};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to put into the ISO.
#[derive(Debug, Clone)]
pub struct IsoOptions {
    /// An x86 bzImage kernel (vmlinuz).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Where the ISO is written.
    pub output: PathBuf,
    /// The kernel command line.
    pub append: String,
    /// Also boot with UEFI (GRUB); otherwise BIOS (isolinux) only.
    pub uefi: bool,
}

#[derive(Debug)]
pub struct IsoReport {
    pub size: u64,
    pub uefi: bool,
}

/// Why no ISO was made.
#[derive(Debug, thiserror::Error)]
pub enum BootIsoError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an x86 Linux kernel (no bzImage header): give the vmlinuz file")]
    NotAKernel { path: String },
    #[error(transparent)]
    KernelParams(#[from] KernelParamsError),
    #[error("{tool} is not installed (Debian package {package})")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed ({status}): {output}")]
    ToolFailed {
        tool: &'static str,
        status: String,
        output: String,
    },
    #[error("{path} is missing (Debian package {package})")]
    FileMissing {
        path: &'static str,
        package: &'static str,
    },
}

type Result<T, E = BootIsoError> = std::result::Result<T, E>;

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> BootIsoError {
    let context = context.into();
    move |source| BootIsoError::Io { context, source }
}

const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
const ISOHDPFX_BIN: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
/// The ISO's volume label.
pub const ISO_LABEL: &str = "FERRIC_RAMDISK";
/// GRUB modules in the UEFI boot image: enough to find the ISO, read its
/// configuration and boot a Linux kernel, with serial and video consoles.
const GRUB_MODULES: &[&str] = &[
    "normal",
    "configfile",
    "search",
    "search_fs_file",
    "iso9660",
    "fat",
    "part_msdos",
    "part_gpt",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
    "efi_gop",
    "all_video",
    "gzio",
];

/// The version string of an x86 bzImage kernel, from its setup header.
pub fn kernel_version<R: Read + Seek>(kernel: &mut R) -> Option<String> {
    let mut header = [0u8; 0x210];
    kernel.seek(SeekFrom::Start(0)).ok()?;
    kernel.read_exact(&mut header).ok()?;
    if &header[0x202..0x206] != b"HdrS" {
        return None;
    }
    let offset = u16::from_le_bytes([header[0x20e], header[0x20f]]) as u64;
    if offset == 0 {
        return None;
    }
    kernel.seek(SeekFrom::Start(offset + 0x200)).ok()?;
    let mut text = [0u8; 256];
    let len = kernel.read(&mut text).ok()?;
    let text = &text[..len];
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let version = std::str::from_utf8(&text[..end]).ok()?;
    (!version.is_empty()).then(|| version.to_string())
}

/// Checks a kernel command line that goes into the ISO's boot loader
/// configurations (which quote every word) and returns its words.
pub fn validate_kernel_params(params: &str) -> Result<Vec<String>, KernelParamsError> {
    kernel_params::validate(params, BootLoader::Quoted)
}

/// The isolinux configuration: boot at once, console on the first serial
/// port too.
pub fn isolinux_config(params: &[String]) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT ferric\nPROMPT 0\nTIMEOUT 0\nLABEL ferric\n  KERNEL /boot/vmlinuz\n  \
         INITRD /boot/initrd\n  APPEND {}\n",
        params.join(" ")
    )
}

/// GRUB's configuration; every parameter is single-quoted, so GRUB expands
/// nothing in it.
pub fn grub_config(params: &[String]) -> String {
    let quoted: Vec<String> = params.iter().map(|p| format!("'{p}'")).collect();
    format!(
        "serial --unit=0 --speed=115200\nterminal_input console serial\n\
         terminal_output console serial\necho 'Booting the Ferric deploy ramdisk'\n\
         linux /boot/vmlinuz {}\ninitrd /boot/initrd\nboot\n",
        quoted.join(" ")
    )
}

/// Runs a tool; its output goes into the error when it fails.
fn run_tool(tool: &'static str, package: &'static str, command: &mut Command) -> Result<()> {
    let out = command.output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            BootIsoError::ToolMissing { tool, package }
        } else {
            io_error(format!("running {tool}"))(e)
        }
    })?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(BootIsoError::ToolFailed {
            tool,
            status: out.status.to_string(),
            output: output.trim().chars().take(2000).collect(),
        });
    }
    Ok(())
}

fn need_file(path: &'static str, package: &'static str) -> Result<()> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(BootIsoError::FileMissing { path, package })
    }
}

/// Checks the boot loader files an ISO needs are installed (not the tools:
/// they are found when they run), so a server can refuse early.
pub fn check_boot_loaders(uefi: bool) -> Result<()> {
    need_file(ISOLINUX_BIN, "isolinux")?;
    need_file(ISOHDPFX_BIN, "isolinux")?;
    need_file(LDLINUX_C32, "syslinux-common")?;
    if uefi && !Path::new(GRUB_EFI_DIR).join("linux.mod").is_file() {
        return Err(BootIsoError::FileMissing {
            path: GRUB_EFI_DIR,
            package: "grub-efi-amd64-bin; or make a BIOS-only ISO",
        });
    }
    Ok(())
}

/// Checks that `path` is an x86 bzImage kernel; returns its version.
pub fn check_kernel(path: &Path) -> Result<String> {
    let name = path.display().to_string();
    let mut kernel = File::open(path).map_err(io_error(format!("opening the kernel {name}")))?;
    kernel_version(&mut kernel).ok_or(BootIsoError::NotAKernel { path: name })
}

/// A path for xorriso's -graft-points, where `=` and `\` are special.
fn graft_escape(path: &Path) -> String {
    path.to_string_lossy()
        .replace('\\', "\\\\")
        .replace('=', "\\=")
}

/// Builds a bootable ISO with xorriso: isolinux for BIOS and, unless
/// `uefi` is off, a FAT boot image holding GRUB for UEFI, which finds the
/// ISO by a file named after this build and reads its configuration there.
/// Everything is checked before anything is written. Runs programs and
/// writes megabytes: call it from a blocking thread.
pub fn build_iso(options: &IsoOptions) -> Result<IsoReport> {
    let params = validate_kernel_params(&options.append)?;
    check_kernel(&options.kernel)?;
    File::open(&options.initrd).map_err(io_error(format!(
        "opening the initramfs {}",
        options.initrd.display()
    )))?;
    check_boot_loaders(options.uefi)?;

    // tempfile makes the directory with mode 0700: the configurations may
    // hold a secret.
    let staging = tempfile::tempdir().map_err(io_error("creating a staging directory"))?;
    let root = staging.path().join("iso");
    let write = |relative: &str, contents: &[u8]| -> Result<()> {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(io_error(format!("creating {}", parent.display())))?;
        }
        fs::write(&path, contents).map_err(io_error(format!("writing {}", path.display())))
    };
    // isolinux.bin is patched by -boot-info-table: a copy.
    let copy = |from: &str, relative: &str| -> Result<()> {
        let contents = fs::read(from).map_err(io_error(format!("reading {from}")))?;
        write(relative, &contents)
    };
    copy(ISOLINUX_BIN, "isolinux/isolinux.bin")?;
    copy(LDLINUX_C32, "isolinux/ldlinux.c32")?;
    write("isolinux/isolinux.cfg", isolinux_config(&params).as_bytes())?;

    let mut xorriso = Command::new("xorriso");
    xorriso
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&options.output)
        .args(["-V", ISO_LABEL, "-r", "-J", "-joliet-long"])
        .arg("-isohybrid-mbr")
        .arg(ISOHDPFX_BIN)
        .args([
            "-c",
            "isolinux/boot.cat",
            "-b",
            "isolinux/isolinux.bin",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ]);
    if options.uefi {
        let marker = format!(
            "ferric/iso-{:x}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        write(&marker, b"")?;
        write("boot/grub/grub.cfg", grub_config(&params).as_bytes())?;
        let early = staging.path().join("early.cfg");
        fs::write(
            &early,
            format!(
                "search --no-floppy --set=root --file /{marker}\nset prefix=($root)/boot/grub\n\
                 configfile $prefix/grub.cfg\n"
            ),
        )
        .map_err(io_error("writing GRUB's early configuration"))?;
        let grub_efi = staging.path().join("BOOTX64.EFI");
        run_tool(
            "grub-mkimage",
            "grub-common",
            Command::new("grub-mkimage")
                .args([
                    "-O",
                    "x86_64-efi",
                    "-d",
                    GRUB_EFI_DIR,
                    "-p",
                    "/boot/grub",
                    "-c",
                ])
                .arg(&early)
                .arg("-o")
                .arg(&grub_efi)
                .args(GRUB_MODULES),
        )?;
        let efi_size = fs::metadata(&grub_efi)
            .map_err(io_error("reading GRUB's EFI image"))?
            .len();
        // FAT's own structures and some slack: in KiB, as mkfs.vfat counts.
        let kib = (efi_size / 1024) * 11 / 10 + 512;
        let efi_img = root.join("boot/efi.img");
        run_tool(
            "mkfs.vfat",
            "dosfstools",
            Command::new("mkfs.vfat")
                .args(["-n", "FERRIC_EFI", "-C"])
                .arg(&efi_img)
                .arg(kib.to_string()),
        )?;
        run_tool(
            "mmd",
            "mtools",
            Command::new("mmd")
                .arg("-i")
                .arg(&efi_img)
                .args(["::/EFI", "::/EFI/BOOT"]),
        )?;
        run_tool(
            "mcopy",
            "mtools",
            Command::new("mcopy")
                .arg("-i")
                .arg(&efi_img)
                .arg(&grub_efi)
                .arg("::/EFI/BOOT/BOOTX64.EFI"),
        )?;
        xorriso.args([
            "-eltorito-alt-boot",
            "-e",
            "boot/efi.img",
            "-no-emul-boot",
            "-isohybrid-gpt-basdat",
        ]);
    }
    xorriso
        .arg("-graft-points")
        .arg(&root)
        .arg(format!("/boot/vmlinuz={}", graft_escape(&options.kernel)))
        .arg(format!("/boot/initrd={}", graft_escape(&options.initrd)));
    run_tool("xorriso", "xorriso", &mut xorriso)?;
    let size = fs::metadata(&options.output)
        .map_err(io_error(format!("reading {}", options.output.display())))?
        .len();
    Ok(IsoReport {
        size,
        uefi: options.uefi,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_is_quoted_for_grub_and_kept_for_isolinux() {
        let params = validate_kernel_params("console=ttyS0 ipa-agent-token=a-b_c $x;y").unwrap();
        let grub = grub_config(&params);
        assert!(
            grub.contains("linux /boot/vmlinuz 'console=ttyS0' 'ipa-agent-token=a-b_c' '$x;y'\n"),
            "{grub}"
        );
        let isolinux = isolinux_config(&params);
        assert!(
            isolinux.contains("  APPEND console=ttyS0 ipa-agent-token=a-b_c $x;y\n"),
            "{isolinux}"
        );
    }

    #[test]
    fn nothing_is_written_for_refused_parameters_or_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_kernel = dir.path().join("vmlinuz");
        fs::write(&not_a_kernel, b"plain text").unwrap();
        let output = dir.path().join("out.iso");
        let options = |append: &str| IsoOptions {
            kernel: not_a_kernel.clone(),
            initrd: not_a_kernel.clone(),
            output: output.clone(),
            append: append.to_string(),
            uefi: false,
        };
        let err = build_iso(&options("a='b'")).unwrap_err().to_string();
        assert!(err.contains("quotes"), "{err}");
        let err = build_iso(&options("a=1")).unwrap_err().to_string();
        assert!(err.contains("not an x86 Linux kernel"), "{err}");
        assert!(!output.exists());
    }
}
