//! The `flotilla` binary: server, command-line client and node agent.

mod cli;
mod config;
mod credentials;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_api_types::DeployRequest;

use crate::cli::{exit, Client, Output};

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Provision named clusters of compute nodes and keep them converged"
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
    Serve {
        /// TOML config file; embedded defaults without one.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Directory for state (overrides the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Deploy a cluster, or change the node count of a running one.
    Deploy {
        cluster: String,
        /// Number of nodes.
        #[arg(long)]
        nodes: i64,
        /// Time to live: the cluster is destroyed this long after the
        /// (latest) deploy. E.g. 90s, 30m, 2h.
        #[arg(long, value_parser = cli::parse_ttl)]
        ttl: Duration,
        /// Make the cluster public (cannot change once deployed).
        #[arg(long)]
        public: bool,
        /// Pool to build nodes from (the server's default if absent).
        #[arg(long)]
        pool: Option<String>,
        /// Wait until all nodes are ready (or the server's max_wait passes).
        #[arg(long)]
        wait: bool,
    },
    /// Show one cluster, or all.
    Status { cluster: Option<String> },
    /// Destroy a cluster.
    Destroy {
        cluster: String,
        /// Wait until every node is gone.
        #[arg(long)]
        wait: bool,
    },
    /// Run a node agent (what the `local` driver starts for each node).
    Node {
        /// The node's instance directory, as written by the local driver.
        #[arg(long)]
        instance_dir: PathBuf,
    },
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
            config,
            listen,
            data_dir,
        } => {
            init_tracing();
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
            match runtime().block_on(serve::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flotilla serve: {e:#}");
                    ExitCode::from(exit::FAILED)
                }
            }
        }
        Command::Node { instance_dir } => {
            // Goes to the instance's node.log, which the local driver opens
            // as this process's stderr.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(flotilla_driver_local::agent::run(&instance_dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flotilla node: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        command => {
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
                    } => {
                        let request = DeployRequest {
                            node_capacity: nodes,
                            time_to_live: ttl.as_secs() as i64,
                            is_public: public,
                            pool,
                        };
                        client.deploy(&cluster, request, wait).await
                    }
                    Command::Status { cluster } => client.status(cluster.as_deref()).await,
                    Command::Destroy { cluster, wait } => client.destroy(&cluster, wait).await,
                    Command::Serve { .. } | Command::Node { .. } => unreachable!("handled above"),
                }
            });
            match result {
                Ok(code) => ExitCode::from(code),
                Err(f) => {
                    eprintln!("flotilla: {}", f.message);
                    ExitCode::from(f.code)
                }
            }
        }
    }
}
