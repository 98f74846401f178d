//! Image downloads over HTTP as a blocking [`Read`], the way IPA fetches
//! images (`extensions/standby.py`, `_download_with_proxy` and
//! `ImageDownload`), made sturdier:
//!
//! - the image's URLs are tried in turn; connection errors and 5xx answers
//!   are retried, 4xx answers move on to the next URL;
//! - proxies come from image_info (`proxies: {http, https}`, `no_proxy`),
//!   never from the ramdisk's environment;
//! - a connect timeout, and a stall timeout: no byte for that long is an
//!   error, not a hang;
//! - a connection that drops mid-stream is resumed with
//!   `Range: bytes=<offset>-` (and `If-Range`, so a file that changed on the
//!   server is not spliced in), after checking the 206 and its
//!   `Content-Range`; a server that ignores Range cannot be resumed and the
//!   download fails with a message saying so;
//! - a checksum given as a URL is fetched and the image's line picked out.
//!
//! `http://` and `https://` are supported. Over https the server is
//! verified as the agent's [`ClientTls`] says, the same settings as for the
//! conductor, as IPA does: `insecure` turns verification off, `cafile`
//! replaces the system's CAs (a ramdisk usually has none), `certfile` +
//! `keyfile` give a client certificate. `file://` is refused (see
//! SECURITY.md: local files need an allow-list with symlinks resolved;
//! `file:///dev/zero` hangs a checksum).

use std::io::{self, Read};
use std::time::Duration;

use crate::tls::ClientTls;
use ferric_image::checksum::Checksum;
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED};
use reqwest::header::{RANGE, USER_AGENT};
use reqwest::{NoProxy, Proxy, StatusCode};
use serde_json::Value;

/// The largest checksum file fetched (a sha512 line per image is ~200 B).
pub const MAX_CHECKSUM_FILE: u64 = 1 << 20;

/// Proxies for image downloads, from image_info (IPA's `proxies` and
/// `no_proxy`; Ironic fills them from `driver_info/image_http_proxy`,
/// `image_https_proxy` and `image_no_proxy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    /// Proxy for `http://` URLs.
    pub http: Option<String>,
    /// Proxy for `https://` URLs.
    pub https: Option<String>,
    /// Comma-separated hosts, domains and networks reached directly.
    pub no_proxy: Option<String>,
}

impl Proxies {
    /// Reads `image_info.proxies.{http,https,no_proxy}` and the top-level
    /// `image_info.no_proxy` (where Ironic puts it); the top level wins.
    pub fn from_image_info(image_info: &Value) -> Result<Self, DownloadError> {
        let text = |value: Option<&Value>, name: &str| -> Result<Option<String>, DownloadError> {
            match value {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
                Some(other) => Err(DownloadError::BadProxy {
                    name: name.to_owned(),
                    reason: format!("expected a string, got {other}"),
                }),
            }
        };
        let proxies = match image_info.get("proxies") {
            None | Some(Value::Null) => &Value::Null,
            Some(object @ Value::Object(_)) => object,
            Some(other) => {
                return Err(DownloadError::BadProxy {
                    name: "proxies".into(),
                    reason: format!(
                        "expected an object with http, https and no_proxy, got {other}"
                    ),
                })
            }
        };
        Ok(Proxies {
            http: text(proxies.get("http"), "proxies.http")?,
            https: text(proxies.get("https"), "proxies.https")?,
            no_proxy: text(image_info.get("no_proxy"), "no_proxy")?
                .or(text(proxies.get("no_proxy"), "proxies.no_proxy")?),
        })
    }
}

/// How downloads behave. The defaults are IPA's
/// (`image_download_connection_timeout`, `_retries`, `_retry_interval`).
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Time allowed to establish a TCP connection. Default 60 s.
    pub connect_timeout: Duration,
    /// Time without a single byte (or without response headers) after which
    /// the connection counts as dropped. Default 60 s.
    pub stall_timeout: Duration,
    /// Extra attempts per URL to connect, and resumptions after drops over
    /// the whole download. Default 9.
    pub retries: u32,
    /// Pause before each retry. Default 10 s.
    pub retry_interval: Duration,
    pub proxies: Proxies,
    /// How https servers are verified. Default: the system's CAs.
    pub tls: ClientTls,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            connect_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            retries: 9,
            retry_interval: Duration::from_secs(10),
            proxies: Proxies::default(),
            tls: ClientTls::default(),
        }
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("image source {url:?} cannot be downloaded: {reason}")]
    UnsupportedUrl { url: String, reason: &'static str },
    #[error("no image URL given")]
    NoUrls,
    #[error("invalid image download proxy setting {name}: {reason}")]
    BadProxy { name: String, reason: String },
    #[error("cannot set up the HTTP client for image downloads")]
    Client(#[source] reqwest::Error),
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}, expected 200")]
    Status { url: String, status: u16 },
    #[error("every image URL failed: {}", .0.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; "))]
    AllUrlsFailed(Vec<DownloadError>),
    #[error(
        "{url}: the connection dropped at byte {offset} and the server does not honour Range \
         requests (it answered HTTP {status} to a request for the rest), so the download \
         cannot resume; serve the image from a server that supports Range, or fix the network"
    )]
    RangeIgnored {
        url: String,
        offset: u64,
        status: u16,
    },
    #[error(
        "{url}: asked to resume at byte {offset}, the server answered Content-Range {content_range:?}"
    )]
    BadContentRange {
        url: String,
        offset: u64,
        content_range: String,
    },
    #[error("{url}: the connection dropped at byte {offset} and {retries} retries were used up")]
    RetriesExhausted {
        url: String,
        offset: u64,
        retries: u32,
        #[source]
        source: io::Error,
    },
    #[error("{url} is larger than the {limit} bytes allowed")]
    TooLarge { url: String, limit: u64 },
    #[error("reading {url}")]
    Read {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("checksum file {url}")]
    ChecksumFile {
        url: String,
        #[source]
        source: ferric_image::Error,
    },
}

/// An error and its causes, `a: b: c`, for places that keep only a string
/// (command results, `io::Error`s crossing the image pipeline).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}

/// A URL as errors and logs show it (Ferric's one definition).
pub use ferric_types::url::redact;

/// Refuses everything but `http://` and `https://` (see the module
/// documentation).
pub fn check_url(url: &str) -> Result<(), DownloadError> {
    let lower = url.trim().to_ascii_lowercase();
    let unsupported = |reason| DownloadError::UnsupportedUrl {
        url: redact(url),
        reason,
    };
    if lower.starts_with("http://") || lower.starts_with("https://") {
        match reqwest::Url::parse(url.trim()) {
            Ok(parsed) if parsed.host().is_some() => Ok(()),
            _ => Err(unsupported("it is not a valid URL")),
        }
    } else if lower.starts_with("file://") {
        Err(unsupported(
            "local file sources are refused by this agent (no allow-list is configured)",
        ))
    } else {
        Err(unsupported("only http:// and https:// URLs are supported"))
    }
}

fn client(options: &DownloadOptions) -> Result<Client, DownloadError> {
    let proxies = &options.proxies;
    let no_proxy = proxies.no_proxy.as_deref().and_then(NoProxy::from_string);
    let proxy = |name: &str, url: &str, make: fn(&str) -> reqwest::Result<Proxy>| {
        make(url)
            .map(|p| p.no_proxy(no_proxy.clone()))
            .map_err(|e| DownloadError::BadProxy {
                name: name.to_owned(),
                reason: chain(&e),
            })
    };
    // The environment's proxies are ignored: image_info is the one source.
    let mut builder = Client::builder()
        .no_proxy()
        .connect_timeout(options.connect_timeout)
        // In the blocking client this bounds the wait for the response
        // headers and each read of the body: a stall timeout, not a total.
        .timeout(options.stall_timeout);
    builder = options.tls.configure_blocking(builder);
    if let Some(url) = &proxies.http {
        builder = builder.proxy(proxy("proxies.http", url, |u| Proxy::http(u))?);
    }
    if let Some(url) = &proxies.https {
        builder = builder.proxy(proxy("proxies.https", url, |u| Proxy::https(u))?);
    }
    builder.build().map_err(DownloadError::Client)
}

/// How a request failed: worth retrying (connection trouble, 5xx) or not.
enum Attempt {
    Retry(DownloadError),
    Fatal(DownloadError),
}

fn get(client: &Client, url: &str, headers: HeaderMap) -> Result<Response, Attempt> {
    let response = client
        .get(url)
        .header(
            USER_AGENT,
            concat!("ferric-agent/", env!("CARGO_PKG_VERSION")),
        )
        .headers(headers)
        .send()
        .map_err(|source| {
            Attempt::Retry(DownloadError::Connect {
                url: redact(url),
                // reqwest's message repeats the whole URL.
                source: source.without_url(),
            })
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let error = DownloadError::Status {
        url: redact(url),
        status: status.as_u16(),
    };
    // Like IPA: a 4xx will not get better by asking again.
    if status.is_server_error() {
        Err(Attempt::Retry(error))
    } else {
        Err(Attempt::Fatal(error))
    }
}

/// GETs `url`, retrying connection errors and 5xx answers.
fn get_with_retries(
    client: &Client,
    url: &str,
    options: &DownloadOptions,
) -> Result<Response, DownloadError> {
    let mut attempt = 0;
    loop {
        match get(client, url, HeaderMap::new()) {
            Ok(response) if response.status() == StatusCode::OK => return Ok(response),
            Ok(response) => {
                return Err(DownloadError::Status {
                    url: redact(url),
                    status: response.status().as_u16(),
                })
            }
            Err(Attempt::Fatal(error)) => return Err(error),
            Err(Attempt::Retry(error)) if attempt >= options.retries => return Err(error),
            Err(Attempt::Retry(error)) => {
                attempt += 1;
                tracing::warn!(url = %redact(url), attempt, error = %chain(&error), "download failed to start; retrying");
                std::thread::sleep(options.retry_interval);
            }
        }
    }
}

/// An image being downloaded: read it like a file. Reads resume after
/// dropped connections (see the module documentation); an error from
/// `read` is final.
pub struct Download {
    client: Client,
    url: String,
    options: DownloadOptions,
    response: Option<Response>,
    offset: u64,
    total: Option<u64>,
    /// The ETag (strong) or Last-Modified of the first answer, for If-Range.
    validator: Option<String>,
    resumes: u32,
    /// The error that ended the download, kept whole: readers above see an
    /// `io::Error` and may keep only its message.
    failure: Option<DownloadError>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("url", &self.url)
            .field("offset", &self.offset)
            .field("total", &self.total)
            .field("resumes", &self.resumes)
            .finish_non_exhaustive()
    }
}

fn header(response: &Response, name: reqwest::header::HeaderName) -> Option<&str> {
    response.headers().get(name)?.to_str().ok()
}

impl Download {
    /// Starts downloading from the first of `urls` that answers 200.
    pub fn open(urls: &[String], options: &DownloadOptions) -> Result<Download, DownloadError> {
        if urls.is_empty() {
            return Err(DownloadError::NoUrls);
        }
        for url in urls {
            check_url(url)?;
        }
        let client = client(options)?;
        let mut failures = Vec::new();
        for url in urls {
            match get_with_retries(&client, url, options) {
                Ok(response) => {
                    let total = header(&response, CONTENT_LENGTH).and_then(|v| v.parse().ok());
                    let validator = header(&response, ETAG)
                        .filter(|etag| !etag.starts_with("W/"))
                        .or_else(|| header(&response, LAST_MODIFIED))
                        .map(str::to_owned);
                    tracing::info!(url = %redact(url), size = ?total, "downloading the image");
                    return Ok(Download {
                        client,
                        url: redact(url),
                        options: options.clone(),
                        response: Some(response),
                        offset: 0,
                        total,
                        validator,
                        resumes: 0,
                        failure: None,
                    });
                }
                Err(error) => {
                    tracing::warn!(url = %redact(url), error = %chain(&error), "image URL failed; trying the next");
                    failures.push(error);
                }
            }
        }
        Err(match failures.len() {
            1 => failures.remove(0),
            _ => DownloadError::AllUrlsFailed(failures),
        })
    }

    /// The URL being read.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The image's size, when the server said.
    pub fn size(&self) -> Option<u64> {
        self.total
    }

    /// Bytes delivered so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// How many times the download resumed after a drop.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    /// The error that ended the download, if one did.
    pub fn take_failure(&mut self) -> Option<DownloadError> {
        self.failure.take()
    }

    /// Reconnects after `cause` and asks for the rest of the image.
    fn resume(&mut self, cause: io::Error) -> Result<(), DownloadError> {
        self.response = None;
        let mut cause = cause;
        loop {
            if self.resumes >= self.options.retries {
                return Err(DownloadError::RetriesExhausted {
                    url: redact(&self.url),
                    offset: self.offset,
                    retries: self.options.retries,
                    source: cause,
                });
            }
            self.resumes += 1;
            tracing::warn!(
                url = %redact(&self.url), offset = self.offset, attempt = self.resumes,
                error = %chain(&cause), "the image download was interrupted; resuming"
            );
            std::thread::sleep(self.options.retry_interval);
            let mut headers = HeaderMap::new();
            if self.offset > 0 {
                let range = format!("bytes={}-", self.offset);
                headers.insert(RANGE, range.parse().expect("a valid header value"));
                if let Some(value) = self.validator.as_ref().and_then(|v| v.parse().ok()) {
                    headers.insert(IF_RANGE, value);
                }
            }
            match get(&self.client, &self.url, headers) {
                Ok(response) => return self.accept_resumed(response),
                Err(Attempt::Fatal(error)) => return Err(error),
                Err(Attempt::Retry(error)) => cause = io::Error::other(chain(&error)),
            }
        }
    }

    fn accept_resumed(&mut self, response: Response) -> Result<(), DownloadError> {
        let status = response.status();
        if self.offset == 0 && status == StatusCode::OK {
            self.response = Some(response);
            return Ok(());
        }
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(DownloadError::RangeIgnored {
                url: redact(&self.url),
                offset: self.offset,
                status: status.as_u16(),
            });
        }
        let content_range = header(&response, CONTENT_RANGE).unwrap_or("").to_owned();
        if !self.range_fits(&content_range) {
            return Err(DownloadError::BadContentRange {
                url: redact(&self.url),
                offset: self.offset,
                content_range,
            });
        }
        self.response = Some(response);
        Ok(())
    }

    /// `bytes <offset>-<end>/<total or *>`, consistent with what we know.
    fn range_fits(&self, content_range: &str) -> bool {
        let Some(rest) = content_range.trim().strip_prefix("bytes ") else {
            return false;
        };
        let Some((span, complete)) = rest.split_once('/') else {
            return false;
        };
        let Some((first, last)) = span.split_once('-') else {
            return false;
        };
        let (Ok(first), Ok(last)) = (first.trim().parse::<u64>(), last.trim().parse::<u64>())
        else {
            return false;
        };
        let complete = match complete.trim() {
            "*" => None,
            n => match n.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => return false,
            },
        };
        let total_agrees = match (self.total, complete) {
            (Some(known), Some(said)) => known == said && last + 1 == known,
            _ => true,
        };
        first == self.offset && last >= first && total_agrees
    }
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.total.is_some_and(|total| self.offset >= total) {
                return Ok(0);
            }
            let outcome = match self.response.as_mut() {
                Some(response) => response.read(buf),
                None => Err(io::Error::other("no open connection")),
            };
            let cause = match outcome {
                Ok(0) if self.total.is_none() => return Ok(0),
                Ok(0) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the server closed the connection at byte {} of {}",
                        self.offset,
                        self.total.unwrap_or_default()
                    ),
                ),
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            if let Err(error) = self.resume(cause) {
                let message = chain(&error);
                self.failure = Some(error);
                return Err(io::Error::other(message));
            }
        }
    }
}

/// Fetches a small text file (a checksum file, a config drive), at most
/// `limit` bytes, with the same retries and proxies as image downloads.
pub fn fetch_text(
    url: &str,
    limit: u64,
    options: &DownloadOptions,
) -> Result<String, DownloadError> {
    check_url(url)?;
    let client = client(options)?;
    let response = get_with_retries(&client, url, options)?;
    let mut body = Vec::new();
    response
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|source| DownloadError::Read {
            url: redact(url),
            source,
        })?;
    if body.len() as u64 > limit {
        return Err(DownloadError::TooLarge {
            url: redact(url),
            limit,
        });
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A checksum given as the URL of a checksum file: fetches it and picks the
/// line naming the image (the last path segment of `image_url`), or the only
/// digest in the file.
pub fn fetch_checksum(
    checksum_url: &str,
    image_url: &str,
    algorithm: Option<&str>,
    allow_md5: bool,
    options: &DownloadOptions,
) -> Result<Checksum, DownloadError> {
    let text = fetch_text(checksum_url, MAX_CHECKSUM_FILE, options)?;
    Checksum::from_checksum_file(&text, image_url, algorithm, allow_md5).map_err(|source| {
        DownloadError::ChecksumFile {
            url: redact(checksum_url),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_signatures_in_messages() {
        assert_eq!(
            redact("http://user:secret@images.example/v1/disk.qcow2?temp_url_sig=abc&x=1"),
            "http://images.example/v1/disk.qcow2?…"
        );
        assert_eq!(redact("http://h:8080/a.img"), "http://h:8080/a.img");
        let err = check_url("ftp://u:pw@h/x").unwrap_err().to_string();
        assert!(!err.contains("pw"), "{err}");
    }
    use serde_json::json;

    #[test]
    fn only_http_and_https_are_accepted() {
        assert!(check_url("http://10.0.0.1/image.raw").is_ok());
        assert!(check_url("HTTPS://example.com/image.raw").is_ok());
        assert!(check_url("https://").is_err());
        let file = check_url("file:///dev/zero").unwrap_err();
        assert!(file.to_string().contains("local file"), "{file}");
        assert!(check_url("ftp://example.com/x").is_err());
        assert!(check_url("http://").is_err());
    }

    #[test]
    fn proxies_come_from_image_info() {
        let info = json!({"proxies": {"http": "http://proxy:3128", "https": ""},
                          "no_proxy": "10.0.0.0/8,.example.com"});
        assert_eq!(
            Proxies::from_image_info(&info).unwrap(),
            Proxies {
                http: Some("http://proxy:3128".into()),
                https: None,
                no_proxy: Some("10.0.0.0/8,.example.com".into()),
            }
        );
        let nested = json!({"proxies": {"no_proxy": "a.example"}});
        assert_eq!(
            Proxies::from_image_info(&nested)
                .unwrap()
                .no_proxy
                .as_deref(),
            Some("a.example")
        );
        assert!(Proxies::from_image_info(&json!({"proxies": "http://p"})).is_err());
        assert!(Proxies::from_image_info(&json!({"proxies": {"http": 3}})).is_err());
        assert_eq!(
            Proxies::from_image_info(&json!({})).unwrap(),
            Proxies::default()
        );
    }

    #[test]
    fn content_range_must_continue_where_we_stopped() {
        let download = |offset, total| Download {
            client: Client::new(),
            url: "http://x/i".into(),
            options: DownloadOptions::default(),
            response: None,
            offset,
            total,
            validator: None,
            resumes: 0,
            failure: None,
        };
        let d = download(100, Some(1000));
        assert!(d.range_fits("bytes 100-999/1000"));
        assert!(!d.range_fits("bytes 0-999/1000"));
        assert!(!d.range_fits("bytes 100-999/2000"));
        assert!(!d.range_fits("bytes 100-500/1000"));
        assert!(!d.range_fits("garbage"));
        let unknown = download(100, None);
        assert!(unknown.range_fits("bytes 100-999/*"));
        assert!(unknown.range_fits("bytes 100-999/1000"));
    }
}
