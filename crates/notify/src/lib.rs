//! How flotilla's notifications travel: mail through an SMTP relay
//! ([`Mailer`], lettre; STARTTLS, TLS, or plain to a relay on the same
//! machine) and webhooks ([`Webhooks`]: an HTTP POST of the event's JSON,
//! signed with HMAC-SHA256). What is sent, to whom and when is the
//! notifier's (the binary's), from the change feed; this crate only
//! carries a message and says whether a failure is worth a retry.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// The header carrying a webhook body's signature: `t=UNIX,v1=HEX`.
pub const SIGNATURE_HEADER: &str = "flotilla-signature";
/// The header carrying the delivery's number, the same on every retry.
pub const DELIVERY_HEADER: &str = "flotilla-delivery";
/// The header carrying the event's kind.
pub const EVENT_HEADER: &str = "flotilla-event";

/// A message that did not go.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Trying again will not help (the relay refused the address for
    /// good, the receiver answered 4xx, the URL moved).
    pub permanent: bool,
    pub message: String,
}

impl SendError {
    fn transient(message: impl Into<String>) -> Self {
        SendError {
            permanent: false,
            message: message.into(),
        }
    }

    fn permanent(message: impl Into<String>) -> Self {
        SendError {
            permanent: true,
            message: message.into(),
        }
    }
}

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS from the first byte (port 465 by default).
    Tls,
    /// Plain, then STARTTLS, which is required (port 587 by default).
    StartTls,
    /// No TLS at all: only for a relay on the same machine or network
    /// (port 25 by default).
    None,
}

impl Tls {
    pub fn parse(s: &str) -> Option<Tls> {
        match s {
            "tls" => Some(Tls::Tls),
            "starttls" => Some(Tls::StartTls),
            "none" => Some(Tls::None),
            _ => None,
        }
    }
}

/// Where and how to send mail.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    /// None: the default of `tls`.
    pub port: Option<u16>,
    pub tls: Tls,
    /// A user name and password, if the relay asks for them.
    pub credentials: Option<(String, String)>,
    /// The sender: `flotilla <flotilla@example.org>` or an address.
    pub from: String,
    pub timeout: Duration,
}

/// Sends mail through one relay.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(settings: &SmtpSettings) -> Result<Mailer, String> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| format!("[notify.smtp] from {:?}: {e}", settings.from))?;
        let mut builder = match settings.tls {
            Tls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host),
            Tls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host),
            Tls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                settings.host.as_str(),
            )),
        }
        .map_err(|e| format!("[notify.smtp] host {:?}: {e}", settings.host))?
        .timeout(Some(settings.timeout));
        if let Some(port) = settings.port {
            builder = builder.port(port);
        }
        if let Some((user, password)) = &settings.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
        })
    }

    /// Sends one plain-text mail to `to`.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), SendError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| SendError::permanent(format!("{to:?} is not a mail address: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| SendError::permanent(format!("cannot build the mail: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::permanent(format!(
                "the mail relay refused it: {e}"
            ))),
            Err(e) => Err(SendError::transient(format!(
                "the mail relay could not take it: {}",
                chain(&e)
            ))),
        }
    }
}

/// Posts events to webhooks.
#[derive(Clone)]
pub struct Webhooks {
    client: reqwest::Client,
}

impl Webhooks {
    pub fn new(timeout: Duration) -> Result<Webhooks, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect could take the signed body elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make the webhook client: {e}"))?;
        Ok(Webhooks { client })
    }

    /// Posts `body` (an event's JSON) to `url`, signed with `secret` at
    /// `timestamp` (seconds since the epoch), as delivery `delivery` of an
    /// event of kind `event`. A 2xx answer is delivered; 408, 429 and 5xx,
    /// a timeout or a refused connection are worth a retry; any other
    /// answer is not.
    pub async fn post(
        &self,
        url: &str,
        secret: &str,
        delivery: i64,
        event: &str,
        timestamp: i64,
        body: Vec<u8>,
    ) -> Result<(), SendError> {
        let signature = signature(secret, timestamp, &body);
        let answer = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(DELIVERY_HEADER, delivery.to_string())
            .header(EVENT_HEADER, event)
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::transient(format!("POST {url}: {}", chain(&e))))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        // The answer's body is not kept: whoever subscribed reads the
        // error, and the URL may be one only this server can reach.
        let message = format!("POST {url}: {status}");
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Err(SendError::transient(message))
        } else if status.is_redirection() {
            Err(SendError::permanent(format!(
                "{message} (redirects are not followed: subscribe the URL it names)"
            )))
        } else {
            Err(SendError::permanent(message))
        }
    }
}

/// The signature header's value for `body` sent at `timestamp`:
/// `t=TIMESTAMP,v1=HEX`, HEX the HMAC-SHA256 keyed with the secret's text
/// of `TIMESTAMP.BODY`. A receiver computes the same and compares, and
/// refuses a timestamp too old (a replay).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hmac_hex(secret, timestamp, body))
}

/// Whether `header` is a signature of `body` by `secret`: what a receiver
/// checks (the tests' receiver does).
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut timestamp = None;
    let mut given = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => given = Some(v),
            _ => {}
        }
    }
    let (Some(timestamp), Some(given)) = (timestamp, given) else {
        return false;
    };
    let Ok(given) = decode_hex(given) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&given).is_ok()
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hmac_hex(secret: &str, timestamp: i64, body: &[u8]) -> String {
    mac(secret, timestamp, body)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_hex(s: &str) -> Result<Vec<u8>, ()> {
    if !s.len().is_multiple_of(2) {
        return Err(());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or(())?, 16).map_err(|_| ()))
        .collect()
}

/// An error with its causes, which reqwest and lettre keep apart.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_its_body_and_secret() {
        let body = br#"{"kind":"cluster.deployed"}"#;
        let header = signature("s3cret", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        assert!(verify("s3cret", &header, body));
        assert!(!verify("other", &header, body));
        assert!(!verify("s3cret", &header, b"{}"));
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert!(!verify("s3cret", &moved, body), "the time is signed too");
        assert!(!verify("s3cret", "v1=00", body));
        assert!(!verify("s3cret", "t=1,v1=zz", body));
        // The answer Python's hmac module gives, so a receiver in any
        // language can check its own code against it.
        assert_eq!(
            signature("key", 0, b"{}"),
            "t=0,v1=7314351dd949aa7ec06f50fc2c96e618291447672c9b7f10b49d1ce46dad00b3"
        );
    }

    #[tokio::test]
    async fn a_webhook_answer_says_whether_to_try_again() {
        use axum::http::StatusCode;
        use axum::routing::post;
        let app = axum::Router::new()
            .route("/ok", post(|| async { StatusCode::NO_CONTENT }))
            .route("/busy", post(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .route("/slow", post(|| async { StatusCode::TOO_MANY_REQUESTS }))
            .route(
                "/gone",
                post(|| async { (StatusCode::GONE, "no such hook") }),
            )
            .route(
                "/moved",
                post(|| async { (StatusCode::FOUND, [("location", "/ok")]) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let hooks = Webhooks::new(Duration::from_secs(5)).unwrap();
        let post = |path: &str| {
            let hooks = hooks.clone();
            let url = format!("http://{addr}{path}");
            async move {
                hooks
                    .post(&url, "k", 1, "cluster.deployed", 0, b"{}".to_vec())
                    .await
            }
        };
        assert!(post("/ok").await.is_ok());
        for transient in ["/busy", "/slow"] {
            let e = post(transient).await.unwrap_err();
            assert!(!e.permanent, "{transient}: {e}");
        }
        let e = post("/gone").await.unwrap_err();
        assert!(e.permanent);
        assert!(e.message.contains("410"), "{e}");
        assert!(
            !e.message.contains("no such hook"),
            "the body is not kept: {e}"
        );
        let e = post("/moved").await.unwrap_err();
        assert!(e.permanent && e.message.contains("redirects"), "{e}");
        // Nobody listening: worth a retry.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", closed.local_addr().unwrap());
        drop(closed);
        let e = hooks.post(&url, "k", 1, "x", 0, vec![]).await.unwrap_err();
        assert!(!e.permanent, "{e}");
    }
}
