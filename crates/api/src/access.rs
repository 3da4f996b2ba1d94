//! Authentication and rate limiting, in front of every route.
//!
//! The layer turns the `Authorization` header into a [`Caller`] (no header:
//! anonymous; a bad token: 401, never a silent fall back to anonymous),
//! counts the request against the caller's rate limit, and hands the caller
//! to the handler, which authorises it through a domain rule. [`ROUTES`]
//! lists every route with that decision, and a test checks it against the
//! router.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_domain::Caller;

use crate::{ApiError, AppState};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token and without a rate limit: liveness, the API
    /// document, the public keys, metrics (counts only, no names).
    Open,
    /// Anyone, rate limited per network: the sign-in routes, which check
    /// their own credentials (and count failures).
    SignIn,
    /// A job attempt's agent, without a rate limit (agents report every
    /// few seconds, many from one address): the handler checks the
    /// attempt's token (`x-flotilla-attempt-token`), not an account's.
    Attempt,
    /// Authenticated (or anonymous) and rate limited; the handler decides
    /// by the named domain rule, which admits anonymous callers in some
    /// cases (the status of a public cluster).
    Rule(Rule),
    /// As `Rule`, for rules that never admit anonymous callers: those get
    /// 401 before the request is even read.
    SignedIn(Rule),
}

/// The rule a handler decides a route's access by: a domain function
/// (`authorize_*`, `may_read_change`) or an organisation's roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone may call; what they see depends on who they are.
    Anyone,
    AuthorizeStatus,
    AuthorizeDeploy,
    AuthorizeDestroy,
    AuthorizeClusterToken,
    AuthorizeExec,
    AuthorizeAdmin,
    /// Admins, and the owners a pool names.
    AuthorizePoolWrite,
    MayReadChange,
    /// Accounts at a level that may deploy (and members of the
    /// organisation a job names).
    AuthorizeJobSubmit,
    /// A job's submitter, its organisation's members (owners, to cancel)
    /// and admins.
    AuthorizeJob,
    /// Any signed-in account.
    SignedIn,
    /// Any signed-in account sees its own; admins see all.
    SignedInAdminsSeeAll,
    OrgMember,
    OrgOwner,
    /// The organisation's owners; budget terms only admins.
    OrgOwnerAdminForBudget,
    /// The organisation's owners, or the member concerned.
    OrgOwnerOrTheMember,
}

/// Every route, with who may call it. A route missing here is a bug the
/// tests catch.
#[rustfmt::skip]
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET",    "/healthz",                          Access::Open),
    ("GET",    "/metrics",                          Access::Open),
    ("GET",    "/api/v1/openapi.json",              Access::Open),
    ("GET",    "/.well-known/jwks.json",            Access::Open),
    ("POST",   "/api/v1/auth/login",                Access::SignIn),
    ("POST",   "/api/v1/auth/github",               Access::SignIn),
    ("POST",   "/api/v1/auth/refresh",              Access::SignIn),
    ("POST",   "/api/v1/auth/logout",               Access::SignIn),
    ("GET",    "/api/v1/auth/whoami",               Access::Rule(Rule::Anyone)),
    ("GET",    "/api/v1/auth/keys",                 Access::SignedIn(Rule::AuthorizeAdmin)),
    ("POST",   "/api/v1/auth/keys",                 Access::SignedIn(Rule::AuthorizeAdmin)),
    ("DELETE", "/api/v1/auth/keys/{kid}",           Access::SignedIn(Rule::AuthorizeAdmin)),
    ("GET",    "/api/v1/pools",                     Access::Rule(Rule::Anyone)),
    ("GET",    "/api/v1/pools/{pool}",              Access::SignedIn(Rule::SignedIn)),
    ("PUT",    "/api/v1/pools/{pool}",              Access::SignedIn(Rule::AuthorizePoolWrite)),
    ("DELETE", "/api/v1/pools/{pool}",              Access::SignedIn(Rule::AuthorizePoolWrite)),
    ("GET",    "/api/v1/pools/{pool}/errors",       Access::SignedIn(Rule::AuthorizeStatus)),
    ("GET",    "/api/v1/pools/{pool}/history",      Access::SignedIn(Rule::SignedIn)),
    ("GET",    "/api/v1/pools/{pool}/rollout",      Access::SignedIn(Rule::SignedIn)),
    ("POST",   "/api/v1/pools/{pool}/rollout/pause", Access::SignedIn(Rule::AuthorizePoolWrite)),
    ("POST",   "/api/v1/pools/{pool}/rollout/resume", Access::SignedIn(Rule::AuthorizePoolWrite)),
    ("GET",    "/api/v1/schemas",                   Access::Rule(Rule::Anyone)),
    ("GET",    "/api/v1/schemas/{driver}/pool",     Access::Rule(Rule::Anyone)),
    ("GET",    "/api/v1/schemas/{driver}/shared/{kind}", Access::Rule(Rule::Anyone)),
    ("GET",    "/api/v1/shared-configs",            Access::SignedIn(Rule::SignedIn)),
    ("GET",    "/api/v1/shared-configs/{name}",     Access::SignedIn(Rule::SignedIn)),
    ("PUT",    "/api/v1/shared-configs/{name}",     Access::SignedIn(Rule::AuthorizeAdmin)),
    ("GET",    "/api/v1/events",                    Access::Rule(Rule::MayReadChange)),
    ("GET",    "/api/v1/jobs",                      Access::SignedIn(Rule::SignedInAdminsSeeAll)),
    ("POST",   "/api/v1/jobs",                      Access::SignedIn(Rule::AuthorizeJobSubmit)),
    ("GET",    "/api/v1/jobs/{id}",                 Access::SignedIn(Rule::AuthorizeJob)),
    ("POST",   "/api/v1/jobs/{id}/cancel",          Access::SignedIn(Rule::AuthorizeJob)),
    ("GET",    "/api/v1/jobs/{id}/log",             Access::SignedIn(Rule::AuthorizeJob)),
    ("GET",    "/api/v1/jobs/{id}/files",           Access::SignedIn(Rule::AuthorizeJob)),
    ("GET",    "/api/v1/jobs/{id}/file",            Access::SignedIn(Rule::AuthorizeJob)),
    ("GET",    "/api/v1/job-templates",             Access::SignedIn(Rule::AuthorizeAdmin)),
    ("POST",   "/api/v1/job-templates/{template}",  Access::SignedIn(Rule::AuthorizeAdmin)),
    ("GET",    "/api/v1/subscriptions",             Access::SignedIn(Rule::SignedInAdminsSeeAll)),
    ("POST",   "/api/v1/subscriptions",             Access::SignedIn(Rule::SignedInAdminsSeeAll)),
    ("DELETE", "/api/v1/subscriptions/{id}",        Access::SignedIn(Rule::SignedInAdminsSeeAll)),
    ("POST",   "/api/v1/subscriptions/{id}/enable", Access::SignedIn(Rule::SignedInAdminsSeeAll)),
    ("POST",   "/api/v1/subscriptions/{id}/test",   Access::SignedIn(Rule::SignedInAdminsSeeAll)),
    ("GET",    "/api/v1/deliveries",                Access::SignedIn(Rule::SignedInAdminsSeeAll)),
    ("GET",    "/api/v1/schedules",                 Access::SignedIn(Rule::AuthorizeAdmin)),
    ("POST",   "/api/v1/schedules",                 Access::SignedIn(Rule::AuthorizeAdmin)),
    ("GET",    "/api/v1/schedules/{schedule}",      Access::SignedIn(Rule::AuthorizeAdmin)),
    ("DELETE", "/api/v1/schedules/{schedule}",      Access::SignedIn(Rule::AuthorizeAdmin)),
    ("POST",   "/api/v1/schedules/{schedule}/pause", Access::SignedIn(Rule::AuthorizeAdmin)),
    ("POST",   "/api/v1/schedules/{schedule}/resume", Access::SignedIn(Rule::AuthorizeAdmin)),
    ("GET",    "/api/v1/attempts/{job}/{attempt}",  Access::Attempt),
    ("POST",   "/api/v1/attempts/{job}/{attempt}",  Access::Attempt),
    ("GET",    "/api/v1/attempts/{job}/{attempt}/agent", Access::Attempt),
    ("PUT",    "/api/v1/attempts/{job}/{attempt}/file", Access::Attempt),
    ("GET",    "/api/v1/warm",                      Access::Attempt),
    ("GET",    "/api/v1/clusters",                  Access::Rule(Rule::AuthorizeStatus)),
    ("GET",    "/api/v1/clusters/{cluster}",        Access::Rule(Rule::AuthorizeStatus)),
    ("PUT",    "/api/v1/clusters/{cluster}",        Access::SignedIn(Rule::AuthorizeDeploy)),
    ("DELETE", "/api/v1/clusters/{cluster}",        Access::SignedIn(Rule::AuthorizeDestroy)),
    ("POST",   "/api/v1/clusters/{cluster}/token",  Access::SignedIn(Rule::AuthorizeClusterToken)),
    ("POST",   "/api/v1/clusters/{cluster}/capacity", Access::SignedIn(Rule::OrgMember)),
    ("DELETE", "/api/v1/clusters/{cluster}/capacity", Access::SignedIn(Rule::OrgMember)),
    ("POST",   "/api/v1/clusters/{cluster}/extend", Access::SignedIn(Rule::AuthorizeDeploy)),
    ("GET",    "/api/v1/clusters/{cluster}/logs",   Access::Rule(Rule::AuthorizeStatus)),
    ("POST",   "/api/v1/clusters/{cluster}/exec",   Access::SignedIn(Rule::AuthorizeExec)),
    ("GET",    "/api/v1/orgs",                      Access::SignedIn(Rule::SignedInAdminsSeeAll)),
    ("POST",   "/api/v1/orgs",                      Access::SignedIn(Rule::AuthorizeAdmin)),
    ("GET",    "/api/v1/orgs/{org}",                Access::SignedIn(Rule::OrgMember)),
    ("PATCH",  "/api/v1/orgs/{org}",                Access::SignedIn(Rule::OrgOwnerAdminForBudget)),
    ("POST",   "/api/v1/orgs/{org}/membership-requests", Access::SignedIn(Rule::SignedIn)),
    ("POST",   "/api/v1/orgs/{org}/membership-requests/{user}/approve", Access::SignedIn(Rule::OrgOwner)),
    ("POST",   "/api/v1/orgs/{org}/membership-requests/{user}/refuse", Access::SignedIn(Rule::OrgOwner)),
    ("PUT",    "/api/v1/orgs/{org}/members/{user}", Access::SignedIn(Rule::OrgOwner)),
    ("DELETE", "/api/v1/orgs/{org}/members/{user}", Access::SignedIn(Rule::OrgOwnerOrTheMember)),
    ("POST",   "/api/v1/orgs/{org}/credits",        Access::SignedIn(Rule::AuthorizeAdmin)),
    ("GET",    "/api/v1/orgs/{org}/ledger",         Access::SignedIn(Rule::OrgMember)),
    ("GET",    "/api/v1/orgs/{org}/costs",          Access::SignedIn(Rule::OrgMember)),
    ("GET",    "/api/v1/orgs/{org}/usage",          Access::SignedIn(Rule::OrgMember)),
    ("GET",    "/api/v1/users",                     Access::SignedIn(Rule::AuthorizeAdmin)),
    ("POST",   "/api/v1/users",                     Access::SignedIn(Rule::AuthorizeAdmin)),
    ("GET",    "/api/v1/users/{username}",          Access::SignedIn(Rule::AuthorizeAdmin)),
    ("PATCH",  "/api/v1/users/{username}",          Access::SignedIn(Rule::AuthorizeAdmin)),
    ("DELETE", "/api/v1/users/{username}",          Access::SignedIn(Rule::AuthorizeAdmin)),
];

/// The route template a request path matches, and its access.
pub fn route_access(method: &Method, path: &str) -> Option<Access> {
    ROUTES.iter().find_map(|(m, template, access)| {
        (*m == method.as_str() && matches_template(template, path)).then_some(*access)
    })
}

/// Whether `path` fits `template`, segment by segment; `{name}` matches any
/// non-empty segment. No allocation: this runs on every request.
fn matches_template(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) if t == p || (t.starts_with('{') && !p.is_empty()) => {}
            _ => return false,
        }
    }
}

/// The client's address: the peer of the connection. (Behind a reverse
/// proxy every client shares the proxy's address; flotilla does not trust
/// forwarded-for headers.)
pub fn peer(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The middleware: authenticate, rate limit, pass the caller on.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = route_access(request.method(), request.uri().path());
    // Agents report every few seconds from wherever their instances are
    // (all from 127.0.0.1 on the local driver): the attempt's token, which
    // the handler checks, is their credential, not the network.
    if matches!(access, Some(Access::Open | Access::Attempt)) {
        return next.run(request).await;
    }
    let peer = peer(&request);
    let mut caller = match bearer(&request) {
        Ok(None) => Caller::anonymous(),
        Ok(Some(token)) => match state.identity.authenticate(token, state.engine.now()) {
            Ok(caller) => caller,
            Err(e) => return ApiError::from(e).into_response(),
        },
        Err(e) => return e.into_response(),
    };
    // Sign-in routes are counted per network whoever calls them.
    let anonymous;
    let counted = if access == Some(Access::SignIn) {
        anonymous = Caller::anonymous();
        &anonymous
    } else {
        &caller
    };
    if let Err(wait) = state.limits.check_request(counted, peer) {
        return rate_limited(wait.seconds()).into_response();
    }
    if matches!(access, Some(Access::SignedIn(_))) && caller.account.is_none() {
        return ApiError::denied(flotilla_domain::Denied::NotAuthenticated).into_response();
    }
    // Members of an organisation may act on its cluster from the moment
    // they are admitted, whatever their token says.
    state.engine.admit_org_clusters(&mut caller);
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// A 429 with `Retry-After`.
pub fn rate_limited(seconds: u64) -> Response {
    let mut response = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests; try again in {seconds} s"),
    )
    .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.to_string()).expect("digits"),
    );
    response
}

fn bearer(request: &Request) -> Result<Option<&str>, ApiError> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::unauthenticated(
            "use `Authorization: Bearer <token>` with a token from /api/v1/auth/login",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_templates() {
        assert_eq!(
            route_access(&Method::PUT, "/api/v1/clusters/demo"),
            Some(Access::SignedIn(Rule::AuthorizeDeploy))
        );
        assert_eq!(
            route_access(&Method::POST, "/api/v1/clusters/demo/token"),
            Some(Access::SignedIn(Rule::AuthorizeClusterToken))
        );
        assert_eq!(route_access(&Method::GET, "/healthz"), Some(Access::Open));
        assert_eq!(route_access(&Method::GET, "/api/v1/clusters/"), None);
        assert_eq!(route_access(&Method::POST, "/healthz"), None);
    }
}
