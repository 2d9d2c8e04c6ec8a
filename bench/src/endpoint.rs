//! What the driver sends requests to. The driver only needs "open a
//! connection" and "make one call on it"; HTTP is one implementation
//! ([`crate::http`]), gRPC another ([`crate::grpc`]). The Kafka mode
//! ([`crate::kafka`]) has no connections to take turns on: it produces on
//! the same schedule from one thread and matches answers by correlation id,
//! into the same samples, histograms and reports.

use std::future::Future;

/// What became of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// An answer with this HTTP status (or the equivalent of another transport).
    Answered(u16),
    /// No connection could be opened.
    Connect,
    /// The connection failed mid-call.
    Io,
    /// No answer within the per-request timeout.
    Timeout,
    /// Never sent: the run's drain deadline had passed.
    Abandoned,
}

impl Status {
    pub fn is_ok(self) -> bool {
        matches!(self, Status::Answered(200..=299))
    }

    /// The key errors are counted under in reports.
    pub fn key(self) -> String {
        match self {
            Status::Answered(code) => code.to_string(),
            Status::Connect => "connect".into(),
            Status::Io => "io".into(),
            Status::Timeout => "timeout".into(),
            Status::Abandoned => "abandoned".into(),
        }
    }

    /// Whether the connection should be dropped and reopened.
    pub fn breaks_connection(self) -> bool {
        !matches!(self, Status::Answered(_))
    }
}

/// The server's own account of a request (Quiver's `x-quiver-*` headers);
/// absent for servers that do not send them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    pub queue_us: Option<u32>,
    pub compute_us: Option<u32>,
    pub total_us: Option<u32>,
    pub batch_size: Option<u32>,
    /// The model version that answered.
    pub version: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub stages: Stages,
}

impl Outcome {
    pub fn failed(status: Status) -> Outcome {
        Outcome {
            status,
            stages: Stages::default(),
        }
    }
}

/// A target the driver can load.
pub trait Endpoint: Send + Sync + 'static {
    type Conn: Send + 'static;

    fn connect(&self) -> impl Future<Output = anyhow::Result<Self::Conn>> + Send;

    /// One request on `conn`; the caller bounds it with a timeout.
    fn call(&self, conn: &mut Self::Conn) -> impl Future<Output = Outcome> + Send;
}
