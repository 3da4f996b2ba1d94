//! Password hashing, verification and the rules for new passwords.

use flotilla_identity::{
    check_password_rules, hash_password, verify_password, HashMemory, PasswordError,
    MAX_PASSWORD_BYTES,
};

const PASSWORD: &str = "correct horse battery staple";

#[test]
fn a_hashed_password_verifies_and_others_do_not() {
    let m = &mut HashMemory::new();
    let stored = hash_password(PASSWORD, m).unwrap();
    assert!(!stored.contains(PASSWORD));
    assert!(verify_password(Some(&stored), PASSWORD, m));
    assert!(!verify_password(
        Some(&stored),
        "correct horse battery stapl",
        m
    ));
    assert!(!verify_password(Some(&stored), "", m));
    assert!(!verify_password(None, PASSWORD, m));
    assert!(!verify_password(Some("not a phc string"), PASSWORD, m));
    let too_long = format!("{PASSWORD}{}", "x".repeat(MAX_PASSWORD_BYTES));
    assert!(!verify_password(Some(&stored), &too_long, m));
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
        hash_password("short", &mut HashMemory::new()),
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
