//! erase_devices_metadata on a loop device: no partition table and no
//! filesystem signature is left, not even one a table written again would
//! bring back. Needs root, as CI has.

mod common;

use common::{has_partition_table, LoopDisk};
use ferric_agent::commands::CommandHandler;
use ferric_agent::inventory::Filter;
use ferric_agent::standard::{Disks, StandardHandler};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `blkid -p` finds at `offset` of the device (empty: nothing).
fn signature_at(device: &Path, offset: u64) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE", "-O", &offset.to_string()])
        .arg(device)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn erase_devices_metadata_leaves_no_table_and_no_filesystem() {
    let disk = LoopDisk::new(128 << 20);
    // A GPT with an ext4 filesystem in its first partition (at 1 MiB), and
    // a swap signature in the second.
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+64M", "-n", "2:0:0"])
        .arg(&disk.device));
    let first = 1u64 << 20;
    let second = first + (64 << 20);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", &format!("offset={first}")])
        .arg(&disk.device)
        .arg("32M"));
    let swap = tempfile::NamedTempFile::new().unwrap();
    std::fs::File::create(swap.path())
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    run(Command::new("mkswap").arg(swap.path()));
    run(Command::new("dd")
        .arg(format!("if={}", swap.path().display()))
        .arg(format!("of={}", disk.name()))
        .args(["bs=1M", "count=1", "conv=notrunc"])
        .arg(format!("seek={}", second >> 20)));
    assert!(has_partition_table(&disk.device));
    assert_eq!(signature_at(&disk.device, first), "ext4");
    assert_eq!(signature_at(&disk.device, second), "swap");

    let agent = StandardHandler::new(Disks::Only {
        sys_root: PathBuf::from("/"),
        filter: Filter { include_loop: true },
        names: vec![disk.name()],
    });
    agent
        .run(
            "clean",
            "execute_clean_step",
            json!({"step": {"step": "erase_devices_metadata", "interface": "deploy",
                            "priority": 99, "args": {}},
                   "node": {"uuid": "n-1"}, "ports": []}),
        )
        .await
        .unwrap();

    assert!(!has_partition_table(&disk.device), "the table survived");
    assert_eq!(
        signature_at(&disk.device, 0),
        "",
        "a signature at the start"
    );
    // The same table written again brings no filesystem back.
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+64M", "-n", "2:0:0"])
        .arg(&disk.device));
    assert_eq!(signature_at(&disk.device, first), "", "the ext4 came back");
    assert_eq!(signature_at(&disk.device, second), "", "the swap came back");
}
