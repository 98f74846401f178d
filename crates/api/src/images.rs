//! `GET|HEAD /images/{name}`: the conductor's cached images, for deploy
//! agents of `image_download_source=local` (Ironic serves them from its
//! `[deploy]http_root`). Single byte ranges are honoured so that an agent
//! resumes a broken download; the ETag is the entry's name, which names its
//! content. Only complete cache entries with a well-formed name are served:
//! a name is never joined to a path unchecked.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Bytes read from the file per body chunk.
const CHUNK: u64 = 256 << 10;

/// A byte range to serve, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// What a Range header asks of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header (absent, malformed, several ranges, another
    /// unit): the whole file, as RFC 9110 allows.
    Whole,
    Partial(ByteRange),
    /// A valid range that lies outside the file: 416.
    Unsatisfiable,
}

/// Parses a `Range` header for a file of `len` bytes: `bytes=a-b`,
/// `bytes=a-` or `bytes=-n` (the last n bytes).
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.is_empty(), number(first), number(last)) {
        // bytes=-n
        (true, _, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange {
                start: len.saturating_sub(suffix),
                end: len - 1,
            }
        }
        // bytes=a-
        (false, Some(start), None) if last.is_empty() => {
            if start >= len {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange {
                start,
                end: len - 1,
            }
        }
        // bytes=a-b
        (false, Some(start), Some(end)) if start <= end => {
            if start >= len {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange {
                start,
                end: end.min(len - 1),
            }
        }
        _ => return RangeRequest::Whole,
    };
    RangeRequest::Partial(range)
}

pub async fn serve(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let not_found = || ApiError::not_found(format!("Image {name:?} could not be found."));
    let cache = state
        .conductor
        .registry()
        .image_cache()
        .cloned()
        .ok_or_else(not_found)?;
    let wanted = name.clone();
    let opened = tokio::task::spawn_blocking(move || cache.open(&wanted))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            let message = ferric_drivers::image_cache::chain(&e);
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
        })?;
    let (file, len) = opened.ok_or_else(not_found)?;
    let etag = format!("\"{name}\"");
    file_response(file, len, Some(&etag), &method, &headers).await
}

/// Answers GET or HEAD for an open file of `len` bytes, honouring a single
/// byte range.
pub async fn file_response(
    file: std::fs::File,
    len: u64,
    etag: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    let etag = etag.and_then(|e| HeaderValue::from_str(e).ok());
    let (status, start, count) = match range {
        RangeRequest::Whole => (StatusCode::OK, 0, len),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, r.start, r.end - r.start + 1),
        RangeRequest::Unsatisfiable => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        let mut file = tokio::fs::File::from_std(file);
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Body::from_stream(futures_util::stream::unfold(
            (file, count),
            |(mut file, left)| async move {
                if left == 0 {
                    return None;
                }
                let mut buf = vec![0; CHUNK.min(left) as usize];
                match file.read(&mut buf).await {
                    Ok(0) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the cached image is shorter than its size",
                        )),
                        (file, 0),
                    )),
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(buf), (file, left - n as u64)))
                    }
                    Err(e) => Some((Err(e), (file, 0))),
                }
            },
        ))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Some(etag) = etag {
        headers.insert(header::ETAG, etag);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{len}", start + count - 1);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_as_rfc_9110_says() {
        let partial = |start, end| RangeRequest::Partial(ByteRange { start, end });
        assert_eq!(parse_range(None, 100), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), partial(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=90-500"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=-500"), 100), partial(0, 99));
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=0-"), 0),
            RangeRequest::Unsatisfiable
        );
        for ignored in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=x-",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(
                parse_range(Some(ignored), 100),
                RangeRequest::Whole,
                "{ignored}"
            );
        }
    }
}
