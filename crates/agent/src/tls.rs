//! TLS for the agent, both sides, as IPA does it:
//!
//! - the command API's certificate: generated at start for the advertised
//!   host (IPA's automatic TLS, `tls_utils.generate_tls_certificate`) and
//!   sent to the conductor as `agent_verify_ca` in every heartbeat, or read
//!   from files (IPA's `listen_tls` with `tls_cert_file`, `tls_key_file`);
//! - a [`TlsListener`] that serves the API with it through `axum::serve`;
//! - [`ClientTls`]: how the agent's own clients (the conductor, image
//!   downloads) verify servers and identify themselves (IPA's `insecure`,
//!   `cafile`, `certfile` and `keyfile`).
//!
//! The generated private key lives in memory only (IPA writes it to /run).
//! Everything uses the aws-lc-rs provider, as reqwest does.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P384_SHA384,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::AgentConfig;

/// How long a generated certificate is valid (IPA: 90 days).
pub const CERTIFICATE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far in the past a generated certificate starts being valid. IPA
/// allows an hour (`auto_tls_allowed_clock_skew`); ramdisk clocks are often
/// unset or on local time, and the conductor pins this certificate rather
/// than trusting it for its dates, so a day is allowed here.
pub const ALLOWED_CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose handshake is done and that axum has not taken yet.
const ACCEPT_BACKLOG: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the command API's TLS certificate for {host:?}")]
    Generate {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("the advertised host {host:?} is neither an IP address nor a DNS name")]
    BadHost { host: String },
    #[error("reading the {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {what} {path} holds no PEM {expected}")]
    NoPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("the {what} {path} is not valid PEM")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the command API's certificate and key cannot be used")]
    ServerConfig(#[source] rustls::Error),
    #[error("the {what} cannot be used")]
    Client {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The command API's certificate chain and key.
pub struct ServerIdentity {
    /// The certificate chain as PEM: what the heartbeat sends as
    /// `agent_verify_ca` and the conductor then trusts alone.
    pub certificate_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ServerIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// A self-signed certificate for `host` (an IP address, bracketed or
    /// not, or a DNS name) with a new P-384 key (IPA's default curve).
    pub fn generate(host: &str) -> Result<Self, TlsError> {
        let failed = |source| TlsError::Generate {
            host: host.to_owned(),
            source,
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let san = match bare.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            // A name the conductor's TLS client could not match is refused
            // here rather than at the first command.
            Err(_) if ServerName::try_from(bare).is_err() => {
                return Err(TlsError::BadHost {
                    host: host.to_owned(),
                })
            }
            Err(_) => SanType::DnsName(bare.try_into().map_err(failed)?),
        };
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, bare);
        params.subject_alt_names = vec![san];
        params.not_before = now - ALLOWED_CLOCK_SKEW;
        params.not_after = now + CERTIFICATE_VALIDITY;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(failed)?;
        let certificate = params.self_signed(&key).map_err(failed)?;
        Ok(ServerIdentity {
            certificate_pem: certificate.pem(),
            chain: vec![certificate.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }

    /// The certificate chain (leaf first) and key an operator put in the
    /// ramdisk (IPA's `tls_cert_file` and `tls_key_file`).
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        const CERT: &str = "command API certificate file";
        const KEY: &str = "command API key file";
        let pem = read(CERT, cert_file)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::BadPem {
                what: CERT,
                path: cert_file.to_owned(),
                source,
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoPem {
                what: CERT,
                path: cert_file.to_owned(),
                expected: "certificate",
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&read(KEY, key_file)?).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
                what: KEY,
                path: key_file.to_owned(),
                expected: "private key",
            },
            source => TlsError::BadPem {
                what: KEY,
                path: key_file.to_owned(),
                source,
            },
        })?;
        Ok(ServerIdentity {
            certificate_pem: String::from_utf8_lossy(&pem).into_owned(),
            chain,
            key,
        })
    }

    /// The rustls settings of the command API: this certificate, no client
    /// certificates, HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::ServerConfig)?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(TlsError::ServerConfig)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A TCP listener whose connections come out TLS-wrapped, for
/// `axum::serve`. Handshakes run in their own tasks with a timeout, so a
/// slow or silent client holds up nobody else.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; stops when the `TlsListener` is
    /// dropped. Must be called inside a Tokio runtime.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(ACCEPT_BACKLOG);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = sender.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(connection) => connection,
                        Err(e) => {
                            // Out of file descriptors and the like: pause
                            // rather than spin.
                            tracing::warn!(error = %e, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake refused");
                        }
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// How the agent's HTTPS clients (of the conductor and of image servers)
/// verify servers and identify themselves. IPA applies one setting to both,
/// and so does the agent:
///
/// - `insecure`: no verification at all (IPA's `ipa-insecure`);
/// - `cafile`: trust only the CAs of this PEM bundle; without it, the
///   system's CAs (a ramdisk usually has none);
/// - `certfile` + `keyfile`: a client certificate for servers that ask.
///
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct ClientTls {
    insecure: bool,
    /// `None`: the system's CAs.
    roots: Option<Vec<reqwest::Certificate>>,
    identity: Option<reqwest::Identity>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("insecure", &self.insecure)
            .field("cas", &self.roots.as_ref().map(Vec::len))
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

/// Where distributions keep their CA bundle.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The system's CAs from the first bundle found; none in a ramdisk that
/// carries no bundle. Read here rather than by the TLS library's platform
/// verifier, which refuses to build a client at all without system CAs,
/// and so would stop an agent that only ever speaks plain HTTP.
fn system_roots(bundles: &[&str]) -> Vec<reqwest::Certificate> {
    for bundle in bundles {
        if let Ok(pem) = std::fs::read(bundle) {
            match reqwest::Certificate::from_pem_bundle(&pem) {
                Ok(certificates) if !certificates.is_empty() => return certificates,
                _ => tracing::warn!(bundle, "no usable certificate in the system CA bundle"),
            }
        }
    }
    tracing::warn!(
        "no system CA certificates: https servers will be refused unless ipa-cafile or \
         ipa-insecure is given"
    );
    Vec::new()
}

impl ClientTls {
    /// Reads the agent's `insecure`, `cafile`, `certfile` and `keyfile`.
    pub fn from_config(config: &AgentConfig) -> Result<Self, TlsError> {
        let client_certificate = match (&config.certfile, &config.keyfile) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            // AgentConfig::check refuses one without the other.
            _ => None,
        };
        Self::new(
            config.insecure,
            config.cafile.as_deref(),
            client_certificate,
        )
    }

    /// `cafile` is a PEM bundle of CAs; `client_certificate` is a PEM
    /// certificate (chain) file and its PEM key file.
    pub fn new(
        insecure: bool,
        cafile: Option<&Path>,
        client_certificate: Option<(&Path, &Path)>,
    ) -> Result<Self, TlsError> {
        let roots = match cafile {
            None => Some(system_roots(SYSTEM_CA_BUNDLES)),
            Some(path) => {
                const WHAT: &str = "CA file";
                let certificates = reqwest::Certificate::from_pem_bundle(&read(WHAT, path)?)
                    .map_err(|source| TlsError::Client { what: WHAT, source })?;
                if certificates.is_empty() {
                    return Err(TlsError::NoPem {
                        what: WHAT,
                        path: path.to_owned(),
                        expected: "certificate",
                    });
                }
                Some(certificates)
            }
        };
        let identity = match client_certificate {
            None => None,
            Some((cert, key)) => {
                let mut pem = read("client certificate file", cert)?;
                pem.push(b'\n');
                pem.extend(read("client key file", key)?);
                let identity = reqwest::Identity::from_pem(&pem);
                // The buffer held the private key.
                pem.fill(0);
                Some(identity.map_err(|source| TlsError::Client {
                    what: "client certificate and key",
                    source,
                })?)
            }
        };
        Ok(ClientTls {
            insecure,
            roots,
            identity,
        })
    }

    /// Whether servers go unverified.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Applies these settings to an async client.
    pub fn configure(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if self.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        } else if let Some(roots) = &self.roots {
            builder = builder.tls_certs_only(roots.iter().cloned());
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(identity.clone());
        }
        builder
    }

    /// Applies these settings to a blocking client (image downloads).
    pub fn configure_blocking(
        &self,
        mut builder: reqwest::blocking::ClientBuilder,
    ) -> reqwest::blocking::ClientBuilder {
        if self.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        } else if let Some(roots) = &self.roots {
            builder = builder.tls_certs_only(roots.iter().cloned());
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(identity.clone());
        }
        builder
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn without_system_cas_clients_still_build_and_refuse_https() {
        let roots = super::system_roots(&["/nonexistent/ca-bundle.crt"]);
        assert!(roots.is_empty());
        // An agent in a ramdisk with no bundle still starts (plain HTTP to
        // the conductor works); https has nothing to trust.
        reqwest::Client::builder()
            .tls_certs_only(roots.clone())
            .build()
            .expect("a client with no trusted CAs builds");
        reqwest::blocking::Client::builder()
            .tls_certs_only(roots)
            .build()
            .expect("a blocking client with no trusted CAs builds");
        assert!(
            !super::system_roots(super::SYSTEM_CA_BUNDLES).is_empty()
                || !std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists()
        );
    }

    use super::*;

    #[test]
    fn generated_certificates_name_the_advertised_host() {
        for host in ["10.1.2.3", "[fd00::5]", "agent.example"] {
            let identity = ServerIdentity::generate(host).unwrap();
            assert!(identity
                .certificate_pem
                .starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(!identity.certificate_pem.contains("PRIVATE KEY"));
            identity.server_config().unwrap();
            assert!(!format!("{identity:?}").contains("PRIVATE"));
        }
        assert!(ServerIdentity::generate("not a host name!").is_err());
    }

    #[test]
    fn client_settings_name_the_file_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = ClientTls::new(false, Some(&missing), None).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = ClientTls::new(false, Some(&empty), None).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let ca = dir.path().join("ca.pem");
        let identity = ServerIdentity::generate("127.0.0.1").unwrap();
        std::fs::write(&ca, &identity.certificate_pem).unwrap();
        let tls = ClientTls::new(false, Some(&ca), None).unwrap();
        assert_eq!(
            format!("{tls:?}"),
            "ClientTls { insecure: false, cas: Some(1), client_certificate: false }"
        );
        // A certificate without its key is no identity.
        let err = ClientTls::new(false, None, Some((&ca, &empty))).unwrap_err();
        assert!(
            err.to_string().contains("client certificate and key"),
            "{err}"
        );
    }
}
