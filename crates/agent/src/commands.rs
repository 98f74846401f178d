//! The results of agent commands, in the JSON shapes of IPA's command API
//! (ironic_python_agent/extensions/base.py and errors.py), and the trait
//! through which the command API runs commands.
//!
//! The conductor reads `command_status`, `command_result` and, on failure,
//! `command_error.details` (falling back to `message`), so these field names
//! and values are part of the protocol.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

/// Where a command is in its life (IPA's `AgentCommandStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    #[serde(rename = "RUNNING")]
    Running,
    #[serde(rename = "SUCCEEDED")]
    Succeeded,
    #[serde(rename = "FAILED")]
    Failed,
    /// The hardware managers changed since the conductor fetched the steps:
    /// the conductor restarts cleaning or deployment. IPA still spells it
    /// with the old `CLEAN_` prefix, which the conductor accepts.
    #[serde(rename = "CLEAN_VERSION_MISMATCH")]
    VersionMismatch,
}

impl CommandStatus {
    /// Whether the command has finished (in any way).
    pub fn is_done(self) -> bool {
        self != CommandStatus::Running
    }
}

/// Why a command failed or was refused, as IPA's `RESTError` serializes it:
/// `{type, code, message, details}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}: {details}")]
pub struct CommandError {
    /// IPA's error class name, e.g. `CommandExecutionError`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// The HTTP status IPA associates with the error class.
    pub code: u16,
    /// The generic message of the error class, without a final period.
    pub message: String,
    /// What exactly went wrong; this is what the conductor shows operators.
    pub details: String,
}

impl CommandError {
    /// An error with IPA's default code (500).
    pub fn new(
        error_type: impl Into<String>,
        message: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        CommandError {
            error_type: error_type.into(),
            code: 500,
            message: message.into(),
            details: details.into(),
        }
    }

    /// Sets the code (IPA's `status_code` of the error class).
    pub fn with_code(mut self, code: u16) -> Self {
        self.code = code;
        self
    }

    /// A command that ran and failed (IPA's `CommandExecutionError`).
    pub fn execution(details: impl Into<String>) -> Self {
        Self::new("CommandExecutionError", "Command execution failed", details)
    }

    /// Parameters a command cannot work with (IPA's
    /// `InvalidCommandParamsError`). Returned by
    /// [`CommandHandler::validate`], it refuses the request with 400.
    pub fn invalid_params(details: impl Into<String>) -> Self {
        Self::new(
            "InvalidCommandParamsError",
            "Invalid command parameters",
            details,
        )
        .with_code(400)
    }

    /// An unknown command or a malformed command name (IPA's
    /// `InvalidCommandError`).
    pub fn invalid_command(details: impl Into<String>) -> Self {
        Self::new("InvalidCommandError", "Invalid command", details).with_code(400)
    }

    /// The steps changed since the conductor fetched them (IPA's
    /// `VersionMismatch`); the command ends as `CLEAN_VERSION_MISMATCH`.
    pub fn version_mismatch(details: impl Into<String>) -> Self {
        Self::new(
            "VersionMismatch",
            "Hardware managers version mismatch, reload agent with correct version",
            details,
        )
        .with_code(400)
    }

    /// Whether this error means the steps changed under the conductor.
    pub fn is_version_mismatch(&self) -> bool {
        self.error_type == "VersionMismatch"
    }
}

/// One command as the agent reports it. `command_name` is the short name
/// (`execute_deploy_step`, not `deploy.execute_deploy_step`): the conductor
/// looks commands up by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: String,
    pub command_name: String,
    pub command_status: CommandStatus,
    pub command_error: Option<CommandError>,
    pub command_result: Option<Value>,
}

impl CommandResult {
    /// A command that has just started.
    pub fn running(command_name: impl Into<String>) -> Self {
        CommandResult {
            id: uuid::Uuid::new_v4().to_string(),
            command_name: command_name.into(),
            command_status: CommandStatus::Running,
            command_error: None,
            command_result: None,
        }
    }

    /// Records how the command ended. A plain string result is wrapped as
    /// IPA does (`{"result": "..."}`), so `command_result` is always an
    /// object or null.
    pub fn finish(&mut self, outcome: Result<Value, CommandError>, synchronous: bool) {
        match outcome {
            Ok(Value::Null) => {
                self.command_status = CommandStatus::Succeeded;
                self.command_result = None;
            }
            Ok(Value::String(text)) => {
                // IPA prefixes asynchronous string results with the command name.
                let text = if synchronous {
                    text
                } else {
                    format!("{}: {text}", self.command_name)
                };
                self.command_status = CommandStatus::Succeeded;
                self.command_result = Some(serde_json::json!({ "result": text }));
            }
            Ok(value) => {
                self.command_status = CommandStatus::Succeeded;
                self.command_result = Some(value);
            }
            Err(error) => {
                self.command_status = if error.is_version_mismatch() {
                    CommandStatus::VersionMismatch
                } else {
                    CommandStatus::Failed
                };
                self.command_result = None;
                self.command_error = Some(error);
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.command_status.is_done()
    }
}

/// A command's outcome, computed on a tokio task.
pub type CommandFuture = Pin<Box<dyn Future<Output = Result<Value, CommandError>> + Send>>;

/// The commands the agent offers (IPA's extensions), implemented by the rest
/// of the agent. The command API checks, in IPA's order: the name, that the
/// agent is not busy, [`has_extension`](Self::has_extension),
/// [`knows`](Self::knows), [`validate`](Self::validate), then runs it.
pub trait CommandHandler: Send + Sync + 'static {
    /// Runs `extension.command` with `params` (always a JSON object).
    /// Disk and CPU-heavy work belongs on blocking threads.
    fn run(&self, extension: &str, command: &str, params: Value) -> CommandFuture;

    /// Whether the command exists; unknown ones are refused with 400.
    fn knows(&self, extension: &str, command: &str) -> bool;

    /// Commands that run synchronously (IPA's `@sync_command`, e.g.
    /// `get_deploy_steps`): the answer always carries their outcome and they
    /// never leave the agent busy. IPA still refuses them while an
    /// asynchronous command runs.
    fn is_synchronous(&self, extension: &str, command: &str) -> bool;

    /// Whether the extension exists; unknown ones are refused with 404 as
    /// IPA does. By default every extension is taken to exist, so unknown
    /// extensions are refused by [`knows`](Self::knows) with 400 instead.
    fn has_extension(&self, _extension: &str) -> bool {
        true
    }

    /// Whether the agent was locked down (`system.lockdown`): it takes no
    /// more commands. The handler refuses them itself (in
    /// [`validate`](Self::validate) and [`run`](Self::run)); the API may
    /// also stop answering anything at all.
    fn is_locked_down(&self) -> bool {
        false
    }

    /// Checks the parameters before the command starts (IPA's command
    /// validators); an error with code 400 refuses the request with 400,
    /// any other error is recorded as a failed command.
    fn validate(
        &self,
        _extension: &str,
        _command: &str,
        _params: &Value,
    ) -> Result<(), CommandError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn result_serializes_as_ipa() {
        let mut result = CommandResult::running("execute_deploy_step");
        assert_eq!(
            serde_json::to_value(&result).unwrap(),
            json!({"id": result.id, "command_name": "execute_deploy_step",
                   "command_status": "RUNNING", "command_error": null, "command_result": null})
        );
        result.finish(
            Err(CommandError::execution("disk /dev/sda vanished")),
            false,
        );
        assert_eq!(
            serde_json::to_value(&result).unwrap(),
            json!({"id": result.id, "command_name": "execute_deploy_step",
                   "command_status": "FAILED", "command_result": null,
                   "command_error": {"type": "CommandExecutionError", "code": 500,
                                     "message": "Command execution failed",
                                     "details": "disk /dev/sda vanished"}})
        );
    }

    #[test]
    fn string_results_are_wrapped_as_ipa_does() {
        let mut asynchronous = CommandResult::running("cache_image");
        asynchronous.finish(Ok(json!("image cached")), false);
        assert_eq!(
            asynchronous.command_result,
            Some(json!({"result": "cache_image: image cached"}))
        );
        let mut synchronous = CommandResult::running("get_partition_uuids");
        synchronous.finish(Ok(json!("ok")), true);
        assert_eq!(synchronous.command_result, Some(json!({"result": "ok"})));
    }

    #[test]
    fn version_mismatch_has_its_own_status() {
        let mut result = CommandResult::running("execute_clean_step");
        result.finish(
            Err(CommandError::version_mismatch("managers changed")),
            false,
        );
        assert_eq!(result.command_status, CommandStatus::VersionMismatch);
        assert!(result.is_done());
        assert_eq!(
            serde_json::to_value(result.command_status).unwrap(),
            json!("CLEAN_VERSION_MISMATCH")
        );
    }

    #[test]
    fn result_round_trips() {
        let mut result = CommandResult::running("get_deploy_steps");
        result.finish(Ok(json!({"deploy_steps": {}})), true);
        let text = serde_json::to_string(&result).unwrap();
        assert_eq!(
            serde_json::from_str::<CommandResult>(&text).unwrap(),
            result
        );
    }
}
