//! The admin API's commands to the model manager, whatever door they came
//! through, and the channel they travel on. The manager, the one owner of
//! what is loaded and routed, answers each with a JSON body or an error.

use std::time::Duration;

pub use quiver_contract::routing::Action as VerdictAction;
use quiver_contract::routing::RoutingState;
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::error::ApiError;

/// A load may warm up a large model; past this the caller gets a deadline
/// error, and the load carries on.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// An action of the admin API.
pub enum Command {
    /// Read the model's directory now and load what it selects (Triton's
    /// `load`); also undoes an unload.
    Load(String),
    /// Stop serving every version of the model until it is loaded again.
    Unload(String),
    /// Replace the model's routing state.
    SetRouting(String, Box<RoutingState>),
    /// An external rollout verdict (the trainer's, or an operator's).
    Verdict(String, Verdict),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub action: VerdictAction,
    pub version: u64,
    /// Who decided, written to `routing.json`; `api` if not given.
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

pub type Answer = Result<serde_json::Value, ApiError>;
pub type Reply = oneshot::Sender<Answer>;

type Send = dyn Fn(Command, Reply) -> Result<(), ApiError> + std::marker::Send + Sync;

/// Where commands go: the manager's inbox, bounded (a full inbox answers
/// "busy" at once).
pub struct Commands {
    send: Box<Send>,
}

impl Commands {
    pub fn new(
        send: impl Fn(Command, Reply) -> Result<(), ApiError> + std::marker::Send + Sync + 'static,
    ) -> Self {
        Commands {
            send: Box::new(send),
        }
    }

    /// Sends `cmd` and waits for the manager's answer.
    pub async fn run(&self, cmd: Command) -> Answer {
        let (tx, rx) = oneshot::channel();
        (self.send)(cmd, tx)?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ApiError::NotReady("the gateway is shutting down".into())),
            Err(_) => Err(ApiError::DeadlineExceeded),
        }
    }
}
