//! IPA's command API, driven through the router as the conductor drives it.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use ferric_agent::commands::{CommandError, CommandFuture, CommandHandler};
use ferric_agent::server::{router, CommandApi};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tower::ServiceExt;

const TOKEN: &str = "Hnq3UoxxkQ0UtgXWJ1mnd4SO0qRtvu_RkDxI7hVMEcc";

/// Commands of the `deploy` extension:
/// - `fast` (async) answers `{"echo": params}`;
/// - `slow` (async) waits until the test calls `release`;
/// - `fail` (async) fails with a CommandExecutionError;
/// - `explode` (async) panics;
/// - `get_steps` (sync) answers `{"deploy_steps": {}}`;
/// - `get_broken` (sync) fails;
/// - `checked` (async) refuses params without `image_info`.
#[derive(Default)]
struct TestCommands {
    release: Arc<Notify>,
}

impl CommandHandler for TestCommands {
    fn run(&self, _extension: &str, command: &str, params: Value) -> CommandFuture {
        let release = self.release.clone();
        match command {
            "fast" | "checked" => Box::pin(async move { Ok(json!({ "echo": params })) }),
            "slow" => Box::pin(async move {
                release.notified().await;
                Ok(json!({"slow": "done"}))
            }),
            "fail" => Box::pin(async {
                Err(CommandError::execution(
                    "writing the image to /dev/sda failed",
                ))
            }),
            "explode" => Box::pin(async { panic!("test command panics on purpose") }),
            "get_steps" => Box::pin(async { Ok(json!({"deploy_steps": {}})) }),
            "get_broken" => Box::pin(async { Err(CommandError::execution("no disks found")) }),
            other => panic!("the API ran an unknown command {other}"),
        }
    }

    fn knows(&self, extension: &str, command: &str) -> bool {
        extension == "deploy"
            && [
                "fast",
                "slow",
                "fail",
                "explode",
                "get_steps",
                "get_broken",
                "checked",
            ]
            .contains(&command)
    }

    fn is_synchronous(&self, _extension: &str, command: &str) -> bool {
        command.starts_with("get_")
    }

    fn has_extension(&self, extension: &str) -> bool {
        extension == "deploy"
    }

    fn validate(
        &self,
        _extension: &str,
        command: &str,
        params: &Value,
    ) -> Result<(), CommandError> {
        if command == "checked" && params.get("image_info").is_none() {
            return Err(CommandError::invalid_params("image_info is required"));
        }
        Ok(())
    }
}

struct Agent {
    router: Router,
    api: CommandApi,
    release: Arc<Notify>,
}

fn agent(token: Option<&str>) -> Agent {
    let commands = TestCommands::default();
    let release = commands.release.clone();
    let api = CommandApi::new(Arc::new(commands), token.map(str::to_owned), "1.2.3");
    Agent {
        router: router(api.clone()),
        api,
        release,
    }
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "192.0.2.10:9999");
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), router.clone().oneshot(request))
        .await
        .expect("the API answered within 10 s")
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

async fn post(router: &Router, wait: bool, name: &str, params: Value) -> (StatusCode, Value) {
    let uri = format!("/v1/commands/?wait={wait}&agent_token={TOKEN}");
    call(
        router,
        "POST",
        &uri,
        Some(json!({"name": name, "params": params})),
    )
    .await
}

async fn get_command(router: &Router, id: &str, wait: bool) -> (StatusCode, Value) {
    let uri = format!("/v1/commands/{id}?agent_token={TOKEN}&wait={wait}");
    call(router, "GET", &uri, None).await
}

#[tokio::test]
async fn wait_true_answers_the_finished_command() {
    let agent = agent(Some(TOKEN));
    let (status, body) = post(&agent.router, true, "deploy.fast", json!({"a": 1})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command_name"], "fast");
    assert_eq!(body["command_status"], "SUCCEEDED");
    assert_eq!(body["command_error"], Value::Null);
    assert_eq!(body["command_result"], json!({"echo": {"a": 1}}));
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "exactly IPA's five fields, got {keys:?}");
}

#[tokio::test]
async fn wait_false_answers_running_then_the_result_shows_up() {
    let agent = agent(Some(TOKEN));
    let (status, body) = post(&agent.router, false, "deploy.slow", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command_status"], "RUNNING");
    assert_eq!(body["command_result"], Value::Null);
    let id = body["id"].as_str().unwrap().to_owned();

    let (status, body) = get_command(&agent.router, &id, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command_status"], "RUNNING");

    let mut finished = agent.api.subscribe_finished();
    agent.release.notify_one();
    let (status, body) = get_command(&agent.router, &id, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["command_status"], "SUCCEEDED");
    assert_eq!(body["command_result"], json!({"slow": "done"}));
    tokio::time::timeout(Duration::from_secs(5), finished.changed())
        .await
        .expect("the heartbeater is told the command finished")
        .unwrap();
    assert_eq!(*finished.borrow(), 1);
}

#[tokio::test]
async fn a_second_command_while_one_runs_is_refused_as_busy() {
    let agent = agent(Some(TOKEN));
    let (_, running) = post(&agent.router, false, "deploy.slow", json!({})).await;
    assert_eq!(running["command_status"], "RUNNING");

    let (status, body) = post(&agent.router, false, "deploy.fast", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["type"], "AgentIsBusy");
    assert_eq!(body["code"], 409);
    assert_eq!(body["message"], "Agent is busy");
    assert_eq!(body["details"], "executing command slow");
    // What the conductor reads.
    assert_eq!(body["faultcode"], "Client");
    assert_eq!(body["faultstring"], "Agent is busy: executing command slow");

    // IPA refuses synchronous commands too while one runs.
    let (status, body) = post(&agent.router, true, "deploy.get_steps", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["type"], "AgentIsBusy");

    // Once it finished, the agent takes commands again.
    agent.release.notify_one();
    get_command(&agent.router, running["id"].as_str().unwrap(), true).await;
    let (status, body) = post(&agent.router, true, "deploy.fast", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command_status"], "SUCCEEDED");
    // The refused commands left no trace.
    assert_eq!(agent.api.results().len(), 2);
}

#[tokio::test]
async fn synchronous_commands_answer_their_result_even_without_wait() {
    let agent = agent(Some(TOKEN));
    let (status, body) = post(&agent.router, false, "deploy.get_steps", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command_name"], "get_steps");
    assert_eq!(body["command_status"], "SUCCEEDED");
    assert_eq!(body["command_result"], json!({"deploy_steps": {}}));

    // They do not leave the agent busy.
    let (status, _) = post(&agent.router, true, "deploy.fast", json!({})).await;
    assert_eq!(status, StatusCode::OK);

    // A failing one is recorded as failed, with a 200 answer, as in IPA.
    let (status, body) = post(&agent.router, false, "deploy.get_broken", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command_status"], "FAILED");
    assert_eq!(body["command_error"]["details"], "no disks found");
    assert_eq!(agent.api.results().len(), 3);
}

#[tokio::test]
async fn a_failing_command_ends_failed_with_its_error() {
    let agent = agent(Some(TOKEN));
    let (status, body) = post(&agent.router, true, "deploy.fail", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command_status"], "FAILED");
    assert_eq!(body["command_result"], Value::Null);
    assert_eq!(
        body["command_error"],
        json!({"type": "CommandExecutionError", "code": 500,
               "message": "Command execution failed",
               "details": "writing the image to /dev/sda failed"})
    );
}

#[tokio::test]
async fn a_panicking_command_fails_and_does_not_leave_the_agent_busy() {
    let agent = agent(Some(TOKEN));
    let (status, body) = post(&agent.router, true, "deploy.explode", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command_status"], "FAILED");
    assert_eq!(body["command_error"]["type"], "CommandExecutionError");
    let (status, body) = post(&agent.router, true, "deploy.fast", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["command_status"], "SUCCEEDED");
}

#[tokio::test]
async fn unknown_or_malformed_commands_are_refused() {
    let agent = agent(Some(TOKEN));
    let (status, body) = post(&agent.router, true, "deploy.reformat_everything", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "InvalidCommandError");
    assert_eq!(
        body["faultstring"],
        "Invalid command: Unknown command: reformat_everything"
    );

    // IPA answers 404 for an unknown extension.
    let (status, body) = post(&agent.router, true, "rescue.finalize_rescue", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["details"], "Extension with id rescue not found.");

    let (status, body) = post(&agent.router, true, "no_dot", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "InvalidCommandError");

    let uri = format!("/v1/commands/?wait=true&agent_token={TOKEN}");
    for bad in [
        json!({"name": "deploy.fast"}),
        json!({"name": "deploy.fast", "params": []}),
        json!({"name": 3, "params": {}}),
        json!(["deploy.fast"]),
    ] {
        let (status, body) = call(&agent.router, "POST", &uri, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            body["faultstring"],
            "400 Bad Request: Missing or invalid name or params"
        );
    }
    let request = Request::post(&uri).body(Body::from("{not json")).unwrap();
    let response = agent.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Parameters the command refuses before it starts.
    let (status, body) = post(&agent.router, true, "deploy.checked", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "InvalidCommandParamsError");
    assert_eq!(body["details"], "image_info is required");
    let (status, _) = post(
        &agent.router,
        true,
        "deploy.checked",
        json!({"image_info": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Only the accepted command is in the history.
    assert_eq!(agent.api.results().len(), 1);
}

#[tokio::test]
async fn commands_need_the_right_token() {
    let agent = agent(Some(TOKEN));
    let body = json!({"name": "deploy.fast", "params": {}});
    for uri in [
        "/v1/commands/?wait=true".to_owned(),
        "/v1/commands/?wait=true&agent_token=".to_owned(),
        "/v1/commands/?wait=true&agent_token=wrong".to_owned(),
        format!("/v1/commands/?wait=true&agent_token={TOKEN}x"),
    ] {
        let (status, answer) = call(&agent.router, "POST", &uri, Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(answer["faultstring"], "401 Unauthorized: Token invalid.");
        assert_eq!(answer["code"], 401);
        assert!(!answer.to_string().contains(TOKEN));
    }
    for uri in ["/v1/commands/", "/v1/commands/some-id?agent_token=wrong"] {
        let (status, _) = call(&agent.router, "GET", uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    assert!(
        agent.api.results().is_empty(),
        "refused commands did not run"
    );

    let (status, _) = post(&agent.router, true, "deploy.fast", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!format!("{:?}", agent.api).contains(TOKEN));
}

#[tokio::test]
async fn a_standalone_agent_accepts_requests_without_a_token() {
    let agent = agent(None);
    let body = json!({"name": "deploy.fast", "params": {}});
    let (status, answer) = call(&agent.router, "POST", "/v1/commands?wait=true", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["command_status"], "SUCCEEDED");
    let (status, list) = call(&agent.router, "GET", "/v1/commands", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["commands"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn commands_are_listed_in_the_order_they_started() {
    let agent = agent(Some(TOKEN));
    let mut ids = Vec::new();
    for name in ["deploy.get_steps", "deploy.fast", "deploy.fail"] {
        let (status, body) = post(&agent.router, true, name, json!({})).await;
        assert_eq!(status, StatusCode::OK);
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, list) = call(
        &agent.router,
        "GET",
        &format!("/v1/commands/?agent_token={TOKEN}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let commands = list["commands"].as_array().unwrap();
    let listed: Vec<&str> = commands.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids);
    let names: Vec<&str> = commands
        .iter()
        .map(|c| c["command_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_steps", "fast", "fail"]);

    let (status, one) = get_command(&agent.router, &ids[1], false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, commands[1]);

    let (status, body) = get_command(&agent.router, "no-such-command", false).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["details"],
        "Command Result with id no-such-command not found."
    );
}

#[tokio::test]
async fn the_history_keeps_the_last_commands() {
    let commands = TestCommands::default();
    let api = CommandApi::new(Arc::new(commands), None, "1.2.3").with_history_limit(2);
    let router = router(api.clone());
    for _ in 0..3 {
        let body = json!({"name": "deploy.fast", "params": {}});
        let (status, _) = call(&router, "POST", "/v1/commands/?wait=true", Some(body)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let results = api.results();
    assert_eq!(results.len(), 2);
}

#[tokio::test]
async fn status_and_version_documents_need_no_token() {
    let agent = agent(Some(TOKEN));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for uri in ["/v1/status", "/status"] {
        let (status, body) = call(&agent.router, "GET", uri, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_object().unwrap().len(), 2);
        assert_eq!(body["version"], "1.2.3");
        let started_at = body["started_at"].as_f64().expect("a unix time as float");
        assert!((before - started_at).abs() < 60.0, "{started_at}");
    }

    let (status, root) = call(&agent.router, "GET", "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(root["name"], "OpenStack Ironic Python Agent API");
    assert_eq!(root["default_version"]["id"], "v1");
    assert_eq!(root["versions"][0], root["default_version"]);
    assert_eq!(
        root["default_version"]["links"][0],
        json!({"href": "http://192.0.2.10:9999/v1", "rel": "self"})
    );

    let (status, v1) = call(&agent.router, "GET", "/v1/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1["id"], "v1");
    assert_eq!(
        v1["commands"][0]["href"],
        "http://192.0.2.10:9999/v1/commands"
    );
    assert_eq!(
        v1["media_types"][0]["type"],
        "application/vnd.openstack.ironic-python-agent.v1+json"
    );
}

#[tokio::test]
async fn paths_work_with_or_without_trailing_slash_and_version() {
    let agent = agent(Some(TOKEN));
    for path in ["/v1/commands/", "/v1/commands", "/commands/", "/commands"] {
        let uri = format!("{path}?wait=true&agent_token={TOKEN}");
        let body = json!({"name": "deploy.fast", "params": {}});
        let (status, answer) = call(&agent.router, "POST", &uri, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "POST {path}");
        assert_eq!(answer["command_status"], "SUCCEEDED");
        let (status, list) = call(&agent.router, "GET", &uri, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}");
        assert!(list["commands"].is_array());
    }
    let id = agent.api.results()[0].id.clone();
    let (status, _) = call(
        &agent.router,
        "GET",
        &format!("/commands/{id}?agent_token={TOKEN}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = call(&agent.router, "GET", "/v2/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["faultcode"], "Client");
    let (status, _) = call(&agent.router, "DELETE", "/v1/commands/", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_start_only_one_command() {
    let agent = agent(Some(TOKEN));
    let requests = (0..8).map(|_| {
        let router = agent.router.clone();
        tokio::spawn(async move { post(&router, false, "deploy.slow", json!({})).await.0 })
    });
    let mut accepted = 0;
    for request in requests {
        match request.await.unwrap() {
            StatusCode::OK => accepted += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected answer {other}"),
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(agent.api.results().len(), 1);
    agent.release.notify_one();
}
