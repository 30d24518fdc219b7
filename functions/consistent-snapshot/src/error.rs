//! Errors of the function. Each names the instance, snapshot, command or field it concerns.

use lambda_runtime::Diagnostic;

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

    /// A restore cannot be done as asked; the message says why.
    #[error("restore: {0}")]
    Restore(String),

    /// The catalog could not be read or written as needed.
    #[error("catalog: {0}")]
    Catalog(String),

    /// A job or request the catalog does not vouch for: refused, never acted on.
    #[error("refused: {0}")]
    Refused(String),

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

    /// Whether another try cannot succeed: AWS refused the call for what it is (a permission,
    /// a region not enabled, a key, a parameter), not for how busy it is. Anything else (no
    /// answer, HTTP 5xx, throttling) is transient.
    pub fn is_permanent(&self) -> bool {
        is_permanent(self.aws_code())
    }

    /// What failed, for Lambda's `errorType` (CloudWatch, the async-invocation DLQ and the
    /// caller see it without reading the message): `Config`, `Event`, `Aws.<code>`,
    /// `Restore`, `Enqueue`, `Catalog`, `Refused`.
    pub fn error_type(&self) -> String {
        match self {
            Error::Config(_) => "Config".into(),
            Error::Event(_) => "Event".into(),
            Error::Aws { code, .. } => format!("Aws.{code}"),
            Error::Restore(_) => "Restore".into(),
            Error::Enqueue(_) => "Enqueue".into(),
            Error::Catalog(_) => "Catalog".into(),
            Error::Refused(_) => "Refused".into(),
        }
    }
}

impl From<Error> for Diagnostic {
    fn from(err: Error) -> Self {
        Diagnostic {
            error_type: err.error_type(),
            error_message: err.to_string(),
        }
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

/// Error codes with which AWS refuses a call that no retry will make succeed.
const PERMANENT_CODES: [&str; 15] = [
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthFailure",
    "OptInRequired",
    "Blocked",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidParameter",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "MissingParameter",
    "KMSKeyNotAccessibleFault",
    "DisabledException",
    // EC2: not allowed for this resource as it is (sharing a snapshot encrypted with the
    // default aws/ebs key, …).
    "OperationNotPermitted",
];

/// Whether an AWS error code refuses the call for good (`PERMANENT_CODES`, or EC2's
/// `InvalidKmsKey…`/`KMS…` family): failing at once names the cause; retrying only hides it.
pub fn is_permanent(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        PERMANENT_CODES.contains(&c) || c.starts_with("InvalidKmsKey") || c.starts_with("KMS")
    })
}

/// Whether an AWS error code means throttling: the request was not carried out.
pub fn is_throttling(code: Option<&str>) -> bool {
    code.is_some_and(|c| THROTTLING_CODES.contains(&c))
}

/// The throttling code of an AWS error answer, read from the raw answer (the SDK's retry has
/// not yet made it an error): the `x-amzn-ErrorType` header (JSON protocols), else the code
/// in the body, `<Code>RequestLimitExceeded</Code>` (EC2, SNS) or `"__type":"…#Throttling…"`
/// (SSM, SQS, DynamoDB). `None` for any answer that is not an error or not throttling.
pub fn throttling_code(status: u16, error_type: Option<&str>, body: &[u8]) -> Option<&'static str> {
    if status < 400 {
        return None;
    }
    let named = |name: &str| THROTTLING_CODES.iter().copied().find(|c| *c == name);
    if let Some(header) = error_type {
        // `ThrottlingException:http://internal.amazon.com/…`, or a shape id `aws#Code`.
        let name = header.split(':').next().unwrap_or_default();
        if let Some(code) = named(name.rsplit('#').next().unwrap_or_default()) {
            return Some(code);
        }
    }
    let body = String::from_utf8_lossy(body);
    THROTTLING_CODES.iter().copied().find(|code| {
        [
            format!(">{code}<"),
            format!("\"{code}\""),
            format!("#{code}\""),
        ]
        .iter()
        .any(|delimited| body.contains(delimited.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_sees_what_failed_in_the_error_type() {
        let aws = Error::Aws {
            call: "DescribeInstances",
            subject: "the tagged fleet".into(),
            code: "UnauthorizedOperation".into(),
            message: "not allowed".into(),
        };
        let diagnostic = Diagnostic::from(aws);
        assert_eq!(diagnostic.error_type, "Aws.UnauthorizedOperation");
        assert!(diagnostic
            .error_message
            .contains("DescribeInstances for the tagged fleet"));
        let cases = [
            (
                Error::Config(vec!["QUEUE_URL is required".into()]),
                "Config",
            ),
            (Error::Event("field `action`".into()), "Event"),
            (Error::Restore("r".into()), "Restore"),
            (Error::Enqueue("i-1".into()), "Enqueue"),
            (Error::Catalog("c".into()), "Catalog"),
            (Error::Refused("r".into()), "Refused"),
        ];
        for (err, kind) in cases {
            assert_eq!(Diagnostic::from(err).error_type, kind);
        }
    }

    #[test]
    fn permanent_and_transient_errors_are_told_apart_by_code() {
        for code in [
            "AccessDenied",
            "UnauthorizedOperation",
            "OptInRequired",
            "AuthFailure",
            "InvalidParameterValue",
            "KMSKeyNotAccessibleFault",
            "InvalidKmsKey.NotFound",
            "OperationNotPermitted",
        ] {
            assert!(is_permanent(Some(code)), "{code}");
            assert!(!is_throttling(Some(code)), "{code}");
        }
        for code in [
            "RequestLimitExceeded",
            "ThrottlingException",
            "InternalError",
            "Unavailable",
            "ResourceLimitExceeded",
            "Unknown",
        ] {
            assert!(!is_permanent(Some(code)), "{code}");
        }
        assert!(!is_permanent(None));
    }

    #[test]
    fn throttling_is_read_from_each_protocols_error_answer() {
        let ec2 = b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors></Response>";
        assert_eq!(
            throttling_code(503, None, ec2),
            Some("RequestLimitExceeded")
        );
        let sns = b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code></Error></ErrorResponse>";
        assert_eq!(throttling_code(400, None, sns), Some("Throttling"));
        let ssm = br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
        assert_eq!(throttling_code(400, None, ssm), Some("ThrottlingException"));
        let dynamodb = br#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow down"}"#;
        assert_eq!(
            throttling_code(400, None, dynamodb),
            Some("ProvisionedThroughputExceededException")
        );
        assert_eq!(
            throttling_code(
                400,
                Some("ThrottlingException:http://internal.amazon.com/"),
                b""
            ),
            Some("ThrottlingException")
        );
        // Not throttling: a success that mentions a code, another error, a code inside a
        // longer word.
        assert_eq!(throttling_code(200, None, ec2), None);
        let denied = b"<Response><Errors><Error><Code>UnauthorizedOperation</Code></Error></Errors></Response>";
        assert_eq!(throttling_code(403, None, denied), None);
        let longer = b"<Code>ThrottlingSomething</Code>";
        assert_eq!(throttling_code(400, None, longer), None);
        assert_eq!(
            throttling_code(400, Some("AccessDeniedException:x"), b"{}"),
            None
        );
    }
}
