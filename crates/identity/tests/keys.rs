//! The keyring on disk: creation, reload, rotation, retirement, and the
//! files it refuses to load.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flotilla_domain::Level;
use flotilla_identity::{KeyError, KeyRing, TokenError};
use support::*;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn token(issuer: &flotilla_identity::TokenIssuer) -> String {
    issuer
        .issue_access(&user("alice"), Level::OrgMember, &BTreeSet::new(), now())
        .unwrap()
        .token
}

#[test]
fn a_new_directory_gets_one_private_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data").join("keys");
    let ring = KeyRing::load_or_create(&dir).unwrap();
    let kid = ring.active_kid().to_owned();

    assert_eq!(mode(&dir), 0o700);
    assert_eq!(
        files(&dir),
        BTreeSet::from([format!("{kid}.pem"), "active".to_owned()]),
        "no temporary file is left behind"
    );
    let key_file = dir.join(format!("{kid}.pem"));
    assert_eq!(mode(&key_file), 0o600);
    assert!(fs::read_to_string(&key_file)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(fs::read_to_string(dir.join("active")).unwrap().trim(), kid);
    assert!(kid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

    let jwks = ring.jwks();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let jwk = &keys[0];
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["alg"], "EdDSA");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["kid"], kid.as_str());
    let x = jwk["x"].as_str().unwrap();
    assert_eq!(unb64(x).len(), 32);
    assert!(!x.contains('='));
    assert!(jwk.get("d").is_none(), "no private part is published");
    assert!(!format!("{ring:?}").contains("PRIVATE"));
}

#[test]
fn reloading_gives_the_same_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let first = KeyRing::load_or_create(tmp.path()).unwrap();
    let again = KeyRing::load_or_create(tmp.path()).unwrap();
    assert_eq!(first.active_kid(), again.active_kid());
    assert_eq!(first.jwks(), again.jwks());

    // A token signed before the reload verifies after it.
    let before = issuer(tmp.path());
    let token = token(&before);
    let after = issuer(tmp.path());
    assert!(after.verify_access(&token, now()).is_ok());
}

#[test]
fn rotation_signs_with_the_new_key_and_keeps_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let issuer = issuer(tmp.path());
    let old_kid = issuer.active_kid();
    let old_token = token(&issuer);

    let new_kid = issuer.rotate_key().unwrap();
    assert_ne!(new_kid, old_kid);
    assert_eq!(issuer.active_kid(), new_kid);
    let new_token = token(&issuer);
    let (header, _, _) = split(&new_token);
    assert_eq!(header["kid"], new_kid.as_str());

    assert!(issuer.verify_access(&old_token, now()).is_ok());
    assert!(issuer.verify_access(&new_token, now()).is_ok());
    assert_eq!(issuer.jwks()["keys"].as_array().unwrap().len(), 2);

    let reloaded = KeyRing::load_or_create(tmp.path()).unwrap();
    assert_eq!(reloaded.active_kid(), new_kid);
    assert_eq!(
        reloaded.kids().collect::<BTreeSet<_>>(),
        BTreeSet::from([old_kid.as_str(), new_kid.as_str()])
    );
}

#[test]
fn retiring_a_key_refuses_its_tokens_even_cached_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let issuer = issuer(tmp.path());
    let old_kid = issuer.active_kid();
    let old_token = token(&issuer);
    assert!(issuer.verify_access(&old_token, now()).is_ok());
    assert_eq!(issuer.cached_tokens(), 1);

    assert!(matches!(
        issuer.retire_key(&old_kid),
        Err(KeyError::RetireActive { .. })
    ));
    let new_kid = issuer.rotate_key().unwrap();
    let new_token = token(&issuer);
    issuer.retire_key(&old_kid).unwrap();

    assert_eq!(
        issuer.verify_access(&old_token, now()),
        Err(TokenError::UnknownKey {
            kid: old_kid.clone()
        })
    );
    assert!(issuer.verify_access(&new_token, now()).is_ok());
    assert!(!tmp.path().join(format!("{old_kid}.pem")).exists());
    assert_eq!(issuer.kids(), vec![new_kid.clone()]);
    assert!(matches!(
        issuer.retire_key(&old_kid),
        Err(KeyError::UnknownKey { .. })
    ));

    let reloaded = KeyRing::load_or_create(tmp.path()).unwrap();
    assert_eq!(reloaded.kids().collect::<Vec<_>>(), vec![new_kid.as_str()]);
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let kid = KeyRing::load_or_create(tmp.path())
        .unwrap()
        .active_kid()
        .to_owned();
    let key_file = tmp.path().join(format!("{kid}.pem"));
    for loose in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&key_file, fs::Permissions::from_mode(loose)).unwrap();
        let err = KeyRing::load_or_create(tmp.path()).unwrap_err();
        assert!(
            matches!(err, KeyError::FilePermissions { mode, .. } if mode == loose),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&key_file.display().to_string()),
            "{message}"
        );
        assert!(message.contains("chmod 600"), "{message}");
    }
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(KeyRing::load_or_create(tmp.path()).is_ok());
}

#[test]
fn a_directory_others_can_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    KeyRing::load_or_create(tmp.path()).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let err = KeyRing::load_or_create(tmp.path()).unwrap_err();
    assert!(matches!(err, KeyError::DirPermissions { .. }), "{err:?}");
    assert!(err.to_string().contains("chmod 700"));
}

#[test]
fn a_malformed_key_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let kid = KeyRing::load_or_create(tmp.path())
        .unwrap()
        .active_kid()
        .to_owned();
    let key_file = tmp.path().join(format!("{kid}.pem"));
    for content in [
        &b"not a key"[..],
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"",
        &[0xff, 0xfe, 0x00, 0x01],
    ] {
        fs::write(&key_file, content).unwrap();
        let err = KeyRing::load_or_create(tmp.path()).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains(&key_file.display().to_string()));
    }
}

#[test]
fn a_key_under_another_keys_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let kid = KeyRing::load_or_create(tmp.path())
        .unwrap()
        .active_kid()
        .to_owned();
    let other_kid = KeyRing::load_or_create(other.path())
        .unwrap()
        .active_kid()
        .to_owned();
    fs::copy(
        other.path().join(format!("{other_kid}.pem")),
        tmp.path().join(format!("{kid}.pem")),
    )
    .unwrap();
    let err = KeyRing::load_or_create(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, KeyError::KidMismatch { actual, .. } if *actual == other_kid),
        "{err:?}"
    );
}

#[test]
fn the_active_file_must_name_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    KeyRing::load_or_create(tmp.path()).unwrap();
    fs::write(tmp.path().join("active"), "missing\n").unwrap();
    let err = KeyRing::load_or_create(tmp.path()).unwrap_err();
    assert!(matches!(err, KeyError::ActiveMissing { .. }), "{err:?}");
}

#[test]
fn a_first_start_interrupted_before_active_is_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let kid = KeyRing::load_or_create(tmp.path())
        .unwrap()
        .active_kid()
        .to_owned();
    fs::remove_file(tmp.path().join("active")).unwrap();
    // A temporary file left by a crash is ignored.
    fs::write(tmp.path().join(".active.tmp"), "half").unwrap();
    let ring = KeyRing::load_or_create(tmp.path()).unwrap();
    assert_eq!(ring.active_kid(), kid);

    // With two keys and no `active`, which one signs is not guessed.
    let mut ring = ring;
    ring.rotate().unwrap();
    fs::remove_file(tmp.path().join("active")).unwrap();
    let err = KeyRing::load_or_create(tmp.path()).unwrap_err();
    assert!(matches!(err, KeyError::NoActive { .. }), "{err:?}");
}
