//! Query parameters, parsed leniently into a list and checked by name.

use crate::body::parse_bool_str;
use crate::error::ApiError;
use crate::version::Version;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

/// The query string as name/value pairs.
pub struct Params(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query)?;
        Ok(Params(pairs))
    }
}

fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::bad_request("Invalid query string"))?,
    )
    .map(|q| q.0)
    .map_err(|e| ApiError::bad_request(format!("Invalid query string: {e}")))
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The parameter if present, refused with 406 below `1.minor`.
    pub fn versioned(
        &self,
        name: &str,
        minor: u32,
        version: Version,
    ) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            Some(v) => {
                version.require(minor, &format!("Query parameter \"{name}\""))?;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    pub fn bool(&self, name: &str, minor: u32, version: Version) -> Result<Option<bool>, ApiError> {
        self.versioned(name, minor, version)?
            .map(|v| {
                parse_bool_str(v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Invalid value for {name}: \"{v}\" is not a boolean"
                    ))
                })
            })
            .transpose()
    }

    pub fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.get(name)
            .map(|v| {
                Uuid::parse_str(v).map_err(|_| {
                    ApiError::bad_request(format!("Expected a UUID for {name} but received {v}."))
                })
            })
            .transpose()
    }

    /// `limit`: a positive integer, capped at `max`; `max` when absent.
    pub fn limit(&self, max: u32) -> Result<u32, ApiError> {
        match self.get("limit") {
            None => Ok(max),
            Some(v) => {
                let n: i64 = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("Invalid value for limit: \"{v}\""))
                })?;
                if n <= 0 {
                    return Err(ApiError::bad_request("Limit must be positive"));
                }
                Ok(n.min(i64::from(max)) as u32)
            }
        }
    }

    pub fn sort_dir(&self) -> Result<ferric_store::SortDir, ApiError> {
        match self.get("sort_dir") {
            None | Some("asc") => Ok(ferric_store::SortDir::Asc),
            Some("desc") => Ok(ferric_store::SortDir::Desc),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid sort direction: {other}. Acceptable values are 'asc' or 'desc'"
            ))),
        }
    }

    /// `fields=a,b`: each must be a known field visible at this version.
    pub fn fields(
        &self,
        known: &[&str],
        field_version: fn(&str) -> u32,
        version: Version,
    ) -> Result<Option<Vec<String>>, ApiError> {
        let Some(raw) = self.versioned("fields", 8, version)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for f in raw.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if !known.contains(&f) {
                return Err(ApiError::bad_request(format!(
                    "Field(s) \"{f}\" are not valid"
                )));
            }
            version.require(field_version(f), &format!("Field \"{f}\""))?;
            out.push(f.to_string());
        }
        Ok(Some(out))
    }

    /// The query string for the `next` link: the same parameters with a new marker.
    pub fn next_query(&self, limit: u32, marker: &str) -> String {
        let mut pairs: Vec<(String, String)> = self
            .0
            .iter()
            .filter(|(k, _)| k != "marker" && k != "limit")
            .cloned()
            .collect();
        pairs.push(("limit".into(), limit.to_string()));
        pairs.push(("marker".into(), marker.to_string()));
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
