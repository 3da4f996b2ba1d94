//! EC2's failures, classified into the contract's [`CloudError`].
//!
//! Two steps, so the rules are plain data tested per code: [`classify`]
//! turns an error code (and HTTP status) into an [`ErrorClass`]; the driver
//! then builds the [`CloudError`], adding what only it knows: the instance
//! type for capacity errors, the rate-limit back-off, the operation for an
//! operator's message.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use flotilla_cloud::{CapacityScope, CloudError};
use flotilla_domain::InstanceType;
use tokio::time::Instant;

/// What an EC2 error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttled: make no call for a while.
    RateLimited,
    /// An account limit (instances, vCPUs, spot requests).
    Quota,
    /// No capacity for the instance type (in that availability zone).
    Capacity,
    /// The subnet cannot take instances (full, or gone); another may.
    Subnet,
    /// The instance ID does not exist (any more), or cannot exist.
    InstanceNotFound,
    /// The credentials or their IAM permissions are wrong.
    Auth,
    /// Worth retrying soon: 5xx, timeouts, connection failures.
    Transient,
    /// Retrying will not help until someone changes something.
    Permanent,
}

/// Throttling codes of EC2 and of the AWS query protocol in general.
const RATE_LIMITED: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "BandwidthLimitExceeded",
    "SlowDown",
];

const QUOTA: &[&str] = &[
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
];

/// `Unsupported` is what EC2 answers when a type (or spot for it) is not
/// offered in the availability zone; `SpotMaxPriceTooLow` means no spot
/// capacity at the configured price.
const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "Unsupported",
    "SpotMaxPriceTooLow",
];

const SUBNET: &[&str] = &[
    "InsufficientFreeAddressesInSubnet",
    "InvalidSubnetID.NotFound",
    "InvalidSubnetID.Malformed",
    "InvalidSubnet",
];

const INSTANCE_NOT_FOUND: &[&str] = &["InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"];

const AUTH: &[&str] = &[
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "RequestExpired",
    "OptInRequired",
    "Blocked",
    "PendingVerification",
    "AccessDenied",
    "AccessDeniedException",
];

const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
];

/// The class of an error answer with `code` (EC2's `<Code>`) and HTTP
/// `status`. Codes win over statuses; an unknown code is judged by its
/// status: 429 is a rate limit, 5xx transient, every other 4xx permanent.
pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorClass {
    if let Some(code) = code {
        for (codes, class) in [
            (RATE_LIMITED, ErrorClass::RateLimited),
            (QUOTA, ErrorClass::Quota),
            (CAPACITY, ErrorClass::Capacity),
            (SUBNET, ErrorClass::Subnet),
            (INSTANCE_NOT_FOUND, ErrorClass::InstanceNotFound),
            (AUTH, ErrorClass::Auth),
            (TRANSIENT, ErrorClass::Transient),
        ] {
            if codes.contains(&code) {
                return class;
            }
        }
    }
    match status {
        Some(429) => ErrorClass::RateLimited,
        Some(s) if s >= 500 => ErrorClass::Transient,
        Some(_) => ErrorClass::Permanent,
        // No answer at all: a network failure.
        None => ErrorClass::Transient,
    }
}

/// One failed EC2 call, reduced to what classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The API operation, e.g. `RunInstances`.
    pub operation: &'static str,
    pub code: Option<String>,
    pub message: String,
    pub status: Option<u16>,
    pub class: ErrorClass,
}

impl Failure {
    pub fn from_sdk<E>(operation: &'static str, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (code, message, status) = match err {
            SdkError::ServiceError(service) => (
                service.err().code().map(str::to_owned),
                service
                    .err()
                    .message()
                    .map(str::to_owned)
                    .unwrap_or_else(|| service.err().to_string()),
                Some(service.raw().status().as_u16()),
            ),
            SdkError::ResponseError(response) => (
                None,
                format!(
                    "unreadable response: {}",
                    aws_sdk_ec2::error::DisplayErrorContext(err)
                ),
                Some(response.raw().status().as_u16()),
            ),
            SdkError::ConstructionFailure(_) => {
                // The request could not even be built (bad region or
                // endpoint, missing credentials): nothing was sent.
                return Self {
                    operation,
                    code: None,
                    message: aws_sdk_ec2::error::DisplayErrorContext(err).to_string(),
                    status: None,
                    class: ErrorClass::Permanent,
                };
            }
            // Timeouts and dispatch failures: no answer.
            _ => (
                None,
                aws_sdk_ec2::error::DisplayErrorContext(err).to_string(),
                None,
            ),
        };
        // A 2xx whose body did not parse is a broken answer, worth another try.
        let class = match status {
            Some(s) if (200..300).contains(&s) => ErrorClass::Transient,
            _ => classify(code.as_deref(), status),
        };
        Self {
            operation,
            code,
            message,
            status,
            class,
        }
    }

    /// A failure of our own making: EC2 answered, but not as it must.
    pub fn malformed(operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            operation,
            code: None,
            message: message.into(),
            status: None,
            class: ErrorClass::Transient,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.code, self.status) {
            (Some(code), _) => write!(f, "{} failed: {code}: {}", self.operation, self.message),
            (None, Some(status)) => write!(
                f,
                "{} failed with HTTP {status}: {}",
                self.operation, self.message
            ),
            (None, None) => write!(f, "{} failed: {}", self.operation, self.message),
        }
    }
}

/// What the operator should change, for auth failures.
fn auth_advice(failure: &Failure) -> String {
    let code = failure.code.as_deref().unwrap_or("");
    match code {
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => format!(
            "the AWS identity flotilla runs as may not call {op}: allow ec2:{op} in its IAM policy",
            op = failure.operation
        ),
        "ExpiredToken" => "the AWS session credentials have expired: renew them (or use an instance or container role, which renews itself)".to_owned(),
        "RequestExpired" => "AWS says the request is too old: check that this machine's clock is right".to_owned(),
        "OptInRequired" => "the AWS account is not subscribed to EC2 in this region: enable the region for the account, or choose another region".to_owned(),
        "Blocked" | "PendingVerification" => "the AWS account is blocked or not yet verified: contact AWS support".to_owned(),
        _ => "AWS does not accept the credentials: check the access key and secret that the AWS credential chain finds (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the instance role) and this machine's clock".to_owned(),
    }
}

/// The delays after consecutive rate-limit errors: 1 s doubling to 60 s,
/// back to 1 s after any call that succeeds.
#[derive(Debug)]
pub struct Backoff {
    next: Mutex<Option<Duration>>,
}

pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Mutex::new(None),
        }
    }
}

impl Backoff {
    /// The delay before the next call after one more rate-limit error.
    pub fn fail(&self) -> Duration {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let delay = match *next {
            None => BACKOFF_START,
            Some(d) => (d * 2).min(BACKOFF_MAX),
        };
        *next = Some(delay);
        delay
    }

    pub fn succeed(&self) {
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The delay the last rate-limit error asked for, if the last call
    /// failed that way.
    pub fn current(&self) -> Option<Duration> {
        *self.next.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The contract's error for `failure`. `instance_type` scopes capacity
/// errors; `backoff` supplies the rate-limit delay.
pub fn to_cloud_error(
    failure: &Failure,
    instance_type: Option<&InstanceType>,
    backoff: &Backoff,
) -> CloudError {
    let message = failure.to_string();
    match failure.class {
        ErrorClass::RateLimited => {
            let delay = backoff.fail();
            CloudError::RateLimited {
                earliest_retry: Instant::now() + delay,
                message: format!("{message} (retrying in {}s)", delay.as_secs()),
            }
        }
        ErrorClass::Quota => CloudError::QuotaExceeded {
            message: format!("{message}; ask AWS to raise the account's limit, or destroy instances"),
        },
        ErrorClass::Capacity => CloudError::InsufficientCapacity {
            scope: instance_type
                .map(|t| CapacityScope::InstanceType(t.clone()))
                .unwrap_or(CapacityScope::All),
            message,
        },
        ErrorClass::Auth => CloudError::permanent(format!("{message}; {}", auth_advice(failure))),
        // Addresses free up as instances go: a shortage, of every type.
        ErrorClass::Subnet if failure.code.as_deref() == Some("InsufficientFreeAddressesInSubnet") => {
            CloudError::InsufficientCapacity {
                scope: CapacityScope::All,
                message: format!("{message}; add subnets or free addresses in them"),
            }
        }
        ErrorClass::Subnet => CloudError::permanent(format!(
            "{message}; check the driver's subnets (they must exist in the region and have free addresses)"
        )),
        ErrorClass::Transient => CloudError::transient(message),
        ErrorClass::InstanceNotFound | ErrorClass::Permanent => CloudError::permanent(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the driver knows, with its class: one row per code.
    #[test]
    fn codes_are_classified() {
        let table = [
            ("RequestLimitExceeded", 503, ErrorClass::RateLimited),
            ("Throttling", 400, ErrorClass::RateLimited),
            ("ThrottlingException", 400, ErrorClass::RateLimited),
            ("RequestThrottled", 503, ErrorClass::RateLimited),
            ("TooManyRequestsException", 429, ErrorClass::RateLimited),
            ("InstanceLimitExceeded", 400, ErrorClass::Quota),
            ("VcpuLimitExceeded", 400, ErrorClass::Quota),
            ("MaxSpotInstanceCountExceeded", 400, ErrorClass::Quota),
            ("InsufficientInstanceCapacity", 500, ErrorClass::Capacity),
            ("Unsupported", 400, ErrorClass::Capacity),
            ("SpotMaxPriceTooLow", 400, ErrorClass::Capacity),
            ("InsufficientFreeAddressesInSubnet", 400, ErrorClass::Subnet),
            ("InvalidSubnetID.NotFound", 400, ErrorClass::Subnet),
            (
                "InvalidInstanceID.NotFound",
                400,
                ErrorClass::InstanceNotFound,
            ),
            (
                "InvalidInstanceID.Malformed",
                400,
                ErrorClass::InstanceNotFound,
            ),
            ("AuthFailure", 401, ErrorClass::Auth),
            ("UnauthorizedOperation", 403, ErrorClass::Auth),
            ("InvalidClientTokenId", 403, ErrorClass::Auth),
            ("SignatureDoesNotMatch", 403, ErrorClass::Auth),
            ("ExpiredToken", 400, ErrorClass::Auth),
            ("OptInRequired", 401, ErrorClass::Auth),
            ("InternalError", 500, ErrorClass::Transient),
            ("ServiceUnavailable", 503, ErrorClass::Transient),
            ("Unavailable", 503, ErrorClass::Transient),
            ("InvalidAMIID.NotFound", 400, ErrorClass::Permanent),
            ("InvalidParameterValue", 400, ErrorClass::Permanent),
            ("SomethingNew", 400, ErrorClass::Permanent),
            ("SomethingNew", 502, ErrorClass::Transient),
            ("SomethingNew", 429, ErrorClass::RateLimited),
        ];
        for (code, status, class) in table {
            assert_eq!(classify(Some(code), Some(status)), class, "{code} {status}");
        }
        assert_eq!(classify(None, None), ErrorClass::Transient);
        assert_eq!(classify(None, Some(500)), ErrorClass::Transient);
        assert_eq!(classify(None, Some(403)), ErrorClass::Permanent);
    }

    fn failure(code: &str, class: ErrorClass) -> Failure {
        Failure {
            operation: "RunInstances",
            code: Some(code.to_owned()),
            message: "the message".to_owned(),
            status: Some(400),
            class,
        }
    }

    #[test]
    fn auth_errors_tell_the_operator_what_to_fix() {
        let backoff = Backoff::default();
        let err = to_cloud_error(
            &failure("UnauthorizedOperation", ErrorClass::Auth),
            None,
            &backoff,
        );
        assert!(matches!(err, CloudError::Permanent { .. }));
        let text = err.to_string();
        assert!(text.contains("ec2:RunInstances"), "{text}");
        assert!(text.contains("IAM policy"), "{text}");
        let text =
            to_cloud_error(&failure("AuthFailure", ErrorClass::Auth), None, &backoff).to_string();
        assert!(text.contains("AWS_ACCESS_KEY_ID"), "{text}");
        assert!(text.contains("the message"), "{text}");
    }

    #[test]
    fn capacity_is_scoped_to_the_instance_type() {
        let ty = InstanceType::new("c5.large").unwrap();
        let err = to_cloud_error(
            &failure("InsufficientInstanceCapacity", ErrorClass::Capacity),
            Some(&ty),
            &Backoff::default(),
        );
        match err {
            CloudError::InsufficientCapacity { scope, .. } => {
                assert_eq!(scope, CapacityScope::InstanceType(ty))
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_resets() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.fail().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.succeed();
        assert_eq!(b.current(), None);
        assert_eq!(b.fail(), BACKOFF_START);
    }
}
