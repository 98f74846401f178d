//! IPA's command API, through which the conductor drives the agent
//! (ironic_python_agent/api/app.py):
//!
//! - `POST /v1/commands/?wait=true|false&agent_token=T` with
//!   `{"name": "<extension>.<command>", "params": {...}}` starts a command
//!   and answers its [`CommandResult`] (finished when `wait=true` or when the
//!   command is synchronous, otherwise `RUNNING`);
//! - `GET /v1/commands/` lists the results in the order the commands
//!   started, `GET /v1/commands/{id}` shows one (`?wait=true` waits for it);
//! - `GET /v1/status`, `GET /` and `GET /v1/` need no token.
//!
//! As in IPA, every path also works without the `/v1` prefix, and
//! `/commands` works with or without its trailing slash.
//!
//! One command runs at a time: while an asynchronous command is `RUNNING`
//! every new command is refused with 409 "Agent is busy" (IPA refuses the
//! synchronous `get_*` commands too; the conductor retries them).
//!
//! While an asynchronous command runs, its `command_result` shows what the
//! handler last put in the [`RunningResult`] given with
//! [`CommandApi::with_running_result`] (e.g. `write_image`'s progress).
//! Ironic ignores `command_result` while a command is `RUNNING`.
//!
//! Error bodies carry IPA's `faultcode`/`faultstring` (the conductor reads
//! `faultstring`, and looks for "agent is busy" in it) and, in addition, the
//! `{type, code, message, details}` of IPA's error classes.

use crate::commands::{CommandError, CommandHandler, CommandResult};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

/// How many command results are kept (the oldest are forgotten first). The
/// conductor only ever looks at the last few.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// The largest request body accepted. Deploy steps carry the config drive
/// (gzipped and base64-encoded, up to tens of MiB) in their parameters.
pub const MAX_REQUEST_BODY: usize = 128 * 1024 * 1024;

const API_NAME: &str = "OpenStack Ironic Python Agent API";
const API_DESCRIPTION: &str = "Ironic Python Agent is a provisioning agent for OpenStack Ironic";
const DOCS_URL: &str = "https://docs.openstack.org/ironic-python-agent";
const MEDIA_TYPE: &str = "application/vnd.openstack.ironic-python-agent.v1+json";

/// What the running asynchronous command reports as its `command_result`
/// before it finishes: the handler sets it, the API shows it. Cheap to
/// clone; one slot is enough because one asynchronous command runs at a
/// time. The API empties it when an asynchronous command starts.
#[derive(Debug, Clone, Default)]
pub struct RunningResult(Arc<Mutex<Option<Value>>>);

impl RunningResult {
    fn slot(&self) -> MutexGuard<'_, Option<Value>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces what the running command reports.
    pub fn set(&self, value: Value) {
        *self.slot() = Some(value);
    }

    pub fn clear(&self) {
        *self.slot() = None;
    }

    pub fn get(&self) -> Option<Value> {
        self.slot().clone()
    }
}

/// The state behind the command API: the commands, the token, the history
/// of results, when the agent started and its version. Cheap to clone.
#[derive(Clone)]
pub struct CommandApi {
    shared: Arc<Shared>,
    history_limit: usize,
    /// `http` or `https`, for the links of the version documents.
    scheme: &'static str,
    running: Option<RunningResult>,
}

struct Shared {
    handler: Arc<dyn CommandHandler>,
    /// Standalone agents take any request; the others only requests with
    /// the token, which may be learnt after the API started (from lookup).
    standalone: bool,
    token: std::sync::RwLock<Option<String>>,
    started_at: f64,
    version: String,
    history: Mutex<VecDeque<Entry>>,
    /// Held while a command is checked and, for synchronous commands, run,
    /// so two requests cannot both find the agent idle (IPA's command_lock).
    starting: Arc<tokio::sync::Mutex<()>>,
    /// Counts finished asynchronous commands; IPA heartbeats right after one.
    finished: watch::Sender<u64>,
}

struct Entry {
    result: CommandResult,
    /// Becomes `Some(final result)` when the command ends.
    outcome: watch::Receiver<Option<CommandResult>>,
}

impl std::fmt::Debug for CommandApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("CommandApi")
            .field("standalone", &self.shared.standalone)
            .field("started_at", &self.shared.started_at)
            .field("version", &self.shared.version)
            .finish_non_exhaustive()
    }
}

impl CommandApi {
    /// The API of an agent that started now. With `token` set, every command
    /// request must carry it as `agent_token`; `None` is for a standalone
    /// agent, which accepts any request.
    pub fn new(
        handler: Arc<dyn CommandHandler>,
        token: Option<String>,
        version: impl Into<String>,
    ) -> Self {
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or_default();
        CommandApi {
            shared: Arc::new(Shared {
                handler,
                standalone: token.is_none(),
                token: std::sync::RwLock::new(token),
                started_at,
                version: version.into(),
                history: Mutex::new(VecDeque::new()),
                starting: Arc::new(tokio::sync::Mutex::new(())),
                finished: watch::Sender::new(0),
            }),
            history_limit: DEFAULT_HISTORY_LIMIT,
            scheme: "http",
            running: None,
        }
    }

    /// The API of an agent that has no token yet: every command request is
    /// refused until [`CommandApi::set_token`] (after lookup).
    pub fn awaiting_token(handler: Arc<dyn CommandHandler>, version: impl Into<String>) -> Self {
        let api = Self::new(handler, Some(String::new()), version);
        api.set_token(None);
        api
    }

    /// Sets (or clears) the token requests must carry.
    pub fn set_token(&self, token: Option<String>) {
        *self
            .shared
            .token
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = token;
    }

    /// Whether `system.lockdown` ran: the agent takes no more commands and
    /// stops heartbeating.
    pub fn is_locked_down(&self) -> bool {
        self.shared.handler.is_locked_down()
    }

    /// Keeps the last `limit` results (at least one) instead of
    /// [`DEFAULT_HISTORY_LIMIT`]. Configure before handing clones out.
    pub fn with_history_limit(mut self, limit: usize) -> Self {
        self.history_limit = limit.max(1);
        self
    }

    /// Whether the API is served over TLS (for the links of `GET /`).
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.scheme = if tls { "https" } else { "http" };
        self
    }

    /// Shows what the handler puts in `running` as the `command_result` of
    /// the running asynchronous command. Configure before handing clones out.
    pub fn with_running_result(mut self, running: RunningResult) -> Self {
        self.running = Some(running);
        self
    }

    /// The results kept, in the order the commands started.
    pub fn results(&self) -> Vec<CommandResult> {
        let results = self.history().iter().map(|e| e.result.clone()).collect();
        self.with_running(results)
    }

    /// Fills in the running command's interim result.
    fn with_running(&self, mut results: Vec<CommandResult>) -> Vec<CommandResult> {
        let interim = self.running.as_ref().and_then(RunningResult::get);
        if let Some(interim) = interim {
            for result in results.iter_mut().filter(|r| !r.is_done()) {
                result.command_result = Some(interim.clone());
            }
        }
        results
    }

    /// Changes each time an asynchronous command finishes: the heartbeater
    /// reports to the conductor at once instead of at its next interval.
    pub fn subscribe_finished(&self) -> watch::Receiver<u64> {
        self.shared.finished.subscribe()
    }

    fn history(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        // The history stays consistent even if a holder panicked: every
        // change is a single push, pop or field assignment.
        self.shared
            .history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn authorize(&self, given: Option<&str>) -> Result<(), ApiError> {
        if self.shared.standalone {
            return Ok(());
        }
        let token = self
            .shared
            .token
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(expected) = token.as_deref() else {
            return Err(ApiError::Unauthorized);
        };
        match given {
            Some(given)
                if !expected.is_empty()
                    && bool::from(given.as_bytes().ct_eq(expected.as_bytes())) =>
            {
                Ok(())
            }
            _ => Err(ApiError::Unauthorized),
        }
    }

    fn record(&self, result: CommandResult, outcome: watch::Receiver<Option<CommandResult>>) {
        let mut history = self.history();
        history.push_back(Entry { result, outcome });
        while history.len() > self.history_limit {
            history.pop_front();
        }
    }

    /// Checks and starts a command: the answer is final for synchronous
    /// commands and `RUNNING` for asynchronous ones.
    async fn execute(
        &self,
        extension: &str,
        command: &str,
        params: Value,
    ) -> Result<CommandResult, ApiError> {
        let starting = self.shared.starting.clone().lock_owned().await;
        if let Some(running) = self.history().back().filter(|e| !e.result.is_done()) {
            tracing::warn!(
                command = %format!("{extension}.{command}"),
                running = %running.result.command_name,
                "refused a command: the agent is still running another"
            );
            return Err(ApiError::AgentIsBusy {
                running: running.result.command_name.clone(),
            });
        }
        let handler = &self.shared.handler;
        if !handler.has_extension(extension) {
            return Err(ApiError::Rest(
                CommandError::new(
                    "RequestedObjectNotFoundError",
                    "Not found",
                    format!("Extension with id {extension} not found."),
                )
                .with_code(404),
            ));
        }
        if !handler.knows(extension, command) {
            return Err(ApiError::Rest(CommandError::invalid_command(format!(
                "Unknown command: {command}"
            ))));
        }
        let synchronous = handler.is_synchronous(extension, command);
        if let Err(error) = handler.validate(extension, command, &params) {
            if error.code == 400 {
                return Err(ApiError::Rest(error));
            }
            // IPA records other validation failures as a failed command.
            let mut result = CommandResult::running(command);
            result.finish(Err(error), true);
            self.record(result.clone(), watch::channel(Some(result.clone())).1);
            return Ok(result);
        }

        tracing::info!(command = %format!("{extension}.{command}"), synchronous, "running a command");
        if let (false, Some(running)) = (synchronous, &self.running) {
            running.clear();
        }
        let work = handler.run(extension, command, params);
        let mut result = CommandResult::running(command);
        if synchronous {
            let api = self.clone();
            // On its own task so that a client hanging up does not cut the
            // command short; `starting` is held until the result is recorded.
            let task = tokio::spawn(async move {
                result.finish(run_to_completion(work).await, true);
                log_outcome(&result);
                api.record(result.clone(), watch::channel(Some(result.clone())).1);
                drop(starting);
                result
            });
            return task.await.map_err(|error| {
                ApiError::Internal(format!(
                    "the synchronous command {command} was lost: {error}"
                ))
            });
        }

        let (done, outcome) = watch::channel(None);
        self.record(result.clone(), outcome);
        drop(starting);
        let api = self.clone();
        let id = result.id.clone();
        tokio::spawn(async move {
            let outcome = run_to_completion(work).await;
            let finished = {
                let mut history = api.history();
                match history.iter_mut().find(|e| e.result.id == id) {
                    Some(entry) => {
                        entry.result.finish(outcome, false);
                        entry.result.clone()
                    }
                    None => {
                        // Only possible with a history limit below the
                        // number of commands started since; report anyway.
                        let mut result = CommandResult::running(String::new());
                        result.id = id;
                        result.finish(outcome, false);
                        result
                    }
                }
            };
            log_outcome(&finished);
            done.send_replace(Some(finished));
            api.shared.finished.send_modify(|count| *count += 1);
        });
        Ok(result)
    }

    /// The result of a command, once it has finished if `wait`.
    async fn result(&self, id: &str, wait: bool) -> Result<CommandResult, ApiError> {
        let (current, mut outcome) = {
            let history = self.history();
            let entry = history
                .iter()
                .find(|e| e.result.id == id)
                .ok_or_else(|| ApiError::UnknownCommand(id.to_owned()))?;
            (entry.result.clone(), entry.outcome.clone())
        };
        if !wait || current.is_done() {
            return Ok(self.with_running(vec![current]).remove(0));
        }
        let finished = outcome.wait_for(Option::is_some).await.map(|r| r.clone());
        Ok(finished.ok().flatten().unwrap_or(current))
    }

    fn root_url(&self, headers: &HeaderMap) -> String {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("{}://{host}", self.scheme)
    }
}

/// Runs a command's future on its own task, so that a panic in it fails the
/// command instead of leaving the agent busy for ever.
async fn run_to_completion(work: crate::commands::CommandFuture) -> Result<Value, CommandError> {
    match tokio::spawn(work).await {
        Ok(outcome) => outcome,
        Err(error) => Err(CommandError::execution(format!(
            "the command stopped unexpectedly: {error}"
        ))),
    }
}

/// Logs how a command ended, with the agent's peak resident memory so far
/// (what a ramdisk must leave room for).
fn log_outcome(result: &CommandResult) {
    let peak_rss_kib = peak_rss_kib().unwrap_or(0);
    match &result.command_error {
        None => tracing::info!(
            command = %result.command_name, id = %result.id, peak_rss_kib, "command finished"
        ),
        Some(error) => tracing::warn!(
            command = %result.command_name, id = %result.id, error = %error, peak_rss_kib,
            "command failed"
        ),
    }
}

/// VmHWM of /proc/self/status, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The errors of the command API. This is the one place they become HTTP
/// answers.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("Token invalid.")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("executing command {running}")]
    AgentIsBusy { running: String },
    #[error("Command Result with id {0} not found.")]
    UnknownCommand(String),
    /// One of IPA's error classes, as given.
    #[error("{0}")]
    Rest(CommandError),
    #[error("The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.")]
    NoSuchPath,
    #[error("The method is not allowed for the requested URL.")]
    MethodNotAllowed,
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn as_rest(&self) -> CommandError {
        let http = |error_type: &str, code: StatusCode| {
            CommandError::new(
                error_type,
                code.canonical_reason().unwrap_or_default(),
                self.to_string(),
            )
            .with_code(code.as_u16())
        };
        match self {
            ApiError::Unauthorized => http("Unauthorized", StatusCode::UNAUTHORIZED),
            ApiError::BadRequest(_) => http("BadRequest", StatusCode::BAD_REQUEST),
            ApiError::NoSuchPath => http("NotFound", StatusCode::NOT_FOUND),
            ApiError::MethodNotAllowed => http("MethodNotAllowed", StatusCode::METHOD_NOT_ALLOWED),
            ApiError::Internal(_) => CommandError::new(
                "InternalServerError",
                "Internal server error",
                self.to_string(),
            ),
            ApiError::AgentIsBusy { .. } => {
                CommandError::new("AgentIsBusy", "Agent is busy", self.to_string()).with_code(409)
            }
            ApiError::UnknownCommand(_) => CommandError::new(
                "RequestedObjectNotFoundError",
                "Not found",
                self.to_string(),
            )
            .with_code(404),
            ApiError::Rest(error) => error.clone(),
        }
    }

    /// Whether IPA answers this error from werkzeug, whose fault strings
    /// read "401 Unauthorized: Token invalid.".
    fn is_http_exception(&self) -> bool {
        matches!(
            self,
            ApiError::Unauthorized
                | ApiError::BadRequest(_)
                | ApiError::NoSuchPath
                | ApiError::MethodNotAllowed
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let rest = self.as_rest();
        let status = StatusCode::from_u16(rest.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self, "internal error in the command API");
        }
        let faultstring = if self.is_http_exception() {
            format!(
                "{} {}: {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or_default(),
                rest.details
            )
        } else {
            format!("{}: {}", rest.message, rest.details)
        };
        let body = json!({
            "faultcode": if status.is_server_error() { "Server" } else { "Client" },
            "faultstring": faultstring,
            "type": rest.error_type,
            "code": rest.code,
            "message": rest.message,
            "details": rest.details,
        });
        (status, Json(body)).into_response()
    }
}

#[derive(Debug, Default, Deserialize)]
struct CommandQuery {
    agent_token: Option<String>,
    wait: Option<String>,
}

impl CommandQuery {
    fn from(query: Result<Query<CommandQuery>, QueryRejection>) -> Result<Self, ApiError> {
        query
            .map(|Query(query)| query)
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }

    fn wait(&self) -> bool {
        self.wait
            .as_deref()
            .is_some_and(|wait| wait.eq_ignore_ascii_case("true"))
    }
}

/// The command API's routes over `api`.
pub fn router(api: CommandApi) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/v1", get(v1))
        .route("/v1/", get(v1))
        .route("/v1/status", get(status))
        .route("/status", get(status))
        .route("/v1/commands", get(list_commands).post(run_command))
        .route("/v1/commands/", get(list_commands).post(run_command))
        .route("/v1/commands/{id}", get(get_command))
        .route("/commands", get(list_commands).post(run_command))
        .route("/commands/", get(list_commands).post(run_command))
        .route("/commands/{id}", get(get_command))
        .fallback(|| async { ApiError::NoSuchPath })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .with_state(api)
}

fn version_document(url: &str) -> Value {
    json!({
        "id": "v1",
        "links": [
            {"href": format!("{url}/v1"), "rel": "self"},
            {"href": format!("{DOCS_URL}/"), "rel": "describedby", "type": "text/html"},
        ],
    })
}

async fn root(State(api): State<CommandApi>, headers: HeaderMap) -> Json<Value> {
    let url = api.root_url(&headers);
    Json(json!({
        "name": API_NAME,
        "description": API_DESCRIPTION,
        "versions": [version_document(&url)],
        "default_version": version_document(&url),
    }))
}

async fn v1(State(api): State<CommandApi>, headers: HeaderMap) -> Json<Value> {
    let url = api.root_url(&headers);
    let mut document = version_document(&url);
    let links = |resource: &str| {
        json!([
            {"href": format!("{url}/v1/{resource}"), "rel": "self"},
            {"href": format!("{url}/{resource}"), "rel": "bookmark"},
        ])
    };
    document["commands"] = links("commands");
    document["status"] = links("status");
    document["media_types"] = json!([{"base": "application/json", "type": MEDIA_TYPE}]);
    Json(document)
}

async fn status(State(api): State<CommandApi>) -> Json<Value> {
    Json(json!({
        "started_at": api.shared.started_at,
        "version": api.shared.version,
    }))
}

async fn list_commands(
    State(api): State<CommandApi>,
    query: Result<Query<CommandQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let query = CommandQuery::from(query)?;
    api.authorize(query.agent_token.as_deref())?;
    Ok(Json(json!({ "commands": api.results() })))
}

async fn get_command(
    State(api): State<CommandApi>,
    Path(id): Path<String>,
    query: Result<Query<CommandQuery>, QueryRejection>,
) -> Result<Json<CommandResult>, ApiError> {
    let query = CommandQuery::from(query)?;
    api.authorize(query.agent_token.as_deref())?;
    Ok(Json(api.result(&id, query.wait()).await?))
}

async fn run_command(
    State(api): State<CommandApi>,
    query: Result<Query<CommandQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Json<CommandResult>, ApiError> {
    let query = CommandQuery::from(query)?;
    api.authorize(query.agent_token.as_deref())?;
    // Like IPA, the body is JSON whatever its Content-Type says.
    let body: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("Failed to decode JSON object: {error}")))?;
    let (Some(Value::String(name)), Some(Value::Object(params))) =
        (body.get("name"), body.get("params"))
    else {
        return Err(ApiError::BadRequest(
            "Missing or invalid name or params".to_owned(),
        ));
    };
    let Some((extension, command)) = name.split_once('.') else {
        return Err(ApiError::Rest(CommandError::invalid_command(
            "Command name must be of the form <extension>.<name>",
        )));
    };
    let result = api
        .execute(extension, command, Value::Object(params.clone()))
        .await?;
    if query.wait() && !result.is_done() {
        return Ok(Json(api.result(&result.id, true).await?));
    }
    Ok(Json(result))
}
