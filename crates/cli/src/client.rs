//! A small client of the Ironic v1 API.

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::Value;

/// The microversion the CLI speaks; a server that offers less is asked
/// again with its maximum, as the baremetal CLI does.
pub const API_VERSION: &str = "1.95";
const VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Version";
const MAX_VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Maximum-Version";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request with an Ironic error body.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("cannot reach {url}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server answered something that is not JSON")]
    NotJson(#[source] reqwest::Error),
}

pub struct IronicClient {
    base: String,
    http: Client,
    version: std::cell::RefCell<String>,
}

/// The faultstring of an Ironic error body, or the body itself.
pub fn error_message(body: &str) -> String {
    let Ok(outer) = serde_json::from_str::<Value>(body) else {
        return body.trim().to_string();
    };
    let inner = outer["error_message"].as_str().unwrap_or_default();
    serde_json::from_str::<Value>(inner)
        .ok()
        .and_then(|v| v["faultstring"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

impl IronicClient {
    pub fn new(base: &str) -> IronicClient {
        IronicClient {
            base: base.trim_end_matches('/').to_string(),
            http: Client::new(),
            version: std::cell::RefCell::new(API_VERSION.to_string()),
        }
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        let url = format!("{}{path}", self.base);
        for attempt in 0..2 {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(VERSION_HEADER, self.version.borrow().as_str());
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().map_err(|source| ClientError::Connect {
                url: self.base.clone(),
                source,
            })?;
            if resp.status() == StatusCode::NOT_ACCEPTABLE && attempt == 0 {
                if let Some(max) = resp
                    .headers()
                    .get(MAX_VERSION_HEADER)
                    .and_then(|v| v.to_str().ok())
                {
                    if max != self.version.borrow().as_str() {
                        *self.version.borrow_mut() = max.to_string();
                        continue;
                    }
                }
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second pass")
    }

    fn json(resp: Response) -> Result<Value, ClientError> {
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().unwrap_or_default();
            return Err(ClientError::Api {
                status: status.as_u16(),
                message: error_message(&text),
            });
        }
        if status == StatusCode::NO_CONTENT || status == StatusCode::ACCEPTED {
            return Ok(Value::Null);
        }
        let text = resp.text().map_err(ClientError::NotJson)?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        Self::json(self.send(reqwest::Method::GET, path, None)?)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        Self::json(self.send(reqwest::Method::POST, path, Some(body))?)
    }

    pub fn put(&self, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        Self::json(self.send(reqwest::Method::PUT, path, body)?)
    }

    pub fn patch(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        Self::json(self.send(reqwest::Method::PATCH, path, Some(body))?)
    }

    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        Self::json(self.send(reqwest::Method::DELETE, path, None)?)
    }

    /// Every item of a list, following `next` links.
    pub fn list_all(&self, path: &str, key: &str) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(p) = next.take() {
            let page = self.get(&p)?;
            if let Some(list) = page[key].as_array() {
                items.extend(list.iter().cloned());
            }
            next = page["next"]
                .as_str()
                .and_then(|url| url.find("/v1/").map(|i| url[i..].to_string()));
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ironic_error_bodies_give_their_faultstring() {
        let body = r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Node x could not be found.\", \"debuginfo\": null}"}"#;
        assert_eq!(error_message(body), "Node x could not be found.");
        assert_eq!(error_message("plain text\n"), "plain text");
    }
}
