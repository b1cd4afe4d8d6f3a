//! `atoll up`, `atoll head`, `atoll agent` and `atoll reset`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use cluster::Cluster;
use cluster::model::OPERATOR;
use tokio::signal::unix::{SignalKind, signal};

use crate::instance::Instance;

/// The Docker API over TLS, for tenants (and operators) with certificates.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// Serve the Docker API over TLS on ADDR:PORT (`none`: do not; port 0: any
    /// free port, written to `<data>/head/docker-tls.addr`).
    #[arg(long, default_value = "127.0.0.1:2376")]
    pub tls_listen: String,
    /// More names or addresses clients use to reach the API (repeat); the
    /// certificate always has localhost, 127.0.0.1 and this host's name.
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
}

/// How the head reaches registries.
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// The head's configuration file (`registry-mirrors`,
    /// `insecure-registries`, `registry-certs`, as in dockerd's daemon.json);
    /// default /etc/atoll/config.json, when it exists.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Registries' CAs and client certificates, in Docker's layout:
    /// DIR/<host[:port]>/ with `*.crt` (CAs), `client.cert` and `client.key`
    /// [default: /etc/atoll/certs.d].
    #[arg(long)]
    pub registry_certs: Option<PathBuf>,
    /// A registry that may be spoken to in plain HTTP when it does not speak
    /// TLS: HOST, HOST:PORT or a CIDR (repeat; loopback ones always may).
    #[arg(long = "insecure-registry", value_name = "REGISTRY")]
    pub insecure_registries: Vec<String>,
    /// A Docker Hub mirror, https://HOST[:PORT] (repeat; tried in order,
    /// after the configuration file's, before Docker Hub).
    #[arg(long = "registry-mirror", value_name = "URL")]
    pub registry_mirrors: Vec<String>,
    /// A network a build's `ADD <url>` may download from besides the public
    /// internet, as a CIDR (repeat; loopback and private networks are out
    /// of reach unless listed, link-local ones always).
    #[arg(long = "build-url-allow", value_name = "CIDR")]
    pub build_url_allow: Vec<String>,
}

impl RegistryArgs {
    /// The registry client: the configuration file, then the flags.
    fn client(&self) -> Result<images::registry::RegistryClient> {
        let (path, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(crate::config::DEFAULT_PATH), false),
        };
        let file = crate::config::HeadConfig::load(&path, explicit)?;
        let mirrors = file
            .registry_mirrors
            .iter()
            .chain(&self.registry_mirrors)
            .map(|m| m.parse().map_err(anyhow::Error::from))
            .collect::<Result<Vec<images::registry::Mirror>>>()
            .with_context(|| format!("registry mirrors (from {} and flags)", path.display()))?;
        let mut insecure = file.insecure_registries;
        insecure.extend(self.insecure_registries.iter().cloned());
        let certs = self
            .registry_certs
            .clone()
            .or(file.registry_certs)
            .unwrap_or_else(|| PathBuf::from(images::transport::DEFAULT_CERTS_DIR));
        let mut url_allow = file.build_url_allow;
        url_allow.extend(self.build_url_allow.iter().cloned());
        images::registry::RegistryClient::new(insecure)
            .with_certs_dir(certs)
            .with_mirrors(mirrors)
            .with_url_allow(url_allow)
            .with_context(|| format!("build-url-allow (from {} and flags)", path.display()))
    }
}

/// What a head process runs beside the head itself.
pub struct HeadOptions {
    pub data_dir: PathBuf,
    pub docker_socket: PathBuf,
    pub tls: TlsArgs,
    pub registries: RegistryArgs,
    /// The cluster port (`ADDR:PORT`): agents join and the head's operator API is
    /// served there over TLS. `atoll up --nodes` puts it on the underlay bridge.
    pub cluster_listen: Option<String>,
    /// Servers: one agent in this process (`atoll up`), a simulated datacenter
    /// of N agent processes (`atoll up --nodes N`), or none (`atoll head`:
    /// servers join over the network).
    pub servers: Servers,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Servers {
    Local,
    Simulated(usize),
    Remote,
}

/// Runs the head and its servers until SIGTERM/SIGINT. Containers keep running
/// when it stops: their shims are separate processes.
pub async fn run(o: HeadOptions) -> Result<()> {
    if let Servers::Simulated(n) = o.servers {
        if n > crate::nodes::MAX_NODES {
            anyhow::bail!(
                "--nodes: at most {} simulated servers",
                crate::nodes::MAX_NODES
            );
        }
        if o.cluster_listen.is_some() {
            // Its servers reach the head on the underlay bridge, where the
            // cluster port is then put.
            anyhow::bail!("--cluster-listen cannot be combined with --nodes");
        }
    }
    let inst = Instance::open(&o.data_dir)?;
    let exe = std::env::current_exe().context("locating the atoll binary")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };

    // The head: store, CA, and the certificate it shows agents (reissued at
    // every start, so it never expires under a running cluster).
    std::fs::create_dir_all(inst.head_dir())?;
    let store = store::SqliteStore::open(&inst.head_dir().join("atoll.db"))
        .await
        .map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
    let dc_name = format!("atoll-{}", inst.id);
    let cluster = Cluster::new(
        Arc::new(store),
        &inst.head_dir(),
        &dc_name,
        o.registries.client()?,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    cluster
        .seed_packages()
        .await
        .map_err(|e| anyhow::anyhow!("writing the sample packages: {e}"))?;
    let ca = Arc::new(
        pki::Ca::load_or_create(&inst.head_dir().join("pki"), &dc_name)
            .context("opening the cluster CA")?,
    );
    let head_creds = ca
        .issue_with_key(pki::Role::Head, "head", &[pki::HEAD_NAME.to_string()])
        .context("issuing the head's certificate")?;
    cluster.set_agent_tls(pki::client_config(&head_creds).context("the head's TLS")?);
    cluster
        .resume_servers()
        .await
        .map_err(|e| anyhow::anyhow!("following the known servers: {e}"))?;
    let operator_app = operator_api::router(cluster.clone(), ca.clone());

    // The simulated datacenter's underlay decides where the cluster port is.
    let mut simulated = None;
    let mut cluster_listen = o.cluster_listen.clone();
    if let Servers::Simulated(n) = o.servers {
        let servers = crate::nodes::setup(&inst, n)
            .await
            .context("setting up the simulated datacenter")?;
        cluster_listen.get_or_insert(servers.head_address.clone());
        // The simulated datacenter owns its public network: the operator's
        // range is kept while it fits the bridge's subnet.
        let kept = cluster.public_network().await?;
        if kept
            .as_ref()
            .is_none_or(|p| p.subnet != servers.public.subnet)
            && let Err(e) = cluster
                .set_public_network(Some(servers.public.clone()))
                .await
        {
            tracing::warn!("setting the public network: {e}");
        }
        simulated = Some(servers);
    }
    let mut cluster_task = None;
    if let Some(addr) = &cluster_listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (the cluster port)"))?;
        let app = operator_app.clone();
        let shutdown = stopped(stop_rx.clone());
        cluster_task = Some(tokio::spawn(async move {
            operator_api::serve_tls(tcp, &head_creds, app, shutdown).await
        }));
        tracing::info!("cluster port (agents join, remote operators) on {addr}");
    }

    // The servers.
    let mut agent_task = None;
    let mut supervised = None;
    match (o.servers, simulated) {
        (Servers::Local, _) => {
            let agent_sock = inst.agent_socket();
            let listener = agent_client::serve::bind_unix(&agent_sock)
                .with_context(|| format!("binding {}", agent_sock.display()))?;
            let agent = start_agent(&inst, exe, None, None, Default::default()).await?;
            agent_task = Some(tokio::spawn(agent::serve(
                listener,
                agent,
                stopped(stop_rx.clone()),
            )));
            cluster
                .add_node("local", &format!("unix://{}", agent_sock.display()))
                .await
                .map_err(|e| anyhow::anyhow!("registering the local agent: {e}"))?;
        }
        (Servers::Simulated(_), Some(mut servers)) => {
            let join = crate::nodes::Joiner {
                cluster: cluster.clone(),
                ca: ca.clone(),
                head: cluster_listen.clone().unwrap_or_default(),
            };
            for n in &mut servers.nodes {
                n.spawn(&exe, &join).await?;
            }
            crate::nodes::wait_up(&cluster, &servers.nodes).await?;
            let nodes = Arc::new(std::sync::Mutex::new(servers.nodes));
            tokio::spawn(crate::nodes::supervise(
                nodes.clone(),
                exe.clone(),
                join,
                stop_rx.clone(),
            ));
            supervised = Some(nodes);
        }
        _ => {}
    }

    let tls_task =
        match serve_docker_tls(&inst, &o.tls, &ca, &cluster, stopped(stop_rx.clone())).await? {
            Some(t) => t,
            None => tokio::spawn(std::future::pending()),
        };
    let operator_task = tokio::spawn({
        let sock = inst.operator_socket();
        let shutdown = stopped(stop_rx.clone());
        async move { operator_api::serve_unix(&sock, operator_app, shutdown).await }
    });
    let head_task = tokio::spawn({
        let sock = o.docker_socket.clone();
        let shutdown = stopped(stop_rx.clone());
        async move { docker_api::serve_unix(&sock, cluster, OPERATOR, shutdown).await }
    });
    tracing::info!(
        "atoll is up: export DOCKER_HOST=unix://{}",
        o.docker_socket.display()
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let ended = |what: &'static str| {
        move |r: Result<std::io::Result<()>, tokio::task::JoinError>| -> Result<()> {
            r??;
            anyhow::bail!("the {what} stopped")
        }
    };
    let cluster_port = async {
        match cluster_task {
            Some(t) => t.await,
            None => std::future::pending().await,
        }
    };
    let res = tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
        r = head_task => ended("Docker API server")(r),
        r = operator_task => ended("operator API server")(r),
        r = cluster_port => ended("cluster port")(r),
        r = tls_task => ended("Docker API TLS server")(r),
    };
    tracing::info!("stopping (containers keep running)");
    let _ = stop_tx.send(true);
    if let Some(t) = agent_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
    }
    if let Some(nodes) = supervised {
        let mut nodes = nodes.lock().unwrap_or_else(|p| p.into_inner());
        for n in nodes.iter_mut() {
            n.stop();
        }
    }
    res
}

type ServeTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Starts the Docker API over TLS, if asked: a certificate for the names
/// clients use (issued at every start), the port written where tests and
/// scripts find it.
async fn serve_docker_tls(
    inst: &Instance,
    tls: &TlsArgs,
    ca: &pki::Ca,
    cluster: &Arc<Cluster>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<ServeTask>> {
    if tls.tls_listen == "none" {
        return Ok(None);
    }
    let tcp = tokio::net::TcpListener::bind(&tls.tls_listen)
        .await
        .with_context(|| format!("--tls-listen {}", tls.tls_listen))?;
    let local = tcp.local_addr()?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = nix::unistd::gethostname() {
        names.push(h.to_string_lossy().into_owned());
    }
    if !local.ip().is_unspecified() {
        names.push(local.ip().to_string());
    }
    names.extend(tls.tls_sans.iter().cloned());
    names.sort();
    names.dedup();
    let creds = ca
        .issue_with_key(pki::Role::Head, "docker-api", &names)
        .context("issuing the Docker API's certificate")?;
    let addr_file = inst.head_dir().join("docker-tls.addr");
    std::fs::write(&addr_file, local.to_string())
        .with_context(|| format!("writing {}", addr_file.display()))?;
    tracing::info!("Docker API over TLS on {local} (client certificates: atoll account cert)");
    let cluster = cluster.clone();
    Ok(Some(tokio::spawn(async move {
        docker_api::serve_tls(tcp, cluster, &creds, shutdown).await
    })))
}

/// How `atoll agent` finds its head and names its server.
pub struct AgentOptions {
    pub data_dir: PathBuf,
    pub listen: String,
    pub head: Option<String>,
    pub token: Option<String>,
    pub name: Option<String>,
    pub advertise: Option<String>,
    pub public_interface: Option<String>,
    /// Networks no container reaches through this server.
    pub protect: Vec<net::Ipv4Net>,
    /// Protected destinations containers may reach anyway.
    pub reach: Vec<net::Ipv4Net>,
}

/// `atoll agent`: one server's agent, serving until SIGTERM/SIGINT. On TCP it
/// serves only the head, over mutual TLS; it joins first if it has no certificate.
pub async fn agent(o: AgentOptions) -> Result<()> {
    // The address first: a bad one must not leave a half-started server behind.
    enum Listener {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let listener = if let Some(addr) = o.listen.strip_prefix("tcp://") {
        if o.head.is_none() {
            anyhow::bail!(
                "--listen tcp://… needs --head: an agent on the network serves only its head, over TLS"
            );
        }
        Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?,
        )
    } else if let Some(path) = o.listen.strip_prefix("unix://") {
        Listener::Unix(
            agent_client::serve::bind_unix(Path::new(path))
                .with_context(|| format!("binding {path}"))?,
        )
    } else {
        anyhow::bail!(
            "--listen: expected tcp://ADDR:PORT or unix:///PATH, got {}",
            o.listen
        );
    };
    let inst = Instance::open(&o.data_dir)?;
    enum Serving {
        Tls(agent_client::serve::TlsListener),
        Unix(tokio::net::UnixListener),
    }
    let serving = match listener {
        Listener::Tcp(l) => {
            let head = o.head.as_deref().unwrap_or_default();
            let creds = agent_credentials(&inst, &o, &l, head).await?;
            // Only the head: another agent's or a tenant's certificate is refused.
            Serving::Tls(agent_client::serve::TlsListener::with_credentials(
                l,
                &creds,
                pki::ClientAuth::Required,
                |cert| {
                    cert.and_then(pki::identify)
                        .is_some_and(|id| id.role == pki::Role::Head)
                },
            )?)
        }
        Listener::Unix(l) => Serving::Unix(l),
    };
    let exe = std::env::current_exe().context("locating the atoll binary")?;
    let vtep = underlay_address(&o);
    if vtep.is_none() {
        tracing::info!(
            "no underlay address (a loopback or wildcard --listen without --advertise): this server's networks stay on it (no VXLAN)"
        );
    }
    let mut protected = o.protect.clone();
    // The head: whatever addresses its name has.
    if let Some(head) = &o.head
        && let Ok(addrs) = tokio::net::lookup_host(head.as_str()).await
    {
        for a in addrs {
            if let std::net::IpAddr::V4(v4) = a.ip() {
                protected.push(net::Ipv4Net::new(v4, 32)?);
            }
        }
    }
    let agent = start_agent(
        &inst,
        exe,
        vtep,
        o.public_interface.clone(),
        (protected, o.reach.clone()),
    )
    .await?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.changed().await;
    };
    let task = match serving {
        Serving::Tls(l) => tokio::spawn(agent::serve(l, agent, shutdown)),
        Serving::Unix(l) => tokio::spawn(agent::serve(l, agent, shutdown)),
    };
    tracing::info!("agent of {} is up on {}", inst.data_dir.display(), o.listen);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        r = task => { r??; anyhow::bail!("the agent API server stopped"); }
    }
    let _ = stop_tx.send(true);
    Ok(())
}

/// Where an agent keeps its certificate, key and the cluster CA.
pub fn agent_pki_dir(inst: &Instance) -> PathBuf {
    inst.agent_dir().join("pki")
}

/// The agent's credentials: those it has, or new ones from joining with `--token`.
async fn agent_credentials(
    inst: &Instance,
    o: &AgentOptions,
    listener: &tokio::net::TcpListener,
    head: &str,
) -> Result<pki::Credentials> {
    let dir = agent_pki_dir(inst);
    if let Some(c) = pki::Credentials::load(&dir)? {
        let id = c.identity()?;
        if let Some(name) = &o.name
            && *name != id.name
        {
            anyhow::bail!(
                "this server joined as {} (its certificate says so), not {name}",
                id.name
            );
        }
        return Ok(c);
    }
    let Some(token) = o.token.as_deref() else {
        anyhow::bail!(
            "this server has not joined yet: pass --token (from `atoll server token` on the head)"
        );
    };
    let name = match &o.name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()?.to_string_lossy().to_lowercase(),
    };
    let address = match &o.advertise {
        Some(a) => a.clone(),
        None => {
            let local = listener.local_addr()?;
            if local.ip().is_unspecified() {
                anyhow::bail!(
                    "--listen on every address needs --advertise tcp://ADDR:PORT (where the head reaches this server)"
                );
            }
            format!("tcp://{local}")
        }
    };
    let creds = agent_client::join::join(head, token, &name, &address)
        .await
        .with_context(|| format!("joining the datacenter at {head}"))?;
    creds
        .save(&dir)
        .with_context(|| format!("saving the certificate in {}", dir.display()))?;
    tracing::info!("joined the datacenter at {head} as {name}");
    Ok(creds)
}

/// The agent of the server whose instance is `inst` (adopting what still runs).
async fn start_agent(
    inst: &Instance,
    exe: PathBuf,
    vtep: Option<std::net::Ipv4Addr>,
    public_interface: Option<String>,
    (protected, reachable): (Vec<net::Ipv4Net>, Vec<net::Ipv4Net>),
) -> Result<Arc<agent::Agent>> {
    agent::Agent::start(agent::AgentConfig {
        dir: inst.agent_dir(),
        instance: inst.id.clone(),
        exe,
        vtep,
        public_interface,
        protected,
        reachable,
    })
    .await
    .context("starting the agent")
}

/// Where other servers send this server's VXLAN traffic: the address the
/// head reaches it at (`--advertise`, else `--listen`), unless that is a
/// wildcard or loopback (servers on one host's loopback share one network
/// namespace and cannot tunnel to each other).
fn underlay_address(o: &AgentOptions) -> Option<std::net::Ipv4Addr> {
    let addr = o.advertise.as_deref().unwrap_or(&o.listen);
    let hostport = addr.strip_prefix("tcp://")?;
    let ip: std::net::Ipv4Addr = hostport.rsplit_once(':')?.0.parse().ok()?;
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// Stops and removes everything the instance of `data_dir` created.
pub async fn reset(data_dir: &Path) -> Result<()> {
    if !data_dir.exists() {
        return Ok(());
    }
    let inst = Instance::open(data_dir)?;
    let exe = std::env::current_exe().context("locating the atoll binary")?;
    crate::nodes::reset(&inst, &exe)
        .await
        .context("removing the simulated servers")?;
    agent::reset(&inst.agent_dir(), &inst.id)
        .await
        .context("removing containers and network")?;
    std::fs::remove_dir_all(&inst.data_dir)
        .with_context(|| format!("removing {}", inst.data_dir.display()))?;
    Ok(())
}
