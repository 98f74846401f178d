//! Helpers shared by the agent's integration tests: loop devices as disks,
//! partition table checks, Ferric's API served on loopback.
// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Tests in one binary attach loop devices one at a time.
static LOSETUP: Mutex<()> = Mutex::new(());

/// A loop device over a sparse file of its own, detached on drop.
pub struct LoopDisk {
    pub device: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDisk {
    pub fn new(size: u64) -> LoopDisk {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let _one_at_a_time = LOSETUP.lock().unwrap_or_else(|p| p.into_inner());
        // Test binaries run in parallel: two may pick the same free device,
        // and the loser gets EBUSY. Try again.
        let mut attempt = 0;
        let out = loop {
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&backing)
                .output()
                .unwrap();
            attempt += 1;
            if out.status.success() || attempt == 10 {
                break out;
            }
            std::thread::sleep(std::time::Duration::from_millis(100 * attempt));
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDisk {
            device: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
            _dir: dir,
        }
    }

    pub fn name(&self) -> String {
        self.device.to_str().unwrap().to_owned()
    }

    pub fn read(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        std::fs::File::open(&self.device)
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Whether sfdisk finds a partition table (it fails when there is none).
pub fn has_partition_table(path: &Path) -> bool {
    Command::new("sfdisk")
        .arg("-d")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Ferric's API and conductor (fake hardware, SQLite) on a loopback port;
/// returns its base URL and the directory holding its database.
pub async fn start_ferric() -> (String, tempfile::TempDir) {
    use ferric_api::{router, ApiConfig, AppState};
    use ferric_conductor::{Conductor, ConductorConfig};
    use ferric_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.sqlite").display());
    let store = Store::connect(&url).await.unwrap();
    let conductor = Conductor::start(store, ConductorConfig::default())
        .await
        .unwrap();
    let app = router(AppState::new(conductor, ApiConfig::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, dir)
}
