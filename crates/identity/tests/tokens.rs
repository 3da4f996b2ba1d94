//! Tokens: what is issued, and every forgery we know of refused with its
//! own error.

mod support;

use std::collections::BTreeSet;

use chrono::TimeDelta;
use flotilla_domain::{allowed_clusters, Caller, Level};
use flotilla_identity::{TokenError, TokenIssuer, TokenKind, ACCESS_AUDIENCE};
use hmac_free::hs256;
use serde_json::{json, Value};
use support::*;

/// HMAC-SHA256 by hand (RFC 2104) so the test needs no HMAC crate: an
/// attacker's HS256 token, keyed with our public key.
mod hmac_free {
    use sha2::{Digest, Sha256};

    pub fn hs256(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .to_vec()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    issuer: TokenIssuer,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let issuer = issuer(&keys);
    Fixture {
        _dir: dir,
        dir: keys,
        issuer,
    }
}

fn alice_access(f: &Fixture) -> String {
    let alice = user("alice");
    let allowed = allowed_clusters(&alice, &BTreeSet::from([cluster("shared")]));
    f.issuer
        .issue_access(&alice, Level::OrgMember, &allowed, now())
        .unwrap()
        .token
}

/// Valid access-token claims, for forging.
fn access_claims() -> Value {
    json!({
        "sub": "alice",
        "level": "org_member",
        "clusters": ["alice"],
        "iat": now().timestamp(),
        "exp": now().timestamp() + 600,
        "iss": ISSUER,
        "aud": ACCESS_AUDIENCE,
        "jti": "forged",
    })
}

fn access_header(kid: &str) -> Value {
    json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": kid })
}

#[test]
fn access_tokens_carry_the_account_and_verify() {
    let f = fixture();
    let alice = user("alice");
    let allowed = allowed_clusters(&alice, &BTreeSet::from([cluster("shared")]));
    let issued = f
        .issuer
        .issue_access(&alice, Level::OrgMember, &allowed, now())
        .unwrap();
    assert_eq!(issued.expires_at, now() + TimeDelta::minutes(15));
    assert!(!format!("{issued:?}").contains(&issued.token));

    let (header, payload, _) = split(&issued.token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], f.issuer.active_kid());
    assert_eq!(payload["level"], "org_member");
    assert_eq!(payload["clusters"], json!(["alice", "shared"]));

    let claims = f.issuer.verify_access(&issued.token, now()).unwrap();
    assert_eq!(claims.sub, alice);
    assert_eq!(claims.iss, ISSUER);
    assert_eq!(claims.aud, ACCESS_AUDIENCE);
    assert_eq!(claims.iat, now().timestamp());
    assert_eq!(claims.expires_at(), issued.expires_at);
    assert_eq!(
        claims.caller(),
        Caller {
            account: Some(alice.clone()),
            level: Level::OrgMember,
            allowed,
        }
    );

    let other = f
        .issuer
        .issue_access(&alice, Level::OrgMember, &BTreeSet::new(), now())
        .unwrap();
    let other = f.issuer.verify_access(&other.token, now()).unwrap();
    assert_ne!(claims.jti, other.jti, "every token has its own id");
}

#[test]
fn cluster_tokens_are_for_their_cluster_only() {
    let f = fixture();
    let issued = f
        .issuer
        .issue_cluster_token(&user("alice"), Level::OrgMember, &cluster("shared"), now())
        .unwrap();
    assert_eq!(issued.expires_at, now() + TimeDelta::hours(1));
    let claims = f
        .issuer
        .verify_cluster_token(&issued.token, &cluster("shared"), now())
        .unwrap();
    assert_eq!(claims.aud, "shared");
    assert_eq!(claims.clusters, BTreeSet::from([cluster("shared")]));
    assert_eq!(claims.caller().allowed, BTreeSet::from([cluster("shared")]));

    assert_eq!(
        f.issuer
            .verify_cluster_token(&issued.token, &cluster("alice"), now()),
        Err(TokenError::WrongAudience {
            expected: "alice".into(),
            found: "shared".into()
        })
    );
}

#[test]
fn a_cluster_token_is_not_an_access_token_and_vice_versa() {
    let f = fixture();
    let access = alice_access(&f);
    let for_cluster = f
        .issuer
        .issue_cluster_token(&user("alice"), Level::OrgMember, &cluster("alice"), now())
        .unwrap()
        .token;
    assert_eq!(
        f.issuer.verify_access(&for_cluster, now()),
        Err(TokenError::WrongAudience {
            expected: ACCESS_AUDIENCE.into(),
            found: "alice".into()
        })
    );
    assert_eq!(
        f.issuer
            .verify_cluster_token(&access, &cluster("alice"), now()),
        Err(TokenError::WrongAudience {
            expected: "alice".into(),
            found: ACCESS_AUDIENCE.into()
        })
    );

    // A cluster may be named like the API's audience; the header's typ
    // still tells the two apart.
    let named_like_api = f
        .issuer
        .issue_cluster_token(
            &user("flotilla-api"),
            Level::OrgMember,
            &cluster(ACCESS_AUDIENCE),
            now(),
        )
        .unwrap()
        .token;
    assert_eq!(
        f.issuer.verify_access(&named_like_api, now()),
        Err(TokenError::WrongKind {
            expected: TokenKind::Access,
            found: TokenKind::Cluster
        })
    );
}

#[test]
fn alg_none_without_signature_is_refused() {
    let f = fixture();
    let (mut header, payload, _) = split(&alice_access(&f));
    header["alg"] = json!("none");
    let token = join(&header, &payload, b"");
    assert!(token.ends_with('.'));
    assert_eq!(
        f.issuer.verify_access(&token, now()),
        Err(TokenError::BadAlgorithm { alg: "none".into() })
    );
}

#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    let f = fixture();
    let kid = f.issuer.active_kid();
    let x = f.issuer.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
    let (_, payload, _) = split(&alice_access(&f));
    let header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid });
    // Both forms an attacker might guess the verifier uses as the secret.
    for secret in [unb64(&x), x.as_bytes().to_vec()] {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let token = format!("{message}.{}", b64(&hs256(&secret, message.as_bytes())));
        assert_eq!(
            f.issuer.verify_access(&token, now()),
            Err(TokenError::BadAlgorithm {
                alg: "HS256".into()
            })
        );
    }
}

#[test]
fn a_flipped_signature_bit_is_refused() {
    let f = fixture();
    let token = alice_access(&f);
    let (header, payload, mut signature) = split(&token);
    signature[10] ^= 0x01;
    let token = join(&header, &payload, &signature);
    assert_eq!(
        f.issuer.verify_access(&token, now()),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn another_keyrings_key_under_our_kid_is_refused() {
    let f = fixture();
    let other_dir = tempfile::tempdir().unwrap();
    let other = issuer(other_dir.path());
    let token = forge(
        other_dir.path(),
        &other.active_kid(),
        &access_header(&f.issuer.active_kid()),
        &access_claims(),
    );
    assert_eq!(
        f.issuer.verify_access(&token, now()),
        Err(TokenError::BadSignature)
    );
    // The same forgery under the other key's own kid: a key we do not have.
    let token = forge(
        other_dir.path(),
        &other.active_kid(),
        &access_header(&other.active_kid()),
        &access_claims(),
    );
    assert_eq!(
        f.issuer.verify_access(&token, now()),
        Err(TokenError::UnknownKey {
            kid: other.active_kid()
        })
    );
    // And the forging helper itself makes tokens we accept with our key.
    let genuine = forge(
        &f.dir,
        &f.issuer.active_kid(),
        &access_header(&f.issuer.active_kid()),
        &access_claims(),
    );
    assert!(f.issuer.verify_access(&genuine, now()).is_ok());
}

#[test]
fn a_token_for_another_audience_is_refused() {
    let f = fixture();
    let kid = f.issuer.active_kid();
    let mut claims = access_claims();
    claims["aud"] = json!("some-other-service");
    let token = forge(&f.dir, &kid, &access_header(&kid), &claims);
    assert_eq!(
        f.issuer.verify_access(&token, now()),
        Err(TokenError::WrongAudience {
            expected: ACCESS_AUDIENCE.into(),
            found: "some-other-service".into()
        })
    );
}

#[test]
fn a_token_from_another_issuer_is_refused() {
    let f = fixture();
    // Same keys, other issuer: only `iss` differs.
    let other = issuer_named(&f.dir, "https://elsewhere.test");
    let token = other
        .issue_access(&user("alice"), Level::Admin, &BTreeSet::new(), now())
        .unwrap()
        .token;
    assert!(other.verify_access(&token, now()).is_ok());
    assert_eq!(
        f.issuer.verify_access(&token, now()),
        Err(TokenError::WrongIssuer {
            expected: ISSUER.into(),
            found: "https://elsewhere.test".into()
        })
    );
}

#[test]
fn an_expired_token_is_refused() {
    let f = fixture();
    let token = alice_access(&f);
    let exp = now() + TimeDelta::minutes(15);
    assert!(f
        .issuer
        .verify_access(&token, exp - TimeDelta::milliseconds(1))
        .is_ok());
    assert_eq!(
        f.issuer.verify_access(&token, exp),
        Err(TokenError::Expired { expired_at: exp })
    );
    assert_eq!(
        f.issuer
            .verify_access(&token, exp + TimeDelta::days(1))
            .unwrap_err()
            .code(),
        "token_expired"
    );
}

#[test]
fn a_token_issued_in_the_future_is_refused() {
    let f = fixture();
    let later = now() + TimeDelta::seconds(61);
    let token = f
        .issuer
        .issue_access(&user("alice"), Level::OrgMember, &BTreeSet::new(), later)
        .unwrap()
        .token;
    assert_eq!(
        f.issuer.verify_access(&token, now()),
        Err(TokenError::NotYetValid { issued_at: later })
    );
    // Within the allowed skew it is fine.
    assert!(f
        .issuer
        .verify_access(&token, now() + TimeDelta::seconds(1))
        .is_ok());
}

#[test]
fn a_tampered_claim_is_refused() {
    let f = fixture();
    let token = alice_access(&f);
    let (header, mut payload, signature) = split(&token);
    payload["level"] = json!("admin");
    let tampered = join(&header, &payload, &signature);
    assert_eq!(
        f.issuer.verify_access(&tampered, now()),
        Err(TokenError::BadSignature)
    );
    // Also once the genuine token is in the cache.
    assert!(f.issuer.verify_access(&token, now()).is_ok());
    assert_eq!(
        f.issuer.verify_access(&tampered, now()),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn an_unknown_kid_is_refused() {
    let f = fixture();
    let (mut header, payload, signature) = split(&alice_access(&f));
    header["kid"] = json!("no-such-key");
    assert_eq!(
        f.issuer
            .verify_access(&join(&header, &payload, &signature), now()),
        Err(TokenError::UnknownKey {
            kid: "no-such-key".into()
        })
    );
    header.as_object_mut().unwrap().remove("kid");
    assert!(matches!(
        f.issuer
            .verify_access(&join(&header, &payload, &signature), now()),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn a_token_missing_a_claim_is_refused() {
    let f = fixture();
    let kid = f.issuer.active_kid();
    for claim in [
        "sub", "level", "clusters", "iat", "exp", "iss", "aud", "jti",
    ] {
        let mut claims = access_claims();
        claims.as_object_mut().unwrap().remove(claim);
        let token = forge(&f.dir, &kid, &access_header(&kid), &claims);
        match f.issuer.verify_access(&token, now()) {
            Err(TokenError::Malformed(why)) => assert!(why.contains(claim), "{claim}: {why}"),
            other => panic!("without {claim}: {other:?}"),
        }
    }
    let mut claims = access_claims();
    claims["level"] = json!("root");
    let token = forge(&f.dir, &kid, &access_header(&kid), &claims);
    assert!(matches!(
        f.issuer.verify_access(&token, now()),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn garbage_is_refused() {
    let f = fixture();
    let token = alice_access(&f);
    let (header, payload, signature) = split(&token);
    let long = "a".repeat(100_000);
    let not_json = format!("{}.{}.{}", b64(b"not json"), b64(b"{}"), b64(b"sig"));
    let bad_base64 = format!("{}.{}.!!!", b64(header.to_string().as_bytes()), b64(b"x"));
    let four_parts = format!("{token}.more");
    let payload_not_json = format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        "bm90IGpzb24",
        b64(&signature)
    );
    let _ = payload;
    for garbage in [
        "",
        "Bearer",
        "a.b",
        "a.b.c",
        "...",
        long.as_str(),
        not_json.as_str(),
        bad_base64.as_str(),
        four_parts.as_str(),
        payload_not_json.as_str(),
    ] {
        match f.issuer.verify_access(garbage, now()) {
            Err(TokenError::Malformed(_)) | Err(TokenError::BadSignature) => {}
            other => panic!("{garbage:.40}: {other:?}"),
        }
    }
    assert!(matches!(
        f.issuer.verify_access("a.b.c", now()),
        Err(TokenError::Malformed(_))
    ));
    assert!(matches!(
        f.issuer.verify_access(&four_parts, now()),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn a_cached_token_past_its_expiry_is_refused() {
    let f = fixture();
    let token = alice_access(&f);
    assert_eq!(f.issuer.cached_tokens(), 0);
    assert!(f.issuer.verify_access(&token, now()).is_ok());
    assert!(f.issuer.verify_access(&token, now()).is_ok());
    assert_eq!(f.issuer.cached_tokens(), 1, "verified once, then cached");
    let exp = now() + TimeDelta::minutes(15);
    assert_eq!(
        f.issuer.verify_access(&token, exp),
        Err(TokenError::Expired { expired_at: exp })
    );
    // The cached entry is still checked for its purpose, too.
    assert!(matches!(
        f.issuer
            .verify_cluster_token(&token, &cluster("alice"), now()),
        Err(TokenError::WrongAudience { .. })
    ));
}

#[test]
fn errors_have_stable_codes_and_say_what_to_do() {
    let e = TokenError::BadSignature;
    assert_eq!(e.code(), "token_bad_signature");
    assert!(e.to_string().contains("sign in again"));
    let e = TokenError::BadAlgorithm { alg: "none".into() };
    assert_eq!(e.code(), "token_bad_algorithm");
    assert!(e.to_string().contains("EdDSA"));
}
