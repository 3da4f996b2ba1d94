//! A pool's `init_data` rendered into one node's EC2 user data.
//!
//! One RunInstances call gives every instance of its batch the same user
//! data, and an instance's ID exists only once it is launched. So the
//! rendering is in two parts:
//!
//! - placeholders known before launch, substituted by flotilla in any kind
//!   of user data (shell script, cloud-config, …): `{{cluster}}`,
//!   `{{pool}}`, `{{instance_type}}`, `{{instance_set}}`;
//! - in a shell script (first line `#!` naming sh, bash, dash, ash, ksh or
//!   zsh), a preamble right after that line exports `FLOTILLA_CLUSTER`,
//!   `FLOTILLA_POOL`, `FLOTILLA_INSTANCE_TYPE`, `FLOTILLA_INSTANCE_SET` and
//!   `FLOTILLA_NODE_ID`, the last read by the node itself from the instance
//!   metadata service (IMDSv2). `FLOTILLA_CLUSTER` and `FLOTILLA_NODE_ID`
//!   are the names the local driver gives its workloads too.
//!
//! Every value is a validated name (letters, digits, `-`, `_`, `.`), so the
//! rendering needs no escaping beyond the quotes it adds.

use flotilla_domain::{ClusterName, InstanceSetId, InstanceType, PoolName};

/// EC2's limit on user data, before base64.
pub const MAX_USER_DATA: usize = 16 * 1024;

/// The placeholders flotilla substitutes.
pub const PLACEHOLDERS: [&str; 4] = ["cluster", "pool", "instance_type", "instance_set"];

/// Shells whose scripts get the identity preamble.
const SHELLS: [&str; 6] = ["sh", "bash", "dash", "ash", "ksh", "zsh"];

/// Who the nodes of one RunInstances call are, before launch.
#[derive(Debug, Clone, Copy)]
pub struct NodeIdentity<'a> {
    pub cluster: &'a ClusterName,
    pub pool: &'a PoolName,
    pub instance_type: &'a InstanceType,
    pub instance_set: &'a InstanceSetId,
}

impl NodeIdentity<'_> {
    fn value(&self, placeholder: &str) -> Option<&str> {
        Some(match placeholder {
            "cluster" => self.cluster.as_str(),
            "pool" => self.pool.as_str(),
            "instance_type" => self.instance_type.as_str(),
            "instance_set" => self.instance_set.as_str(),
            _ => return None,
        })
    }
}

/// Every `{{name}}` in `template` whose name is lowercase letters and
/// underscores, with its byte range. (`{{ v1.instance_id }}` and the like,
/// cloud-init's own Jinja, are left alone.)
fn placeholders(template: &str) -> impl Iterator<Item = (std::ops::Range<usize>, &str)> {
    let mut from = 0;
    std::iter::from_fn(move || loop {
        let start = from + template[from..].find("{{")?;
        let name_start = start + 2;
        let name_len = template[name_start..]
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
            .count();
        let name_end = name_start + name_len;
        from = name_start;
        if name_len > 0 && template[name_end..].starts_with("}}") {
            from = name_end + 2;
            return Some((start..from, &template[name_start..name_end]));
        }
    })
}

/// Refuses what cannot be rendered: an unknown placeholder (most likely a
/// typo), or user data over EC2's limit even for the longest names.
pub fn check(template: &str, pool: &PoolName, instance_type: &InstanceType) -> Result<(), String> {
    if let Some((_, name)) = placeholders(template).find(|(_, n)| !PLACEHOLDERS.contains(n)) {
        return Err(format!(
            "unknown placeholder {{{{{name}}}}}; flotilla fills in {}",
            PLACEHOLDERS.map(|p| format!("{{{{{p}}}}}")).join(", ")
        ));
    }
    // The longest names a cluster and an instance set may have.
    let cluster = ClusterName::new("c".repeat(40)).expect("valid");
    let instance_set = InstanceSetId::new("s".repeat(64)).expect("valid");
    let longest = render(
        template,
        &NodeIdentity {
            cluster: &cluster,
            pool,
            instance_type,
            instance_set: &instance_set,
        },
    );
    if longest.len() > MAX_USER_DATA {
        return Err(format!(
            "the rendered user data can reach {} bytes; EC2 takes at most {MAX_USER_DATA}",
            longest.len()
        ));
    }
    Ok(())
}

/// `template` with the placeholders filled in and, for a shell script, the
/// identity preamble after its first line.
pub fn render(template: &str, node: &NodeIdentity<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 600);
    let mut copied = 0;
    for (range, name) in placeholders(template) {
        if let Some(value) = node.value(name) {
            out.push_str(&template[copied..range.start]);
            out.push_str(value);
            copied = range.end;
        }
    }
    out.push_str(&template[copied..]);
    if !is_shell_script(&out) {
        return out;
    }
    let body_start = out.find('\n').map_or(out.len(), |n| n + 1);
    let mut script = String::with_capacity(out.len() + 600);
    script.push_str(&out[..body_start]);
    if body_start == out.len() && !out.ends_with('\n') {
        script.push('\n');
    }
    script.push_str(&preamble(node));
    script.push_str(&out[body_start..]);
    script
}

/// Whether user data is a script for a POSIX-like shell: `#!/bin/sh`,
/// `#!/usr/bin/env bash`, `#!/bin/bash -e`, …
fn is_shell_script(user_data: &str) -> bool {
    let Some(line) = user_data.lines().next() else {
        return false;
    };
    let Some(command) = line.strip_prefix("#!") else {
        return false;
    };
    let mut words = command.split_whitespace();
    let Some(interpreter) = words.next() else {
        return false;
    };
    let name = |path: &str| path.rsplit('/').next().unwrap_or(path).to_owned();
    let program = match name(interpreter).as_str() {
        "env" => words.find(|w| !w.starts_with('-')).map(name),
        other => Some(other.to_owned()),
    };
    program.is_some_and(|p| SHELLS.contains(&p.as_str()))
}

/// Exports the node's identity. The instance ID comes from the instance
/// metadata service (IMDSv2: a session token, then the ID); if that cannot
/// be reached it is empty rather than stopping a script run with `-e`.
fn preamble(node: &NodeIdentity<'_>) -> String {
    format!(
        "# flotilla: this node's identity\n\
         export FLOTILLA_CLUSTER='{cluster}' FLOTILLA_POOL='{pool}' \
         FLOTILLA_INSTANCE_TYPE='{ty}' FLOTILLA_INSTANCE_SET='{set}'\n\
         FLOTILLA_NODE_ID=$(t=$(curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
         http://169.254.169.254/latest/api/token) && curl -sf -m 5 -H \"X-aws-ec2-metadata-token: $t\" \
         http://169.254.169.254/latest/meta-data/instance-id) || FLOTILLA_NODE_ID=''\n\
         export FLOTILLA_NODE_ID\n",
        cluster = node.cluster,
        pool = node.pool,
        ty = node.instance_type,
        set = node.instance_set,
    )
}

/// `s` quoted for `sh`: one word, whatever it holds.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The user data of a job attempt's instance (issue 13): a shutdown timer
/// at the end of its `lifetime` (launched so that its own shutdown
/// terminates it), then the agent program fetched from the server at
/// `server` with the attempt's `token`, checked against `sha256`, and run
/// in job mode. If anything before the agent fails, the instance shuts
/// down at once: the server sees it gone and tries the job again.
pub fn job_agent(
    server: &str,
    job: u64,
    attempt: u32,
    token: &str,
    lifetime: std::time::Duration,
    sha256: &str,
) -> String {
    let minutes = lifetime.as_secs().div_ceil(60).max(1);
    let mut lines = vec![
        "#!/bin/sh".to_owned(),
        format!("# flotilla: the agent of job {job}, attempt {attempt}."),
        format!("# Whatever becomes of flotilla, this instance ends itself in {minutes} minutes."),
        format!("shutdown -h +{minutes} || true"),
        "trap 'shutdown -h now' EXIT".to_owned(),
        "set -eu".to_owned(),
        r#"cd "$(mktemp -d)""#.to_owned(),
        format!("job={job} attempt={attempt} token={}", sh_quote(token)),
    ];
    lines.extend(run_agent(server, sha256));
    lines.join("\n")
}

/// The user data of an instance kept warm for jobs (a pool's
/// `idle_nodes`): a shutdown timer at the end of its idle `lifetime`, then
/// it asks the server at `server` for a job with `token` until one takes
/// it (`GET /api/v1/warm`, each ask waiting up to 20 s); once a job takes it, the timer is set to that
/// job's lifetime and the agent is fetched and run as in [`job_agent`].
pub fn warm_agent(
    server: &str,
    token: &str,
    lifetime: std::time::Duration,
    sha256: &str,
) -> String {
    let minutes = lifetime.as_secs().div_ceil(60).max(1);
    let warm_url = sh_quote(&format!(
        "{}/api/v1/warm?wait=20",
        server.trim_end_matches('/')
    ));
    let mut lines = vec![
        "#!/bin/sh".to_owned(),
        "# flotilla: an instance kept warm for jobs.".to_owned(),
        format!(
            "# Whatever becomes of flotilla, this instance ends itself in {minutes} minutes unless a job takes it."
        ),
        format!("shutdown -h +{minutes} || true"),
        "trap 'shutdown -h now' EXIT".to_owned(),
        "set -eu".to_owned(),
        r#"cd "$(mktemp -d)""#.to_owned(),
        // 204 (no job yet) leaves the file empty: asked again at once; the
        // server restarting or refusing is asked again a second later,
        // until the timer ends it.
        "while :; do".to_owned(),
        "  rm -f assignment".to_owned(),
        format!(
            r#"  if curl -fsS -m 30 -H "x-flotilla-attempt-token: "{} -H 'Accept: text/plain' -o assignment {warm_url}; then"#,
            sh_quote(token)
        ),
        "    [ -s assignment ] && break".to_owned(),
        "  else".to_owned(),
        "    sleep 1".to_owned(),
        "  fi".to_owned(),
        "done".to_owned(),
        "read -r job attempt token minutes < assignment".to_owned(),
        r#"for n in "$job" "$attempt" "$minutes"; do case $n in ''|*[!0-9]*) exit 1;; esac; done"#
            .to_owned(),
        r#"case $token in ''|*[!0-9a-f]*) exit 1;; esac"#.to_owned(),
        "# The job's own deadline from now; without one, none at all.".to_owned(),
        "shutdown -c || true".to_owned(),
        r#"shutdown -h +"$minutes""#.to_owned(),
    ];
    lines.extend(run_agent(server, sha256));
    lines.join("\n")
}

/// The end of an agent's user data: with `$job`, `$attempt` and `$token`
/// set, the agent program fetched from the server with the attempt's
/// token, checked against `sha256`, and run in job mode.
fn run_agent(server: &str, sha256: &str) -> Vec<String> {
    let server = server.trim_end_matches('/');
    let agent_url = format!(
        "{}\"$job/$attempt/agent\"",
        sh_quote(&format!("{server}/api/v1/attempts/"))
    );
    let server = sh_quote(server);
    vec![
        // Transient failures (the server restarting) are tried again; a
        // refusal (the attempt is over) is not.
        format!(
            r#"curl -fsS --retry 20 --retry-connrefused --retry-delay 3 -m 600 -H "x-flotilla-attempt-token: $token" -o flotilla {agent_url}"#
        ),
        format!("echo '{sha256}  flotilla' | sha256sum -c -"),
        "chmod +x flotilla".to_owned(),
        format!(
            r#"FLOTILLA_ATTEMPT_TOKEN="$token" exec ./flotilla node --job "$job" --attempt "$attempt" --server {server}"#
        ),
        String::new(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Names {
        cluster: ClusterName,
        pool: PoolName,
        ty: InstanceType,
        set: InstanceSetId,
    }

    fn names() -> Names {
        Names {
            cluster: ClusterName::new("demo").unwrap(),
            pool: PoolName::new("gpu_spot").unwrap(),
            ty: InstanceType::new("g5.xlarge").unwrap(),
            set: InstanceSetId::new("set-1").unwrap(),
        }
    }

    fn rendered(template: &str) -> String {
        let n = names();
        render(
            template,
            &NodeIdentity {
                cluster: &n.cluster,
                pool: &n.pool,
                instance_type: &n.ty,
                instance_set: &n.set,
            },
        )
    }

    #[test]
    fn placeholders_are_filled_in_any_user_data() {
        let cloud_config = "#cloud-config\nhostname: {{cluster}}-{{pool}}\n\
                            runcmd:\n  - echo {{instance_type}} {{instance_set}} {{ v1.region }} {{nope\n";
        assert_eq!(
            rendered(cloud_config),
            "#cloud-config\nhostname: demo-gpu_spot\n\
             runcmd:\n  - echo g5.xlarge set-1 {{ v1.region }} {{nope\n"
        );
        assert_eq!(rendered("{{{{cluster}}}}"), "{{demo}}");
        assert_eq!(rendered(""), "");
    }

    #[test]
    fn a_shell_script_gets_the_identity_after_its_first_line() {
        let script = rendered("#!/bin/bash -e\necho {{cluster}} $FLOTILLA_NODE_ID\n");
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "#!/bin/bash -e");
        assert_eq!(lines[1], "# flotilla: this node's identity");
        assert_eq!(
            lines[2],
            "export FLOTILLA_CLUSTER='demo' FLOTILLA_POOL='gpu_spot' \
             FLOTILLA_INSTANCE_TYPE='g5.xlarge' FLOTILLA_INSTANCE_SET='set-1'"
        );
        assert!(lines[3].starts_with("FLOTILLA_NODE_ID=$("), "{}", lines[3]);
        assert!(lines[3].contains("/latest/meta-data/instance-id"));
        assert!(lines[3].ends_with("|| FLOTILLA_NODE_ID=''"));
        assert_eq!(lines[4], "export FLOTILLA_NODE_ID");
        assert_eq!(lines[5], "echo demo $FLOTILLA_NODE_ID");
        assert_eq!(lines.len(), 6);
        // A script of one line still gets it, on a line of its own.
        assert!(rendered("#!/bin/sh").starts_with("#!/bin/sh\n# flotilla"));
    }

    #[test]
    fn only_posix_like_shell_scripts_get_the_preamble() {
        for shell in [
            "#!/bin/sh\n",
            "#!/usr/bin/env bash\n",
            "#!/usr/bin/env -S bash -e\n",
            "#! /bin/dash\n",
            "#!/bin/zsh\n",
        ] {
            assert!(is_shell_script(shell), "{shell:?}");
            assert!(rendered(shell).contains("FLOTILLA_NODE_ID"), "{shell:?}");
        }
        for other in [
            "#!/usr/bin/env python3\nprint(1)\n",
            "#!/usr/bin/perl\n",
            "#cloud-config\n",
            "echo hi\n",
            "#!\n",
            "",
        ] {
            assert!(!is_shell_script(other), "{other:?}");
            assert_eq!(rendered(other), other, "{other:?}");
        }
    }

    #[test]
    fn unknown_placeholders_and_oversized_user_data_are_refused() {
        let n = names();
        assert!(check("#!/bin/sh\necho {{cluster}} {{ jinja }}\n", &n.pool, &n.ty).is_ok());
        let e = check("echo {{clutser}}", &n.pool, &n.ty).unwrap_err();
        assert!(
            e.contains("{{clutser}}") && e.contains("{{cluster}}"),
            "{e}"
        );
        // Under the limit as written, over it once rendered with the longest
        // names: refused.
        let big = format!("#!/bin/sh\n{}", "{{instance_set}}".repeat(1000));
        assert!(big.len() < MAX_USER_DATA);
        let e = check(&big, &n.pool, &n.ty).unwrap_err();
        assert!(e.contains("16384"), "{e}");
    }

    /// A warm instance's user data trusts no reply it could not have been
    /// sent (a stub `curl` plays the server): it shuts the instance down at
    /// once, before touching its timer or fetching anything.
    #[test]
    fn a_warm_instance_refuses_a_reply_it_cannot_trust() {
        use std::os::unix::fs::PermissionsExt;

        let stub = |path: std::path::PathBuf, body: String| {
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let replies = [
            "1.2 1 ab 5",
            "1 1 ab",
            "1 1 'ab' 5",
            "x 1 ab 5",
            "1 1 ab 5;reboot",
            "1 1 AB 5",
        ];
        for (i, reply) in replies.iter().enumerate() {
            let dir = std::env::temp_dir().join(format!(
                "flotilla-warm-user-data-{}-{i}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let bin = dir.join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            let log = dir.join("shutdowns");
            stub(
                bin.join("shutdown"),
                format!("echo \"$*\" >> '{}'", log.display()),
            );
            stub(
                bin.join("curl"),
                format!(
                    r#"while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done; printf '%s\n' {} > "$out""#,
                    sh_quote(reply)
                ),
            );
            let script = dir.join("user-data");
            let token = "ab".repeat(32);
            std::fs::write(
                &script,
                warm_agent(
                    "http://server",
                    &token,
                    std::time::Duration::from_secs(600),
                    "00",
                ),
            )
            .unwrap();
            let out = std::process::Command::new("sh")
                .arg(&script)
                .env(
                    "PATH",
                    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
                )
                .env("TMPDIR", &dir)
                .output()
                .unwrap();
            assert!(!out.status.success(), "{reply:?}");
            assert_eq!(
                std::fs::read_to_string(&log).unwrap(),
                "-h +10\n-h now\n",
                "{reply:?}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
