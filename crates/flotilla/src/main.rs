//! The `flotilla` binary: server, command-line client and node agent.

mod cli;
mod config;
mod credentials;
mod dropbox;
mod http;
mod job_agent;
mod notifier;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_api_types::{
    CapacityRequest, CreateOrgRequest, CreateUserRequest, CreditRequest, DeployRequest,
    ExtendRequest, Level, ScheduleRequest, SubscriptionRequest, UpdateOrgRequest,
    UpdateUserRequest,
};

use crate::cli::{exit, Client, Output};
use crate::credentials::{Env, Source};

/// mimalloc rather than the system allocator: see `BENCHMARKS.md`,
/// "The allocator".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Provision named clusters of compute nodes and keep them converged",
    after_help = "Examples:
  FLOTILLA_ADMIN_PASSWORD=change-me-please flotilla serve     # a server on its defaults
  echo change-me-please | flotilla login --username admin
  flotilla deploy demo --nodes 3 --ttl 30m --wait
  flotilla status demo --watch
  flotilla doctor                                            # when something seems wrong
  flotilla destroy demo --wait

Exit statuses: 0 success, 1 failed, 2 usage, 3 not signed in or not allowed,
4 server unreachable, 130 interrupted while waiting."
)]
struct Cli {
    /// The flotilla server to talk to.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_SERVER",
        default_value = "http://127.0.0.1:8470"
    )]
    server: String,
    /// How to print results: text for people, json as the API returns it.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    #[command(after_help = "Environment:
  FLOTILLA_ADMIN_PASSWORD  creates account `admin` with this password if no admin exists
                           (the first start needs it; later ones ignore it)
  FLOTILLA_DATABASE_URL    postgres://... : keep state in PostgreSQL, shared by several
                           servers, instead of SQLite in the data directory
  RUST_LOG                 log filter, e.g. info or flotilla_engine=debug

`flotilla config init > flotilla.toml` writes a commented config to start from;
`flotilla serve --check --config flotilla.toml` checks it and starts nothing.")]
    Serve {
        /// TOML config file; embedded defaults without one. Relative paths in
        /// it are relative to the file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Directory for state (overrides the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Check the config (with the overrides given) and say what would
        /// run; start nothing, create nothing.
        #[arg(long)]
        check: bool,
    },
    /// Check the server, your credentials, the pools and what stands in
    /// your clusters' way, a line each (exit 1 if something fails).
    Doctor,
    /// Config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Deploy a cluster, or change the node count of a running one.
    #[command(after_help = "Examples:
  flotilla deploy demo --nodes 3 --ttl 30m --wait     # a new cluster; returns once its nodes are ready
  flotilla deploy demo --nodes 5 --ttl 2h             # resize, and move its deletion to now + 2h
  flotilla deploy gpu --nodes 1 --ttl 1h --pool gpu   # another pool (fixed once deployed)
  flotilla deploy web --nodes 2 --ttl 1h --port 8000 \\
    --workload 'python3 -m http.server --bind \"$FLOTILLA_NODE_HOST\" \"$FLOTILLA_WORKLOAD_PORT\"'")]
    Deploy {
        cluster: String,
        /// Number of nodes.
        #[arg(long)]
        nodes: i64,
        /// Time to live: the cluster is destroyed this long after the
        /// (latest) deploy. E.g. 90s, 30m, 2h.
        #[arg(long, value_parser = cli::parse_ttl)]
        ttl: Duration,
        /// Make the cluster public (cannot change once deployed; a resize
        /// without it keeps the cluster as it is).
        #[arg(long)]
        public: bool,
        /// Pool to build nodes from (cannot change once deployed; a new
        /// cluster gets the server's default without it, a resize keeps
        /// the cluster's).
        #[arg(long)]
        pool: Option<String>,
        /// Wait until all nodes are ready (or the server's max_wait passes).
        #[arg(long)]
        wait: bool,
        /// A shell command each node runs instead of the pool's init data,
        /// where the pool allows it (allow_workload; fixed once deployed, a
        /// resize without it keeps the cluster's). It should serve on $FLOTILLA_NODE_HOST.
        #[arg(long)]
        workload: Option<String>,
        /// The port the workload serves (given to it as
        /// $FLOTILLA_WORKLOAD_PORT); status shows each node's workload
        /// address.
        #[arg(long, requires = "workload")]
        port: Option<u16>,
    },
    /// Ask for nodes on an organisation's cluster for a while. The
    /// cluster's size is the sum over members of each one's largest active
    /// request, within the organisation's min_nodes..max_nodes.
    /// `--cancel` (or `--nodes 0`) withdraws your requests instead; ask
    /// again for fewer nodes after.
    Scale {
        cluster: String,
        /// Number of nodes this request asks for (0: withdraw yours).
        #[arg(long, required_unless_present = "cancel")]
        nodes: Option<i64>,
        /// How long the request lasts. E.g. 90s, 30m, 2h.
        #[arg(long, value_parser = cli::parse_ttl)]
        ttl: Option<Duration>,
        /// Withdraw your capacity requests on the cluster.
        #[arg(long, conflicts_with_all = ["nodes", "ttl", "wait"])]
        cancel: bool,
        /// Wait until the cluster has its nodes ready (or the server's
        /// max_wait passes).
        #[arg(long)]
        wait: bool,
    },
    /// Show one cluster, or all.
    Status {
        cluster: Option<String>,
        /// Show it again every two seconds, until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// List the pools: driver, instance type, and what the cloud says a
    /// node is (vCPUs, memory) and costs (spot price).
    Pools,
    /// Pools: write them (apply, retire), show them and their history, and
    /// what went wrong making their nodes.
    #[command(after_help = "Examples:
  flotilla pool apply gpu.toml --dry-run   # check it, say what would change
  flotilla pool apply gpu.toml             # create or change pool gpu
  flotilla pool show gpu
  flotilla pool history gpu
  flotilla pool retire gpu                 # refused while a cluster uses it")]
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// The JSON Schemas of pools and shared configs, per configured driver.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Shared configs: values many pools use (the image per region), each
    /// version kept, its schema fixed when it is created.
    #[command(after_help = "Examples:
  flotilla schema show aws --shared images             # what an images config holds
  flotilla shared-config create base-images --schema aws/images images.toml
  flotilla shared-config update base-images images.toml   # every pool naming it launches with it
  flotilla shared-config show base-images --version 1
  flotilla shared-config list")]
    SharedConfig {
        #[command(subcommand)]
        command: SharedConfigCommand,
    },
    /// Show the changes you may see (your clusters', organisations' and
    /// account's, public clusters'), oldest first; one cluster's with its
    /// name.
    #[command(after_help = "Examples:
  flotilla events demo              # what happened to demo
  flotilla events --follow          # every change you may see, as it happens
  flotilla events --after 120       # only changes after number 120")]
    Events {
        cluster: Option<String>,
        /// Only changes after this number (each line starts with one).
        #[arg(long)]
        after: Option<i64>,
        /// Keep showing new changes as they happen (from now on, unless
        /// --after says otherwise) until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Move a deployed cluster's deletion to now + TTL, within your
    /// level's limit; its nodes, pool and visibility stay as they are.
    Extend {
        cluster: String,
        /// New time to live from now. E.g. 30m, 2h.
        #[arg(long, value_parser = cli::parse_ttl)]
        ttl: Duration,
    },
    /// Show what a node printed: the local driver's node log (the agent's
    /// and its workload's output), EC2's console output.
    #[command(after_help = "Examples:
  flotilla logs demo            # the oldest node's output
  flotilla logs demo 2 -f       # the second node's (as `status` lists them), as it grows")]
    Logs {
        cluster: String,
        /// The node: its ID, or its place in `flotilla status CLUSTER`'s
        /// list (1 is the oldest). Default: the oldest.
        node: Option<String>,
        /// Keep showing what it prints until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command on a node and show its output; exits with the
    /// command's status. For a cluster's owners where its pool has
    /// allow_exec, and for admins; on `local`, the command runs in the
    /// node's directory with its workload's environment.
    #[command(after_help = "Examples:
  flotilla exec demo -- uptime
  flotilla exec demo 2 -- sh -c 'curl -s $FLOTILLA_NODE_ADDRESS/info'")]
    Exec {
        cluster: String,
        /// The node: its ID, or its place in `flotilla status CLUSTER`'s
        /// list (1 is the oldest). Default: the oldest.
        node: Option<String>,
        /// Kill the command after this long (at most 10m). E.g. 30s, 5m.
        #[arg(long, value_parser = cli::parse_ttl, default_value = "60s")]
        timeout: Duration,
        /// The command and its arguments, after `--` (no shell: give
        /// `sh -c '...'` for one).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Log in to a node with ssh, where the cluster's pool names an
    /// ssh_user; arguments after `--` go to ssh after the host (ssh's own
    /// options such as `-i KEY`, then a command to run).
    #[command(after_help = "Examples:
  flotilla ssh demo                       # the oldest node
  flotilla ssh demo 2 -- uptime           # a command on the second node
  flotilla ssh-config demo >> ~/.ssh/config && ssh demo-1")]
    Ssh {
        cluster: String,
        /// The node: its ID, or its place in `flotilla status CLUSTER`'s
        /// list (1 is the oldest). Default: the oldest.
        node: Option<String>,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Print an ssh config block per node (`Host CLUSTER-1`, ...), where
    /// the cluster's pool names an ssh_user.
    SshConfig { cluster: String },
    /// Destroy a cluster.
    Destroy {
        cluster: String,
        /// Wait until every node is gone.
        #[arg(long)]
        wait: bool,
    },
    /// Sign in and keep the login (mode 0600) for later commands. The
    /// password is read from standard input.
    Login {
        /// A local account.
        #[arg(long, conflicts_with = "github_token")]
        username: Option<String>,
        /// A GitHub token instead (or FLOTILLA_GITHUB_TOKEN).
        #[arg(long)]
        github_token: Option<String>,
    },
    /// Revoke the kept login and forget it.
    Logout,
    /// Show who the current credentials are.
    Whoami,
    /// Print an access token for one of your clusters (for its own proxy).
    Token { cluster: String },
    /// Manage accounts (admins).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage the keys that sign tokens (admins).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Organisations: members, settings of their cluster, budget and costs.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Seed 000's TEST: run the `test` job template against CLUSTER at
    /// VERSION (admins).
    Test {
        cluster: String,
        version: String,
        /// Follow its log until it ends; exit 0 if it passed, 1 if not.
        #[arg(long)]
        wait: bool,
    },
    /// Seed 000's RELEASE: run the `release` job template against CLUSTER
    /// at VERSION (admins).
    Release {
        cluster: String,
        version: String,
        /// Follow its log until it ends; exit 0 if it passed, 1 if not.
        #[arg(long)]
        wait: bool,
    },
    /// Schedules: a job template run against a cluster on a cron
    /// schedule, fired by the server on time (admins).
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
    /// Notifications: mail or a webhook when something you may see
    /// happens (your clusters, your organisations', your jobs).
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// Jobs: scripts run once on an instance of their own.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// This command line's version and the server's, warning when they
    /// differ.
    Version,
    /// Print a shell completion script: `flotilla completions bash >
    /// ~/.local/share/bash-completion/completions/flotilla`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run a node agent (what the `local` driver starts for each node), or
    /// in job mode (`--job`) the agent of one job attempt (what an
    /// attempt's instance runs; its token in FLOTILLA_ATTEMPT_TOKEN), or
    /// (`--warm`) the agent of an instance kept warm for jobs, which asks
    /// for a job with the token in FLOTILLA_WARM_TOKEN and runs it.
    #[command(hide = true)]
    Node {
        /// The node's instance directory, as written by the local driver.
        #[arg(long, required_unless_present_any = ["job", "warm"])]
        instance_dir: Option<PathBuf>,
        /// Job mode: run this job's attempt.
        #[arg(long, conflicts_with = "instance_dir", requires_all = ["attempt", "server"])]
        job: Option<u64>,
        /// Warm mode: wait for a job to take this instance, then run it.
        #[arg(long, conflicts_with_all = ["instance_dir", "job"], requires = "server")]
        warm: bool,
        /// The attempt's number.
        #[arg(long)]
        attempt: Option<u32>,
        /// Where the server is reached.
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Run TEMPLATE against CLUSTER at VERSION whenever CRON says (UTC).
    Create {
        name: String,
        /// Five fields (minute hour day month weekday, e.g. "0 3 * * *"),
        /// or six with seconds first.
        #[arg(long)]
        cron: String,
        #[arg(long)]
        template: String,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        version: String,
        /// Runs missed while no server ran: run-once (one run for all) or
        /// skip.
        #[arg(long, default_value = "run-once")]
        missed: String,
    },
    List,
    Show {
        name: String,
    },
    /// Fire no more until resumed.
    Pause {
        name: String,
    },
    /// Fire again, from the next time after now.
    Resume {
        name: String,
    },
    /// Delete it (the jobs it queued stay).
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum NotifyCommand {
    /// Subscribe your account: `--email ADDRESS` or `--webhook URL`, with
    /// the events wanted (`--events 'cluster.*,org.budget_exhausted'`:
    /// `*`, `ENTITY.*`, or event names as `flotilla events` shows them).
    /// A webhook's signing secret is printed once.
    #[command(group(clap::ArgGroup::new("channel").required(true).args(["email", "webhook"])))]
    Add {
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        webhook: Option<String>,
        /// Comma-separated: `*`, `ENTITY.*` or an event's name.
        #[arg(long)]
        events: String,
    },
    /// Your subscriptions.
    List {
        /// Every account's (admins).
        #[arg(long)]
        all: bool,
    },
    /// End a subscription; what is pending for it is dropped.
    Remove { id: i64 },
    /// Turn a subscription disabled for failing on again.
    Enable { id: i64 },
    /// Send a test event to a subscription now.
    Test { id: i64 },
    /// The latest deliveries to your subscriptions, newest first.
    Deliveries {
        /// Every account's, the admin mail's included (admins).
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Queue the job FILE describes (TOML, or JSON if it ends in .json).
    Submit {
        file: PathBuf,
        /// Follow its log until it ends; exit 0 if it succeeded, 1 if not.
        #[arg(long)]
        wait: bool,
    },
    /// Your jobs, newest first.
    List {
        /// Everyone's (admins).
        #[arg(long)]
        all: bool,
        /// The most to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One job: its state, why it waits, its attempts.
    Show { id: u64 },
    /// A job's log (its latest attempt's unless --attempt).
    Logs {
        id: u64,
        /// Keep printing lines as they come, until the attempt ends.
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// The files an attempt kept of the job's `artifacts` (its latest
    /// attempt's unless --attempt).
    Files {
        id: u64,
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// One file an attempt kept, to standard output or --to FILE.
    File {
        id: u64,
        /// As `job files` lists it.
        path: String,
        #[arg(long)]
        attempt: Option<u32>,
        /// Write it here instead.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Cancel a job: one queued ends at once, one running is stopped.
    Cancel { id: u64 },
    /// Run a job template of the server's config against CLUSTER at
    /// VERSION (admins); `flotilla test` and `release` are its `test` and
    /// `release`.
    Run {
        template: String,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        wait: bool,
    },
    /// The job templates of the server's config (admins).
    Templates,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a local account; the password is read from standard input.
    Add {
        username: String,
        /// github_member, org_member or admin.
        #[arg(long, value_parser = cli::parse_level)]
        level: Level,
        /// A cluster the account may use besides its own (repeatable).
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// List accounts.
    List,
    /// Change an account's level.
    SetLevel {
        username: String,
        #[arg(value_parser = cli::parse_level)]
        level: Level,
    },
    /// Replace the clusters an account may use besides its own.
    SetGrants {
        username: String,
        clusters: Vec<String>,
    },
    /// Remove an account and every sign-in it has.
    Remove { username: String },
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// The JSON Schema of a pool on DRIVER (a driver's name in the server's
    /// config), or of a kind of shared config; without DRIVER, what each
    /// driver publishes.
    Show {
        driver: Option<String>,
        /// The schema of this kind of shared config (`images`) instead.
        #[arg(long, requires = "driver")]
        shared: Option<String>,
    },
}

#[derive(Subcommand)]
enum SharedConfigCommand {
    /// Create shared config NAME from FILE (TOML, or JSON if it ends in
    /// .json), following the published schema SCHEMA (DRIVER/KIND) for
    /// good. Admins only.
    Create {
        name: String,
        #[arg(long)]
        schema: String,
        file: std::path::PathBuf,
    },
    /// Write the next version of NAME from FILE: it must follow the
    /// config's schema. Pools naming it launch with it from now on.
    Update {
        name: String,
        file: std::path::PathBuf,
        /// Refuse unless the config is at this version now (as `show`
        /// said), so this edit cannot undo another's.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// A shared config, its latest version or VERSION.
    Show {
        name: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Every shared config.
    List,
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Create or change a pool from FILE (TOML, or JSON if it ends in
    /// .json): the fields of a `[pools.NAME]` table. Admins may; so may
    /// the owners a pool names. Every problem is reported at once and
    /// nothing is written.
    Apply {
        file: std::path::PathBuf,
        /// The pool's name (default: FILE's name without its extension).
        #[arg(long)]
        name: Option<String>,
        /// Check it and say what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless the pool is at this version now (as `pool show`
        /// said; 0: it does not exist), so this edit cannot undo another's.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// A pool in full: its fields, where it comes from, its clusters.
    Show { pool: String },
    /// Every pool (as `flotilla pools`).
    List,
    /// Retire a pool written through the API: refused while a cluster or
    /// an organisation uses it; its history is kept.
    Retire { pool: String },
    /// Every version of a pool written through the API.
    History { pool: String },
    /// The pool's rollout: its clusters' nodes made from an older version
    /// of its launch configuration, being replaced; paused or stopped.
    Rollout { pool: String },
    /// Pause the pool's rollout: replacements under way finish, no others
    /// start, outdated nodes keep serving (admins and the pool's owners).
    Pause { pool: String },
    /// Resume the pool's rollout, paused or stopped after failures.
    Resume { pool: String },
    /// Failed creates and destroys and nodes given up on (boot or probe
    /// timeout), latest first, each counted when it happened again; those
    /// of the clusters you may see.
    Errors {
        pool: String,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a commented config with every key at its default, to start
    /// from: `flotilla config init > flotilla.toml`.
    Init,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// List the keys that verify tokens: which one signs, and each one's age.
    List,
    /// Make a new key the signing key; tokens signed by older keys stay valid.
    Rotate,
    /// Delete an older key: every token it signed is refused from then on.
    Retire {
        /// Key ids are base64url and may start with '-'.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an organisation and its private cluster of the same name
    /// (admins).
    Create {
        name: String,
        /// An existing account to own it (repeatable).
        #[arg(long = "owner", required = true)]
        owners: Vec<String>,
        /// Pool of the organisation's cluster (the server's default if absent).
        #[arg(long)]
        pool: Option<String>,
    },
    /// List your organisations (admins: all of them).
    List,
    /// Show members, pending requests, settings, budget, forecast, the
    /// cluster's size and requests, and recent events.
    Show { org: String },
    /// Ask to join; an owner approves or refuses.
    Join { org: String },
    /// Approve a request to join (owners and admins).
    Approve { org: String, user: String },
    /// Refuse a request to join (owners and admins).
    Refuse { org: String, user: String },
    /// Remove a member and their capacity requests (owners and admins;
    /// members may remove themselves).
    Remove { org: String, user: String },
    /// Make a member an owner, or an owner a member (owners and admins).
    Role {
        org: String,
        user: String,
        #[arg(value_parser = ["owner", "member"])]
        role: String,
    },
    /// Change settings: owners the cluster's bounds and pool; admins also
    /// the node limit and the budget's terms. Amounts are in dollars.
    #[command(group(
        clap::ArgGroup::new("change")
            .required(true)
            .multiple(true)
            .args([
                "min_nodes",
                "max_nodes",
                "pool",
                "node_limit",
                "monthly_allowance",
                "max_balance",
                "shutdown_threshold",
                "min_runway",
            ])
    ))]
    Set {
        org: String,
        /// Nodes the cluster keeps with no request (0 lets it sleep).
        #[arg(long)]
        min_nodes: Option<i64>,
        /// Most nodes requests may add up to.
        #[arg(long)]
        max_nodes: Option<i64>,
        /// Pool of the organisation's cluster.
        #[arg(long)]
        pool: Option<String>,
        /// The most max_nodes may be (admins).
        #[arg(long)]
        node_limit: Option<i64>,
        /// Credited on the first of each month, UTC (admins).
        #[arg(long, value_parser = cli::parse_dollars)]
        monthly_allowance: Option<String>,
        /// The allowance tops the balance up to at most this (admins).
        #[arg(long, value_parser = cli::parse_dollars)]
        max_balance: Option<String>,
        /// At or below this balance the cluster is shut down (admins).
        #[arg(long, value_parser = cli::parse_dollars)]
        shutdown_threshold: Option<String>,
        /// How long a request must be able to pay for, e.g. 8h (admins).
        #[arg(long, value_parser = cli::parse_ttl)]
        min_runway: Option<Duration>,
    },
    /// Add money, or with a negative amount correct the balance (admins).
    Credit {
        org: String,
        /// Dollars, e.g. 25.00; negative (-3.50) for a correction.
        #[arg(allow_hyphen_values = true, value_parser = cli::parse_amount)]
        amount: String,
        /// Why; kept in the ledger.
        #[arg(long)]
        reason: String,
    },
    /// Every change of the balance, oldest first.
    Ledger { org: String },
    /// Costs by day, cluster and user.
    Costs {
        org: String,
        /// Print the server's CSV (day,cluster,user,amount) as it is.
        #[arg(long)]
        csv: bool,
    },
    /// Every node the organisation's cluster ran: launched, gone, charged.
    Usage { org: String },
}

/// A password from standard input: prompted without echo on a terminal,
/// else the first line.
fn read_password(what: &str) -> Result<String, cli::Failure> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{what}: "))
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    }
    .map_err(|e| {
        cli::Failure::new(
            exit::USAGE,
            format!("cannot read the {what} from standard input: {e}"),
        )
    })?;
    let password = password.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(cli::Failure::new(
            exit::USAGE,
            format!("no {what} on standard input"),
        ));
    }
    Ok(password)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config: config_path,
            listen,
            data_dir,
            check,
        } => {
            let config = config_path;
            if !check {
                init_tracing();
            }
            let mut config = match config::Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("flotilla serve: {e}");
                    return ExitCode::from(exit::USAGE);
                }
            };
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(d) = data_dir {
                config.data_dir = d;
            }
            // Taken out of the environment before any thread starts, so the
            // node processes this server spawns never see them.
            let admin_password = std::env::var("FLOTILLA_ADMIN_PASSWORD").ok();
            let database_url = std::env::var("FLOTILLA_DATABASE_URL").ok();
            // SAFETY: no other thread exists yet (the runtime starts below).
            unsafe {
                std::env::remove_var("FLOTILLA_ADMIN_PASSWORD");
                std::env::remove_var("FLOTILLA_DATABASE_URL");
            }
            if let Some(url) = database_url.filter(|u| !u.is_empty()) {
                match config::DatabaseUrl::new(url) {
                    Ok(url) => config.database_url = Some(url),
                    Err(e) => {
                        eprintln!("flotilla serve: FLOTILLA_DATABASE_URL: {e}");
                        return ExitCode::from(exit::USAGE);
                    }
                }
            }
            if check {
                for line in config.summary() {
                    println!("{line}");
                }
                println!(
                    "first admin: {}",
                    if admin_password.is_some() {
                        "FLOTILLA_ADMIN_PASSWORD is set (used if no admin exists)"
                    } else {
                        "FLOTILLA_ADMIN_PASSWORD is not set (the first start needs it)"
                    }
                );
                println!("the config is valid");
                return ExitCode::SUCCESS;
            }
            match runtime().block_on(serve::run(config, admin_password)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flotilla serve: {e:#}");
                    ExitCode::from(exit::FAILED)
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Init,
        } => {
            use std::io::Write;
            match std::io::stdout().write_all(config::TEMPLATE.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("flotilla config init: {e}");
                    ExitCode::from(exit::FAILED)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flotilla", &mut script);
            // A reader that stops early (`| head`) is no error.
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("flotilla completions: {e}");
                    ExitCode::from(exit::FAILED)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Command::Node {
            job: Some(job),
            attempt: Some(attempt),
            server: Some(server),
            ..
        } => {
            let Ok(token) = std::env::var("FLOTILLA_ATTEMPT_TOKEN") else {
                eprintln!("flotilla node --job: set FLOTILLA_ATTEMPT_TOKEN to the attempt's token");
                return ExitCode::from(exit::USAGE);
            };
            match node_runtime().block_on(job_agent::run(&server, job, attempt, token)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flotilla node --job {job}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Node {
            warm: true,
            server: Some(server),
            ..
        } => {
            let Ok(token) = std::env::var("FLOTILLA_WARM_TOKEN") else {
                eprintln!("flotilla node --warm: set FLOTILLA_WARM_TOKEN to the instance's token");
                return ExitCode::from(exit::USAGE);
            };
            match node_runtime().block_on(job_agent::run_warm(&server, &token)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flotilla node --warm: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Node { instance_dir, .. } => {
            let Some(instance_dir) = instance_dir else {
                eprintln!(
                    "flotilla node: give --instance-dir, or --job with --attempt and --server"
                );
                return ExitCode::from(exit::USAGE);
            };
            match node_runtime().block_on(flotilla_driver_local::agent::run(&instance_dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flotilla node: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Login {
            username,
            github_token,
        } => {
            let result = (|| {
                let env = Env::from_process();
                let source = match (username, github_token) {
                    (Some(username), _) => Source::Password {
                        password: read_password("password")?,
                        username,
                        origin: "--username".into(),
                    },
                    (None, Some(token)) => Source::Github(token),
                    // Otherwise what the environment or ~/.netrc holds.
                    (None, None) => crate::credentials::sign_in_source(&env, &cli.server)?,
                };
                let cache = env.token_cache()?;
                let client = Client::anonymous(&cli.server, cli.output)?;
                runtime().block_on(client.login(source, &cache))
            })();
            finish(result)
        }
        command => {
            // A client piped into `head` ends quietly when the reader goes,
            // as command-line tools do, instead of panicking on the write.
            // SAFETY: setting a signal's disposition to its default, before
            // any thread is started.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            let client = match Client::new(&cli.server, cli.output) {
                Ok(c) => c,
                Err(f) => {
                    eprintln!("flotilla: {}", f.message);
                    return ExitCode::from(f.code);
                }
            };
            let result = runtime().block_on(async {
                match command {
                    Command::Deploy {
                        cluster,
                        nodes,
                        ttl,
                        public,
                        pool,
                        wait,
                        workload,
                        port,
                    } => {
                        let request = DeployRequest {
                            node_capacity: nodes,
                            time_to_live: ttl.as_secs() as i64,
                            // Only what the user said: a resize keeps the
                            // cluster's visibility, pool and workload.
                            is_public: public.then_some(true),
                            pool,
                            workload: workload.map(|command| flotilla_api_types::WorkloadSpec {
                                command,
                                port,
                            }),
                        };
                        client.deploy(&cluster, request, wait).await
                    }
                    Command::Scale {
                        cluster,
                        nodes,
                        ttl,
                        cancel,
                        wait,
                    } => match (nodes, ttl) {
                        _ if cancel || nodes == Some(0) => client.withdraw(&cluster).await,
                        (Some(nodes), Some(ttl)) => {
                            let request = CapacityRequest {
                                nodes,
                                time_to_live: ttl.as_secs() as i64,
                            };
                            client.scale(&cluster, request, wait).await
                        }
                        _ => Err(cli::Failure::new(
                            cli::exit::USAGE,
                            "scale --nodes N needs --ttl (how long the request lasts, e.g. 2h); --cancel or --nodes 0 withdraws your requests",
                        )),
                    },
                    Command::Status { cluster, watch } => {
                        client.status(cluster.as_deref(), watch).await
                    }
                    Command::Pools => client.pools().await,
                    Command::Pool { command } => match command {
                        PoolCommand::Errors { pool, limit } => {
                            client.pool_errors(&pool, limit).await
                        }
                        PoolCommand::Apply {
                            file,
                            name,
                            dry_run,
                            expected_version,
                        } => match read_pool_file(&file, name) {
                            Ok((name, document)) => {
                                client
                                    .pool_apply(&name, &document, dry_run, expected_version)
                                    .await
                            }
                            Err(e) => Err(e),
                        },
                        PoolCommand::Show { pool } => client.pool_show(&pool).await,
                        PoolCommand::List => client.pools().await,
                        PoolCommand::Retire { pool } => client.pool_retire(&pool).await,
                        PoolCommand::History { pool } => client.pool_history(&pool).await,
                        PoolCommand::Rollout { pool } => client.pool_rollout(&pool, None).await,
                        PoolCommand::Pause { pool } => {
                            client.pool_rollout(&pool, Some("pause")).await
                        }
                        PoolCommand::Resume { pool } => {
                            client.pool_rollout(&pool, Some("resume")).await
                        }
                    },
                    Command::Schema {
                        command: SchemaCommand::Show { driver, shared },
                    } => client.schema_show(driver.as_deref(), shared.as_deref()).await,
                    Command::SharedConfig { command } => match command {
                        SharedConfigCommand::Create { name, schema, file } => {
                            match read_document(&file) {
                                Ok(value) => client.shared_write(&name, Some(schema), value, None).await,
                                Err(e) => Err(e),
                            }
                        }
                        SharedConfigCommand::Update {
                            name,
                            file,
                            expected_version,
                        } => match read_document(&file) {
                            Ok(value) => client.shared_write(&name, None, value, expected_version).await,
                            Err(e) => Err(e),
                        },
                        SharedConfigCommand::Show { name, version } => {
                            client.shared_show(&name, version).await
                        }
                        SharedConfigCommand::List => client.shared_list().await,
                    },
                    Command::Events {
                        cluster,
                        after,
                        follow,
                    } => client.events(cluster.as_deref(), after, follow).await,
                    Command::Extend { cluster, ttl } => {
                        let request = ExtendRequest {
                            time_to_live: ttl.as_secs() as i64,
                        };
                        client.extend(&cluster, request).await
                    }
                    Command::Destroy { cluster, wait } => client.destroy(&cluster, wait).await,
                    Command::Logs {
                        cluster,
                        node,
                        follow,
                    } => client.logs(&cluster, node.as_deref(), follow).await,
                    Command::Ssh {
                        cluster,
                        node,
                        args,
                    } => client.ssh(&cluster, node.as_deref(), &args).await,
                    Command::SshConfig { cluster } => client.ssh_config(&cluster).await,
                    Command::Exec {
                        cluster,
                        node,
                        timeout,
                        command,
                    } => {
                        let request = flotilla_api_types::ExecRequest {
                            command,
                            node,
                            timeout: Some(timeout.as_secs().max(1)),
                        };
                        client.exec(&cluster, request).await
                    }
                    Command::Logout => client.logout(&Env::from_process().token_cache()?).await,
                    Command::Whoami => client.whoami().await,
                    Command::Version => client.version().await,
                    Command::Doctor => client.doctor().await,
                    Command::Token { cluster } => client.cluster_token(&cluster).await,
                    Command::User { command } => match command {
                        UserCommand::Add {
                            username,
                            level,
                            grants,
                        } => {
                            let password = read_password("password")?;
                            client
                                .user_add(CreateUserRequest {
                                    username,
                                    password,
                                    level,
                                    grants,
                                })
                                .await
                        }
                        UserCommand::List => client.user_list().await,
                        UserCommand::SetLevel { username, level } => {
                            client
                                .user_update(
                                    &username,
                                    UpdateUserRequest {
                                        level: Some(level),
                                        grants: None,
                                    },
                                )
                                .await
                        }
                        UserCommand::SetGrants { username, clusters } => {
                            client
                                .user_update(
                                    &username,
                                    UpdateUserRequest {
                                        level: None,
                                        grants: Some(clusters),
                                    },
                                )
                                .await
                        }
                        UserCommand::Remove { username } => client.user_remove(&username).await,
                    },
                    Command::Key { command } => match command {
                        KeyCommand::List => client.key_list().await,
                        KeyCommand::Rotate => client.key_rotate().await,
                        KeyCommand::Retire { kid } => client.key_retire(&kid).await,
                    },
                    Command::Job { command } => match command {
                        JobCommand::Submit { file, wait } => client.job_submit(&file, wait).await,
                        JobCommand::List { all, limit } => client.job_list(all, limit).await,
                        JobCommand::Show { id } => client.job_show(id).await,
                        JobCommand::Logs {
                            id,
                            follow,
                            attempt,
                        } => client.job_logs(id, attempt, follow).await.map(|_| exit::OK),
                        JobCommand::Files { id, attempt } => client.job_files(id, attempt).await,
                        JobCommand::File {
                            id,
                            path,
                            attempt,
                            to,
                        } => client.job_file(id, &path, attempt, to.as_deref()).await,
                        JobCommand::Cancel { id } => client.job_cancel(id).await,
                        JobCommand::Run {
                            template,
                            cluster,
                            version,
                            wait,
                        } => client.job_run(&template, cluster, version, wait).await,
                        JobCommand::Templates => client.job_templates().await,
                    },
                    Command::Test {
                        cluster,
                        version,
                        wait,
                    } => client.job_run("test", cluster, version, wait).await,
                    Command::Notify { command } => match command {
                        NotifyCommand::Add {
                            email,
                            webhook,
                            events,
                        } => {
                            client
                                .notify_add(SubscriptionRequest {
                                    email,
                                    webhook,
                                    events,
                                })
                                .await
                        }
                        NotifyCommand::List { all } => client.notify_list(all).await,
                        NotifyCommand::Remove { id } => client.notify_remove(id).await,
                        NotifyCommand::Enable { id } => client.notify_enable(id).await,
                        NotifyCommand::Test { id } => client.notify_test(id).await,
                        NotifyCommand::Deliveries { all, limit } => {
                            client.notify_deliveries(all, limit).await
                        }
                    },
                    Command::Schedule { command } => match command {
                        ScheduleCommand::Create {
                            name,
                            cron,
                            template,
                            cluster,
                            version,
                            missed,
                        } => {
                            client
                                .schedule_create(ScheduleRequest {
                                    name,
                                    cron,
                                    template,
                                    cluster,
                                    version,
                                    missed: Some(missed),
                                })
                                .await
                        }
                        ScheduleCommand::List => client.schedule_list().await,
                        ScheduleCommand::Show { name } => client.schedule_show(&name).await,
                        ScheduleCommand::Pause { name } => {
                            client.schedule_pause(&name, true).await
                        }
                        ScheduleCommand::Resume { name } => {
                            client.schedule_pause(&name, false).await
                        }
                        ScheduleCommand::Delete { name } => client.schedule_delete(&name).await,
                    },
                    Command::Release {
                        cluster,
                        version,
                        wait,
                    } => client.job_run("release", cluster, version, wait).await,
                    Command::Org { command } => match command {
                        OrgCommand::Create { name, owners, pool } => {
                            client
                                .org_create(CreateOrgRequest { name, owners, pool })
                                .await
                        }
                        OrgCommand::List => client.org_list().await,
                        OrgCommand::Show { org } => client.org_show(&org).await,
                        OrgCommand::Join { org } => client.org_join(&org).await,
                        OrgCommand::Approve { org, user } => {
                            client.org_decide(&org, &user, true).await
                        }
                        OrgCommand::Refuse { org, user } => {
                            client.org_decide(&org, &user, false).await
                        }
                        OrgCommand::Remove { org, user } => client.org_remove(&org, &user).await,
                        OrgCommand::Role { org, user, role } => {
                            client.org_role(&org, &user, role).await
                        }
                        OrgCommand::Set {
                            org,
                            min_nodes,
                            max_nodes,
                            pool,
                            node_limit,
                            monthly_allowance,
                            max_balance,
                            shutdown_threshold,
                            min_runway,
                        } => {
                            let request = UpdateOrgRequest {
                                min_nodes,
                                max_nodes,
                                pool,
                                node_limit,
                                monthly_allowance,
                                max_balance,
                                shutdown_threshold,
                                min_runway: min_runway.map(|d| d.as_secs() as i64),
                            };
                            client.org_set(&org, request).await
                        }
                        OrgCommand::Credit {
                            org,
                            amount,
                            reason,
                        } => {
                            client
                                .org_credit(&org, CreditRequest { amount, reason })
                                .await
                        }
                        OrgCommand::Ledger { org } => client.org_ledger(&org).await,
                        OrgCommand::Costs { org, csv } => client.org_costs(&org, csv).await,
                        OrgCommand::Usage { org } => client.org_usage(&org).await,
                    },
                    Command::Serve { .. }
                    | Command::Node { .. }
                    | Command::Login { .. }
                    | Command::Config { .. }
                    | Command::Completions { .. } => {
                        unreachable!("handled above")
                    }
                }
            });
            finish(result)
        }
    }
}

fn finish(result: Result<u8, cli::Failure>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("flotilla: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// A pool file: its name (`name`, or the file's name without extension)
/// and its document (TOML, or JSON for a `.json` file).
fn read_pool_file(
    file: &std::path::Path,
    name: Option<String>,
) -> Result<(String, serde_json::Value), cli::Failure> {
    let name = match name {
        Some(n) => n,
        None => file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                cli::Failure::new(
                    cli::exit::USAGE,
                    format!("{}: give the pool's name with --name", file.display()),
                )
            })?,
    };
    Ok((name, read_document(file)?))
}

/// A document from `file`: JSON if it ends in `.json`, else TOML.
fn read_document(file: &std::path::Path) -> Result<serde_json::Value, cli::Failure> {
    let usage = |m: String| cli::Failure::new(cli::exit::USAGE, m);
    let text = std::fs::read_to_string(file)
        .map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
    if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .map_err(|e| usage(format!("{} is not JSON: {e}", file.display())))
    } else {
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            usage(format!(
                "{} is not TOML: {}",
                file.display(),
                e.to_string().trim_end()
            ))
        })?;
        serde_json::to_value(table).map_err(|e| usage(format!("{}: {e}", file.display())))
    }
}

/// What a node agent runs on, in either mode: its log on stderr (the
/// instance's node.log, which the local driver opens as this process's
/// stderr) and a current-thread runtime (see the local agent's `Workload`).
fn node_runtime() -> tokio::runtime::Runtime {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, KeyCommand, OrgCommand};

    /// Key ids are base64url thumbprints, and one in 64 starts with '-'.
    #[test]
    fn a_key_id_starting_with_a_hyphen_is_an_argument() {
        let cli = Cli::try_parse_from(["flotilla", "key", "retire", "-Zk3_9"]).unwrap();
        match cli.command {
            Command::Key {
                command: KeyCommand::Retire { kid },
            } => assert_eq!(kid, "-Zk3_9"),
            _ => panic!("parsed as another command"),
        }
    }

    fn org(args: &[&str]) -> Result<OrgCommand, clap::Error> {
        let cli = Cli::try_parse_from(["flotilla", "org"].iter().chain(args))?;
        match cli.command {
            Command::Org { command } => Ok(command),
            _ => panic!("parsed as another command"),
        }
    }

    #[test]
    fn a_negative_credit_is_an_amount_not_an_option() {
        match org(&["credit", "team", "-3.50", "--reason", "refund"]).unwrap() {
            OrgCommand::Credit {
                org,
                amount,
                reason,
            } => {
                assert_eq!((org.as_str(), amount.as_str()), ("team", "-3.50"));
                assert_eq!(reason, "refund");
            }
            _ => panic!("parsed as another command"),
        }
        match org(&["credit", "team", "$25", "--reason", "grant"]).unwrap() {
            OrgCommand::Credit { amount, .. } => assert_eq!(amount, "25"),
            _ => panic!("parsed as another command"),
        }
        let err = org(&["credit", "team", "lots", "--reason", "x"])
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(
            org(&["credit", "team", "25"]).is_err(),
            "a reason is required"
        );
    }

    #[test]
    fn org_set_needs_something_to_set() {
        let err = org(&["set", "team"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
        match org(&[
            "set",
            "team",
            "--max-nodes",
            "4",
            "--monthly-allowance",
            "100",
            "--min-runway",
            "2h",
        ])
        .unwrap()
        {
            OrgCommand::Set {
                max_nodes,
                monthly_allowance,
                min_runway,
                min_nodes,
                ..
            } => {
                assert_eq!(max_nodes, Some(4));
                assert_eq!(min_nodes, None);
                assert_eq!(monthly_allowance.as_deref(), Some("100"));
                assert_eq!(min_runway, Some(std::time::Duration::from_secs(7200)));
            }
            _ => panic!("parsed as another command"),
        }
        let err = org(&["set", "team", "--max-balance", "-5"]).err().unwrap();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn org_create_needs_an_owner_and_roles_are_owner_or_member() {
        assert!(org(&["create", "team"]).is_err());
        match org(&["create", "team", "--owner", "alice", "--owner", "bob"]).unwrap() {
            OrgCommand::Create { owners, pool, .. } => {
                assert_eq!(owners, ["alice", "bob"]);
                assert_eq!(pool, None);
            }
            _ => panic!("parsed as another command"),
        }
        assert!(org(&["role", "team", "bob", "owner"]).is_ok());
        assert!(org(&["role", "team", "bob", "boss"]).is_err());
    }

    #[test]
    fn scale_takes_nodes_and_a_duration() {
        let cli = Cli::try_parse_from([
            "flotilla", "scale", "team", "--nodes", "3", "--ttl", "10m", "--wait",
        ])
        .unwrap();
        match cli.command {
            Command::Scale {
                cluster,
                nodes,
                ttl,
                cancel,
                wait,
            } => {
                assert_eq!(
                    (cluster.as_str(), nodes, wait, cancel),
                    ("team", Some(3), true, false)
                );
                assert_eq!(ttl, Some(std::time::Duration::from_secs(600)));
            }
            _ => panic!("parsed as another command"),
        }
        assert!(Cli::try_parse_from(["flotilla", "scale", "team"]).is_err());
        let cancel = Cli::try_parse_from(["flotilla", "scale", "team", "--cancel"]).unwrap();
        assert!(matches!(
            cancel.command,
            Command::Scale { cancel: true, .. }
        ));
        assert!(
            Cli::try_parse_from(["flotilla", "scale", "team", "--cancel", "--nodes", "2"]).is_err()
        );
    }
}
