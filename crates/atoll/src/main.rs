//! The single `atoll` binary: `up` (head + local agent), `head`, `agent`, `shim`,
//! `reset`. Wiring only; the logic lives in the crates.

mod accounts;
mod config;
mod instance;
mod nodes;
mod operator;
mod up;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "atoll",
    version,
    about = "A whole datacenter as one Docker host"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a head and one local agent in the foreground (the embedded default).
    Up {
        #[arg(long, default_value = "/var/lib/atoll")]
        data_dir: PathBuf,
        #[arg(long, default_value = "/run/atoll/docker.sock")]
        docker_socket: PathBuf,
        /// Simulate a datacenter of N servers, each agent in its own network
        /// namespace on an underlay bridge (0: one agent in this process).
        #[arg(long, default_value_t = 0)]
        nodes: usize,
        /// Also open the cluster port (ADDR:PORT) for servers joining over the
        /// network and remote operators (with --nodes: on the underlay bridge).
        #[arg(long)]
        cluster_listen: Option<String>,
        #[command(flatten)]
        tls: up::TlsArgs,
        #[command(flatten)]
        registries: up::RegistryArgs,
    },
    /// Run a head alone: servers join it with `atoll agent --head` over the network.
    Head {
        #[arg(long, default_value = "/var/lib/atoll")]
        data_dir: PathBuf,
        #[arg(long, default_value = "/run/atoll/docker.sock")]
        docker_socket: PathBuf,
        /// The cluster port (ADDR:PORT): agents join here and the head reaches
        /// them back over mutual TLS; operators with a certificate connect here.
        #[arg(long, default_value = "0.0.0.0:7071")]
        cluster_listen: String,
        #[command(flatten)]
        tls: up::TlsArgs,
        #[command(flatten)]
        registries: up::RegistryArgs,
    },
    /// Run one server's agent in the foreground.
    Agent {
        #[arg(long, default_value = "/var/lib/atoll")]
        data_dir: PathBuf,
        /// Where the head reaches it: tcp://ADDR:PORT (mutual TLS, needs --head)
        /// or unix:///PATH.
        #[arg(long)]
        listen: String,
        /// The head's cluster port, ADDR:PORT.
        #[arg(long)]
        head: Option<String>,
        /// A one-time join token from `atoll server token` (first start only).
        #[arg(long, env = "ATOLL_JOIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The server's name in the datacenter (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// tcp://ADDR:PORT where the head reaches this agent, if not --listen's.
        #[arg(long)]
        advertise: Option<String>,
        /// The interface on the datacenter's public network, where this server
        /// answers for the public addresses of its containers.
        #[arg(long)]
        public_interface: Option<String>,
        /// A network no container may reach through this server (the
        /// datacenter's servers, its admin network), CIDR; repeatable. The
        /// head's address, the underlay's network and 169.254.0.0/16 are
        /// always protected.
        #[arg(long = "protect", value_name = "CIDR")]
        protect: Vec<net::Ipv4Net>,
        /// A destination containers may reach although it is protected (a
        /// resolver or proxy on the admin network), CIDR; repeatable.
        #[arg(long = "reach", value_name = "CIDR")]
        reach: Vec<net::Ipv4Net>,
    },
    /// Stop everything an instance created (containers, mounts, network devices)
    /// and remove its state.
    Reset {
        #[arg(long, default_value = "/var/lib/atoll")]
        data_dir: PathBuf,
    },
    /// Servers of the datacenter: list, drain, enable, forget (operator).
    Server {
        #[command(flatten)]
        target: operator::Target,
        #[command(subcommand)]
        cmd: operator::ServerCmd,
    },
    /// Packages that size containers: list, create, update, rm (operator).
    Package {
        #[command(flatten)]
        target: operator::Target,
        #[command(subcommand)]
        cmd: operator::PackageCmd,
    },
    /// Show or set how new containers are placed: spread (default) or pack (operator).
    Placement {
        #[command(flatten)]
        target: operator::Target,
        /// spread: fewest of the account's containers first; pack: fullest server that fits.
        #[arg(long)]
        strategy: Option<String>,
        /// Host ports no container may publish on a server's addresses, as
        /// 22,8000-8100 (`none`: only atoll's own, always reserved).
        #[arg(long, value_name = "RANGES")]
        reserved_ports: Option<String>,
    },
    /// Show or set the datacenter's public network, where containers that
    /// publish ports get their own address (operator).
    Network {
        #[command(flatten)]
        target: operator::Target,
        #[command(subcommand)]
        cmd: operator::NetworkCmd,
    },
    /// Write an operator certificate (ca.pem, cert.pem, key.pem) for operator
    /// commands from another machine (`--head ADDR:PORT --cert-dir DIR`).
    Cert {
        #[command(flatten)]
        target: operator::Target,
        /// Who it is for (shown in the head's log).
        #[arg(long)]
        name: String,
        /// The directory to write it to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Tenant accounts and their certificates: ls, create, disable, enable,
    /// limit, rm, cert, certs, revoke (operator).
    Account {
        #[command(flatten)]
        target: operator::Target,
        #[command(subcommand)]
        cmd: accounts::AccountCmd,
    },
    /// Where containers run, every account (operator).
    Container {
        #[command(flatten)]
        target: operator::Target,
        #[command(subcommand)]
        cmd: operator::ContainerCmd,
    },
}

fn main() -> std::process::ExitCode {
    // The shim is dispatched before anything else runs (no clap, no tokio): it is
    // single-threaded and must stay tiny, one per container.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("shim") {
        let code = match agent::shim::ShimArgs::parse(&argv[2..]) {
            Ok(a) => agent::shim::shim_main(a),
            Err(e) => {
                eprintln!("atoll shim: {e}");
                2
            }
        };
        return std::process::ExitCode::from(code as u8);
    }
    let cli = Cli::parse();
    raise_nofile();
    if matches!(cli.cmd, Cmd::Up { .. } | Cmd::Agent { .. }) {
        // Before any thread exists: the zygote forks every shim (see agent::zygote).
        if let Err(e) = agent::zygote::start() {
            eprintln!("atoll: no shim zygote ({e}); shims will be exec'd");
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ATOLL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("atoll: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res: Result<()> = rt.block_on(async {
        match cli.cmd {
            Cmd::Up {
                data_dir,
                docker_socket,
                nodes,
                cluster_listen,
                tls,
                registries,
            } => {
                up::run(up::HeadOptions {
                    data_dir,
                    docker_socket,
                    cluster_listen,
                    tls,
                    registries,
                    servers: if nodes == 0 {
                        up::Servers::Local
                    } else {
                        up::Servers::Simulated(nodes)
                    },
                })
                .await
            }
            Cmd::Head {
                data_dir,
                docker_socket,
                cluster_listen,
                tls,
                registries,
            } => {
                up::run(up::HeadOptions {
                    data_dir,
                    docker_socket,
                    cluster_listen: Some(cluster_listen),
                    tls,
                    registries,
                    servers: up::Servers::Remote,
                })
                .await
            }
            Cmd::Agent {
                data_dir,
                listen,
                head,
                token,
                name,
                advertise,
                public_interface,
                protect,
                reach,
            } => {
                up::agent(up::AgentOptions {
                    data_dir,
                    listen,
                    head,
                    token,
                    name,
                    advertise,
                    public_interface,
                    protect,
                    reach,
                })
                .await
            }
            Cmd::Reset { data_dir } => up::reset(&data_dir).await,
            Cmd::Server { target, cmd } => operator::server(&target, cmd).await,
            Cmd::Package { target, cmd } => operator::package(&target, cmd).await,
            Cmd::Container { target, cmd } => operator::container(&target, cmd).await,
            Cmd::Placement {
                target,
                strategy,
                reserved_ports,
            } => operator::placement(&target, strategy, reserved_ports).await,
            Cmd::Network { target, cmd } => operator::network(&target, cmd).await,
            Cmd::Cert { target, name, out } => operator::cert(&target, &name, &out).await,
            Cmd::Account { target, cmd } => accounts::account(&target, cmd).await,
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atoll: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises our open-file limit as far as the host lets us: the agent holds many
/// connections, and containers inherit what runc can grant from it.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const WANT: u64 = 1 << 20;
    if setrlimit(Resource::RLIMIT_NOFILE, WANT, WANT).is_err()
        && let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
