-- The keys that sign tokens, shared by every server on the database.
-- `pem` is an Ed25519 private key (PKCS#8 PEM): a secret. Exactly one key is
-- active (signs new tokens); the others only verify.
CREATE TABLE signing_keys (
    kid        TEXT    NOT NULL PRIMARY KEY,
    pem        TEXT    NOT NULL,
    active     BOOLEAN NOT NULL,
    created_at BIGINT  NOT NULL
);
