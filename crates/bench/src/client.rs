//! Plain HTTP/1.1 to an Ironic endpoint: one keep-alive connection per
//! simulated client, each request timed from send to the last body byte.

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The header that selects Ironic's API microversion.
pub const API_VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Version";

/// A URL the benchmark cannot use.
#[derive(Debug, thiserror::Error)]
#[error("invalid endpoint URL {url:?}: {reason}")]
pub struct UrlError {
    url: String,
    reason: &'static str,
}

/// A request that got no complete HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {path} failed")]
    Request {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {path} got no complete response within {timeout:?}")]
    Timeout {
        method: Method,
        path: String,
        timeout: Duration,
    },
    #[error("cannot build the request {method} {path}")]
    Build {
        method: Method,
        path: String,
        #[source]
        source: http::Error,
    },
}

/// Where and how to reach the API: `http://host[:port][/prefix]`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL as given, for reports.
    pub url: String,
    /// `host:port` to connect to.
    addr: String,
    /// The Host header.
    host: HeaderValue,
    /// Path prefix before `/v1` (empty, or `/baremetal` behind a proxy).
    prefix: String,
    api_version: HeaderValue,
    timeout: Duration,
}

impl Endpoint {
    pub fn parse(url: &str, api_version: &str, timeout: Duration) -> Result<Endpoint, UrlError> {
        let fail = |reason| UrlError {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| fail("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(fail(
                    "https is not supported: benchmark the plain HTTP listener (or a local TLS-terminating proxy)",
                ))
            }
            _ => return Err(fail("expected http://HOST[:PORT][/PATH]")),
        }
        let authority = uri.authority().ok_or_else(|| fail("no host"))?;
        if authority.as_str().contains('@') {
            return Err(fail("credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(fail("a query string is not allowed"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let addr = format!("{}:{port}", authority.host());
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| fail("invalid host"))?;
        let api_version = HeaderValue::from_str(api_version)
            .map_err(|_| fail("invalid API version header value"))?;
        Ok(Endpoint {
            url: url.to_string(),
            addr,
            host,
            prefix: uri.path().trim_end_matches('/').to_string(),
            api_version,
            timeout,
        })
    }

    /// Opens one keep-alive connection.
    pub async fn connect(self: &Arc<Self>) -> Result<Connection, HttpError> {
        let sender = self.handshake().await?;
        Ok(Connection {
            endpoint: Arc::clone(self),
            sender,
        })
    }

    async fn handshake(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| HttpError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        // Small requests and responses: Nagle's algorithm would add delays
        // that belong to neither client nor server.
        stream
            .set_nodelay(true)
            .map_err(|source| HttpError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| HttpError::Handshake {
                addr: self.addr.clone(),
                source,
            })?;
        // Drives the socket; ends when the connection closes, and a closed
        // connection shows up as an error on the next request.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// From sending the request to receiving the last byte of the body.
    pub elapsed: Duration,
}

/// One keep-alive connection: requests on it go one after another.
pub struct Connection {
    endpoint: Arc<Endpoint>,
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Sends one request; `path` starts at `/v1...` (or `/`) and may carry a
    /// query. Reconnects first if the server closed the idle connection; a
    /// request that was sent is never repeated.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, HttpError> {
        let endpoint = Arc::clone(&self.endpoint);
        let full_path = format!("{}{}", endpoint.prefix, path);
        let build_error = |source| HttpError::Build {
            method: method.clone(),
            path: path.to_string(),
            source,
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&full_path)
            .header(HOST, endpoint.host.clone())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("ferric-bench/", env!("CARGO_PKG_VERSION")),
            )
            .header(API_VERSION_HEADER, endpoint.api_version.clone());
        let payload = match body {
            Some(value) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(payload)).map_err(build_error)?;

        if self.sender.ready().await.is_err() {
            self.sender = endpoint.handshake().await?;
        }
        let request_error = |source| HttpError::Request {
            method: method.clone(),
            path: path.to_string(),
            source,
        };
        let started = Instant::now();
        let exchange = async {
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(request_error)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(request_error)?.to_bytes();
            Ok::<_, HttpError>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(endpoint.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                method: method.clone(),
                path: path.to_string(),
                timeout: endpoint.timeout,
            })??;
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            elapsed: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Endpoint, UrlError> {
        Endpoint::parse(url, "1.95", Duration::from_secs(1))
    }

    #[test]
    fn plain_url_with_port() {
        let e = parse("http://127.0.0.1:6385").unwrap();
        assert_eq!(e.addr, "127.0.0.1:6385");
        assert_eq!(e.host, "127.0.0.1:6385");
        assert_eq!(e.prefix, "");
    }

    #[test]
    fn default_port_and_path_prefix() {
        let e = parse("http://ironic.example.net/baremetal/").unwrap();
        assert_eq!(e.addr, "ironic.example.net:80");
        assert_eq!(e.host, "ironic.example.net");
        assert_eq!(e.prefix, "/baremetal");
    }

    #[test]
    fn refuses_https_and_nonsense() {
        for url in [
            "https://x:6385",
            "127.0.0.1:6385",
            "ftp://x",
            "http://u:p@x:1",
            "http://x/?a=1",
            "",
        ] {
            assert!(parse(url).is_err(), "{url} accepted");
        }
    }
}
