//! `ferric ramdisk build` and `ferric ramdisk iso`: the deploy ramdisk.
//!
//! `build` makes an initramfs: a newc cpio archive written here (no cpio
//! program needed), compressed with a method the kernel unpacks itself. It
//! holds a static busybox, the static ferric-agent, the kernel modules a
//! deploy needs with their dependencies (from the kernel's modules.dep), and
//! an `/init` script that loads them, brings every NIC up with DHCP and IPv6
//! autoconfiguration, and runs the agent, which reads its settings from
//! /proc/cmdline. `iso` makes a bootable ISO of a kernel and such an
//! initramfs: El Torito BIOS boot with isolinux, UEFI boot with GRUB
//! ([`ferric_image::bootiso`], which the redfish-virtual-media boot
//! interface uses too).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
pub use ferric_image::bootiso::{
    build_iso, grub_config, isolinux_config, kernel_version, validate_kernel_params, BootIsoError,
    IsoOptions, IsoReport, ISO_LABEL,
};
use ferric_types::kernel_params;
pub use ferric_types::kernel_params::KernelParamsError;

#[derive(Debug, Subcommand)]
pub enum RamdiskCommand {
    /// Build a deploy initramfs: busybox, ferric-agent, the kernel modules
    /// for virtio, NVMe, SATA, common NICs and config drives, and an init
    /// that brings the network up with DHCP and runs the agent.
    Build(BuildArgs),
    /// Make a bootable ISO (BIOS with isolinux, UEFI with GRUB) of a kernel
    /// and an initramfs.
    Iso(IsoArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The kernel (vmlinuz) the ramdisk will boot with.
    #[arg(short = 'k', long, value_name = "VMLINUZ")]
    pub kernel: PathBuf,
    /// The kernel's modules: its lib/modules/<version> directory.
    #[arg(short = 'm', long, value_name = "DIR")]
    pub modules: PathBuf,
    /// Where to write the initramfs.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// The static ferric-agent (scripts/build-agent-static); default: the
    /// ferric-agent next to this ferric binary.
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// A static busybox (Debian's busybox-static).
    #[arg(long, value_name = "PATH", default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// How the initramfs is compressed.
    #[arg(long, value_enum, default_value_t = Compress::Zstd)]
    pub compress: Compress,
    /// One more module to include, with its dependencies (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    pub extra_modules: Vec<String>,
    /// The CA certificates (PEM) the agent trusts for the conductor and
    /// image servers unless told otherwise (ipa-cafile): Debian's
    /// ca-certificates bundle, or the operator's own.
    #[arg(long, value_name = "PEM", default_value = DEFAULT_CA_BUNDLE)]
    pub ca_bundle: PathBuf,
}

/// Debian's bundle of the public CAs (package ca-certificates), where the
/// agent's TLS stack looks for the system's CAs.
pub const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Args)]
pub struct IsoArgs {
    /// The kernel (vmlinuz).
    #[arg(short = 'k', long, value_name = "KERNEL")]
    pub kernel: PathBuf,
    /// The initramfs (from `ferric ramdisk build`).
    #[arg(short = 'i', long, value_name = "INITRD")]
    pub initrd: PathBuf,
    /// Where to write the ISO.
    #[arg(short, long, value_name = "OUT.iso")]
    pub output: PathBuf,
    /// The kernel command line, e.g. "console=ttyS0 ipa-api-url=http://10.0.0.1:6385".
    #[arg(long, default_value = "")]
    pub append: String,
    /// BIOS boot only: no UEFI (GRUB) boot image.
    #[arg(long)]
    pub no_uefi: bool,
}

/// Compression methods the kernel unpacks an initramfs with (CONFIG_RD_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compress {
    Zstd,
    Gzip,
    Xz,
}

impl Compress {
    pub fn name(self) -> &'static str {
        match self {
            Compress::Zstd => "zstd",
            Compress::Gzip => "gzip",
            Compress::Xz => "xz",
        }
    }

    /// The kernel option that lets the kernel unpack this method.
    fn kernel_option(self) -> &'static str {
        match self {
            Compress::Zstd => "CONFIG_RD_ZSTD",
            Compress::Gzip => "CONFIG_RD_GZIP",
            Compress::Xz => "CONFIG_RD_XZ",
        }
    }
}

/// Modules every deploy ramdisk carries: the disks and NICs of virtual
/// machines, SCSI disks, and the file systems of config drives (vfat, and
/// isofs for iso9660). A kernel that has none of one of these (neither as a
/// module nor built in) is refused.
pub const REQUIRED_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "vfat",
    "isofs",
];

/// Modules taken when the kernel has them: physical storage and NICs (cloud
/// kernels leave most of them out), CD-ROMs, a virtual RNG, the code pages
/// vfat mounts with, and packet sockets (DHCP) where they are modular.
pub const OPTIONAL_MODULES: &[&str] = &[
    "nvme",
    "ahci",
    "sr_mod",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "mlx5_core",
    "bnxt_en",
    "tg3",
    "virtio_rng",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "af_packet",
];

/// Busybox applets the init and the DHCP script run.
pub const REQUIRED_APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "insmod", "ip", "udhcpc", "sleep", "cat", "rm", "touch", "grep",
    "hostname", "tr",
];

/// zstd's strongest level without --ultra, whose bigger windows need more
/// memory to unpack than a small machine may want to give at boot.
const ZSTD_LEVEL: i32 = 19;
/// xz's default preset (8 MiB dictionary).
const XZ_PRESET: u32 = 6;
/// Larger modules are not modules.
const MAX_MODULE_SIZE: u64 = 256 << 20;

/// The longest kernel command line accepted: x86's COMMAND_LINE_SIZE is
/// 2048 bytes, and the boot loaders prepend BOOT_IMAGE= and initrd=.
pub const MAX_KERNEL_PARAMS_LEN: usize = kernel_params::MAX_LEN;

#[derive(Debug, thiserror::Error)]
pub enum RamdiskError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("decompressing the module {path}")]
    Decompress {
        path: String,
        #[source]
        source: ferric_image::error::Error,
    },
    #[error("{path} is not an x86 Linux kernel (no bzImage header): give the vmlinuz file")]
    NotAKernel { path: String },
    #[error(
        "the kernel {kernel} is version {version} but {modules} holds the modules of {modules_version}: \
         give the lib/modules directory of the same kernel"
    )]
    KernelMismatch {
        kernel: String,
        version: String,
        modules: String,
        modules_version: String,
    },
    #[error("{dir} has no modules.dep: give the kernel's lib/modules/<version> directory")]
    NoModulesDep { dir: String },
    #[error(transparent)]
    Modules(#[from] modules::ModuleError),
    #[error("modules.dep in {dir} lists modules whose files are missing: {}", files.join(", "))]
    ModuleFilesMissing { dir: String, files: Vec<String> },
    #[error(
        "this kernel cannot unpack a {compression} initramfs: {config} does not set {option}=y \
         (try --compress gzip)"
    )]
    UnsupportedCompression {
        compression: &'static str,
        config: String,
        option: &'static str,
    },
    #[error("this kernel lacks {option} ({config}), which the ramdisk's init needs")]
    KernelLacks {
        option: &'static str,
        config: String,
    },
    #[error("{what} {path} is not an x86-64 Linux program: {why}")]
    NotAProgram {
        what: &'static str,
        path: String,
        why: String,
    },
    #[error(
        "{what} {path} is dynamically linked (it needs {interpreter}) and the ramdisk has no \
         libraries: {hint}"
    )]
    NotStatic {
        what: &'static str,
        path: String,
        interpreter: String,
        hint: &'static str,
    },
    #[error("{path} lacks the busybox applets the init needs: {}", applets.join(", "))]
    MissingApplets { path: String, applets: Vec<String> },
    #[error(
        "no ferric-agent next to this ferric ({looked}): give --agent (scripts/build-agent-static \
         builds one)"
    )]
    AgentNotFound { looked: String },
    #[error(
        "{path} holds no PEM certificate: give --ca-bundle (Debian's is {DEFAULT_CA_BUNDLE}, \
         package ca-certificates)"
    )]
    NotACaBundle { path: String },
    #[error("the kernel version {0:?} has characters a module path cannot hold")]
    BadKernelVersion(String),
    #[error(transparent)]
    Iso(#[from] BootIsoError),
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
}

type Result<T, E = RamdiskError> = std::result::Result<T, E>;

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> RamdiskError {
    let context = context.into();
    move |source| RamdiskError::Io { context, source }
}

/// Runs `ferric ramdisk ...`.
pub fn ramdisk_command(cmd: &RamdiskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RamdiskCommand::Build(args) => {
            let agent = match &args.agent {
                Some(path) => path.clone(),
                None => default_agent()?,
            };
            let started = Instant::now();
            let report = build(&BuildOptions {
                kernel: args.kernel.clone(),
                modules_dir: args.modules.clone(),
                output: args.output.clone(),
                agent,
                busybox: args.busybox.clone(),
                compress: args.compress,
                extra_modules: args.extra_modules.clone(),
                ca_bundle: args.ca_bundle.clone(),
            })?;
            println!(
                "wrote {}: {} ({}; {} unpacked) in {:.1} s",
                args.output.display(),
                mib(report.compressed_size),
                report.compress.name(),
                mib(report.archive_size),
                started.elapsed().as_secs_f64()
            );
            println!(
                "kernel {}: {} modules loaded in this order: {}",
                report.kernel_version,
                report.modules.len(),
                report.modules.join(" ")
            );
            if !report.builtin.is_empty() {
                println!("built into the kernel: {}", report.builtin.join(" "));
            }
            if !report.absent.is_empty() {
                println!("not in this kernel (left out): {}", report.absent.join(" "));
            }
            Ok(ExitCode::SUCCESS)
        }
        RamdiskCommand::Iso(args) => {
            let report = build_iso(&IsoOptions {
                kernel: args.kernel.clone(),
                initrd: args.initrd.clone(),
                output: args.output.clone(),
                append: args.append.clone(),
                uefi: !args.no_uefi,
            })?;
            println!(
                "wrote {}: {}, boots with {}",
                args.output.display(),
                mib(report.size),
                if report.uefi {
                    "BIOS (isolinux) and UEFI (GRUB)"
                } else {
                    "BIOS (isolinux)"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The ferric-agent installed next to the running ferric.
fn default_agent() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(io_error("finding this ferric binary"))?;
    let agent = exe.with_file_name("ferric-agent");
    if agent.is_file() {
        Ok(agent)
    } else {
        Err(RamdiskError::AgentNotFound {
            looked: agent.display().to_string(),
        })
    }
}

/// The newc ("new ASCII") cpio format the kernel unpacks an initramfs from.
pub mod cpio {
    use std::io::{self, Read, Write};

    const S_IFDIR: u32 = 0o040000;
    const S_IFREG: u32 = 0o100000;
    const S_IFLNK: u32 = 0o120000;
    const S_IFCHR: u32 = 0o020000;
    const TRAILER: &str = "TRAILER!!!";
    /// newc stores sizes in 32 bits.
    pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;
    /// Linux's PATH_MAX, less the terminating NUL.
    const MAX_PATH_LEN: usize = 4095;

    #[derive(Debug, thiserror::Error)]
    pub enum CpioError {
        #[error("{path:?} cannot be stored in the archive: {why}")]
        BadPath { path: String, why: &'static str },
        #[error("{path}: {size} bytes is more than a newc archive holds (4 GiB - 1)")]
        TooLarge { path: String, size: u64 },
        #[error("{path}: the data ended after {got} of {expected} bytes")]
        ShortData {
            path: String,
            expected: u64,
            got: u64,
        },
        #[error("writing {path} into the archive")]
        Io {
            path: String,
            #[source]
            source: io::Error,
        },
    }

    /// Writes entries one after the other; the caller orders them so that a
    /// directory comes before what it holds. Owner root, modification time
    /// 0 (the same inputs make the same archive), one link per entry.
    pub struct NewcWriter<W> {
        out: W,
        next_inode: u32,
        position: u64,
    }

    impl<W: Write> NewcWriter<W> {
        pub fn new(out: W) -> Self {
            NewcWriter {
                out,
                next_inode: 1,
                position: 0,
            }
        }

        /// Bytes written so far.
        pub fn position(&self) -> u64 {
            self.position
        }

        pub fn directory(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
            self.entry(path, S_IFDIR | (mode & 0o7777), 2, 0, (0, 0))
        }

        /// A regular file of `size` bytes read from `data`.
        pub fn file(
            &mut self,
            path: &str,
            mode: u32,
            size: u64,
            data: &mut dyn Read,
        ) -> Result<(), CpioError> {
            if size > MAX_FILE_SIZE {
                return Err(CpioError::TooLarge {
                    path: path.to_string(),
                    size,
                });
            }
            self.entry(path, S_IFREG | (mode & 0o7777), 1, size as u32, (0, 0))?;
            let got =
                io::copy(&mut data.take(size), &mut self.out).map_err(|source| CpioError::Io {
                    path: path.to_string(),
                    source,
                })?;
            if got != size {
                return Err(CpioError::ShortData {
                    path: path.to_string(),
                    expected: size,
                    got,
                });
            }
            self.position += size;
            self.pad(path)
        }

        /// A symbolic link; its data is the target.
        pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
            if target.is_empty() || target.contains('\0') {
                return Err(CpioError::BadPath {
                    path: target.to_string(),
                    why: "not a symbolic link target",
                });
            }
            self.entry(path, S_IFLNK | 0o777, 1, target.len() as u32, (0, 0))?;
            self.raw(path, target.as_bytes())?;
            self.pad(path)
        }

        pub fn char_device(
            &mut self,
            path: &str,
            mode: u32,
            major: u32,
            minor: u32,
        ) -> Result<(), CpioError> {
            self.entry(path, S_IFCHR | (mode & 0o7777), 1, 0, (major, minor))
        }

        /// Writes the trailer; returns the output and the archive's size.
        pub fn finish(mut self) -> Result<(W, u64), CpioError> {
            self.header(TRAILER, 0, 0, 1, 0, (0, 0))?;
            self.out.flush().map_err(|source| CpioError::Io {
                path: TRAILER.to_string(),
                source,
            })?;
            Ok((self.out, self.position))
        }

        fn entry(
            &mut self,
            path: &str,
            mode: u32,
            links: u32,
            size: u32,
            rdev: (u32, u32),
        ) -> Result<(), CpioError> {
            check_path(path)?;
            let inode = self.next_inode;
            self.next_inode += 1;
            self.header(path, inode, mode, links, size, rdev)
        }

        fn header(
            &mut self,
            path: &str,
            inode: u32,
            mode: u32,
            links: u32,
            size: u32,
            (rdev_major, rdev_minor): (u32, u32),
        ) -> Result<(), CpioError> {
            let (uid, gid, mtime, dev_major, dev_minor, check) =
                (0u32, 0u32, 0u32, 0u32, 0u32, 0u32);
            let name_size = path.len() as u32 + 1;
            let header = format!(
                "070701{inode:08X}{mode:08X}{uid:08X}{gid:08X}{links:08X}{mtime:08X}{size:08X}\
                 {dev_major:08X}{dev_minor:08X}{rdev_major:08X}{rdev_minor:08X}{name_size:08X}{check:08X}"
            );
            self.raw(path, header.as_bytes())?;
            self.raw(path, path.as_bytes())?;
            self.raw(path, &[0])?;
            self.pad(path)
        }

        fn raw(&mut self, path: &str, bytes: &[u8]) -> Result<(), CpioError> {
            self.out.write_all(bytes).map_err(|source| CpioError::Io {
                path: path.to_string(),
                source,
            })?;
            self.position += bytes.len() as u64;
            Ok(())
        }

        /// Headers and data start at multiples of 4 bytes.
        fn pad(&mut self, path: &str) -> Result<(), CpioError> {
            let len = ((4 - self.position % 4) % 4) as usize;
            self.raw(path, &[0; 3][..len])
        }
    }

    /// A path the kernel unpacks where it says: relative, no `.` or `..`,
    /// no empty components.
    fn check_path(path: &str) -> Result<(), CpioError> {
        let bad = |why| {
            Err(CpioError::BadPath {
                path: path.to_string(),
                why,
            })
        };
        if path.is_empty() {
            return bad("empty");
        }
        if path.starts_with('/') {
            return bad("absolute");
        }
        if path.len() > MAX_PATH_LEN {
            return bad("longer than 4095 bytes");
        }
        if path.contains('\0') {
            return bad("holds a NUL byte");
        }
        if path == TRAILER {
            return bad("the name of the archive's trailer");
        }
        if path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return bad("has an empty, . or .. component");
        }
        Ok(())
    }
}

/// The kernel's modules.dep: which modules a module needs, and the order to
/// load them in.
pub mod modules {
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Debug, thiserror::Error)]
    pub enum ModuleError {
        #[error("modules.dep line {line}: {why}")]
        BadLine { line: usize, why: &'static str },
        #[error(
            "these modules are neither in {dir}/modules.dep nor built into the kernel: {}",
            names.join(", ")
        )]
        NotFound { dir: String, names: Vec<String> },
        #[error("modules.dep lists {dependency} as needed by {by} but has no line for it")]
        DanglingDependency { dependency: String, by: String },
        #[error("modules.dep has a dependency cycle: {}", cycle.join(" -> "))]
        Cycle { cycle: Vec<String> },
    }

    /// One module: its path relative to lib/modules/<version>, and the paths
    /// of the modules it needs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Module {
        pub name: String,
        pub path: String,
        pub needs: Vec<String>,
    }

    /// A module's name as the kernel knows it: the file name without
    /// `.ko[.xz|.zst|.gz]`, with `-` read as `_`.
    pub fn module_name(path: &str) -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
            .iter()
            .find_map(|ext| file.strip_suffix(ext))
            .unwrap_or(file);
        normalize(stem)
    }

    /// `-` and `_` are the same in module names.
    pub fn normalize(name: &str) -> String {
        name.replace('-', "_")
    }

    /// The modules of modules.dep by path.
    #[derive(Debug, Default)]
    pub struct ModuleDep {
        by_path: BTreeMap<String, Module>,
        by_name: BTreeMap<String, String>,
        /// Plain (wildcard-free) aliases from modules.alias: `fs-iso9660`
        /// is `isofs`.
        aliases: BTreeMap<String, String>,
    }

    /// What a ramdisk gets: the modules in the order to load them (every
    /// module after those it needs), the wanted modules the kernel has
    /// built in, and the optional ones it has not at all.
    #[derive(Debug, Default)]
    pub struct Resolution {
        pub load_order: Vec<Module>,
        pub builtin: Vec<String>,
        pub absent: Vec<String>,
    }

    impl ModuleDep {
        /// Reads modules.dep: `path: needed-path needed-path ...` per line.
        pub fn parse(text: &str) -> Result<Self, ModuleError> {
            let mut dep = ModuleDep::default();
            for (index, line) in text.lines().enumerate() {
                let line_no = index + 1;
                if line.trim().is_empty() {
                    continue;
                }
                let (path, needs) = line.split_once(':').ok_or(ModuleError::BadLine {
                    line: line_no,
                    why: "no colon",
                })?;
                let path = path.trim();
                if !is_module_path(path) {
                    return Err(ModuleError::BadLine {
                        line: line_no,
                        why: "not a relative .ko path",
                    });
                }
                let needs: Vec<String> = needs.split_whitespace().map(str::to_string).collect();
                if needs.iter().any(|p| !is_module_path(p)) {
                    return Err(ModuleError::BadLine {
                        line: line_no,
                        why: "a dependency is not a relative .ko path",
                    });
                }
                let name = module_name(path);
                dep.by_name.insert(name.clone(), path.to_string());
                dep.by_path.insert(
                    path.to_string(),
                    Module {
                        name,
                        path: path.to_string(),
                        needs,
                    },
                );
            }
            Ok(dep)
        }

        /// Adds the aliases of modules.alias (`alias NAME MODULE` lines;
        /// device aliases with wildcards are left out).
        pub fn with_aliases(mut self, text: &str) -> Self {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if let (Some("alias"), Some(alias), Some(module)) =
                    (words.next(), words.next(), words.next())
                {
                    if !alias.contains(['*', '?', '[']) {
                        self.aliases.insert(normalize(alias), normalize(module));
                    }
                }
            }
            self
        }

        /// A module by its name, by an alias, or by a file system's name
        /// (`iso9660` is `fs-iso9660`, that is `isofs`).
        pub fn get(&self, name: &str) -> Option<&Module> {
            let name = normalize(name);
            let by_name = |n: &str| self.by_name.get(n).and_then(|p| self.by_path.get(p));
            by_name(&name)
                .or_else(|| self.aliases.get(&name).and_then(|m| by_name(m)))
                .or_else(|| {
                    self.aliases
                        .get(&format!("fs_{name}"))
                        .and_then(|m| by_name(m))
                })
        }

        /// The modules for `required` and, when the kernel has them,
        /// `optional`, with everything they need. `builtin` holds the names
        /// of the modules built into the kernel (modules.builtin). `dir` names
        /// the modules directory in errors.
        pub fn resolve(
            &self,
            required: &[String],
            optional: &[String],
            builtin: &BTreeSet<String>,
            dir: &str,
        ) -> Result<Resolution, ModuleError> {
            let mut resolution = Resolution::default();
            let mut wanted = Vec::new();
            let mut not_found = Vec::new();
            let mut seen = BTreeSet::new();
            for (name, is_required) in required
                .iter()
                .map(|n| (n, true))
                .chain(optional.iter().map(|n| (n, false)))
            {
                let name = normalize(name);
                if !seen.insert(name.clone()) {
                    continue;
                }
                if let Some(module) = self.get(&name) {
                    wanted.push(module.path.clone());
                } else if builtin.contains(&name) {
                    resolution.builtin.push(name);
                } else if is_required {
                    not_found.push(name);
                } else {
                    resolution.absent.push(name);
                }
            }
            if !not_found.is_empty() {
                return Err(ModuleError::NotFound {
                    dir: dir.to_string(),
                    names: not_found,
                });
            }
            let mut done = BTreeSet::new();
            let mut stack = Vec::new();
            for path in &wanted {
                self.visit(
                    path,
                    None,
                    &mut stack,
                    &mut done,
                    &mut resolution.load_order,
                )?;
            }
            Ok(resolution)
        }

        /// Depth first: what a module needs goes into the order before it.
        fn visit(
            &self,
            path: &str,
            by: Option<&str>,
            stack: &mut Vec<String>,
            done: &mut BTreeSet<String>,
            order: &mut Vec<Module>,
        ) -> Result<(), ModuleError> {
            if done.contains(path) {
                return Ok(());
            }
            if let Some(start) = stack.iter().position(|p| p == path) {
                let mut cycle: Vec<String> =
                    stack[start..].iter().map(|p| module_name(p)).collect();
                cycle.push(module_name(path));
                return Err(ModuleError::Cycle { cycle });
            }
            let module = self
                .by_path
                .get(path)
                .ok_or_else(|| ModuleError::DanglingDependency {
                    dependency: path.to_string(),
                    by: by.map(module_name).unwrap_or_default(),
                })?;
            stack.push(path.to_string());
            for need in &module.needs {
                self.visit(need, Some(path), stack, done, order)?;
            }
            stack.pop();
            done.insert(path.to_string());
            order.push(module.clone());
            Ok(())
        }
    }

    fn is_module_path(path: &str) -> bool {
        !path.starts_with('/')
            && !path
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
            && [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .any(|ext| path.ends_with(ext))
    }

    /// The names in modules.builtin (one path per line).
    pub fn parse_builtin(text: &str) -> BTreeSet<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect()
    }

    /// modules.dep for just these modules, each path mapped by `rename`
    /// (compressed modules are stored uncompressed).
    pub fn pruned_dep(load_order: &[Module], rename: impl Fn(&str) -> String) -> String {
        let mut text = String::new();
        for module in load_order {
            text.push_str(&rename(&module.path));
            text.push(':');
            for need in &module.needs {
                text.push(' ');
                text.push_str(&rename(need));
            }
            text.push('\n');
        }
        text
    }

    /// A module's path in the ramdisk: stored uncompressed, since the
    /// initramfs is compressed as a whole.
    pub fn uncompressed_path(path: &str) -> String {
        for ext in [".xz", ".zst", ".gz"] {
            if let Some(stem) = path.strip_suffix(ext) {
                if stem.ends_with(".ko") {
                    return stem.to_string();
                }
            }
        }
        path.to_string()
    }
}

/// What kind of program an ELF file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    Static,
    /// Dynamically linked with this program interpreter.
    Dynamic(String),
}

/// Reads an x86-64 ELF file's program headers: a program with a PT_INTERP
/// header needs its dynamic loader and libraries.
pub fn elf_linkage<R: Read + Seek>(file: &mut R) -> Result<Linkage, String> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    let mut header = [0u8; 64];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut header))
        .map_err(|_| "too short for an ELF header".to_string())?;
    if &header[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    if u16_at(&header, 18) != EM_X86_64 {
        return Err(format!("built for machine {}", u16_at(&header, 18)));
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        u16_at(&header, 54) as usize,
        u16_at(&header, 56) as usize,
    );
    if phnum > 0 && phentsize < 56 {
        return Err("bad program header size".into());
    }
    let mut table = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|_| "truncated program headers".to_string())?;
    for entry in table.chunks(phentsize.max(1)) {
        if entry.len() < 56 || u32_at(entry, 0) != PT_INTERP {
            continue;
        }
        let (offset, size) = (u64_at(entry, 8), u64_at(entry, 32).min(4096));
        let mut interp = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut interp))
            .map_err(|_| "truncated program interpreter".to_string())?;
        let text = String::from_utf8_lossy(&interp);
        return Ok(Linkage::Dynamic(text.trim_end_matches('\0').to_string()));
    }
    Ok(Linkage::Static)
}

fn check_static(what: &'static str, path: &Path, hint: &'static str) -> Result<()> {
    let mut file =
        File::open(path).map_err(io_error(format!("opening {what} {}", path.display())))?;
    match elf_linkage(&mut file) {
        Ok(Linkage::Static) => Ok(()),
        Ok(Linkage::Dynamic(interpreter)) => Err(RamdiskError::NotStatic {
            what,
            path: path.display().to_string(),
            interpreter,
            hint,
        }),
        Err(why) => Err(RamdiskError::NotAProgram {
            what,
            path: path.display().to_string(),
            why,
        }),
    }
}

pub struct BuildOptions {
    pub kernel: PathBuf,
    pub modules_dir: PathBuf,
    pub output: PathBuf,
    pub agent: PathBuf,
    pub busybox: PathBuf,
    pub compress: Compress,
    /// More required modules beyond [`REQUIRED_MODULES`].
    pub extra_modules: Vec<String>,
    /// The CA certificates installed as the ramdisk's system bundle.
    pub ca_bundle: PathBuf,
}

#[derive(Debug)]
pub struct BuildReport {
    pub kernel_version: String,
    /// Module names in load order.
    pub modules: Vec<String>,
    pub builtin: Vec<String>,
    /// Optional modules this kernel does not have.
    pub absent: Vec<String>,
    pub compress: Compress,
    pub archive_size: u64,
    pub compressed_size: u64,
}

/// The ramdisk's init: a busybox sh script. `@KERNEL_VERSION@` is replaced.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
# The deploy ramdisk's init, written by `ferric ramdisk build`: mounts the
# kernel's file systems, loads the modules in dependency order, brings every
# Ethernet NIC up with DHCP (IPv4) and router advertisements (IPv6), then runs
# ferric-agent, which reads its settings from /proc/cmdline.
# ferric.dhcp_wait=SECONDS on the kernel command line: how long to wait for a
# first DHCP lease before starting the agent anyway (default 30).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
kernel_version=@KERNEL_VERSION@

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=0620 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mkdir -p /run/ferric

dhcp_wait=30
for word in $(cat /proc/cmdline); do
    case "$word" in
    ferric.dhcp_wait=*) dhcp_wait=${word#*=} ;;
    esac
done
case "$dhcp_wait" in
'' | *[!0-9]*) dhcp_wait=30 ;;
esac

echo "ferric-init: loading modules"
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/lib/modules/$kernel_version/$module" ||
        echo "ferric-init: insmod $module failed"
done </etc/ferric/modules

# Ethernet NICs (ARPHRD_ETHER); drivers may register theirs a moment after
# insmod returns.
nics() {
    for path in /sys/class/net/*; do
        [ "$(cat "$path/type" 2>/dev/null)" = 1 ] && echo "${path##*/}"
    done
}
tries=0
while [ -z "$(nics)" ] && [ $tries -lt 50 ]; do
    sleep 0.1
    tries=$((tries + 1))
done

ip link set lo up
for nic in $(nics); do
    echo 1 >"/proc/sys/net/ipv6/conf/$nic/accept_ra" 2>/dev/null
    echo 1 >"/proc/sys/net/ipv6/conf/$nic/autoconf" 2>/dev/null
    ip link set "$nic" up
    echo "ferric-init: DHCP on $nic"
    udhcpc -f -i "$nic" -s /etc/ferric/udhcpc.script -t 5 -T 2 -A 5 &
done

waited=0
while :; do
    set -- /run/ferric/bound.*
    [ -e "$1" ] && break
    if [ $waited -ge $((dhcp_wait * 10)) ]; then
        echo "ferric-init: no DHCP lease after ${dhcp_wait} s; starting the agent anyway"
        break
    fi
    sleep 0.1
    waited=$((waited + 1))
done

# PID 1 must not exit (the kernel panics): the agent is started again
# should it stop, as IPA's service manager does.
while :; do
    echo "ferric-init: starting ferric-agent"
    /usr/bin/ferric-agent
    echo "ferric-init: ferric-agent exited with status $?; starting it again in 10 s"
    sleep 10
done
"#;

/// udhcpc's event script: configures the lease on `$interface`.
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# udhcpc's event script in the deploy ramdisk: sets the address, the routes
# (classless static routes when offered, else the default route) and the DNS
# servers of a lease on $interface.
prefix() {
    bits=0
    for octet in $(echo "$1" | tr . ' '); do
        case "$octet" in
        255) bits=$((bits + 8)) ;;
        254) bits=$((bits + 7)) ;;
        252) bits=$((bits + 6)) ;;
        248) bits=$((bits + 5)) ;;
        240) bits=$((bits + 4)) ;;
        224) bits=$((bits + 3)) ;;
        192) bits=$((bits + 2)) ;;
        128) bits=$((bits + 1)) ;;
        esac
    done
    echo $bits
}

case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    rm -f "/run/ferric/bound.$interface"
    ;;
bound | renew)
    bits=${mask:-$(prefix "${subnet:-255.255.255.0}")}
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/$bits "; then
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/$bits" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    fi
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    metric=$((100 + $(cat "/sys/class/net/$interface/ifindex")))
    if [ -n "$staticroutes" ]; then
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            ip -4 route replace "$1" via "$2" dev "$interface" metric "$metric"
            shift 2
        done
    elif [ -n "$router" ]; then
        set -- $router
        ip -4 route replace default via "$1" dev "$interface" metric "$metric"
    fi
    if [ -n "$dns" ]; then
        {
            [ -n "$domain" ] && echo "search $domain"
            for server in $dns; do echo "nameserver $server"; done
        } >/etc/resolv.conf
    fi
    [ -n "$hostname" ] && hostname "$hostname"
    echo "ferric-init: $interface has $ip/$bits${router:+ via $router}"
    touch "/run/ferric/bound.$interface"
    ;;
esac
exit 0
"#;

/// The initramfs's contents by path, written in path order so that every
/// directory comes before what it holds.
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, Node>,
}

#[derive(Debug)]
pub enum Node {
    Directory { mode: u32 },
    File { mode: u32, data: Data },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

#[derive(Debug)]
pub enum Data {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

impl Tree {
    pub fn directory(&mut self, path: &str, mode: u32) {
        self.parents(path);
        self.entries
            .insert(path.to_string(), Node::Directory { mode });
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Data) {
        self.parents(path);
        self.entries
            .insert(path.to_string(), Node::File { mode, data });
    }

    /// A symbolic link, unless `path` is taken.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entries
            .entry(path.to_string())
            .or_insert_with(|| Node::Symlink {
                target: target.to_string(),
            });
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entries
            .insert(path.to_string(), Node::CharDevice { mode, major, minor });
    }

    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            self.entries
                .entry(path[..end].to_string())
                .or_insert(Node::Directory { mode: 0o755 });
            end += 1;
        }
    }

    /// Writes every entry; a file read from disk must not change meanwhile.
    pub fn write<W: Write>(&self, archive: &mut cpio::NewcWriter<W>) -> Result<()> {
        for (path, node) in &self.entries {
            match node {
                Node::Directory { mode } => archive.directory(path, *mode)?,
                Node::File { mode, data } => match data {
                    Data::Bytes(bytes) => {
                        archive.file(path, *mode, bytes.len() as u64, &mut bytes.as_slice())?
                    }
                    Data::Path(source) => {
                        let mut file = File::open(source)
                            .map_err(io_error(format!("opening {}", source.display())))?;
                        let size = file
                            .metadata()
                            .map_err(io_error(format!("reading {}", source.display())))?
                            .len();
                        archive.file(path, *mode, size, &mut file)?;
                    }
                },
                Node::Symlink { target } => archive.symlink(path, target)?,
                Node::CharDevice { mode, major, minor } => {
                    archive.char_device(path, *mode, *major, *minor)?
                }
            }
        }
        Ok(())
    }
}

/// The compressor in front of the output file.
enum Compressor<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
    Xz(liblzma::write::XzEncoder<W>),
}

impl<W: Write> Compressor<W> {
    fn new(out: W, compress: Compress) -> io::Result<Self> {
        Ok(match compress {
            Compress::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                encoder.include_checksum(true)?;
                Compressor::Zstd(encoder)
            }
            Compress::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::best(),
            )),
            Compress::Xz => {
                // The kernel's xz decoder checks CRC32 only, not xz's default CRC64.
                let stream = liblzma::stream::Stream::new_easy_encoder(
                    XZ_PRESET,
                    liblzma::stream::Check::Crc32,
                )
                .map_err(io::Error::from)?;
                Compressor::Xz(liblzma::write::XzEncoder::new_stream(out, stream))
            }
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Zstd(e) => e.finish(),
            Compressor::Gzip(e) => e.finish(),
            Compressor::Xz(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Zstd(e) => e.write(buf),
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Xz(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Zstd(e) => e.flush(),
            Compressor::Gzip(e) => e.flush(),
            Compressor::Xz(e) => e.flush(),
        }
    }
}

/// Checks the kernel's build configuration (config-<version> next to the
/// kernel, as Debian installs it) for what the ramdisk needs. A kernel
/// without one is taken on trust.
fn check_kernel_config(kernel: &Path, version: &str, compress: Compress) -> Result<()> {
    let config_path = kernel.with_file_name(format!("config-{version}"));
    let Ok(config) = fs::read_to_string(&config_path) else {
        return Ok(());
    };
    let set = |option: &str| config.lines().any(|l| l.strip_prefix(option) == Some("=y"));
    let config_name = config_path.display().to_string();
    if !set(compress.kernel_option()) {
        return Err(RamdiskError::UnsupportedCompression {
            compression: compress.name(),
            config: config_name,
            option: compress.kernel_option(),
        });
    }
    for option in ["CONFIG_BLK_DEV_INITRD", "CONFIG_DEVTMPFS"] {
        if !set(option) {
            return Err(RamdiskError::KernelLacks {
                option,
                config: config_name,
            });
        }
    }
    Ok(())
}

/// The applets of a busybox, as `bin/sh`-style paths (`busybox --list-full`),
/// or None when this machine cannot run it.
fn busybox_applets(busybox: &Path) -> Option<Vec<String>> {
    let out = Command::new(busybox).arg("--list-full").output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().trim_start_matches('/').to_string())
            .filter(|l| {
                ["bin/", "sbin/", "usr/bin/", "usr/sbin/"]
                    .iter()
                    .any(|dir| l.strip_prefix(dir).is_some_and(|name| !name.contains('/')))
            })
            .collect(),
    )
}

/// A module file's contents, decompressed when it is compressed.
fn module_data(path: &Path) -> Result<Data> {
    let name = path.to_string_lossy();
    if !(name.ends_with(".xz") || name.ends_with(".zst") || name.ends_with(".gz")) {
        return Ok(Data::Path(path.to_path_buf()));
    }
    let context = || format!("decompressing {}", path.display());
    let file = File::open(path).map_err(io_error(context()))?;
    let (_, reader) =
        ferric_image::decompress::open(file).map_err(|source| RamdiskError::Decompress {
            path: path.display().to_string(),
            source,
        })?;
    let mut bytes = Vec::new();
    reader
        .take(MAX_MODULE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(context()))?;
    if bytes.len() as u64 > MAX_MODULE_SIZE {
        return Err(RamdiskError::Io {
            context: context(),
            source: io::Error::other("larger than 256 MiB unpacked"),
        });
    }
    Ok(Data::Bytes(bytes))
}

/// Builds the initramfs.
pub fn build(options: &BuildOptions) -> Result<BuildReport> {
    let kernel_name = options.kernel.display().to_string();
    let mut kernel = File::open(&options.kernel)
        .map_err(io_error(format!("opening the kernel {kernel_name}")))?;
    let version = kernel_version(&mut kernel).ok_or_else(|| RamdiskError::NotAKernel {
        path: kernel_name.clone(),
    })?;
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._+-~".contains(c))
    {
        return Err(RamdiskError::BadKernelVersion(version));
    }
    let modules_dir = &options.modules_dir;
    let dir_name = modules_dir.display().to_string();
    let dep_path = modules_dir.join("modules.dep");
    let dep_text = match fs::read_to_string(&dep_path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RamdiskError::NoModulesDep { dir: dir_name })
        }
        Err(e) => return Err(io_error(format!("reading {}", dep_path.display()))(e)),
    };
    let modules_version = fs::canonicalize(modules_dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    if modules_version != version {
        return Err(RamdiskError::KernelMismatch {
            kernel: kernel_name,
            version,
            modules: dir_name,
            modules_version,
        });
    }
    check_kernel_config(&options.kernel, &version, options.compress)?;
    check_static(
        "the agent",
        &options.agent,
        "build it with scripts/build-agent-static",
    )?;
    check_static(
        "busybox",
        &options.busybox,
        "install Debian's busybox-static (/bin/busybox)",
    )?;
    // The agent's HTTP client will not start without system CAs, even for a
    // plain-HTTP conductor.
    let ca_bundle = fs::read(&options.ca_bundle).map_err(io_error(format!(
        "reading the CA bundle {}",
        options.ca_bundle.display()
    )))?;
    if !String::from_utf8_lossy(&ca_bundle).contains("-----BEGIN CERTIFICATE-----") {
        return Err(RamdiskError::NotACaBundle {
            path: options.ca_bundle.display().to_string(),
        });
    }
    let applets = busybox_applets(&options.busybox);
    if let Some(applets) = &applets {
        let names: BTreeSet<&str> = applets
            .iter()
            .filter_map(|a| a.rsplit('/').next())
            .collect();
        let missing: Vec<String> = REQUIRED_APPLETS
            .iter()
            .filter(|a| !names.contains(*a))
            .map(|a| a.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(RamdiskError::MissingApplets {
                path: options.busybox.display().to_string(),
                applets: missing,
            });
        }
    }

    let aliases = fs::read_to_string(modules_dir.join("modules.alias")).unwrap_or_default();
    let dep = modules::ModuleDep::parse(&dep_text)?.with_aliases(&aliases);
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin"))
        .map(|t| modules::parse_builtin(&t))
        .unwrap_or_default();
    let required: Vec<String> = REQUIRED_MODULES
        .iter()
        .map(|m| m.to_string())
        .chain(options.extra_modules.iter().cloned())
        .collect();
    let optional: Vec<String> = OPTIONAL_MODULES.iter().map(|m| m.to_string()).collect();
    let resolution = dep.resolve(&required, &optional, &builtin, &dir_name)?;
    let missing_files: Vec<String> = resolution
        .load_order
        .iter()
        .filter(|m| !modules_dir.join(&m.path).is_file())
        .map(|m| m.path.clone())
        .collect();
    if !missing_files.is_empty() {
        return Err(RamdiskError::ModuleFilesMissing {
            dir: dir_name,
            files: missing_files,
        });
    }

    let mut tree = Tree::default();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "mnt", "var/log",
    ] {
        tree.directory(dir, 0o755);
    }
    tree.directory("root", 0o700);
    tree.directory("tmp", 0o1777);
    tree.directory("var/tmp", 0o1777);
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    tree.char_device("dev/console", 0o600, 5, 1);
    tree.file(
        "init",
        0o755,
        Data::Bytes(
            INIT_SCRIPT
                .replace("@KERNEL_VERSION@", &version)
                .into_bytes(),
        ),
    );
    tree.file(
        "etc/ferric/udhcpc.script",
        0o755,
        Data::Bytes(UDHCPC_SCRIPT.as_bytes().to_vec()),
    );
    tree.file(
        "etc/hosts",
        0o644,
        Data::Bytes(b"127.0.0.1 localhost\n::1 localhost\n".to_vec()),
    );
    tree.file(
        DEFAULT_CA_BUNDLE.trim_start_matches('/'),
        0o644,
        Data::Bytes(ca_bundle),
    );
    tree.file(
        "usr/bin/ferric-agent",
        0o755,
        Data::Path(options.agent.clone()),
    );
    tree.file("bin/busybox", 0o755, Data::Path(options.busybox.clone()));
    match &applets {
        Some(applets) => {
            for applet in applets {
                let depth = applet.matches('/').count();
                let target = format!("{}bin/busybox", "../".repeat(depth));
                tree.symlink(applet, &target);
            }
        }
        // A busybox this machine cannot run: the applets the init needs.
        None => {
            for applet in REQUIRED_APPLETS {
                tree.symlink(&format!("bin/{applet}"), "busybox");
            }
        }
    }
    let module_root = format!("lib/modules/{version}");
    let mut load_list = String::new();
    for module in &resolution.load_order {
        let stored = modules::uncompressed_path(&module.path);
        tree.file(
            &format!("{module_root}/{stored}"),
            0o644,
            module_data(&modules_dir.join(&module.path))?,
        );
        load_list.push_str(&stored);
        load_list.push('\n');
    }
    tree.file(
        &format!("{module_root}/modules.dep"),
        0o644,
        Data::Bytes(
            modules::pruned_dep(&resolution.load_order, modules::uncompressed_path).into_bytes(),
        ),
    );
    tree.file(
        "etc/ferric/modules",
        0o644,
        Data::Bytes(load_list.into_bytes()),
    );

    let (archive_size, compressed_size) =
        write_compressed(&options.output, options.compress, |archive| {
            tree.write(archive)
        })?;
    Ok(BuildReport {
        kernel_version: version,
        modules: resolution
            .load_order
            .iter()
            .map(|m| m.name.clone())
            .collect(),
        builtin: resolution.builtin,
        absent: resolution.absent,
        compress: options.compress,
        archive_size,
        compressed_size,
    })
}

/// Writes a compressed archive to a temporary file next to `output` and
/// renames it into place when complete. Returns the archive's size and the
/// compressed size.
fn write_compressed(
    output: &Path,
    compress: Compress,
    fill: impl FnOnce(&mut cpio::NewcWriter<Compressor<BufWriter<File>>>) -> Result<()>,
) -> Result<(u64, u64)> {
    let out_name = output.display().to_string();
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::NamedTempFile::new_in(&dir)
        .map_err(io_error(format!("creating a file in {}", dir.display())))?;
    let file = temp
        .reopen()
        .map_err(io_error(format!("opening a file in {}", dir.display())))?;
    let compressor = Compressor::new(BufWriter::new(file), compress).map_err(io_error(format!(
        "starting the {} compressor",
        compress.name()
    )))?;
    let mut archive = cpio::NewcWriter::new(compressor);
    fill(&mut archive)?;
    let (compressor, archive_size) = archive.finish()?;
    let file = compressor
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(io_error(format!("writing {out_name}")))?;
    file.sync_all()
        .map_err(io_error(format!("writing {out_name}")))?;
    let compressed_size = file
        .metadata()
        .map_err(io_error(format!("writing {out_name}")))?
        .len();
    temp.persist(output)
        .map_err(|e| io_error(format!("renaming into {out_name}"))(e.error))?;
    Ok((archive_size, compressed_size))
}
