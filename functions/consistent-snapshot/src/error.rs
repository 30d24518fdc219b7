//! Errors of the function. Each names the instance, snapshot, command or field it concerns.

use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment does not describe a valid deployment; every problem is listed.
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),

    /// The invocation payload is not one of the accepted event shapes.
    #[error("invalid event: {0}")]
    Event(String),

    /// An AWS call failed after the SDK's own retries.
    #[error("{call} for {subject} failed ({code}): {message}")]
    Aws {
        call: &'static str,
        subject: String,
        code: String,
        message: String,
    },

    /// Retention could not delete what it planned to (it tries again with the next run).
    #[error("retention: {0}")]
    Retention(String),

    /// A restore cannot be done as asked; the message says why.
    #[error("restore: {0}")]
    Restore(String),

    /// Tracking messages could not be queued: these instances would go untracked.
    #[error("could not queue tracking messages for {0}")]
    Enqueue(String),
}

impl Error {
    /// The error code AWS answered with, if this is an AWS error.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Error::Aws { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether AWS throttled the call (after the SDK's own retries).
    pub fn is_throttling(&self) -> bool {
        is_throttling(self.aws_code())
    }
}

/// Error codes with which AWS services say "too many requests" (the SDK's own list).
const THROTTLING_CODES: [&str; 12] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
];

/// Whether an AWS error code means throttling: the request was not carried out.
pub fn is_throttling(code: Option<&str>) -> bool {
    code.is_some_and(|c| THROTTLING_CODES.contains(&c))
}

/// Wraps an SDK error with the call and the resource it concerned.
pub fn aws<E>(call: &'static str, subject: impl Into<String>, err: E) -> Error
where
    E: ProvideErrorMetadata + std::error::Error,
{
    Error::Aws {
        call,
        subject: subject.into(),
        code: err.code().unwrap_or("Unknown").to_string(),
        message: DisplayErrorContext(&err).to_string(),
    }
}
