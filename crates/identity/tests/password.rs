//! Password hashing, verification and the rules for new passwords.

use std::time::{Duration, Instant};

use flotilla_identity::{
    check_password_rules, hash_password, prepare_password_verifier, verify_password, PasswordError,
    MAX_PASSWORD_BYTES,
};

const PASSWORD: &str = "correct horse battery staple";

#[test]
fn a_hashed_password_verifies_and_others_do_not() {
    let stored = hash_password(PASSWORD).unwrap();
    assert!(!stored.contains(PASSWORD));
    assert!(verify_password(Some(&stored), PASSWORD));
    assert!(!verify_password(
        Some(&stored),
        "correct horse battery stapl"
    ));
    assert!(!verify_password(Some(&stored), ""));
    assert!(!verify_password(None, PASSWORD));
    assert!(!verify_password(Some("not a phc string"), PASSWORD));
    let too_long = format!("{PASSWORD}{}", "x".repeat(MAX_PASSWORD_BYTES));
    assert!(!verify_password(Some(&stored), &too_long));
}

/// Minimum of a few runs, to see the work done rather than the noise of a
/// shared machine.
fn fastest(mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

#[test]
fn an_unknown_account_costs_as_much_as_a_wrong_password() {
    let stored = hash_password(PASSWORD).unwrap();
    prepare_password_verifier();
    let known = fastest(|| assert!(!verify_password(Some(&stored), "wrong password!")));
    let unknown = fastest(|| assert!(!verify_password(None, "wrong password!")));
    let garbled = fastest(|| assert!(!verify_password(Some("$argon2id$garbage"), "x")));
    // Skipping the hash would take microseconds against tens of
    // milliseconds: a factor of three leaves room for a busy machine.
    for (what, took) in [("unknown", unknown), ("garbled", garbled)] {
        assert!(
            took * 3 > known && took < known * 3,
            "{what} account took {took:?}, a wrong password {known:?}"
        );
    }
}

#[test]
fn new_passwords_follow_the_rules() {
    assert_eq!(check_password_rules("twelve chars"), Ok(()));
    assert_eq!(
        check_password_rules("eleven char"),
        Err(PasswordError::TooShort { chars: 11 })
    );
    // Characters, not bytes: twelve accented letters are enough.
    assert_eq!(check_password_rules(&"é".repeat(12)), Ok(()));
    assert_eq!(
        check_password_rules(&"é".repeat(11)),
        Err(PasswordError::TooShort { chars: 11 })
    );
    assert_eq!(
        check_password_rules(&"x".repeat(MAX_PASSWORD_BYTES)),
        Ok(())
    );
    assert_eq!(
        check_password_rules(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
        Err(PasswordError::TooLong {
            bytes: MAX_PASSWORD_BYTES + 1
        })
    );
    assert_eq!(
        hash_password("short"),
        Err(PasswordError::TooShort { chars: 5 })
    );
}

#[test]
fn errors_say_what_to_do_and_never_show_the_password() {
    let secret = "hunter2";
    let err = check_password_rules(secret).unwrap_err();
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(err.to_string().contains("at least 12"), "{err}");
    let err = check_password_rules(&"secret".repeat(200)).unwrap_err();
    assert!(!err.to_string().contains("secret"));
    assert!(err.to_string().contains("at most 1024 bytes"), "{err}");
}
