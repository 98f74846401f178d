//! ferric-agent-bench: how fast ferric-agent writes an image it downloads,
//! against `curl | dd` on the same image, server and disk in the same run.
//!
//! An image of random bytes (no holes to skip) is served over HTTP on
//! loopback by a small server in this process that sends files with
//! sendfile(2), so the server costs little CPU. The target is a loop device
//! over a file in `--dir` (tmpfs by default, as IPA's published figures).
//! Each run alternates:
//! - `curl -s URL | dd of=DEV bs=4M iflag=fullblock oflag=direct conv=fsync`
//!   (O_DIRECT: on a loop device over tmpfs about twice as fast as dd
//!   through the page cache, so the stronger baseline);
//! - ferric-agent `--standalone`, asked for `deploy.execute_deploy_step`
//!   `write_image` with the image's sha256 (download, hash in the same
//!   pass, O_DIRECT writes, first MiB held back until verified, fsync).
//!
//! Printed: the best time of each, the ratio of the agent's throughput to
//! `curl | dd`'s (target at least 0.9), the agent's peak RSS (VmHWM, target
//! at most 40 MiB) and the size of the agent binary.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "ferric-agent-bench",
    about = "ferric-agent's image write against curl | dd"
)]
struct Args {
    /// The ferric-agent binary to measure (the static release build).
    #[arg(long)]
    agent: PathBuf,
    /// Working directory for the image and the loop device's backing file.
    #[arg(long, default_value = "/dev/shm/ferric-agent-bench")]
    dir: PathBuf,
    /// Image size, MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Runs of each; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Extra arguments for the agent (e.g. to serve its API without TLS).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

const MIB: u64 = 1 << 20;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let image = args.dir.join("image.raw");
    let backing = args.dir.join("disk.img");
    let result = bench(&args, &image, &backing);
    let _ = fs::remove_file(&image);
    let _ = fs::remove_file(&backing);
    result
}

fn bench(args: &Args, image: &Path, backing: &Path) -> anyhow::Result<()> {
    let size = args.size_mib * MIB;
    eprintln!("writing a {} MiB random image...", args.size_mib);
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "head -c {size} /dev/urandom > '{}'",
        image.display()
    )))?;
    let digest = run_ok(Command::new("sha256sum").arg(image))?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    File::create(backing)?.set_len(size + 64 * MIB)?;
    let device = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(backing))?
        .trim()
        .to_string();
    let _loop = LoopGuard(device.clone());
    let url = serve(image.to_path_buf())?;

    let curl_dd = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        run_ok(Command::new("sh").arg("-c").arg(format!(
            "curl -sS --fail '{url}' | dd of={device} bs=4M iflag=fullblock oflag=direct conv=fsync status=none"
        )))?;
        Ok(started.elapsed())
    };
    // A first, untimed write: the backing file's pages get allocated, so
    // neither side pays for that.
    curl_dd()?;
    let mut dd_best = Duration::MAX;
    let mut agent_best = Duration::MAX;
    let mut peak_kib = 0;
    for run in 1..=args.runs {
        // Alternate which goes first, so drift is shared.
        let (dd, (agent, peak)) = if run % 2 == 1 {
            let dd = curl_dd()?;
            (dd, agent_write(args, &device, &url, &digest, size)?)
        } else {
            let agent = agent_write(args, &device, &url, &digest, size)?;
            (curl_dd()?, agent)
        };
        dd_best = dd_best.min(dd);
        agent_best = agent_best.min(agent);
        peak_kib = peak_kib.max(peak);
        eprintln!(
            "run {run}: curl | dd {:.2} s, ferric-agent {:.2} s, agent peak RSS {:.1} MiB",
            dd.as_secs_f64(),
            agent.as_secs_f64(),
            peak as f64 / 1024.0
        );
    }
    let rate = |d: Duration| size as f64 / MIB as f64 / d.as_secs_f64();
    let binary = fs::metadata(&args.agent)?.len();
    println!("ferric-agent write_image of a {} MiB image over HTTP on loopback to a loop device in {} (best of {})", args.size_mib, args.dir.display(), args.runs);
    println!(
        "  curl | dd:     {:7.2} s  {:6.0} MiB/s",
        dd_best.as_secs_f64(),
        rate(dd_best)
    );
    println!(
        "  ferric-agent:  {:7.2} s  {:6.0} MiB/s  (sha256 verified in the same pass)",
        agent_best.as_secs_f64(),
        rate(agent_best)
    );
    println!(
        "  ratio agent / curl|dd: {:.2}  (target >= 0.9)",
        rate(agent_best) / rate(dd_best)
    );
    println!(
        "  agent peak RSS: {:.1} MiB  (target <= 40)",
        peak_kib as f64 / 1024.0
    );
    println!(
        "  agent binary: {:.1} MiB ({})",
        binary as f64 / MIB as f64,
        args.agent.display()
    );
    Ok(())
}

/// Starts the agent, has it write the image, returns the time the command
/// took and the agent's peak resident memory (KiB).
fn agent_write(
    args: &Args,
    device: &str,
    url: &str,
    digest: &str,
    size: u64,
) -> anyhow::Result<(Duration, u64)> {
    let port = free_port()?;
    let child = Command::new(&args.agent)
        .args([
            "--standalone",
            "--no-power",
            "--cmdline",
            "/dev/null",
            "--include-loop-devices",
        ])
        .args(["--device", device, "--listen", &format!("127.0.0.1:{port}")])
        .args(&args.agent_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.agent.display()))?;
    let agent = ChildGuard(child);
    let base = wait_for_agent(port)?;
    let body = serde_json::json!({
        "name": "deploy.execute_deploy_step",
        "params": {
            "step": {"interface": "deploy", "step": "write_image", "priority": 80, "args": {
                "image_info": {"id": "bench", "urls": [url], "disk_format": "raw",
                               "os_hash_algo": "sha256", "os_hash_value": digest,
                               "image_size": size}}},
            "node": {"uuid": "00000000-0000-0000-0000-000000000000",
                     "properties": {"root_device": {"name": device}},
                     "instance_info": {}},
            "ports": [],
        }
    });
    let started = Instant::now();
    let answer = run_ok(
        Command::new("curl")
            .args([
                "-sS",
                "-k",
                "--fail",
                "-H",
                "Content-Type: application/json",
            ])
            .args(["--max-time", "600", "-d", &body.to_string()])
            .arg(format!("{base}/v1/commands/?wait=true")),
    )?;
    let took = started.elapsed();
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    if answer["command_status"] != "SUCCEEDED" {
        bail!("the agent's write_image failed: {answer}");
    }
    let peak = peak_rss_kib(agent.0.id())?;
    Ok((took, peak))
}

/// The agent's API base URL once it answers (https or http).
fn wait_for_agent(port: u16) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for scheme in ["https", "http"] {
            let base = format!("{scheme}://127.0.0.1:{port}");
            let ok = Command::new("curl")
                .args(["-sk", "--fail", "-o", "/dev/null", "--max-time", "2"])
                .arg(format!("{base}/v1/status"))
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(base);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the agent did not answer on port {port}")
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

/// Serves `file` at `/image.raw` on loopback; one thread per connection,
/// the body sent with sendfile (std's io::copy from a File to a socket).
fn serve(file: PathBuf) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/image.raw", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let file = file.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &file);
            });
        }
    });
    Ok(url)
}

fn answer(stream: TcpStream, file: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let mut source = File::open(file)?;
    let len = source.metadata()?.len();
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )?;
    std::io::copy(&mut source, &mut out)?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let mut err = String::new();
        let _ = out.stderr.as_slice().read_to_string(&mut err);
        bail!("{cmd:?} failed: {}", err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct LoopGuard(String);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
