//! Where the command line finds its credentials, and the token cache that
//! `flotilla login` writes.
//!
//! In order (the first that is present wins): what is given for this
//! command beats what is kept, as in `gh`, the AWS CLI and kubectl.
//! 1. `FLOTILLA_TOKEN`, an access token used as it is;
//! 2. `FLOTILLA_USERNAME` with `FLOTILLA_PASSWORD`, or `FLOTILLA_GITHUB_TOKEN`;
//! 3. the login kept by `flotilla login` for this server (however its URL
//!    is spelled: `localhost` or `127.0.0.1`, a trailing slash, the
//!    scheme's default port written out or not);
//! 4. the `~/.netrc` entry for the server's host (refused if others can read
//!    the file);
//! 5. none: the request goes anonymous.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "{path} can be read by other users (mode {mode:o}); run `chmod 600 {path}` and try again"
    )]
    Exposed { path: String, mode: u32 },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a token cache this client understands ({reason}); remove it and run `flotilla login` again")]
    BadCache { path: String, reason: String },
    #[error("{0} is set but {1} is not; set both, or neither")]
    HalfPair(&'static str, &'static str),
    #[error("no home directory (HOME is not set); set FLOTILLA_CONFIG_DIR")]
    NoHome,
}

/// The environment this client reads, gathered in one place so that tests
/// can hand in their own.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub github_token: Option<String>,
    pub home: Option<PathBuf>,
    /// `FLOTILLA_CONFIG_DIR`, else `$XDG_CONFIG_HOME/flotilla`, else
    /// `~/.config/flotilla`.
    pub config_dir: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            token: var("FLOTILLA_TOKEN"),
            username: var("FLOTILLA_USERNAME"),
            password: var("FLOTILLA_PASSWORD"),
            github_token: var("FLOTILLA_GITHUB_TOKEN"),
            home: var("HOME").map(PathBuf::from),
            config_dir: var("FLOTILLA_CONFIG_DIR").map(PathBuf::from),
            xdg_config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
        }
    }

    /// Where `flotilla login` keeps its tokens.
    pub fn token_cache(&self) -> Result<TokenCache, CredentialError> {
        let dir = match (&self.config_dir, &self.xdg_config_home, &self.home) {
            (Some(dir), _, _) => dir.clone(),
            (None, Some(xdg), _) => xdg.join("flotilla"),
            (None, None, Some(home)) => home.join(".config").join("flotilla"),
            (None, None, None) => return Err(CredentialError::NoHome),
        };
        Ok(TokenCache {
            path: dir.join("tokens.json"),
        })
    }
}

/// Where the credentials of a request come from.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    Cached(CachedLogin),
    Token(String),
    Password {
        username: String,
        password: String,
        /// Said in errors: `FLOTILLA_USERNAME`, `~/.netrc`, ...
        origin: String,
    },
    Github(String),
    Anonymous,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Cached(c) => write!(f, "Cached({})", c.username),
            Source::Token(_) => f.write_str("Token"),
            Source::Password {
                username, origin, ..
            } => write!(f, "Password({username} from {origin})"),
            Source::Github(_) => f.write_str("Github"),
            Source::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// Picks the credentials for `server` (a URL), in the order of this
/// module's documentation.
pub fn resolve(env: &Env, server: &str) -> Result<Source, CredentialError> {
    if let Some(token) = &env.token {
        return Ok(Source::Token(token.clone()));
    }
    match given_source(env)? {
        Source::Anonymous => {}
        given => return Ok(given),
    }
    if let Some(login) = env.token_cache()?.get(server)? {
        return Ok(Source::Cached(login));
    }
    netrc_source(env, server)
}

/// What `flotilla login` signs in with when given no flags: the
/// environment's, else `~/.netrc`'s.
pub fn sign_in_source(env: &Env, server: &str) -> Result<Source, CredentialError> {
    match given_source(env)? {
        Source::Anonymous => netrc_source(env, server),
        given => Ok(given),
    }
}

/// Where a source's credentials came from, as `whoami` says it.
pub fn describe(source: &Source, cache: Option<&TokenCache>) -> String {
    match source {
        Source::Cached(_) => match cache {
            Some(c) => format!("the login kept by `flotilla login` in {}", c.path.display()),
            None => "the login kept by `flotilla login`".to_owned(),
        },
        Source::Token(_) => "FLOTILLA_TOKEN".to_owned(),
        Source::Password { origin, .. } => origin.clone(),
        Source::Github(_) => "FLOTILLA_GITHUB_TOKEN".to_owned(),
        Source::Anonymous => "none: not signed in".to_owned(),
    }
}

/// The credentials the environment gives for this command, if any.
fn given_source(env: &Env) -> Result<Source, CredentialError> {
    match (&env.username, &env.password) {
        (Some(username), Some(password)) => {
            return Ok(Source::Password {
                username: username.clone(),
                password: password.clone(),
                origin: "FLOTILLA_USERNAME and FLOTILLA_PASSWORD".into(),
            })
        }
        (Some(_), None) => {
            return Err(CredentialError::HalfPair(
                "FLOTILLA_USERNAME",
                "FLOTILLA_PASSWORD",
            ))
        }
        (None, Some(_)) => {
            return Err(CredentialError::HalfPair(
                "FLOTILLA_PASSWORD",
                "FLOTILLA_USERNAME",
            ))
        }
        (None, None) => {}
    }
    if let Some(token) = &env.github_token {
        return Ok(Source::Github(token.clone()));
    }
    Ok(Source::Anonymous)
}

/// The `~/.netrc` entry for the server's host, if any.
fn netrc_source(env: &Env, server: &str) -> Result<Source, CredentialError> {
    if let (Some(home), Some(host)) = (&env.home, host_of(server)) {
        let path = home.join(".netrc");
        if let Some((username, password)) = netrc_entry(&path, &host)? {
            return Ok(Source::Password {
                username,
                password,
                origin: path.display().to_string(),
            });
        }
    }
    Ok(Source::Anonymous)
}

/// The host part of a server URL, as `.netrc` names machines.
pub fn host_of(server: &str) -> Option<String> {
    reqwest::Url::parse(server)
        .ok()?
        .host_str()
        .map(|h| h.trim_matches(['[', ']']).to_owned())
}

/// Refuses a secret file that group or others can read.
fn check_private(path: &Path) -> Result<(), CredentialError> {
    let meta = fs::metadata(path).map_err(|source| CredentialError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::Exposed {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// The login and password of `machine host` in a `.netrc` file (or of its
/// `default` entry). `None` if the file or the entry is missing.
pub fn netrc_entry(path: &Path, host: &str) -> Result<Option<(String, String)>, CredentialError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let entries = parse_netrc(&text);
    let Some(entry) = entries
        .iter()
        .find(|e| e.machine.as_deref() == Some(host))
        .or_else(|| entries.iter().find(|e| e.machine.is_none()))
    else {
        return Ok(None);
    };
    // Checked only once the file holds an entry we would use, like curl.
    check_private(path)?;
    match (&entry.login, &entry.password) {
        (Some(l), Some(p)) => Ok(Some((l.clone(), p.clone()))),
        _ => Ok(None),
    }
}

#[derive(Debug, Default)]
struct NetrcEntry {
    /// `None` for the `default` entry.
    machine: Option<String>,
    login: Option<String>,
    password: Option<String>,
}

fn parse_netrc(text: &str) -> Vec<NetrcEntry> {
    let mut entries: Vec<NetrcEntry> = Vec::new();
    let mut lines = text.lines();
    let mut tokens: Vec<String> = Vec::new();
    // Macro definitions run to the next blank line and hold no credentials.
    while let Some(line) = lines.next() {
        for word in line.split_whitespace() {
            if word.starts_with('#') && tokens.last().map(String::as_str) != Some("password") {
                break;
            }
            if word == "macdef" {
                for l in lines.by_ref() {
                    if l.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            tokens.push(word.to_owned());
        }
    }
    let mut it = tokens.into_iter();
    while let Some(token) = it.next() {
        match token.as_str() {
            "machine" => entries.push(NetrcEntry {
                machine: it.next(),
                ..Default::default()
            }),
            "default" => entries.push(NetrcEntry::default()),
            "login" | "password" | "account" => {
                let value = it.next();
                if let Some(e) = entries.last_mut() {
                    match token.as_str() {
                        "login" => e.login = value,
                        "password" => e.password = value,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    entries
}

/// A login kept by `flotilla login`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLogin {
    pub username: String,
    pub access_token: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
}

impl CachedLogin {
    /// Whether the access token should be refreshed before use at `now`:
    /// within a minute of expiry, or within half its lifetime for short ones.
    pub fn needs_refresh(&self, now: DateTime<Utc>) -> bool {
        let lifetime = self.expires_at - self.issued_at;
        let margin = std::cmp::min(chrono::Duration::seconds(60), lifetime / 2);
        now + margin >= self.expires_at
    }
}

/// The tokens of `flotilla login`, per server, in one JSON file only its
/// owner can read (mode 0600 in a 0700 directory).
#[derive(Debug, Clone)]
pub struct TokenCache {
    pub path: PathBuf,
}

impl TokenCache {
    fn load(&self) -> Result<BTreeMap<String, CachedLogin>, CredentialError> {
        let shown = self.path.display().to_string();
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(CredentialError::Read {
                    path: shown,
                    source,
                })
            }
        };
        check_private(&self.path)?;
        serde_json::from_str(&text).map_err(|e| CredentialError::BadCache {
            path: shown,
            reason: e.to_string(),
        })
    }

    /// The login kept for `server`, however either URL is spelled.
    pub fn get(&self, server: &str) -> Result<Option<CachedLogin>, CredentialError> {
        let key = cache_key(server);
        Ok(self
            .load()?
            .into_iter()
            .find(|(k, _)| cache_key(k) == key)
            .map(|(_, login)| login))
    }

    /// Keeps `login` for `server`, in place of any kept for the same server
    /// spelled another way.
    pub fn put(&self, server: &str, login: CachedLogin) -> Result<(), CredentialError> {
        let key = cache_key(server);
        let mut all = self.load()?;
        all.retain(|k, _| cache_key(k) != key);
        // Kept under the spelling the user gave, found under any.
        all.insert(server.trim_end_matches('/').to_owned(), login);
        self.store(&all)
    }

    /// True if there was a login for `server`.
    pub fn remove(&self, server: &str) -> Result<bool, CredentialError> {
        let key = cache_key(server);
        let mut all = self.load()?;
        let before = all.len();
        all.retain(|k, _| cache_key(k) != key);
        let had = all.len() != before;
        if had {
            self.store(&all)?;
        }
        Ok(had)
    }

    fn store(&self, all: &BTreeMap<String, CachedLogin>) -> Result<(), CredentialError> {
        let write_err = |source| CredentialError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let dir = self.path.parent().expect("the cache file has a directory");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_err)?;
        // Written aside and renamed, so a crash leaves the old file or the
        // new one, and created 0600 so the secret is never readable by others.
        let tmp = self.path.with_extension("json.tmp");
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        let text = serde_json::to_string_pretty(all).expect("serialisable");
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        fs::rename(&tmp, &self.path).map_err(write_err)?;
        Ok(())
    }
}

/// One spelling per server: scheme, host in lower case (any loopback
/// name or address as `localhost`) and port (none for the scheme's
/// default), without a trailing slash. A URL that does not parse is kept
/// as it is, less trailing slashes.
fn cache_key(server: &str) -> String {
    let Ok(url) = reqwest::Url::parse(server) else {
        return server.trim_end_matches('/').to_owned();
    };
    let raw = url.host_str().unwrap_or_default();
    let host = match raw.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => "localhost".to_owned(),
        Ok(_) => raw.to_owned(),
        Err(_) if raw.eq_ignore_ascii_case("localhost") => "localhost".to_owned(),
        Err(_) => raw.to_ascii_lowercase(),
    };
    let path = url.path().trim_end_matches('/');
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{path}", url.scheme()),
        None => format!("{}://{host}{path}", url.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str) -> CachedLogin {
        let now = Utc::now();
        CachedLogin {
            username: user.into(),
            access_token: format!("access-{user}"),
            issued_at: now,
            expires_at: now + chrono::Duration::minutes(15),
            refresh_token: format!("refresh-{user}"),
            refresh_expires_at: now + chrono::Duration::days(30),
        }
    }

    fn env(dir: &Path) -> Env {
        Env {
            home: Some(dir.to_owned()),
            config_dir: Some(dir.join("config")),
            ..Env::default()
        }
    }

    fn write_netrc(dir: &Path, text: &str, mode: u32) {
        let path = dir.join(".netrc");
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    const SERVER: &str = "http://flotilla.example:8470";

    #[test]
    fn what_is_given_for_the_command_beats_what_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = env(dir.path());
        assert_eq!(resolve(&e, SERVER).unwrap(), Source::Anonymous);

        write_netrc(
            dir.path(),
            "machine flotilla.example login nina password n-pass\n",
            0o600,
        );
        assert!(
            matches!(resolve(&e, SERVER).unwrap(), Source::Password { username, .. } if username == "nina")
        );

        e.token_cache().unwrap().put(SERVER, login("carl")).unwrap();
        assert!(
            matches!(resolve(&e, SERVER).unwrap(), Source::Cached(c) if c.username == "carl"),
            "a kept login beats .netrc"
        );
        assert!(
            !matches!(resolve(&e, "http://other:8470").unwrap(), Source::Cached(_)),
            "the cache is per server"
        );

        e.github_token = Some("gh".into());
        assert_eq!(resolve(&e, SERVER).unwrap(), Source::Github("gh".into()));

        e.username = Some("eve".into());
        e.password = Some("e-pass".into());
        assert!(
            matches!(resolve(&e, SERVER).unwrap(), Source::Password { username, .. } if username == "eve")
        );

        e.token = Some("tok".into());
        assert_eq!(resolve(&e, SERVER).unwrap(), Source::Token("tok".into()));
    }

    #[test]
    fn a_kept_login_is_found_however_the_server_is_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let e = env(dir.path());
        let cache = e.token_cache().unwrap();
        cache.put("http://127.0.0.1:8470/", login("carl")).unwrap();
        for spelling in [
            "http://localhost:8470",
            "http://LOCALHOST:8470/",
            "http://127.0.0.1:8470",
            "http://[::1]:8470",
        ] {
            assert!(
                matches!(resolve(&e, spelling).unwrap(), Source::Cached(c) if c.username == "carl"),
                "{spelling}"
            );
        }
        for other in [
            "https://127.0.0.1:8470",
            "http://127.0.0.1:8471",
            "http://10.0.0.1:8470",
        ] {
            assert_eq!(resolve(&e, other).unwrap(), Source::Anonymous, "{other}");
        }
        cache
            .put("https://Flotilla.Example:443/", login("dora"))
            .unwrap();
        assert!(matches!(
            resolve(&e, "https://flotilla.example").unwrap(),
            Source::Cached(c) if c.username == "dora"
        ));
        // A new login for the same server replaces the old, whatever its
        // spelling; logging out removes it.
        cache.put("http://localhost:8470", login("erin")).unwrap();
        assert!(matches!(
            resolve(&e, "http://127.0.0.1:8470").unwrap(),
            Source::Cached(c) if c.username == "erin"
        ));
        assert_eq!(cache.load().unwrap().len(), 2);
        assert!(cache.remove("http://127.0.0.1:8470/").unwrap());
        assert_eq!(
            resolve(&e, "http://localhost:8470").unwrap(),
            Source::Anonymous
        );
    }

    #[test]
    fn half_a_username_and_password_pair_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = env(dir.path());
        e.username = Some("eve".into());
        let err = resolve(&e, SERVER).unwrap_err().to_string();
        assert!(err.contains("FLOTILLA_PASSWORD"), "{err}");
    }

    #[test]
    fn a_netrc_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        write_netrc(
            dir.path(),
            "machine flotilla.example login a password b\n",
            0o644,
        );
        let err = resolve(&env(dir.path()), SERVER).unwrap_err().to_string();
        assert!(
            err.contains("chmod 600") && err.contains(".netrc") && err.contains("644"),
            "{err}"
        );
    }

    #[test]
    fn netrc_parsing() {
        let text = "# comment\nmachine a.example\n  login alice\n  password 'secret#1'\n\
                    macdef init\nlogin mallory password evil\n\n\
                    machine b.example login bob password pw account acct\n\
                    default login anon password anon-pw\n";
        let entries = parse_netrc(text);
        let a = entries
            .iter()
            .find(|e| e.machine.as_deref() == Some("a.example"))
            .unwrap();
        assert_eq!(a.login.as_deref(), Some("alice"));
        assert_eq!(a.password.as_deref(), Some("'secret#1'"));
        let b = entries
            .iter()
            .find(|e| e.machine.as_deref() == Some("b.example"))
            .unwrap();
        assert_eq!(
            (b.login.as_deref(), b.password.as_deref()),
            (Some("bob"), Some("pw"))
        );
        assert!(entries
            .iter()
            .all(|e| e.login.as_deref() != Some("mallory")));
        let dir = tempfile::tempdir().unwrap();
        write_netrc(dir.path(), text, 0o600);
        let path = dir.path().join(".netrc");
        assert_eq!(
            netrc_entry(&path, "c.example").unwrap(),
            Some(("anon".into(), "anon-pw".into())),
            "the default entry"
        );
        assert_eq!(host_of("http://[::1]:8470/").as_deref(), Some("::1"));
    }

    #[test]
    fn the_cache_is_private_and_survives_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let cache = env(dir.path()).token_cache().unwrap();
        cache.put(SERVER, login("carl")).unwrap();
        cache.put("http://other", login("dora")).unwrap();
        let mode = fs::metadata(&cache.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(cache.path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(
            cache.get(&format!("{SERVER}/")).unwrap().unwrap().username,
            "carl"
        );
        assert!(cache.remove(SERVER).unwrap());
        assert!(cache.get(SERVER).unwrap().is_none());
        assert_eq!(cache.get("http://other").unwrap().unwrap().username, "dora");

        fs::set_permissions(&cache.path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            cache.get(SERVER),
            Err(CredentialError::Exposed { .. })
        ));
    }

    #[test]
    fn refresh_is_due_near_expiry() {
        let mut l = login("x");
        let now = l.issued_at;
        assert!(!l.needs_refresh(now));
        assert!(l.needs_refresh(l.expires_at - chrono::Duration::seconds(30)));
        l.expires_at = now + chrono::Duration::seconds(4);
        assert!(!l.needs_refresh(now + chrono::Duration::seconds(1)));
        assert!(l.needs_refresh(now + chrono::Duration::seconds(2)));
    }
}
