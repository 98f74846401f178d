//! `GET|HEAD /images/{name}`: cached images served to deploy agents, with
//! single byte ranges, through the router without a socket. The image gets
//! into the cache the real way: downloaded from a small in-test server.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferric_api::{router, ApiConfig, AppState};
use ferric_conductor::{Conductor, ConductorConfig};
use ferric_drivers::image_cache::ImageRequest;
use ferric_image::checksum::sha256_hex;
use ferric_image::format::Policy;
use ferric_store::Store;
use http_body_util::BodyExt;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use tower::ServiceExt;

struct Setup {
    app: axum::Router,
    name: String,
    image: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// Serves `body` once at `/disk.raw` on loopback; returns its URL.
fn serve_once(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/disk.raw", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body).unwrap();
    });
    url
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.sqlite").display());
    let store = Store::connect(&url).await.unwrap();
    let config = ConductorConfig {
        hostname: "test-conductor".into(),
        image_cache_dir: dir.path().join("images"),
        image_url_base: Some("http://127.0.0.1:6385".into()),
        ..Default::default()
    };
    let conductor = Conductor::start(store, config).await.unwrap();
    let mut x: u32 = 7;
    let mut image: Vec<u8> = (0..(3 << 20) + 123)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    image[510] = 0;
    let request = ImageRequest {
        url: serve_once(image.clone()),
        checksum: sha256_hex(&image),
        checksum_algorithm: Some("sha256".into()),
        declared_format: None,
        permitted_formats: Policy::default().permitted,
        convert_to_raw: true,
    };
    let cached = conductor
        .registry()
        .image_cache()
        .expect("the conductor has an image cache")
        .prepare(&request, "node-1")
        .await
        .unwrap();
    let app = router(AppState::new(conductor, ApiConfig::default()));
    Setup {
        app,
        name: cached.name,
        image,
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn call(app: &axum::Router, method: &str, uri: &str, range: Option<&str>) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(range) = range {
        request = request.header("range", range);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn the_whole_image_and_its_headers() {
    let s = setup().await;
    let len = s.image.len();
    let uri = format!("/images/{}", s.name);
    let whole = call(&s.app, "GET", &uri, None).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(whole.body == s.image);
    assert_eq!(
        whole.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        whole.header("etag"),
        Some(format!("\"{}\"", s.name).as_str())
    );
    assert_eq!(whole.header("content-range"), None);

    let head = call(&s.app, "HEAD", &uri, None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
}

#[tokio::test]
async fn single_ranges_get_206_and_unsatisfiable_ones_416() {
    let s = setup().await;
    let len = s.image.len();
    let uri = format!("/images/{}", s.name);

    let middle = call(&s.app, "GET", &uri, Some("bytes=1000-1999")).await;
    assert_eq!(middle.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(middle.body, s.image[1000..2000]);
    assert_eq!(
        middle.header("content-range"),
        Some(format!("bytes 1000-1999/{len}").as_str())
    );
    assert_eq!(middle.header("content-length"), Some("1000"));

    // A resume from an offset to the end, across read chunks.
    let from = 300_000;
    let rest = call(&s.app, "GET", &uri, Some(&format!("bytes={from}-"))).await;
    assert_eq!(rest.status, StatusCode::PARTIAL_CONTENT);
    assert!(rest.body == s.image[from..]);
    assert_eq!(
        rest.header("content-range"),
        Some(format!("bytes {from}-{}/{len}", len - 1).as_str())
    );

    let tail = call(&s.app, "GET", &uri, Some("bytes=-10")).await;
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.body, s.image[len - 10..]);

    let head = call(&s.app, "HEAD", &uri, Some("bytes=0-99")).await;
    assert_eq!(head.status, StatusCode::PARTIAL_CONTENT);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("100"));
    assert_eq!(
        head.header("content-range"),
        Some(format!("bytes 0-99/{len}").as_str())
    );

    for unsatisfiable in [format!("bytes={len}-"), "bytes=-0".to_string()] {
        let past = call(&s.app, "GET", &uri, Some(&unsatisfiable)).await;
        assert_eq!(
            past.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{unsatisfiable}"
        );
        assert_eq!(
            past.header("content-range"),
            Some(format!("bytes */{len}").as_str())
        );
    }

    // Several ranges are not supported: the whole image, as RFC 9110 allows.
    let several = call(&s.app, "GET", &uri, Some("bytes=0-1,5-6")).await;
    assert_eq!(several.status, StatusCode::OK);
    assert_eq!(several.body.len(), len);
}

#[tokio::test]
async fn only_complete_entries_are_served_and_names_cannot_escape() {
    let s = setup().await;
    // The cache directory holds the database's sibling and temporary
    // directories; none of them is reachable.
    for uri in [
        "/images/..%2Ft.sqlite".to_string(),
        "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_string(),
        "/images/../t.sqlite".to_string(),
        "/images/..".to_string(),
        format!("/images/{}%2fimage", s.name),
        format!("/images/{}/meta.json", s.name),
        format!("/images/sha256-{}.raw", "0".repeat(64)),
        format!("/images/.tmp-{}", s.name),
        format!("/images/{}", s.name.to_uppercase()),
    ] {
        let reply = call(&s.app, "GET", &uri, None).await;
        assert!(
            matches!(
                reply.status,
                StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST
            ),
            "{uri}: {}",
            reply.status
        );
        assert!(reply.body.len() < 1000, "{uri}");
    }
    let wrong_method = call(&s.app, "POST", &format!("/images/{}", s.name), None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}
