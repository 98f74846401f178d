//! Microversion negotiation, as Ironic does it: the version comes from
//! `X-OpenStack-Ironic-API-Version: 1.N` or `OpenStack-API-Version:
//! baremetal 1.N` (`latest` allowed); without a header, 1.1. Every response,
//! errors included, carries the minimum, maximum and chosen version.

use crate::error::ApiError;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferric_types::ApiVersion;

pub const IRONIC_VERSION_HEADER: &str = "x-openstack-ironic-api-version";
pub const OPENSTACK_VERSION_HEADER: &str = "openstack-api-version";
const MIN_HEADER: &str = "x-openstack-ironic-api-minimum-version";
const MAX_HEADER: &str = "x-openstack-ironic-api-maximum-version";

/// The microversion of the request being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(pub ApiVersion);

impl Version {
    pub fn at_least(self, minor: u32) -> bool {
        self.0.at_least(minor)
    }

    /// Refuses with 406 when the request's version is older than `1.minor`.
    pub fn require(self, minor: u32, what: &str) -> Result<(), ApiError> {
        if self.at_least(minor) {
            Ok(())
        } else {
            Err(ApiError::too_new(what, minor, self.0))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Version {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(parts
            .extensions
            .get::<Version>()
            .copied()
            .unwrap_or(Version(ApiVersion::MIN)))
    }
}

/// Reads the requested version from the headers; Ok(None) when none is given.
fn requested(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(v) = headers.get(IRONIC_VERSION_HEADER) {
        let text = v.to_str().map_err(|_| {
            ApiError::bad_request("Invalid value for X-OpenStack-Ironic-API-Version header")
        })?;
        return Ok(Some(text.trim().to_string()));
    }
    for v in headers.get_all(OPENSTACK_VERSION_HEADER) {
        let Ok(text) = v.to_str() else { continue };
        for item in text.split(',') {
            let mut words = item.split_whitespace();
            if let (Some(service), Some(ver)) = (words.next(), words.next()) {
                if service.eq_ignore_ascii_case("baremetal") {
                    return Ok(Some(ver.to_string()));
                }
            }
        }
    }
    Ok(None)
}

/// Chooses the version of a request, or the error to answer with.
pub fn negotiate(headers: &HeaderMap) -> Result<ApiVersion, ApiError> {
    let Some(text) = requested(headers)? else {
        return Ok(ApiVersion::MIN);
    };
    if text.eq_ignore_ascii_case("latest") {
        return Ok(ApiVersion::MAX);
    }
    let version: ApiVersion = text
        .parse()
        .map_err(|e: ferric_types::version::InvalidVersion| ApiError::bad_request(e.to_string()))?;
    if version < ApiVersion::MIN || version > ApiVersion::MAX {
        return Err(ApiError::not_acceptable(format!(
            "Version {version} was requested but the minor version is not supported by this \
             service. The supported version range is: [{}, {}].",
            ApiVersion::MIN,
            ApiVersion::MAX
        )));
    }
    Ok(version)
}

/// Middleware: negotiates the version, and stamps the version headers on
/// every response.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let mut response = match negotiate(request.headers()) {
        Ok(version) => {
            request.extensions_mut().insert(Version(version));
            let mut response = next.run(request).await;
            set_header(&mut response, IRONIC_VERSION_HEADER, &version.to_string());
            set_header(
                &mut response,
                OPENSTACK_VERSION_HEADER,
                &format!("baremetal {version}"),
            );
            response
        }
        Err(e) => e.into_response(),
    };
    set_header(&mut response, MIN_HEADER, &ApiVersion::MIN.to_string());
    set_header(&mut response, MAX_HEADER, &ApiVersion::MAX.to_string());
    response.headers_mut().insert(
        http::header::VARY,
        HeaderValue::from_static("X-OpenStack-Ironic-API-Version, OpenStack-API-Version"),
    );
    response
}

fn set_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn no_header_means_the_oldest_version() {
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), ApiVersion::v1(1));
    }

    #[test]
    fn both_header_forms_and_latest_are_understood() {
        assert_eq!(
            negotiate(&headers(IRONIC_VERSION_HEADER, "1.31")).unwrap(),
            ApiVersion::v1(31)
        );
        assert_eq!(
            negotiate(&headers(
                OPENSTACK_VERSION_HEADER,
                "compute 2.1, baremetal 1.40"
            ))
            .unwrap(),
            ApiVersion::v1(40)
        );
        assert_eq!(
            negotiate(&headers(IRONIC_VERSION_HEADER, "latest")).unwrap(),
            ApiVersion::MAX
        );
    }

    #[test]
    fn out_of_range_is_406_and_garbage_is_400() {
        let too_new = format!("1.{}", ApiVersion::MAX.minor + 1);
        assert_eq!(
            negotiate(&headers(IRONIC_VERSION_HEADER, &too_new))
                .unwrap_err()
                .status,
            406
        );
        assert_eq!(
            negotiate(&headers(IRONIC_VERSION_HEADER, "1.0"))
                .unwrap_err()
                .status,
            406
        );
        assert_eq!(
            negotiate(&headers(IRONIC_VERSION_HEADER, "2.1"))
                .unwrap_err()
                .status,
            406
        );
        assert_eq!(
            negotiate(&headers(IRONIC_VERSION_HEADER, "one"))
                .unwrap_err()
                .status,
            400
        );
    }
}
