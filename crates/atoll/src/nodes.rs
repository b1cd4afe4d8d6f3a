//! `atoll up --nodes N`: a simulated datacenter on one machine. Every server is an
//! `atoll agent` process in its own network namespace, with its own underlay
//! address (a veth on the instance's underlay bridge), data dir and layer cache.
//! Each joins with a one-time token and is then reached over mutual TLS, exactly
//! as a remote machine (`atoll agent --head …`); the head's cluster port is on
//! the bridge's address.
//!
//! Layout: `<data>/nodes/node-<i>/` is server i's data dir (its own instance id,
//! hence its own cgroup, bridge and nft names), `<data>/nodes/node-<i>.netns` its
//! pinned network namespace; the underlay bridge is `au<inst>` on the host, the
//! host side of server i's veth `au<inst>n<i>`.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use net::{Ipv4Net, LinkOps, NetnsOps, RealNetns, RtLinks, VethSpec};

use crate::instance::Instance;

/// The port every simulated server's agent listens on, at its underlay address.
pub const AGENT_PORT: u16 = 7070;

/// Server i's address is `.10+i` of the underlay /24.
pub const MAX_NODES: usize = 200;

pub fn nodes_dir(inst: &Instance) -> PathBuf {
    inst.data_dir.join("nodes")
}

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

fn bridge_name(inst: &Instance) -> String {
    format!("au{}", inst.id)
}

fn veth_name(inst: &Instance, i: usize) -> String {
    format!("au{}n{i}", inst.id)
}

/// The datacenter's public network: a bridge on the host (holding the
/// public gateway's address, so the host is "the world") that every server
/// joins through its `pub0`.
fn public_bridge_name(inst: &Instance) -> String {
    format!("ap{}", inst.id)
}

fn public_veth_name(inst: &Instance, i: usize) -> String {
    format!("ap{}n{i}", inst.id)
}

/// A simulated server's interface on the public network.
pub const PUBLIC_INTERFACE: &str = "pub0";

fn netns_path(inst: &Instance, i: usize) -> PathBuf {
    nodes_dir(inst).join(format!("{}.netns", node_name(i)))
}

/// One simulated server: where the head reaches it and its agent process.
pub struct Node {
    pub name: String,
    pub address: String,
    data_dir: PathBuf,
    netns: PathBuf,
    child: Option<Child>,
}

/// The port of the head's cluster port on the underlay bridge.
pub const HEAD_PORT: u16 = 7071;

/// The simulated servers, and where they reach the head.
pub struct Underlay {
    /// `ADDR:PORT` of the head's cluster port (the bridge's address).
    pub head_address: String,
    pub nodes: Vec<Node>,
    /// The public network the servers are on.
    pub public: cluster::public::PublicNetwork,
}

/// A bridge of the host with `gateway/prefix` of a subnet picked for `key`:
/// the one it has (restarts keep it), else a free one.
async fn host_bridge(links: &RtLinks, name: &str, key: &str) -> Result<(Ipv4Net, Ipv4Addr)> {
    let subnet = match links.link_ipv4(name).await? {
        Some(addrs) if !addrs.is_empty() => Ipv4Net::new(addrs[0].0, addrs[0].1)?,
        _ => {
            let used = links.host_ipv4_nets().await?;
            net::names::pick_subnet(key, &used)?
        }
    };
    let gateway = subnet.host(1).context("bridge address")?;
    let mut mac = net::names::bridge_mac(name);
    mac[5] ^= 0x55;
    links
        .ensure_bridge(name, mac, gateway, subnet.prefix())
        .await
        .with_context(|| format!("creating bridge {name}"))?;
    Ok((subnet, gateway))
}

/// The underlay (bridge + one namespace and veth per server), created or found.
pub async fn setup(inst: &Instance, count: usize) -> Result<Underlay> {
    let links = RtLinks::new().context("opening netlink")?;
    let bridge = bridge_name(inst);
    let (subnet, gateway) = host_bridge(&links, &bridge, &format!("u{}", inst.id)).await?;
    let public_bridge = public_bridge_name(inst);
    let (public_subnet, public_gateway) =
        host_bridge(&links, &public_bridge, &format!("p{}", inst.id)).await?;
    let mut nodes = Vec::new();
    for i in 1..=count {
        let ip = subnet.host(10 + i as u32).context("underlay address")?;
        let ns = netns_path(inst, i);
        RealNetns
            .create(&ns, None)
            .context("creating a server's namespace")?;
        let spec = VethSpec {
            host: veth_name(inst, i),
            alias: format!("{}-{}", inst.id, node_name(i)),
            bridge: bridge.clone(),
            netns: ns.clone(),
            ip,
            prefix: subnet.prefix(),
            mac: node_mac(inst, i),
            gateway,
        };
        match links.veth_state(&spec).await? {
            net::VethState::Complete => {}
            net::VethState::Absent => links.create_veth(&spec).await?,
            _ => {
                links.delete_link(&spec.host).await?;
                links.create_veth(&spec).await?;
            }
        }
        let mut mac = node_mac(inst, i);
        mac[1] ^= 0x01;
        links
            .ensure_port(
                &public_veth_name(inst, i),
                &public_bridge,
                &ns,
                PUBLIC_INTERFACE,
                mac,
            )
            .await
            .context("joining a server to the public network")?;
        nodes.push(Node {
            name: node_name(i),
            address: format!("tcp://{ip}:{AGENT_PORT}"),
            data_dir: nodes_dir(inst).join(node_name(i)),
            netns: ns,
            child: None,
        });
    }
    Ok(Underlay {
        head_address: format!("{gateway}:{HEAD_PORT}"),
        nodes,
        public: cluster::public::PublicNetwork {
            subnet: public_subnet.to_string(),
            gateway: public_gateway,
            range: public_subnet.to_string(),
        },
    })
}

fn node_mac(inst: &Instance, i: usize) -> [u8; 6] {
    let h = net::names::fnv1a(format!("{}-{i}", inst.id).as_bytes());
    let b = h.to_be_bytes();
    [0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// What servers need to join: the head's cluster port and fresh tokens.
#[derive(Clone)]
pub struct Joiner {
    pub cluster: Arc<cluster::Cluster>,
    pub ca: Arc<pki::Ca>,
    /// `ADDR:PORT` of the head's cluster port.
    pub head: String,
}

impl Joiner {
    /// A one-time token for `node`, if it has not joined yet (no certificate).
    async fn token_for(&self, data_dir: &Path) -> Result<Option<String>> {
        let dir = crate::up::agent_pki_dir(&Instance::open(data_dir)?);
        if pki::Credentials::load(&dir)?.is_some() {
            return Ok(None);
        }
        let token = pki::JoinToken::generate(self.ca.fingerprint());
        self.cluster
            .add_join_token(&token.secret_hash(), Duration::from_secs(600))
            .await
            .map_err(|e| anyhow::anyhow!("making a join token: {e}"))?;
        Ok(Some(token.to_string()))
    }
}

impl Node {
    /// Starts (or restarts) the server's agent inside its namespace, joining
    /// the datacenter first if it never did.
    pub async fn spawn(&mut self, exe: &Path, join: &Joiner) -> Result<()> {
        let token = join.token_for(&self.data_dir).await?;
        self.spawn_with(exe, &join.head, token)
    }

    fn spawn_with(&mut self, exe: &Path, head: &str, token: Option<String>) -> Result<()> {
        std::fs::create_dir_all(&self.data_dir)?;
        let ns = std::fs::File::open(&self.netns)
            .with_context(|| format!("opening {}", self.netns.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("agent.log"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("agent")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.address)
            .arg("--head")
            .arg(head)
            .arg("--name")
            .arg(&self.name)
            .arg("--public-interface")
            .arg(PUBLIC_INTERFACE)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(t) = token {
            // In the environment, not argv: argv is world-readable in /proc.
            cmd.env("ATOLL_JOIN_TOKEN", t);
        }
        let fd = ns.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls: setns and
        // prctl on the child itself; `ns` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A simulated server goes when the datacenter (`atoll up`) goes;
                // its containers do not (their shims are not its children).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().context("starting a server's agent")?);
        Ok(())
    }

    /// Reaps the agent if it ended; whether it is gone.
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How long servers have to start, join and answer the head.
const COME_UP_WITHIN: Duration = Duration::from_secs(30);

/// Waits until the head follows every server's agent.
pub async fn wait_up(cluster: &Arc<cluster::Cluster>, nodes: &[Node]) -> Result<()> {
    let deadline = std::time::Instant::now() + COME_UP_WITHIN;
    for n in nodes {
        while cluster.server_down(&n.name) {
            if std::time::Instant::now() > deadline {
                bail!(
                    "server {} did not come up (see {})",
                    n.name,
                    n.data_dir.join("agent.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// How long a dead server stays down before its agent is started again: long
/// enough for the head (and a test) to see it down, as after a real reboot.
const RESTART_AFTER: Duration = Duration::from_secs(3);

/// Restarts agents that died (a crashed or killed server comes back after
/// [`RESTART_AFTER`]), until `stop` is set.
pub async fn supervise(
    nodes: Arc<std::sync::Mutex<Vec<Node>>>,
    exe: PathBuf,
    join: Joiner,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut dead_since: std::collections::HashMap<String, std::time::Instant> = Default::default();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let mut due = Vec::new();
        {
            let mut ns = nodes.lock().unwrap_or_else(|p| p.into_inner());
            for (i, n) in ns.iter_mut().enumerate() {
                if !n.exited() {
                    continue;
                }
                let since = *dead_since.entry(n.name.clone()).or_insert_with(|| {
                    tracing::warn!("server {}: its agent ended", n.name);
                    std::time::Instant::now()
                });
                if since.elapsed() >= RESTART_AFTER {
                    dead_since.remove(&n.name);
                    due.push(i);
                }
            }
        }
        for i in due {
            // A token (if it never joined) outside the lock: it takes the store.
            let (name, dir) = {
                let ns = nodes.lock().unwrap_or_else(|p| p.into_inner());
                (ns[i].name.clone(), ns[i].data_dir.clone())
            };
            tracing::warn!("server {name}: starting its agent again");
            let token = join.token_for(&dir).await;
            let mut ns = nodes.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = token.and_then(|t| ns[i].spawn_with(&exe, &join.head, t)) {
                tracing::warn!("server {name}: {e:#}");
            }
        }
    }
}

/// Removes what `setup` made and every server's containers (each reset inside
/// its own namespace, where its devices and rules live).
pub async fn reset(inst: &Instance, exe: &Path) -> Result<()> {
    let dir = nodes_dir(inst);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut indexes = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(i) = name
            .strip_prefix("node-")
            .filter(|r| !r.contains('.'))
            .and_then(|r| r.parse::<usize>().ok())
        {
            indexes.push(i);
        }
    }
    for &i in &indexes {
        let ns = netns_path(inst, i);
        let data = dir.join(node_name(i));
        if let Ok(f) = std::fs::File::open(&ns) {
            let fd = f.as_raw_fd();
            let mut cmd = Command::new(exe);
            cmd.arg("reset").arg("--data-dir").arg(&data);
            // SAFETY: setns only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let st = cmd.status().context("resetting a server")?;
            if !st.success() {
                tracing::warn!("resetting server {i} failed ({st})");
            }
        }
        RealNetns.remove(&ns)?;
    }
    let links = RtLinks::new()?;
    for &i in &indexes {
        let _ = links.delete_link(&veth_name(inst, i)).await;
        let _ = links.delete_link(&public_veth_name(inst, i)).await;
    }
    let _ = links.delete_link(&bridge_name(inst)).await;
    let _ = links.delete_link(&public_bridge_name(inst)).await;
    Ok(())
}
