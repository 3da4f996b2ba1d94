//! Who a GitHub token belongs to, and whether that user is an active member
//! of the configured organisation, from the GitHub REST API (github.com or a
//! GitHub Enterprise server).
//!
//! Two calls per [`GithubClient::identify`]: `GET /user` names the token's
//! owner, `GET /orgs/{org}/memberships/{login}` says whether they belong to the
//! organisation. Only an `active` membership makes an
//! [`Level::OrgMember`]; a pending one, or none the token can see (404), makes
//! a [`Level::GithubMember`]. A rate limit or a fault on GitHub's side is always
//! an error, never a quiet downgrade to `github_member`: a member who happens
//! to log in while GitHub is struggling must not lose their level.
//!
//! The token is an argument of each call and is never stored, logged or put
//! into an error, so no `Debug` or `Display` here can show it.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_domain::{Level, NameError, Username};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, RETRY_AFTER, USER_AGENT};
use reqwest::{Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The public GitHub API. A GitHub Enterprise server has its own, usually
/// `https://HOST/api/v3`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// How long one request to GitHub may take, connecting and reading included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The REST API version every request asks for, so a change of GitHub's
/// default version cannot change the answers under us.
const API_VERSION: &str = "2022-11-28";

/// Which GitHub to ask, and about which organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubConfig {
    /// The REST API's root: [`DEFAULT_API_URL`], or a GitHub Enterprise
    /// server's, such as `https://ghe.example.com/api/v3`. Plain `http` is
    /// accepted only for loopback addresses, so a token never crosses a
    /// network unencrypted.
    pub api_url: String,
    /// The organisation whose active members are `org_member`.
    pub org: String,
    /// The longest one request may take (an identification makes two).
    pub timeout: Duration,
}

impl GithubConfig {
    /// The public GitHub API with the default timeout.
    pub fn new(org: impl Into<String>) -> Self {
        Self {
            api_url: DEFAULT_API_URL.to_owned(),
            org: org.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Who a token belongs to, as GitHub says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubIdentity {
    /// The GitHub login, as GitHub spells it.
    pub login: Username,
    /// [`Level::OrgMember`] for an active member of the organisation,
    /// [`Level::GithubMember`] otherwise.
    pub level: Level,
}

/// Why a [`GithubConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GithubConfigError {
    #[error("github api_url {url:?} is not valid: {reason}")]
    BadApiUrl { url: String, reason: String },
    #[error("github org {org:?} is not valid: name the organisation whose active members are org_member")]
    BadOrg { org: String },
    #[error("github timeout must be longer than zero")]
    ZeroTimeout,
    #[error("could not set up the HTTPS client for GitHub: {0}")]
    Client(String),
}

/// Why a token could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GithubError {
    /// 401, or 403 without a rate limit, from `/user`; or 401 from the
    /// membership call.
    #[error(
        "GitHub did not accept the token: it is invalid, expired or lacks a scope; \
         create a personal access token with the read:org scope and log in with it"
    )]
    BadToken,
    /// 403 without a rate limit from the membership call: the token is good
    /// but may not read the organisation's memberships.
    #[error(
        "GitHub did not let the token read the membership of organisation {org:?}: \
         give the token the read:org scope (for a fine-grained token, read access to the \
         organisation's members), and if the organisation uses SAML single sign-on, \
         authorise the token for it"
    )]
    OrgAccessDenied { org: String },
    /// 429, or 403 with `x-ratelimit-remaining: 0` or a `Retry-After`.
    #[error("GitHub's rate limit for this token is used up; {}", retry_hint(*.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, a timeout, no connection, or an answer that is not the JSON
    /// GitHub documents.
    #[error(
        "could not get an answer from GitHub ({detail}); this is a problem on GitHub's side \
         or on the way to it, not with the token: try again later"
    )]
    Unavailable { detail: String },
    /// A status GitHub does not document for the call, such as 404 from
    /// `/user`: most likely `api_url` does not point at a GitHub REST API.
    #[error(
        "GitHub gave an answer flotilla does not expect ({detail}); check the server's github \
         api_url (GitHub Enterprise uses https://HOST/api/v3)"
    )]
    Unexpected { detail: String },
    /// The login cannot be a flotilla account name.
    #[error("GitHub login {:?} cannot be a flotilla account name: {}", .0.value, .0.rule)]
    BadLogin(NameError),
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!("try again in {} s", wait.as_secs().max(1)),
        None => "try again in a few minutes".to_owned(),
    }
}

/// Asks GitHub about tokens. Holds no token: each call takes one.
#[derive(Clone)]
pub struct GithubClient {
    http: reqwest::Client,
    api_url: Url,
    org: String,
    timeout: Duration,
}

impl fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubClient")
            .field("api_url", &self.api_url.as_str())
            .field("org", &self.org)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Membership {
    state: String,
    role: Option<String>,
}

/// The two calls, for error messages and the statuses only one of them has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    User,
    Membership,
}

impl GithubClient {
    pub fn new(config: GithubConfig) -> Result<Self, GithubConfigError> {
        let api_url = parse_api_url(&config.api_url)?;
        if config.org.is_empty() || config.org == "." || config.org == ".." {
            return Err(GithubConfigError::BadOrg { org: config.org });
        }
        if config.timeout.is_zero() {
            return Err(GithubConfigError::ZeroTimeout);
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static(API_VERSION),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("flotilla/", env!("CARGO_PKG_VERSION"))),
        );
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout);
        if api_url.scheme() == "https" {
            // Redirects included: the token must not be sent in the clear.
            builder = builder.https_only(true);
        } else {
            // Loopback only (checked above); no proxy could be meant for it.
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| GithubConfigError::Client(error_chain(&e)))?;
        Ok(Self {
            http,
            api_url,
            org: config.org,
            timeout: config.timeout,
        })
    }

    /// Who `token` belongs to and their level. Makes two requests, each
    /// bounded by the configured timeout.
    pub async fn identify(&self, token: &str) -> Result<GithubIdentity, GithubError> {
        // A token that cannot be a header value is not a GitHub token; refusing
        // it here keeps it out of reqwest's errors.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(GithubError::BadToken);
        }

        let url = self.endpoint(&["user"]);
        let response = self.get(&url, token).await?;
        let user: User = match classify(Call::User, &url, &self.org, response)? {
            Some(response) => read_json(&url, response).await?,
            None => return Err(unexpected(&url, StatusCode::NOT_FOUND)),
        };
        let login = Username::new(user.login).map_err(GithubError::BadLogin)?;

        let url = self.endpoint(&["orgs", &self.org, "memberships", login.as_str()]);
        let response = self.get(&url, token).await?;
        let level = match classify(Call::Membership, &url, &self.org, response)? {
            None => {
                tracing::debug!(%login, org = %self.org, "not a member the token can see");
                Level::GithubMember
            }
            Some(response) => {
                let membership: Membership = read_json(&url, response).await?;
                tracing::debug!(
                    %login, org = %self.org, state = %membership.state,
                    role = membership.role.as_deref(), "organisation membership"
                );
                match membership.state.as_str() {
                    "active" => Level::OrgMember,
                    "pending" => Level::GithubMember,
                    other => {
                        // Only "active" is documented to mean a member.
                        tracing::warn!(
                            %login, org = %self.org, state = other,
                            "unknown GitHub membership state, taken as not a member"
                        );
                        Level::GithubMember
                    }
                }
            }
        };
        Ok(GithubIdentity { login, level })
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.api_url.clone();
        url.path_segments_mut()
            .expect("api_url was checked to be a base in new()")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn get(&self, url: &Url, token: &str) -> Result<Response, GithubError> {
        self.http
            .get(url.clone())
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.transport_error(url, e))
    }

    fn transport_error(&self, url: &Url, error: reqwest::Error) -> GithubError {
        let detail = if error.is_timeout() {
            format!("GET {url} timed out after {:?}", self.timeout)
        } else {
            format!("GET {url}: {}", error_chain(&error.without_url()))
        };
        GithubError::Unavailable { detail }
    }
}

fn parse_api_url(raw: &str) -> Result<Url, GithubConfigError> {
    let bad = |reason: &str| GithubConfigError::BadApiUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if url.cannot_be_a_base() {
        return Err(bad(
            "use an http(s) URL such as https://ghe.example.com/api/v3",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("leave credentials out of the URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("leave the query and fragment out of the URL"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(bad(
            "use https: plain http is only for loopback addresses, so tokens are never sent in the clear",
        )),
        _ => Err(bad("use an https URL")),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Sorts a response into the answer to read (`Some`), "not found" (`None`,
/// for the membership call only) or an error.
fn classify(
    call: Call,
    url: &Url,
    org: &str,
    response: Response,
) -> Result<Option<Response>, GithubError> {
    let status = response.status();
    if status.is_success() {
        return Ok(Some(response));
    }
    let headers = response.headers();
    if status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && is_rate_limited(headers))
    {
        return Err(GithubError::RateLimited {
            retry_after: retry_after(headers, SystemTime::now()),
        });
    }
    if status.is_server_error() {
        return Err(GithubError::Unavailable {
            detail: format!("GET {url} answered {status}"),
        });
    }
    match (call, status) {
        (_, StatusCode::UNAUTHORIZED) | (Call::User, StatusCode::FORBIDDEN) => {
            Err(GithubError::BadToken)
        }
        (Call::Membership, StatusCode::FORBIDDEN) => Err(GithubError::OrgAccessDenied {
            org: org.to_owned(),
        }),
        // Not a member, or a member the token may not see: GitHub answers
        // both with 404 so as not to reveal private memberships.
        (Call::Membership, StatusCode::NOT_FOUND) => Ok(None),
        _ => Err(unexpected(url, status)),
    }
}

fn unexpected(url: &Url, status: StatusCode) -> GithubError {
    GithubError::Unexpected {
        detail: format!("GET {url} answered {status}"),
    }
}

/// GitHub's primary rate limit answers 403 with no requests remaining; its
/// secondary limits answer 403 with a `Retry-After`.
fn is_rate_limited(headers: &HeaderMap) -> bool {
    header_u64(headers, "x-ratelimit-remaining") == Some(0) || headers.contains_key(RETRY_AFTER)
}

/// `Retry-After` (seconds) if given, else the primary limit's reset time if
/// it is used up. GitHub does not send `Retry-After` as a date.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(seconds) = header_u64(headers, RETRY_AFTER.as_str()) {
        return Some(Duration::from_secs(seconds));
    }
    if header_u64(headers, "x-ratelimit-remaining") != Some(0) {
        return None;
    }
    let reset = UNIX_EPOCH + Duration::from_secs(header_u64(headers, "x-ratelimit-reset")?);
    Some(reset.duration_since(now).unwrap_or(Duration::ZERO))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

async fn read_json<T: DeserializeOwned>(url: &Url, response: Response) -> Result<T, GithubError> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| GithubError::Unavailable {
            detail: format!(
                "GET {url}: reading the answer failed: {}",
                error_chain(&e.without_url())
            ),
        })?;
    serde_json::from_slice(&body).map_err(|e| GithubError::Unavailable {
        detail: format!(
            "GET {url} answered {status} with a body that is not the JSON GitHub documents: {e}"
        ),
    })
}

/// An error with its causes, which is where reqwest says what went wrong
/// ("connection refused", "dns error").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn retry_after_prefers_the_header_then_the_reset_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "30")]), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(
                &headers(&[
                    ("retry-after", "5"),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1060"),
                ]),
                now
            ),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after(
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1060")
                ]),
                now
            ),
            Some(Duration::from_secs(60))
        );
        // A reset in the past: go again now.
        assert_eq!(
            retry_after(
                &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "900")]),
                now
            ),
            Some(Duration::ZERO)
        );
        // The reset time of a primary limit not used up says nothing about
        // when a secondary limit lifts.
        assert_eq!(
            retry_after(
                &headers(&[
                    ("x-ratelimit-remaining", "12"),
                    ("x-ratelimit-reset", "1060")
                ]),
                now
            ),
            None
        );
        assert_eq!(retry_after(&headers(&[]), now), None);
    }

    #[test]
    fn api_urls() {
        assert!(parse_api_url("https://api.github.com").is_ok());
        assert!(parse_api_url("https://ghe.example.com/api/v3/").is_ok());
        assert!(parse_api_url("http://127.0.0.1:8080/api/v3").is_ok());
        assert!(parse_api_url("http://localhost:8080").is_ok());
        assert!(parse_api_url("http://[::1]:8080").is_ok());
        for bad in [
            "",
            "api.github.com",
            "http://ghe.example.com/api/v3",
            "http://10.0.0.1/api/v3",
            "ftp://ghe.example.com",
            "mailto:ops@example.com",
            "https://user:secret@ghe.example.com/api/v3",
            "https://ghe.example.com/api/v3?x=1",
        ] {
            assert!(
                matches!(parse_api_url(bad), Err(GithubConfigError::BadApiUrl { .. })),
                "{bad}"
            );
        }
    }
}
