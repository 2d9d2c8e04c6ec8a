//! API errors and the one place that maps them to an HTTP status, a gRPC
//! status code and a metric outcome label.

use crate::backend::BackendError;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error(
        "queue of model '{model}' version {version} is full ({capacity} requests waiting); retry later"
    )]
    QueueFull {
        model: String,
        version: u64,
        capacity: usize,
    },
    #[error("{0}")]
    NotReady(String),
    #[error("request deadline passed before the model could run it")]
    DeadlineExceeded,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// HTTP status and the `outcome` label of `quiver_requests_total`.
    pub fn status_and_outcome(&self) -> (u16, &'static str) {
        match self {
            ApiError::BadRequest(_) => (400, "bad_request"),
            ApiError::NotFound(_) => (404, "not_found"),
            ApiError::MethodNotAllowed(_) => (405, "bad_request"),
            ApiError::PayloadTooLarge { .. } => (413, "too_large"),
            ApiError::QueueFull { .. } => (429, "queue_full"),
            ApiError::NotReady(_) => (503, "not_ready"),
            ApiError::DeadlineExceeded => (504, "deadline_exceeded"),
            ApiError::Unauthorized(_) => (401, "unauthorized"),
            ApiError::Forbidden(_) => (403, "unauthorized"),
            ApiError::Internal(_) => (500, "error"),
        }
    }
}

impl ApiError {
    /// The gRPC status code of the same error, as the HTTP status maps.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ApiError::BadRequest(_) | ApiError::MethodNotAllowed(_) => tonic::Code::InvalidArgument,
            ApiError::NotFound(_) => tonic::Code::NotFound,
            ApiError::PayloadTooLarge { .. } | ApiError::QueueFull { .. } => {
                tonic::Code::ResourceExhausted
            }
            ApiError::NotReady(_) => tonic::Code::Unavailable,
            ApiError::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ApiError::Unauthorized(_) => tonic::Code::Unauthenticated,
            ApiError::Forbidden(_) => tonic::Code::PermissionDenied,
            ApiError::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

/// What a queued request can be answered with instead of outputs. `Clone`,
/// so one failure can answer every request of a batch.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InferError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("request deadline passed before the model could run it")]
    Expired,
    #[error("model version is shutting down")]
    ShuttingDown,
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::Backend(b) => ApiError::Internal(b.to_string()),
            InferError::Expired => ApiError::DeadlineExceeded,
            InferError::ShuttingDown => ApiError::NotReady(e.to_string()),
        }
    }
}

/// A setting that failed validation, named by its dotted key. Each
/// subsystem validates its own section of the config into this; the
/// config module only assembles the sections.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("invalid setting {key}: {message}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub message: String,
}

impl InvalidSetting {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        InvalidSetting {
            key,
            message: message.into(),
        }
    }
}
