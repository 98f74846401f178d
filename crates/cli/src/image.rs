//! `ferric image ...` and `ferric configdrive ...`: thin commands over the
//! ferric-image crate, run on the operator's machine with no server.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use ferric_image::checksum::{self, Checksum};
use ferric_image::configdrive::{self, ConfigDrive};
use ferric_image::format::{self, Format, Policy};
use ferric_image::pipeline::{self, StreamOptions};
use ferric_image::sink::{FileSink, NullSink};
use ferric_image::writer::{DiskWriter, HoleMode, WriterOptions};
use serde_json::{json, Value};

use crate::Format as OutputFormat;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Detect an image's format and size and say whether Ferric would accept it.
    /// Exits 1 with the reason when the image is refused.
    Inspect {
        file: PathBuf,
        /// The format the image is said to be (Glance's disk_format).
        #[arg(long)]
        declared_format: Option<String>,
        /// Permitted formats, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "raw,gpt,qcow2,iso")]
        permitted: Vec<String>,
    },
    /// Convert an image (qcow2 or raw) to a sparse raw file, checking its
    /// checksum first when one is given.
    Convert {
        source: PathBuf,
        destination: PathBuf,
        /// Expected checksum: hex, ALGO:hex, or the file:// or http:// URL
        /// of a checksum file (`<hex>  <name>` lines).
        #[arg(long)]
        checksum: Option<String>,
        #[arg(long)]
        declared_format: Option<String>,
        /// Also write the block map of the result here.
        #[arg(long)]
        bmap: Option<PathBuf>,
        /// The largest virtual size accepted, in bytes.
        #[arg(long, default_value_t = 1 << 42)]
        max_size: u64,
        /// Accept md5 checksums.
        #[arg(long)]
        allow_md5: bool,
    },
    /// Print the block map of an image (the map of its raw form): the ranges
    /// that hold data, each with its sha256.
    Bmap {
        file: PathBuf,
        /// Write the map here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write an image (raw or qcow2, possibly compressed) to a disk or file
    /// as a deploy does: checksum in the same pass, first MiB held back until
    /// it verified, the target wiped on any failure.
    Write {
        /// The image file, or - for standard input.
        source: String,
        /// A block device or a file.
        target: PathBuf,
        /// Expected checksum: hex, ALGO:hex, or the file:// or http:// URL
        /// of a checksum file (`<hex>  <name>` lines).
        #[arg(long)]
        checksum: Option<String>,
        #[arg(long)]
        declared_format: Option<String>,
        /// Where a qcow2 stream is spooled before conversion.
        #[arg(long, default_value = "/var/tmp")]
        spool_dir: PathBuf,
        /// What happens to holes.
        #[arg(long, value_enum, default_value_t = Holes::Zero)]
        holes: Holes,
        #[arg(long)]
        allow_md5: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Holes {
    Zero,
    Discard,
    Skip,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DriveFormat {
    Iso,
    Vfat,
}

#[derive(Debug, Subcommand)]
pub enum ConfigdriveCommand {
    /// Build an OpenStack config-2 drive from files, or from Ironic's dict
    /// form ({meta_data, network_data, user_data, vendor_data}).
    Build {
        #[arg(
            long,
            required_unless_present = "from_json",
            conflicts_with = "from_json"
        )]
        meta_data: Option<PathBuf>,
        #[arg(long, conflicts_with = "from_json")]
        user_data: Option<PathBuf>,
        #[arg(long, conflicts_with = "from_json")]
        network_data: Option<PathBuf>,
        #[arg(long, conflicts_with = "from_json")]
        vendor_data: Option<PathBuf>,
        /// A JSON file holding Ironic's dict form.
        #[arg(long)]
        from_json: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = DriveFormat::Iso)]
        format: DriveFormat,
        /// Write the gzip+base64 text Ironic sends instead of the image.
        #[arg(long)]
        gzip_base64: bool,
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn policy(declared: Option<&str>, permitted: &[String]) -> anyhow::Result<Policy> {
    let mut policy = Policy::default();
    if !permitted.is_empty() {
        policy.permitted = permitted
            .iter()
            .map(|name| name.parse::<Format>())
            .collect::<Result<_, _>>()?;
    }
    policy.declared = declared.map(str::parse).transpose()?;
    Ok(policy)
}

/// The expected checksum: a digest (`hex` or `ALGO:hex`), or the URL of a
/// checksum file (`file://` or `http://`) holding the line for `image`.
fn checksum(value: Option<&str>, image: &str, allow_md5: bool) -> anyhow::Result<Option<Checksum>> {
    let Some(value) = value else {
        return Ok(None);
    };
    if !checksum::is_url(value) {
        return Ok(Some(Checksum::parse(value, None, allow_md5)?));
    }
    let text = fetch_checksum_file(value)?;
    Ok(Some(Checksum::from_checksum_file(
        &text, image, None, allow_md5,
    )?))
}

/// The largest checksum file read: a SHA256SUMS of a whole release is far
/// smaller.
const CHECKSUM_FILE_MAX: u64 = 1 << 20;

fn fetch_checksum_file(url: &str) -> anyhow::Result<String> {
    let shown = ferric_types::url::mask_credentials(url);
    let mut body = Vec::new();
    if let Some(path) = url.strip_prefix("file://") {
        File::open(path)
            .with_context(|| format!("opening the checksum file {shown}"))?
            .take(CHECKSUM_FILE_MAX + 1)
            .read_to_end(&mut body)
            .with_context(|| format!("reading the checksum file {shown}"))?;
    } else {
        let response = reqwest::blocking::get(url)
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                anyhow::anyhow!("fetching the checksum file {shown}: {}", e.without_url())
            })?;
        response
            .take(CHECKSUM_FILE_MAX + 1)
            .read_to_end(&mut body)
            .with_context(|| format!("reading the checksum file {shown}"))?;
    }
    if body.len() as u64 > CHECKSUM_FILE_MAX {
        bail!("the checksum file {shown} is larger than {CHECKSUM_FILE_MAX} bytes");
    }
    String::from_utf8(body).with_context(|| format!("the checksum file {shown} is not text"))
}

pub fn image_command(output: OutputFormat, cmd: &ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Inspect {
            file,
            declared_format,
            permitted,
        } => inspect(output, file, declared_format.as_deref(), permitted),
        ImageCommand::Convert {
            source,
            destination,
            checksum: sum,
            declared_format,
            bmap,
            max_size,
            allow_md5,
        } => {
            let policy = policy(declared_format.as_deref(), &[])?;
            let expected = checksum(sum.as_deref(), &source.to_string_lossy(), *allow_md5)?;
            let mut src = pipeline::open_image(source)?;
            if let Some(expected) = &expected {
                // Verified before anything is converted.
                expected.verify(&pipeline::hash_file(&mut src, expected.algorithm)?)?;
            }
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(destination)
                .with_context(|| format!("creating {}", destination.display()))?;
            let converted =
                pipeline::convert_file(&mut src, FileSink::new(out), &policy, *max_size);
            let (converted, _) = match converted {
                Ok(done) => done,
                Err(e) => {
                    let _ = std::fs::remove_file(destination);
                    return Err(e.into());
                }
            };
            if let Some(path) = bmap {
                write_file(path, converted.block_map.to_json().as_bytes())?;
            }
            let summary = json!({
                "source_format": converted.inspection.format.name(),
                "virtual_size": converted.virtual_size,
                "data_bytes": converted.data_bytes,
                "ranges": converted.block_map.ranges.len(),
                "checksum_verified": expected.is_some(),
            });
            print(output, &summary, || {
                format!(
                    "converted {} image to raw {}: {} bytes, {} of data in {} ranges{}",
                    converted.inspection.format,
                    destination.display(),
                    converted.virtual_size,
                    converted.data_bytes,
                    converted.block_map.ranges.len(),
                    if expected.is_some() {
                        ", checksum verified"
                    } else {
                        ""
                    }
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Bmap { file, output: out } => {
            let mut src = pipeline::open_image(file)?;
            let (converted, _) =
                pipeline::convert_file(&mut src, NullSink, &Policy::default(), u64::MAX)?;
            let text = converted.block_map.to_json();
            match out {
                Some(path) => write_file(path, text.as_bytes())?,
                None => println!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Write {
            source,
            target,
            checksum: sum,
            declared_format,
            spool_dir,
            holes,
            allow_md5,
        } => {
            let options = StreamOptions {
                checksum: checksum(sum.as_deref(), source, *allow_md5)?,
                policy: policy(declared_format.as_deref(), &[])?,
                spool_dir: Some(spool_dir.clone()),
                ..StreamOptions::default()
            };
            let writer = DiskWriter::open(
                target,
                WriterOptions {
                    holes: match holes {
                        Holes::Zero => HoleMode::Zero,
                        Holes::Discard => HoleMode::Discard,
                        Holes::Skip => HoleMode::Skip,
                    },
                    ..WriterOptions::default()
                },
            )?;
            let started = std::time::Instant::now();
            let report = if source == "-" {
                pipeline::write_stream(std::io::stdin(), writer, &options)?
            } else {
                let file = pipeline::open_image(Path::new(source))?;
                pipeline::write_stream(file, writer, &options)?
            };
            let seconds = started.elapsed().as_secs_f64();
            let summary = json!({
                "format": report.format.name(),
                "compression": report.compression.name(),
                "source_bytes": report.source_bytes,
                "image_size": report.write.image_size,
                "data_bytes": report.write.data_bytes,
                "checksum": report.digest.as_ref().map(|d| format!("{}:{}", d.algorithm, d.hex)),
                "seconds": seconds,
            });
            print(output, &summary, || {
                format!(
                    "wrote {} {} image ({} bytes, {} of data) to {} in {:.2} s{}",
                    report.compression,
                    report.format,
                    report.write.image_size,
                    report.write.data_bytes,
                    target.display(),
                    seconds,
                    if report.digest.is_some() {
                        ", checksum verified"
                    } else {
                        ""
                    }
                )
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn inspect(
    output: OutputFormat,
    file: &Path,
    declared: Option<&str>,
    permitted: &[String],
) -> anyhow::Result<ExitCode> {
    let policy = policy(declared, permitted)?;
    let mut src = pipeline::open_image(file)?;
    // A well-formed image refused by the policy still shows what it is.
    let inspection = format::inspect(&mut src);
    let verdict = inspection
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|i| policy.check(i).map_err(|e| e.to_string()));
    let mut summary = json!({});
    if let Ok(i) = &inspection {
        summary["format"] = json!(i.format.name());
        summary["virtual_size"] = json!(i.virtual_size);
    }
    let code = match &verdict {
        Ok(()) => {
            summary["verdict"] = json!("accepted");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            summary["verdict"] = json!("refused");
            summary["reason"] = json!(reason);
            ExitCode::FAILURE
        }
    };
    print(output, &summary, || {
        let what = match &inspection {
            Ok(i) => format!(
                "{} image, virtual size {}: ",
                i.format,
                i.virtual_size
                    .map_or_else(|| "unknown".to_string(), |s| format!("{s} bytes"))
            ),
            Err(_) => String::new(),
        };
        match &verdict {
            Ok(()) => format!("{}: {what}accepted", file.display()),
            Err(reason) => format!("{}: {what}refused: {reason}", file.display()),
        }
    });
    Ok(code)
}

pub fn configdrive_command(cmd: &ConfigdriveCommand) -> anyhow::Result<ExitCode> {
    let ConfigdriveCommand::Build {
        meta_data,
        user_data,
        network_data,
        vendor_data,
        from_json,
        format,
        gzip_base64,
        output,
    } = cmd;
    let dict = match from_json {
        Some(path) => read_json(path)?,
        None => {
            let mut dict = serde_json::Map::new();
            if let Some(path) = meta_data {
                dict.insert("meta_data".into(), read_json(path)?);
            }
            if let Some(path) = network_data {
                dict.insert("network_data".into(), read_json(path)?);
            }
            if let Some(path) = vendor_data {
                dict.insert("vendor_data".into(), read_json(path)?);
            }
            Value::Object(dict)
        }
    };
    let mut drive = ConfigDrive::from_ironic_dict(&dict)?;
    // User data is bytes (a gzipped cloud-config, a MIME multipart), written
    // as it is.
    if let Some(path) = user_data {
        drive.user_data =
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    let mut image = std::io::Cursor::new(Vec::new());
    match format {
        DriveFormat::Iso => drive.write_iso(&mut image)?,
        DriveFormat::Vfat => drive.write_vfat(&mut image)?,
    };
    let image = image.into_inner();
    if *gzip_base64 {
        write_file(output, configdrive::encode(&image).as_bytes())?;
    } else {
        write_file(output, &image)?;
    }
    eprintln!(
        "wrote a {} config drive ({} bytes) to {}",
        match format {
            DriveFormat::Iso => "ISO9660",
            DriveFormat::Vfat => "VFAT",
        },
        image.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(value) => Ok(value),
        Err(e) => bail!("{} is not valid JSON: {e}", path.display()),
    }
}

fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn print(output: OutputFormat, summary: &Value, text: impl FnOnce() -> String) {
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(summary).expect("JSON values serialise")
        ),
        OutputFormat::Table => println!("{}", text()),
    }
}
