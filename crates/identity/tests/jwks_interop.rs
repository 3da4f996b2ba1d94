//! Our tokens verified by an independent JWT library (jwt-simple, not
//! jsonwebtoken) using nothing but the JWKS we serve: what a cluster or a
//! third party would do.

mod support;

use std::collections::BTreeSet;

use flotilla_domain::Level;
use jwt_simple::prelude::*;
use support::*;

#[derive(Debug, Serialize, Deserialize)]
struct FlotillaClaims {
    level: String,
    clusters: Vec<String>,
}

/// The JWK for `kid` from the served JWKS document, as a client would get
/// it: through JSON text.
fn public_key(jwks_text: &str, kid: &str) -> Ed25519PublicKey {
    let jwks: serde_json::Value = serde_json::from_str(jwks_text).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("no key {kid} in {jwks_text}"));
    Ed25519PublicKey::from_jwk(&jwk.to_string()).unwrap()
}

fn options(audience: &str, kid: &str) -> VerificationOptions {
    VerificationOptions {
        allowed_issuers: Some(HashSet::from_strings(&[ISSUER])),
        allowed_audiences: Some(HashSet::from_strings(&[audience])),
        required_key_id: Some(kid.to_owned()),
        artificial_time: Some(UnixTimeStamp::from_secs(now().timestamp() as u64)),
        time_tolerance: Some(Duration::from_secs(0)),
        ..Default::default()
    }
}

#[test]
fn jwt_simple_verifies_our_tokens_from_the_jwks() {
    let tmp = tempfile::tempdir().unwrap();
    let issuer = issuer(tmp.path());
    let alice = user("alice");
    let allowed = BTreeSet::from([cluster("alice"), cluster("shared")]);
    let token = issuer
        .issue_access(&alice, Level::OrgMember, &allowed, now())
        .unwrap()
        .token;
    let kid = issuer.active_kid();
    let jwks_text = serde_json::to_string(&issuer.jwks()).unwrap();
    let key = public_key(&jwks_text, &kid);

    let claims = key
        .verify_token::<FlotillaClaims>(&token, Some(options("flotilla-api", &kid)))
        .unwrap();
    assert_eq!(claims.subject.as_deref(), Some("alice"));
    assert_eq!(claims.issuer.as_deref(), Some(ISSUER));
    assert_eq!(
        claims.issued_at,
        Some(UnixTimeStamp::from_secs(now().timestamp() as u64))
    );
    assert_eq!(
        claims.expires_at,
        Some(UnixTimeStamp::from_secs(
            now().timestamp() as u64 + ACCESS_LIFETIME.as_secs()
        ))
    );
    assert!(claims.jwt_id.is_some());
    assert_eq!(claims.custom.level, "org_member");
    assert_eq!(claims.custom.clusters, vec!["alice", "shared"]);

    // The independent verifier is not a rubber stamp.
    let (header, mut payload, signature) = split(&token);
    payload["level"] = serde_json::json!("admin");
    let tampered = join(&header, &payload, &signature);
    assert!(key
        .verify_token::<FlotillaClaims>(&tampered, Some(options("flotilla-api", &kid)))
        .is_err());
    assert!(key
        .verify_token::<FlotillaClaims>(&token, Some(options("elsewhere", &kid)))
        .is_err());
}

#[test]
fn after_rotation_each_token_verifies_with_its_own_jwk() {
    let tmp = tempfile::tempdir().unwrap();
    let issuer = issuer(tmp.path());
    let old_kid = issuer.active_kid();
    let old = issuer
        .issue_cluster_token(&user("bob"), Level::Admin, &cluster("bob"), now())
        .unwrap()
        .token;
    let new_kid = issuer.rotate_key().unwrap();
    let new = issuer
        .issue_cluster_token(&user("bob"), Level::Admin, &cluster("bob"), now())
        .unwrap()
        .token;
    let jwks_text = serde_json::to_string(&issuer.jwks()).unwrap();

    for (token, kid, other_kid) in [(&old, &old_kid, &new_kid), (&new, &new_kid, &old_kid)] {
        let claims = public_key(&jwks_text, kid)
            .verify_token::<FlotillaClaims>(token, Some(options("bob", kid)))
            .unwrap();
        assert_eq!(claims.custom.level, "admin");
        assert_eq!(claims.custom.clusters, vec!["bob"]);
        // Checked against the other key (kid requirement lifted), the
        // signature does not hold.
        let mut opts = options("bob", kid);
        opts.required_key_id = None;
        assert!(public_key(&jwks_text, other_kid)
            .verify_token::<FlotillaClaims>(token, Some(opts))
            .is_err());
    }
}
