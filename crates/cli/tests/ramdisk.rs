//! `ferric ramdisk build|iso`: the cpio writer read back by GNU cpio, module
//! dependency resolution, kernel parameter checks, ramdisks and ISOs built
//! from synthetic inputs, and a real Debian cloud kernel booting the ramdisk
//! in QEMU until the agent looks itself up and heartbeats.
//!
//! The QEMU test needs `scripts/fetch-kernel` to have run; without a kernel
//! it is skipped with a message, unless FERRIC_REQUIRE_KERNEL is set. It
//! takes the static agent from FERRIC_AGENT_STATIC, else builds it with
//! scripts/build-agent-static.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferric_cli::ramdisk::cpio::{CpioError, NewcWriter};
use ferric_cli::ramdisk::modules::{self, ModuleDep, ModuleError};
use ferric_cli::ramdisk::{
    elf_linkage, kernel_version, validate_kernel_params, KernelParamsError, Linkage,
    MAX_KERNEL_PARAMS_LEN,
};

fn ferric(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferric"))
        .args(args)
        .output()
        .expect("ferric runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a tool from a Debian package; its absence fails the test.
fn tool_output(cmd: &str, args: &[&str], stdin: Option<&Path>) -> Output {
    let mut command = Command::new(cmd);
    command.args(args);
    if let Some(path) = stdin {
        command.stdin(fs::File::open(path).unwrap());
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("{cmd} cannot run ({e}): run scripts/install-deps"))
}

fn tool(cmd: &str, args: &[&str], stdin: Option<&Path>) -> String {
    let out = tool_output(cmd, args, stdin);
    assert!(out.status.success(), "{cmd} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A message that shows even when the test's output is captured.
fn loud(message: &str) {
    let bar = "=".repeat(78);
    let _ = writeln!(std::io::stderr(), "\n{bar}\n{message}\n{bar}");
}

// ---------------------------------------------------------------- cpio

/// Extracts an archive with GNU cpio into `dest` (its -D is not honoured
/// with patterns: cpio runs there instead).
fn extract(archive: &Path, dest: &Path, args: &[&str]) {
    let out = Command::new("cpio")
        .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
        .args(args)
        .current_dir(dest)
        .stdin(fs::File::open(archive).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("cpio cannot run ({e}): apt-get install cpio"));
    assert!(out.status.success(), "cpio -i: {}", text(&out));
}

/// Builds an archive of every entry kind, with names and sizes that
/// exercise newc's 4-byte padding.
fn sample_archive(with_device: bool) -> Vec<u8> {
    let mut w = NewcWriter::new(Vec::new());
    w.directory("d", 0o755).unwrap();
    w.directory("d/sub", 0o700).unwrap();
    for (i, name) in ["a", "ab", "abc", "abcd", "abcde", "abcdef"]
        .iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..i as u8).map(|b| b'A' + b).collect();
        w.file(
            &format!("d/{name}"),
            0o640,
            data.len() as u64,
            &mut data.as_slice(),
        )
        .unwrap();
    }
    let big: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
    w.file("d/sub/big", 0o755, big.len() as u64, &mut big.as_slice())
        .unwrap();
    w.symlink("d/link", "sub/big").unwrap();
    if with_device {
        w.directory("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
    }
    let (bytes, size) = w.finish().unwrap();
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(bytes.len() % 4, 0);
    bytes
}

#[test]
fn cpio_archives_read_back_with_gnu_cpio() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.cpio");
    fs::write(&archive, sample_archive(false)).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    extract(&archive, &out, &[]);
    for (i, name) in ["a", "ab", "abc", "abcd", "abcde", "abcdef"]
        .iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..i as u8).map(|b| b'A' + b).collect();
        let path = out.join("d").join(name);
        assert_eq!(fs::read(&path).unwrap(), data, "{name}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
    }
    let big = fs::read(out.join("d/sub/big")).unwrap();
    assert_eq!(big.len(), 100_003);
    assert!(big.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert_eq!(
        fs::read_link(out.join("d/link")).unwrap(),
        Path::new("sub/big")
    );
    assert_eq!(
        fs::metadata(out.join("d/sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );

    // Device nodes: listed (extracting one needs root).
    let with_device = dir.path().join("b.cpio");
    fs::write(&with_device, sample_archive(true)).unwrap();
    let listing = tool("cpio", &["-t", "-v", "--quiet"], Some(&with_device));
    let console = listing
        .lines()
        .find(|l| l.ends_with(" dev/console"))
        .unwrap_or_else(|| panic!("no dev/console in\n{listing}"));
    assert!(console.starts_with("crw-------"), "{console}");
    assert!(console.contains("5,"), "{console}");
    let link = listing.lines().find(|l| l.contains("d/link")).unwrap();
    assert!(
        link.starts_with('l') && link.ends_with("d/link -> sub/big"),
        "{link}"
    );
    assert_eq!(listing.lines().count(), 12, "{listing}");
}

#[test]
fn cpio_refuses_paths_the_kernel_would_misplace_and_short_data() {
    let mut w = NewcWriter::new(Vec::new());
    for bad in [
        "",
        "/etc/passwd",
        "a/../b",
        "a//b",
        "./a",
        "a/",
        "TRAILER!!!",
    ] {
        let err = w.directory(bad, 0o755).unwrap_err();
        assert!(matches!(err, CpioError::BadPath { .. }), "{bad:?}: {err}");
    }
    let err = w.file("f", 0o644, 10, &mut &b"short"[..]).unwrap_err();
    assert!(
        matches!(
            err,
            CpioError::ShortData {
                expected: 10,
                got: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = w
        .file("huge", 0o644, 1 << 32, &mut std::io::empty())
        .unwrap_err();
    assert!(matches!(err, CpioError::TooLarge { .. }), "{err}");
}

// ---------------------------------------------------------------- modules

const MODULES_DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/lib/crc-t10dif.ko
kernel/lib/crc-t10dif.ko:
kernel/fs/fat/vfat.ko.xz: kernel/fs/fat/fat.ko.xz
kernel/fs/fat/fat.ko.xz:
kernel/fs/isofs/isofs.ko:
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
kernel/drivers/unused/unused.ko:
";

fn names(order: &[modules::Module]) -> Vec<&str> {
    order.iter().map(|m| m.name.as_str()).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn modules_load_after_what_they_need_each_once() {
    let dep = ModuleDep::parse(MODULES_DEP).unwrap();
    let builtin = modules::parse_builtin("kernel/drivers/ata/ahci.ko\n");
    let r = dep
        .resolve(
            &strings(&["virtio_net", "virtio-pci", "sd_mod", "virtio_scsi", "vfat"]),
            &strings(&["nvme", "ahci", "e1000e"]),
            &builtin,
            "/lib/modules/x",
        )
        .unwrap();
    let order = names(&r.load_order);
    assert_eq!(
        order,
        [
            "failover",
            "net_failover",
            "virtio_net",
            "virtio_pci_modern_dev",
            "virtio_ring",
            "virtio",
            "virtio_pci",
            "scsi_common",
            "scsi_mod",
            "crc_t10dif",
            "sd_mod",
            "virtio_scsi",
            "fat",
            "vfat",
            "nvme_core",
            "nvme",
        ]
    );
    // Every module comes after all it needs.
    for (i, module) in r.load_order.iter().enumerate() {
        for need in &module.needs {
            let at = r.load_order.iter().position(|m| &m.path == need).unwrap();
            assert!(
                at < i,
                "{} before {}",
                module.name,
                modules::module_name(need)
            );
        }
    }
    assert_eq!(order.iter().collect::<BTreeSet<_>>().len(), order.len());
    assert_eq!(r.builtin, ["ahci"]);
    assert_eq!(r.absent, ["e1000e"]);

    // Aliases and file system names, as modules.alias gives them.
    let aliased = ModuleDep::parse(MODULES_DEP).unwrap().with_aliases(
        "alias fs-iso9660 isofs\nalias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_pci\n",
    );
    assert_eq!(aliased.get("iso9660").unwrap().name, "isofs");
    assert_eq!(aliased.get("fs-iso9660").unwrap().name, "isofs");
    assert!(dep.get("iso9660").is_none());

    let pruned = modules::pruned_dep(&r.load_order, modules::uncompressed_path);
    assert!(
        pruned.contains("kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n"),
        "{pruned}"
    );
    assert!(!pruned.contains("unused"), "{pruned}");
    assert!(!pruned.contains("virtio_blk"), "{pruned}");
    assert_eq!(pruned.lines().count(), r.load_order.len());
    // The pruned file reads back as the same graph.
    let again = ModuleDep::parse(&pruned).unwrap();
    assert_eq!(again.get("vfat").unwrap().needs, ["kernel/fs/fat/fat.ko"]);
}

#[test]
fn missing_modules_are_listed_together() {
    let dep = ModuleDep::parse(MODULES_DEP).unwrap();
    let err = dep
        .resolve(
            &strings(&["virtio_net", "e1000", "iso9660", "virtio_blk"]),
            &[],
            &BTreeSet::new(),
            "/lib/modules/6.1.0-x",
        )
        .unwrap_err();
    match &err {
        ModuleError::NotFound { names, .. } => assert_eq!(names, &["e1000", "iso9660"]),
        other => panic!("{other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("/lib/modules/6.1.0-x/modules.dep") && message.contains("e1000, iso9660"),
        "{message}"
    );
}

#[test]
fn broken_modules_dep_files_are_refused() {
    let dangling = ModuleDep::parse("kernel/a.ko: kernel/b.ko\n").unwrap();
    let err = dangling
        .resolve(&strings(&["a"]), &[], &BTreeSet::new(), "d")
        .unwrap_err();
    assert!(
        matches!(&err, ModuleError::DanglingDependency { dependency, by } if dependency == "kernel/b.ko" && by == "a"),
        "{err}"
    );
    let cycle = ModuleDep::parse("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n").unwrap();
    let err = cycle
        .resolve(&strings(&["a"]), &[], &BTreeSet::new(), "d")
        .unwrap_err();
    assert!(matches!(err, ModuleError::Cycle { .. }), "{err}");
    for bad in [
        "no colon here\n",
        "/abs/a.ko:\n",
        "kernel/a.txt:\n",
        "kernel/a.ko: ../b.ko\n",
    ] {
        assert!(
            matches!(
                ModuleDep::parse(bad),
                Err(ModuleError::BadLine { line: 1, .. })
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        modules::module_name("kernel/lib/crc-t10dif.ko.zst"),
        "crc_t10dif"
    );
    assert_eq!(
        modules::uncompressed_path("kernel/x/y.ko.zst"),
        "kernel/x/y.ko"
    );
    assert_eq!(modules::uncompressed_path("kernel/x/y.ko"), "kernel/x/y.ko");
}

// ---------------------------------------------------------------- parameters, ELF, bzImage

#[test]
fn kernel_parameters_are_one_printable_line_of_bounded_length() {
    assert_eq!(
        validate_kernel_params("console=ttyS0  ipa-api-url=http://10.0.2.2:6385 ipa-debug")
            .unwrap(),
        [
            "console=ttyS0",
            "ipa-api-url=http://10.0.2.2:6385",
            "ipa-debug"
        ]
    );
    assert!(validate_kernel_params("").unwrap().is_empty());
    let cases: &[(&str, KernelParamsError)] = &[
        ("a=1\nb=2", KernelParamsError::LineBreak { at: 3 }),
        ("a=1\rb", KernelParamsError::LineBreak { at: 3 }),
        (
            "a=\t1",
            KernelParamsError::ControlCharacter { at: 2, byte: 9 },
        ),
        (
            "a=\x7f",
            KernelParamsError::ControlCharacter { at: 2, byte: 0x7f },
        ),
        (
            "a=\x1b[0m",
            KernelParamsError::ControlCharacter { at: 2, byte: 0x1b },
        ),
        ("a=é", KernelParamsError::NotAscii { at: 2 }),
        (
            "a=\"b c\"",
            KernelParamsError::Quote {
                at: 2,
                character: '"',
            },
        ),
        (
            "a='b'",
            KernelParamsError::Quote {
                at: 2,
                character: '\'',
            },
        ),
        (
            "a=\\",
            KernelParamsError::Quote {
                at: 2,
                character: '\\',
            },
        ),
    ];
    for (params, expected) in cases {
        assert_eq!(
            &validate_kernel_params(params).unwrap_err(),
            expected,
            "{params:?}"
        );
    }
    let longest = "x".repeat(MAX_KERNEL_PARAMS_LEN);
    assert!(validate_kernel_params(&longest).is_ok());
    assert_eq!(
        validate_kernel_params(&format!("{longest}y")).unwrap_err(),
        KernelParamsError::TooLong {
            len: MAX_KERNEL_PARAMS_LEN + 1,
            max: MAX_KERNEL_PARAMS_LEN
        }
    );
}

/// The start of an x86 bzImage whose setup header names `version`.
fn fake_kernel(version: &str) -> Vec<u8> {
    let mut image = vec![0u8; 0x1000];
    image[0x1f1] = 4; // setup_sects
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x20e..0x210].copy_from_slice(&0x0600u16.to_le_bytes());
    let text = format!("{version} (debian-kernel@lists.debian.org) #1 SMP\0");
    image[0x800..0x800 + text.len()].copy_from_slice(text.as_bytes());
    image
}

/// The smallest static x86-64 ELF header: no program headers at all.
fn fake_static_program() -> Vec<u8> {
    let mut elf = vec![0u8; 128];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[6] = 1;
    elf[16] = 2; // ET_EXEC
    elf[18] = 62; // EM_X86_64
    elf[54] = 56; // e_phentsize
    elf.extend_from_slice(b"the agent's code");
    elf
}

#[test]
fn kernels_and_programs_are_recognised() {
    let mut kernel = std::io::Cursor::new(fake_kernel("6.1.0-99-cloud-amd64"));
    assert_eq!(
        kernel_version(&mut kernel).as_deref(),
        Some("6.1.0-99-cloud-amd64")
    );
    assert_eq!(
        kernel_version(&mut std::io::Cursor::new(vec![0u8; 4096])),
        None
    );
    assert_eq!(
        elf_linkage(&mut std::io::Cursor::new(fake_static_program())).unwrap(),
        Linkage::Static
    );
    let ls = fs::read("/bin/ls").unwrap();
    match elf_linkage(&mut std::io::Cursor::new(ls)).unwrap() {
        Linkage::Dynamic(interp) => assert!(interp.contains("ld-linux"), "{interp}"),
        other => panic!("/bin/ls is {other:?}"),
    }
    assert!(elf_linkage(&mut std::io::Cursor::new(b"#!/bin/sh\n".to_vec())).is_err());
}

// ---------------------------------------------------------------- build from synthetic inputs

const BUSYBOX: &str = "/bin/busybox";

fn static_busybox() -> &'static str {
    let bytes = fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX}: {e}: apt-get install busybox-static"));
    assert_eq!(
        elf_linkage(&mut std::io::Cursor::new(bytes)).unwrap(),
        Linkage::Static,
        "{BUSYBOX} is not static: apt-get install busybox-static"
    );
    BUSYBOX
}

struct FakeKernel {
    _dir: tempfile::TempDir,
    root: PathBuf,
    kernel: PathBuf,
    modules: PathBuf,
    agent: PathBuf,
}

const VERSION: &str = "6.1.0-99-test-amd64";

/// A kernel tree as Debian's package unpacks: boot/vmlinuz-V, boot/config-V,
/// lib/modules/V with modules.dep, modules.builtin and module files (vfat
/// and fat compressed with xz, as newer kernels ship them).
fn fake_kernel_tree() -> FakeKernel {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let boot = root.join("boot");
    fs::create_dir_all(&boot).unwrap();
    let kernel = boot.join(format!("vmlinuz-{VERSION}"));
    fs::write(&kernel, fake_kernel(VERSION)).unwrap();
    fs::write(
        boot.join(format!("config-{VERSION}")),
        "CONFIG_BLK_DEV_INITRD=y\nCONFIG_DEVTMPFS=y\nCONFIG_RD_GZIP=y\nCONFIG_RD_XZ=y\nCONFIG_RD_ZSTD=y\n",
    )
    .unwrap();
    let modules = root.join("lib/modules").join(VERSION);
    for line in MODULES_DEP.lines() {
        let path = line.split(':').next().unwrap();
        let file = modules.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        let contents = format!("module {}\n", modules::module_name(path));
        match path.strip_suffix(".xz") {
            Some(plain) => {
                let plain = modules.join(plain);
                fs::write(&plain, &contents).unwrap();
                tool("xz", &["--check=crc32", p(&plain)], None);
            }
            None => fs::write(&file, contents).unwrap(),
        }
    }
    fs::write(modules.join("modules.dep"), MODULES_DEP).unwrap();
    fs::write(
        modules.join("modules.builtin"),
        "kernel/drivers/ata/ahci.ko\n",
    )
    .unwrap();
    let agent = root.join("ferric-agent");
    fs::write(&agent, fake_static_program()).unwrap();
    FakeKernel {
        _dir: dir,
        root,
        kernel,
        modules,
        agent,
    }
}

fn build_args<'a>(k: &'a FakeKernel, out: &'a Path, compress: &'a str) -> Vec<&'a str> {
    vec![
        "ramdisk",
        "build",
        "--kernel",
        p(&k.kernel),
        "--modules",
        p(&k.modules),
        "--agent",
        p(&k.agent),
        "--busybox",
        static_busybox(),
        "--compress",
        compress,
        "-o",
        p(out),
    ]
}

/// Unpacks an initramfs with the real tools into `dest`.
fn unpack(initrd: &Path, decompressor: &str, dest: &Path) -> String {
    let dir = dest.parent().unwrap();
    let cpio = dir.join("unpacked.cpio");
    let data = tool_output(decompressor, &["-dc", p(initrd)], None);
    assert!(data.status.success(), "{decompressor}: {}", text(&data));
    fs::write(&cpio, &data.stdout).unwrap();
    fs::create_dir_all(dest).unwrap();
    extract(&cpio, dest, &["--nonmatching", "dev/console"]);
    tool("cpio", &["-t", "-v", "--quiet"], Some(&cpio))
}

#[test]
fn a_ramdisk_holds_init_busybox_agent_and_the_modules_in_order() {
    let k = fake_kernel_tree();
    for (compress, decompressor) in [("zstd", "zstd"), ("gzip", "gzip"), ("xz", "xz")] {
        let out_dir = k.root.join(format!("out-{compress}"));
        fs::create_dir_all(&out_dir).unwrap();
        let initrd = out_dir.join("initrd");
        let out = ferric(&build_args(&k, &initrd, compress));
        assert!(out.status.success(), "{}", text(&out));
        let report = text(&out);
        assert!(report.contains("MiB"), "{report}");
        assert!(
            report.contains("(left out): sr_mod e1000 e1000e igb"),
            "{report}"
        );
        assert!(report.contains("built into the kernel: ahci"), "{report}");
        if compress == "xz" {
            // The kernel's xz decoder knows CRC32 only.
            let info = tool("xz", &["--robot", "--list", "-v", p(&initrd)], None);
            assert!(info.contains("CRC32") && !info.contains("CRC64"), "{info}");
        }
        let root = out_dir.join("root");
        let listing = unpack(&initrd, decompressor, &root);

        let console = listing
            .lines()
            .find(|l| l.ends_with(" dev/console"))
            .unwrap();
        assert!(console.starts_with("crw-------"), "{console}");
        let init = fs::read_to_string(root.join("init")).unwrap();
        assert!(init.contains(&format!("kernel_version={VERSION}\n")));
        assert!(!init.contains("@KERNEL_VERSION@"));
        for script in [root.join("init"), root.join("etc/ferric/udhcpc.script")] {
            let check = tool_output(BUSYBOX, &["sh", "-n", p(&script)], None);
            assert!(
                check.status.success(),
                "{}: {}",
                script.display(),
                text(&check)
            );
        }
        assert_eq!(
            fs::read(root.join("usr/bin/ferric-agent")).unwrap(),
            fs::read(&k.agent).unwrap()
        );
        assert_eq!(
            fs::read(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap(),
            fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap()
        );
        assert_eq!(
            fs::read(root.join("bin/busybox")).unwrap(),
            fs::read(BUSYBOX).unwrap()
        );
        for applet in [
            "bin/sh",
            "sbin/insmod",
            "bin/mount",
            "usr/bin/udhcpc",
            "sbin/ip",
        ] {
            let link = fs::read_link(root.join(applet))
                .or_else(|_| {
                    // busybox decides where its applets live; find it anywhere.
                    let name = applet.rsplit('/').next().unwrap();
                    ["bin", "sbin", "usr/bin", "usr/sbin"]
                        .iter()
                        .find_map(|d| fs::read_link(root.join(d).join(name)).ok())
                        .ok_or(())
                })
                .unwrap_or_else(|_| panic!("no {applet} in the ramdisk"));
            assert!(
                link.ends_with("bin/busybox") || link == Path::new("busybox"),
                "{applet} -> {link:?}"
            );
        }

        let module_root = root.join("lib/modules").join(VERSION);
        let order = fs::read_to_string(root.join("etc/ferric/modules")).unwrap();
        let order: Vec<&str> = order.lines().collect();
        let position = |name: &str| {
            order
                .iter()
                .position(|p| modules::module_name(p) == name)
                .unwrap_or_else(|| panic!("{name} not loaded: {order:?}"))
        };
        assert!(position("failover") < position("net_failover"));
        assert!(position("net_failover") < position("virtio_net"));
        assert!(position("virtio") < position("virtio_pci"));
        assert!(position("scsi_mod") < position("sd_mod"));
        assert!(position("fat") < position("vfat"));
        assert!(position("nvme_core") < position("nvme"));
        for path in &order {
            let contents = fs::read_to_string(module_root.join(path)).unwrap();
            assert_eq!(contents, format!("module {}\n", modules::module_name(path)));
        }
        // xz modules are stored unpacked; the unused one is left out.
        assert!(order.contains(&"kernel/fs/fat/vfat.ko"), "{order:?}");
        assert!(!listing.contains("unused"), "{listing}");
        assert!(!listing.contains(".ko.xz"), "{listing}");
        let dep = fs::read_to_string(module_root.join("modules.dep")).unwrap();
        assert!(
            dep.contains("kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n"),
            "{dep}"
        );
        assert_eq!(dep.lines().count(), order.len());
    }
}

#[test]
fn bad_inputs_are_refused_with_what_is_wrong() {
    let k = fake_kernel_tree();
    let out = k.root.join("initrd");
    let run = |args: Vec<&str>| {
        let result = ferric(&args);
        assert!(!result.status.success(), "{}", text(&result));
        assert!(!out.exists(), "a failed build left {}", out.display());
        text(&result)
    };

    // The modules of another kernel.
    let other = k.root.join("lib/modules/6.1.0-1-other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("modules.dep"), MODULES_DEP).unwrap();
    let mut args = build_args(&k, &out, "zstd");
    args[5] = p(&other);
    let message = run(args);
    assert!(
        message.contains(&format!("version {VERSION}")) && message.contains("6.1.0-1-other"),
        "{message}"
    );

    // A directory without modules.dep.
    let mut args = build_args(&k, &out, "zstd");
    args[5] = p(&k.root);
    assert!(run(args).contains("has no modules.dep"));

    // A dynamically linked agent.
    let mut args = build_args(&k, &out, "zstd");
    args[7] = "/bin/ls";
    let message = run(args);
    assert!(
        message.contains("dynamically linked") && message.contains("build-agent-static"),
        "{message}"
    );

    // A CA bundle that is not one.
    let mut args = build_args(&k, &out, "zstd");
    args.extend(["--ca-bundle", p(&k.agent)]);
    let message = run(args);
    assert!(message.contains("holds no PEM certificate"), "{message}");

    // A kernel that is not one.
    let mut args = build_args(&k, &out, "zstd");
    args[3] = p(&k.agent);
    assert!(run(args).contains("not an x86 Linux kernel"));

    // A kernel that cannot unpack xz.
    fs::write(
        k.root.join(format!("boot/config-{VERSION}")),
        "CONFIG_BLK_DEV_INITRD=y\nCONFIG_DEVTMPFS=y\nCONFIG_RD_GZIP=y\n# CONFIG_RD_XZ is not set\n",
    )
    .unwrap();
    let message = run(build_args(&k, &out, "xz"));
    assert!(message.contains("CONFIG_RD_XZ"), "{message}");

    // Module files missing on disk.
    fs::remove_file(k.modules.join("kernel/drivers/net/net_failover.ko")).unwrap();
    fs::remove_file(k.modules.join("kernel/fs/isofs/isofs.ko")).unwrap();
    let message = run(build_args(&k, &out, "gzip"));
    assert!(
        message.contains("kernel/drivers/net/net_failover.ko, kernel/fs/isofs/isofs.ko"),
        "{message}"
    );

    // Required modules the kernel does not have, all named at once.
    let pruned: String = MODULES_DEP
        .lines()
        .filter(|l| {
            !l.starts_with("kernel/drivers/scsi/virtio_scsi") && !l.starts_with("kernel/fs/isofs")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(k.modules.join("modules.dep"), pruned).unwrap();
    let mut args = build_args(&k, &out, "gzip");
    args.extend(["--module", "e1000"]);
    let message = run(args);
    assert!(message.contains("virtio_scsi, isofs, e1000"), "{message}");
}

// ---------------------------------------------------------------- ISO

fn xorriso_report(iso: &Path) -> String {
    tool(
        "xorriso",
        &["-indev", p(iso), "-report_el_torito", "plain"],
        None,
    )
}

fn iso_file(iso: &Path, inside: &str, dest: &Path) -> String {
    tool(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            p(iso),
            "-extract",
            inside,
            p(dest),
        ],
        None,
    );
    fs::read_to_string(dest).unwrap()
}

#[test]
fn an_iso_boots_with_bios_and_uefi_and_carries_the_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    fs::write(&kernel, fake_kernel("6.1.0-99-test-amd64")).unwrap();
    let initrd = dir.path().join("initrd=odd name");
    fs::write(&initrd, b"not really an initramfs").unwrap();
    let iso = dir.path().join("ramdisk.iso");
    let append = "console=ttyS0 ipa-api-url=http://10.0.2.2:6385 $notavariable;x";
    let out = ferric(&[
        "ramdisk",
        "iso",
        "-k",
        p(&kernel),
        "-i",
        p(&initrd),
        "-o",
        p(&iso),
        "--append",
        append,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("BIOS (isolinux) and UEFI (GRUB)"),
        "{}",
        text(&out)
    );

    let report = xorriso_report(&iso);
    let images: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("El Torito boot img"))
        .collect();
    assert_eq!(images.len(), 2, "{report}");
    assert!(images[0].contains("BIOS"), "{report}");
    assert!(images[1].contains("UEFI"), "{report}");
    assert!(report.contains("/isolinux/isolinux.bin"), "{report}");
    assert!(report.contains("/boot/efi.img"), "{report}");

    let cfg = iso_file(
        &iso,
        "/isolinux/isolinux.cfg",
        &dir.path().join("isolinux.cfg"),
    );
    assert!(cfg.contains(&format!("  APPEND {append}\n")), "{cfg}");
    let grub = iso_file(&iso, "/boot/grub/grub.cfg", &dir.path().join("grub.cfg"));
    assert!(
        grub.contains("linux /boot/vmlinuz 'console=ttyS0' 'ipa-api-url=http://10.0.2.2:6385' '$notavariable;x'\n"),
        "{grub}"
    );
    assert_eq!(
        iso_file(&iso, "/boot/initrd", &dir.path().join("initrd.back")),
        "not really an initramfs"
    );

    // BIOS only.
    let bios = dir.path().join("bios.iso");
    let out = ferric(&[
        "ramdisk",
        "iso",
        "-k",
        p(&kernel),
        "-i",
        p(&initrd),
        "-o",
        p(&bios),
        "--no-uefi",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report = xorriso_report(&bios);
    assert_eq!(
        report
            .lines()
            .filter(|l| l.starts_with("El Torito boot img"))
            .count(),
        1,
        "{report}"
    );

    // Refused parameters and kernels: no ISO.
    let refused = dir.path().join("refused.iso");
    for (append, why) in [
        ("a=1\nb=2", "one line"),
        ("a=\u{7}", "control character"),
        ("a=\"b c\"", "quotes"),
    ] {
        let out = ferric(&[
            "ramdisk",
            "iso",
            "-k",
            p(&kernel),
            "-i",
            p(&initrd),
            "-o",
            p(&refused),
            "--append",
            append,
        ]);
        assert!(!out.status.success());
        assert!(text(&out).contains(why), "{append:?}: {}", text(&out));
        assert!(!refused.exists());
    }
    let out = ferric(&[
        "ramdisk",
        "iso",
        "-k",
        p(&initrd),
        "-i",
        p(&initrd),
        "-o",
        p(&refused),
    ]);
    assert!(
        text(&out).contains("not an x86 Linux kernel"),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------- QEMU

/// The Debian cloud kernel scripts/fetch-kernel put in the cache: vmlinuz
/// and its modules directory. None (after a loud message) when there is
/// none and FERRIC_REQUIRE_KERNEL is unset.
fn fetched_kernel(test: &str) -> Option<(PathBuf, PathBuf)> {
    let cache = std::env::var_os("FERRIC_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".work/kernel"));
    let current = cache.join("current");
    let found = fs::read_dir(current.join("boot")).ok().and_then(|entries| {
        entries.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            let modules = current.join("lib/modules").join(&version);
            modules
                .join("modules.dep")
                .is_file()
                .then(|| (e.path(), modules))
        })
    });
    if found.is_none() {
        let message = format!(
            "{test}: no kernel in {}: run scripts/fetch-kernel",
            current.display()
        );
        if std::env::var_os("FERRIC_REQUIRE_KERNEL").is_some() {
            panic!("{message} (FERRIC_REQUIRE_KERNEL is set)");
        }
        loud(&format!("SKIPPED {message}"));
    }
    found
}

/// The static ferric-agent: FERRIC_AGENT_STATIC, else built now.
fn static_agent() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRIC_AGENT_STATIC") {
        return PathBuf::from(path);
    }
    let out = Command::new(workspace_root().join("scripts/build-agent-static"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/build-agent-static runs");
    assert!(out.status.success(), "build-agent-static failed");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    PathBuf::from(path.lines().last().unwrap())
}

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    body: String,
    at: Instant,
}

const NODE: &str = "5a1b2c3d-0000-4000-8000-00000000f00d";
const TOKEN: &str = "ramdisk-test-token";
const MAC: &str = "52:54:00:fe:12:34";

/// A conductor that answers every lookup with one node and accepts every
/// heartbeat; each request goes to the channel.
fn fake_conductor() -> (u16, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || serve_one(stream, tx));
        }
    });
    (port, rx)
}

fn serve_one(stream: TcpStream, tx: mpsc::Sender<Request>) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let at = Instant::now();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok();
    let (status, answer) = if target.starts_with("/v1/lookup") {
        (
            "200 OK",
            format!(
                r#"{{"node": {{"uuid": "{NODE}", "properties": {{}}, "instance_info": {{}}, "driver_internal_info": {{}}}}, "config": {{"agent_token": "{TOKEN}", "heartbeat_timeout": 300}}}}"#
            ),
        )
    } else if target.starts_with(&format!("/v1/heartbeat/{NODE}")) {
        ("202 Accepted", String::new())
    } else {
        ("404 Not Found", String::new())
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = tx.send(Request {
        method,
        target,
        body: String::from_utf8_lossy(&body).into_owned(),
        at,
    });
}

/// A QEMU process, killed when dropped.
struct Qemu {
    child: Child,
    console: PathBuf,
    started: Instant,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// One virtio NIC on QEMU's user network (the host is 10.0.2.2), one
    /// virtio disk, a virtio RNG, 512 MiB, TCG.
    fn start(dir: &Path, name: &str, boot: &[&str]) -> Qemu {
        let console = dir.join(format!("{name}-console.log"));
        let disk = dir.join(format!("{name}-disk.img"));
        fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-m", "512", "-smp", "1", "-nodefaults"])
            .args(["-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-netdev", "user,id=n0"])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={MAC}")])
            .args(["-device", "virtio-rng-pci"])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", disk.display()))
            .args(boot)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("qemu-system-x86_64 ({e}): apt-get install qemu-system-x86")
        });
        Qemu {
            child,
            console,
            started,
        }
    }

    fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits for the agent's lookup and first heartbeat; returns the seconds
    /// from QEMU's start to each, and the two requests.
    fn await_agent(
        &mut self,
        requests: &mpsc::Receiver<Request>,
        budget: Duration,
    ) -> ((f64, Request), (f64, Request)) {
        let mut lookup = None;
        while self.started.elapsed() < budget {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    e.read_to_string(&mut stderr).ok();
                }
                panic!(
                    "QEMU exited ({status}): {stderr}\nconsole:\n{}",
                    self.console()
                );
            }
            let Ok(request) = requests.recv_timeout(Duration::from_millis(500)) else {
                continue;
            };
            let seconds = request.at.duration_since(self.started).as_secs_f64();
            if request.target.starts_with("/v1/lookup") && lookup.is_none() {
                lookup = Some((seconds, request));
            } else if request.target.starts_with("/v1/heartbeat/") {
                let lookup = lookup.expect("a heartbeat before any lookup");
                return (lookup, (seconds, request));
            }
        }
        panic!(
            "no {} from the agent within {budget:?}; console:\n{}",
            if lookup.is_some() {
                "heartbeat"
            } else {
                "lookup"
            },
            self.console()
        );
    }
}

fn boot_budget() -> Duration {
    let secs = std::env::var("FERRIC_BOOT_BUDGET_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    Duration::from_secs(secs)
}

fn check_agent_requests(lookup: &Request, heartbeat: &Request, console: &str) {
    let decoded = lookup.target.replace("%3A", ":").replace("%3a", ":");
    assert!(
        decoded.contains(MAC),
        "lookup without the NIC's MAC: {}",
        lookup.target
    );
    assert_eq!(lookup.method, "GET");
    assert_eq!(heartbeat.method, "POST");
    let beat: serde_json::Value = serde_json::from_str(&heartbeat.body).unwrap();
    assert_eq!(beat["agent_token"], TOKEN, "{beat}");
    // The address QEMU's DHCP server gives: DHCP configured the NIC.
    let callback = beat["callback_url"].as_str().unwrap_or_default();
    assert!(callback.contains("10.0.2.15"), "{beat}");
    assert!(
        console.contains("ferric-init: eth0 has 10.0.2.15/24"),
        "{console}"
    );
    // virtio_blk found the disk.
    assert!(console.contains("[vda]"), "{console}");
}

#[test]
fn the_ramdisk_boots_in_qemu_and_the_agent_looks_up_and_heartbeats() {
    let Some((kernel, modules)) = fetched_kernel("ramdisk QEMU boot") else {
        return;
    };
    let agent = static_agent();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.zst");
    let out = ferric(&[
        "ramdisk",
        "build",
        "--kernel",
        p(&kernel),
        "--modules",
        p(&modules),
        "--agent",
        p(&agent),
        "--busybox",
        static_busybox(),
        "-o",
        p(&initrd),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let size = fs::metadata(&initrd).unwrap().len();
    loud(&format!(
        "ramdisk: {:.1} MiB compressed\n{}",
        size as f64 / (1 << 20) as f64,
        text(&out).trim()
    ));
    assert!(
        size <= 30 << 20,
        "the initramfs is {size} bytes, over 30 MiB"
    );

    let (port, requests) = fake_conductor();
    let append = format!("console=ttyS0 ipa-api-url=http://10.0.2.2:{port}");
    let mut vm = Qemu::start(
        dir.path(),
        "direct",
        &[
            "-kernel",
            p(&kernel),
            "-initrd",
            p(&initrd),
            "-append",
            &append,
        ],
    );
    let ((lookup_s, lookup), (beat_s, beat)) = vm.await_agent(&requests, boot_budget());
    let console = vm.console();
    check_agent_requests(&lookup, &beat, &console);
    loud(&format!(
        "ramdisk boot (-kernel/-initrd, TCG): lookup {lookup_s:.1} s, first heartbeat {beat_s:.1} s after QEMU started"
    ));
    drop(vm);

    // The same kernel and ramdisk from an ISO, booted by isolinux (BIOS).
    let iso = dir.path().join("ramdisk.iso");
    let out = ferric(&[
        "ramdisk",
        "iso",
        "-k",
        p(&kernel),
        "-i",
        p(&initrd),
        "-o",
        p(&iso),
        "--append",
        &append,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    while requests.try_recv().is_ok() {}
    let mut vm = Qemu::start(dir.path(), "iso", &["-cdrom", p(&iso), "-boot", "d"]);
    let ((lookup_s, lookup), (beat_s, beat)) = vm.await_agent(&requests, boot_budget());
    check_agent_requests(&lookup, &beat, &vm.console());
    loud(&format!(
        "ISO boot (isolinux, TCG): lookup {lookup_s:.1} s, first heartbeat {beat_s:.1} s after QEMU started"
    ));
    drop(vm);

    // The same ISO under UEFI firmware (OVMF), booted by GRUB.
    let vars = dir.path().join("OVMF_VARS.fd");
    fs::copy(OVMF_VARS, &vars).unwrap_or_else(|e| panic!("{OVMF_VARS}: {e}: apt-get install ovmf"));
    while requests.try_recv().is_ok() {}
    let code = format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}");
    let vars = format!("if=pflash,format=raw,file={}", vars.display());
    let mut vm = Qemu::start(
        dir.path(),
        "uefi",
        &["-drive", &code, "-drive", &vars, "-cdrom", p(&iso)],
    );
    let ((lookup_s, lookup), (beat_s, beat)) = vm.await_agent(&requests, boot_budget());
    check_agent_requests(&lookup, &beat, &vm.console());
    loud(&format!(
        "ISO boot (UEFI, GRUB, TCG): lookup {lookup_s:.1} s, first heartbeat {beat_s:.1} s after QEMU started"
    ));
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
