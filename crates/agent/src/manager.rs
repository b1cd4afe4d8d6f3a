//! The agent's container manager: turns head instructions into runc containers
//! through shims, tracks their state, and reports changes on an event stream.
//! Instructions are idempotent and carry a generation; state survives an agent
//! restart because shims outlive the agent and are re-adopted on start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use agent_client::{AgentInfo, ContainerSpec, ContainerStatus, RunState};
use chrono::{SecondsFormat, Utc};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{Mutex, broadcast, watch};

use crate::bundle::{ContainerPaths, write_bundle};
use crate::error::AgentError;
use crate::layers::LayerCache;
use crate::rootfs::{Mounter, RealMounter};
use crate::runc::{Runc, Runtime};
use crate::shim::{ShimArgs, spawn_shim};

pub struct AgentConfig {
    /// The agent's own directory (layers, containers, runc state, netns files).
    pub dir: PathBuf,
    /// Short instance id: prefix of every host-wide name.
    pub instance: String,
    /// The atoll binary, re-executed as `atoll shim`.
    pub exe: PathBuf,
    /// The server's underlay address (its VXLAN endpoint); None: networks
    /// stay on this server.
    pub vtep: Option<std::net::Ipv4Addr>,
    /// The server's interface on the datacenter's public network: where
    /// containers' public addresses are answered for. None: containers with
    /// public addresses cannot run here.
    pub public_interface: Option<String>,
    /// Networks no container reaches through this server (other servers,
    /// heads); see `net::NodeNetConfig::protected`.
    pub protected: Vec<net::Ipv4Net>,
    /// Destinations opened by the operator despite `protected`.
    pub reachable: Vec<net::Ipv4Net>,
}

/// Where an attach client waits for the container's next start.
pub struct PendingAttach {
    pub stream: hyper::upgrade::Upgraded,
    pub header: String,
}

/// One container as the agent knows it.
pub(crate) struct Ctr {
    /// Serialises start/stop/remove.
    pub(crate) op: Arc<Mutex<()>>,
    /// Held while a finished run's host resources (netns, veth, mount) are torn
    /// down; the exit is reported before that, so callers are not kept waiting.
    pub(crate) cleanup: Arc<Mutex<()>>,
    pub(crate) spec: StdMutex<ContainerSpec>,
    pub(crate) status: StdMutex<ContainerStatus>,
    /// Bumped on every exit, so stop can wait for "the" exit.
    pub(crate) exits: watch::Sender<u64>,
    pending: StdMutex<Vec<PendingAttach>>,
    /// Frozen by `pause`; signals reach it only after a thaw.
    pub(crate) paused: AtomicBool,
}

pub struct Agent {
    pub(crate) cfg: AgentConfig,
    pub(crate) layers: LayerCache,
    pub(crate) net: net::ServerNet,
    pub(crate) runc: Runc,
    pub(crate) mounter: RealMounter,
    /// Disk limits of writable layers (btrfs quotas, or none).
    quota: Box<dyn crate::quota::DiskQuota>,
    /// Disk limits of volumes (the same, where the volumes are).
    pub(crate) volume_quota: Box<dyn crate::quota::DiskQuota>,
    containers_dir: PathBuf,
    ctrs: StdMutex<HashMap<String, Arc<Ctr>>>,
    events: broadcast::Sender<ContainerStatus>,
    cgroup_parent: String,
    /// The overlay maps' names, for the containers' resolvers.
    pub(crate) names: crate::dns::Names,
    /// Each networked container's resolver task.
    pub(crate) resolvers: StdMutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

/// A spec's networks as the server wires them.
pub(crate) fn attachments(spec: &ContainerSpec) -> Result<Vec<net::Attachment>, net::NetError> {
    spec.networks.iter().map(attachment).collect()
}

pub(crate) fn attachment(e: &agent_client::Endpoint) -> Result<net::Attachment, net::NetError> {
    Ok(net::Attachment {
        vni: e.vni,
        subnet: e.subnet.parse()?,
        gateway: e.gateway,
        ip: e.ip,
        mac: net::names::parse_mac(&e.mac)?,
        internal: e.internal,
    })
}

/// A spec's public address as the server routes it.
fn public_ip(spec: &ContainerSpec) -> Result<Option<net::PublicIp>, net::NetError> {
    spec.public
        .as_ref()
        .map(|p| {
            Ok(net::PublicIp {
                ip: p.ip,
                subnet: p.subnet.parse()?,
                gateway: p.gateway,
            })
        })
        .transpose()
}

/// Where a container's resolver forwards what it cannot answer.
fn resolver_upstreams(spec: &ContainerSpec) -> Vec<std::net::SocketAddr> {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    crate::dns::upstreams(&spec.dns, &host)
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn stopped(id: &str, generation: u64) -> ContainerStatus {
    ContainerStatus {
        id: id.to_string(),
        generation,
        state: RunState::Stopped,
        pid: 0,
        started_at: None,
        finished_at: None,
        exit_code: None,
        oom_killed: false,
        error: None,
        health: None,
    }
}

#[derive(serde::Deserialize)]
struct ExitInfo {
    exit_code: i32,
    #[serde(default)]
    oom_killed: bool,
    #[serde(default)]
    finished_at: Option<String>,
}

impl Agent {
    pub async fn start(cfg: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        std::fs::create_dir_all(&cfg.dir)?;
        crate::error::hide_paths_under(&cfg.dir);
        let containers_dir = cfg.dir.join("containers");
        std::fs::create_dir_all(&containers_dir)?;
        std::fs::create_dir_all(cfg.dir.join("volumes"))?;
        for d in [&cfg.dir, &containers_dir, &cfg.dir.join("volumes")] {
            crate::userns::allow_search(d)?;
        }
        let quota = crate::quota::for_dir(&containers_dir)?;
        if !quota.enforced() {
            tracing::info!(
                "packages' disk sizes are not enforced: {} is not on btrfs",
                containers_dir.display()
            );
        }
        let volume_quota = crate::quota::for_dir(&cfg.dir.join("volumes"))?;
        let closed = crate::userns::unsearchable_ancestors(&containers_dir);
        if !closed.is_empty() {
            tracing::warn!(
                "tenants' containers will not start: their root (a user namespace) cannot reach {} through {closed:?}; allow others to search these directories (chmod o+x)",
                containers_dir.display()
            );
        }
        let layers = LayerCache::open(&cfg.dir.join("layers"))?;
        // `atoll reset` undoes the public interface's routes and entries.
        let marker = cfg.dir.join(crate::reset::PUBLIC_INTERFACE_FILE);
        match &cfg.public_interface {
            Some(iface) => std::fs::write(&marker, iface)?,
            None => {
                let _ = std::fs::remove_file(&marker);
            }
        }
        let net = net::ServerNet::setup(
            net::NodeNetConfig {
                instance: cfg.instance.clone(),
                netns_dir: cfg.dir.join("netns"),
                subnet: None,
                protected: cfg.protected.clone(),
                underlay: cfg.vtep,
                reachable: cfg.reachable.clone(),
            },
            cfg.vtep,
            match &cfg.public_interface {
                Some(iface) => Some(net::PublicSide::new(
                    iface.clone(),
                    Box::new(net::RtPublic::new(Box::new(net::ProcSysctl))?),
                )),
                None => None,
            },
        )
        .await?;
        let runc = Runc::new(PathBuf::from("runc"), cfg.dir.join("runc"));
        let (events, _) = broadcast::channel(1024);
        let agent = Arc::new(Agent {
            cgroup_parent: format!("atoll-{}", cfg.instance),
            cfg,
            layers,
            net,
            runc,
            mounter: RealMounter,
            quota,
            volume_quota,
            containers_dir,
            ctrs: StdMutex::new(HashMap::new()),
            events,
            names: Default::default(),
            resolvers: Default::default(),
        });
        agent.adopt().await;
        agent.net.collect_unused().await;
        // Segments nobody uses linger a little, then go.
        let weak = Arc::downgrade(&agent);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(a) = weak.upgrade() else { return };
                a.net.collect_idle(net::server::LINGER).await;
            }
        });
        Ok(agent)
    }

    pub fn info(&self) -> AgentInfo {
        let uts = nix::sys::utsname::uname().ok();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        AgentInfo {
            hostname: uts
                .as_ref()
                .map(|u| u.nodename().to_string_lossy().into_owned())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: mem_kb * 1024,
            kernel_version: uts
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            operating_system: "linux".into(),
            cgroup_version: if Path::new("/sys/fs/cgroup/memory").is_dir() {
                "1".into()
            } else {
                "2".into()
            },
            runtime: "runc".into(),
            vtep: self.net.vtep(),
            public: self.cfg.public_interface.is_some(),
            disk_bytes: nix::sys::statvfs::statvfs(&self.cfg.dir)
                .map(|s| s.blocks() * s.fragment_size())
                .unwrap_or(0),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ContainerStatus> {
        self.events.subscribe()
    }

    pub(crate) fn ctr(&self, id: &str) -> Option<Arc<Ctr>> {
        self.ctrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub(crate) fn ctr_or_insert(&self, spec: &ContainerSpec) -> Arc<Ctr> {
        let mut m = self.ctrs.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(spec.id.clone())
            .or_insert_with(|| {
                Arc::new(Ctr {
                    op: Arc::new(Mutex::new(())),
                    cleanup: Arc::new(Mutex::new(())),
                    spec: StdMutex::new(spec.clone()),
                    status: StdMutex::new(stopped(&spec.id, spec.generation)),
                    exits: watch::channel(0).0,
                    pending: StdMutex::new(Vec::new()),
                    paused: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// The overlay lower dirs of a spec's layers, top first; Conflict if one
    /// is not in the cache.
    pub(crate) fn lowers(&self, spec: &ContainerSpec) -> Result<Vec<PathBuf>, AgentError> {
        let mut lowers = Vec::new();
        for l in spec.layers.iter().rev() {
            let d = images::Digest::parse(&l.diff_id)?;
            if !self.layers.has(&d) {
                return Err(AgentError::Conflict(format!(
                    "layer {} is missing",
                    l.diff_id
                )));
            }
            lowers.push(self.layers.path(&d));
        }
        Ok(lowers)
    }

    /// The container's writable area (made with its disk limit the first
    /// time), upper, work and rootfs dirs.
    pub(crate) fn prepare_rw(&self, paths: &ContainerPaths, disk: u64) -> Result<(), AgentError> {
        std::fs::create_dir_all(&paths.root)?;
        if !paths.rw.exists() {
            self.quota.create_limited(&paths.rw, disk)?;
        }
        for d in [&paths.upper, &paths.work, &paths.rootfs] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// `<agent>/volumes`: one directory per volume id.
    pub(crate) fn volumes_dir(&self) -> PathBuf {
        self.cfg.dir.join("volumes")
    }

    pub(crate) fn paths(&self, id: &str) -> ContainerPaths {
        ContainerPaths::new(&self.containers_dir, id)
    }

    pub fn list(&self) -> Vec<ContainerStatus> {
        self.ctrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| c.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    pub(crate) fn set_status(&self, ctr: &Ctr, st: ContainerStatus) {
        *ctr.status.lock().unwrap_or_else(|p| p.into_inner()) = st.clone();
        let _ = self.events.send(st);
    }

    /// Re-adopts containers whose shims survived an agent restart; records the
    /// exits of those that ended meanwhile (after the running ones claimed
    /// their networks' segments, so that a cleanup never takes a segment a
    /// running container is on).
    async fn adopt(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(&self.containers_dir) else {
            return;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let paths = self.paths(&id);
            let Ok(bytes) = std::fs::read(paths.root.join("spec.json")) else {
                continue;
            };
            let Ok(spec) = serde_json::from_slice::<ContainerSpec>(&bytes) else {
                continue;
            };
            let ctr = self.ctr_or_insert(&spec);
            match shim_pid(&paths).await {
                Some(pid) => {
                    let started = std::fs::read_to_string(paths.root.join("started_at")).ok();
                    let mut st = stopped(&id, spec.generation);
                    st.state = RunState::Running;
                    st.pid = pid;
                    st.started_at = started;
                    st.health = spec.health.as_ref().map(|_| crate::health::starting());
                    self.set_status(&ctr, st);
                    match attachments(&spec) {
                        Ok(nets) => self.net.adopt(&id, &nets).await,
                        Err(e) => tracing::warn!("networks of {id}: {e}"),
                    }
                    if !spec.networks.is_empty()
                        && let Err(e) = self.start_resolver(
                            &id,
                            &self.net.netns_path(&id),
                            resolver_upstreams(&spec),
                        )
                    {
                        tracing::warn!("the resolver of {id}: {e}");
                    }
                    self.spawn_health(ctr.clone(), &spec);
                    self.spawn_waiter(ctr.clone(), spec.clone());
                    tracing::info!("re-adopted running container {id}");
                }
                None => {
                    let mut st = stopped(&id, spec.generation);
                    if let Some(exit) = read_exit(&paths) {
                        st.exit_code = Some(exit.exit_code);
                        st.oom_killed = exit.oom_killed;
                        st.finished_at = exit.finished_at;
                    }
                    self.cleanup_run(&spec).await;
                    self.set_status(&ctr, st);
                }
            }
        }
    }

    /// Starts the container described by `spec` (idempotent for a running one).
    pub async fn start_container(
        self: &Arc<Self>,
        spec: ContainerSpec,
    ) -> Result<ContainerStatus, AgentError> {
        let ctr = self.ctr_or_insert(&spec);
        let _op = ctr.op.lock().await;
        // A previous run may still be releasing its network and mount.
        drop(ctr.cleanup.lock().await);
        {
            let st = ctr.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if st.state == RunState::Running {
                return Ok(st);
            }
        }
        *ctr.spec.lock().unwrap_or_else(|p| p.into_inner()) = spec.clone();
        let paths = self.paths(&spec.id);
        std::fs::create_dir_all(&paths.root)?;
        crate::userns::make_private(&paths.root, spec.userns.as_ref())?;
        // Execs of an earlier run died with it.
        let _ = std::fs::remove_dir_all(crate::exec::exec_root(&paths));
        std::fs::write(
            paths.root.join("spec.json"),
            serde_json::to_vec(&spec).map_err(|e| AgentError::Internal(e.to_string()))?,
        )?;
        let _ = std::fs::remove_file(&paths.exit_file);

        let lowers = self.lowers(&spec)?;
        if let Err(e) = self.prepare_and_run(&ctr, &spec, &paths, &lowers).await {
            self.cleanup_run(&spec).await;
            // Waiting attach clients are told (by closing) that this start failed,
            // as Docker closes the streams of a container that fails to start.
            ctr.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            return Err(e);
        }
        let started_at = now();
        let _ = std::fs::write(paths.root.join("started_at"), &started_at);
        let pid = shim_pid(&paths).await.unwrap_or(0);
        let mut st = stopped(&spec.id, spec.generation);
        st.state = RunState::Running;
        st.pid = pid;
        st.started_at = Some(started_at);
        st.health = spec.health.as_ref().map(|_| crate::health::starting());
        self.set_status(&ctr, st.clone());
        self.spawn_health(ctr.clone(), &spec);
        self.spawn_waiter(ctr.clone(), spec);
        Ok(st)
    }

    async fn prepare_and_run(
        self: &Arc<Self>,
        ctr: &Ctr,
        spec: &ContainerSpec,
        paths: &ContainerPaths,
        lowers: &[PathBuf],
    ) -> Result<(), AgentError> {
        self.prepare_rw(paths, spec.resources.disk)?;
        if !self.mounter.is_mounted(&paths.rootfs) {
            self.mounter
                .mount_overlay(
                    lowers,
                    &paths.upper,
                    &paths.work,
                    &paths.rootfs,
                    spec.userns.as_ref(),
                )
                .map_err(|e| AgentError::Internal(e.to_string()))?;
        }
        if spec.public.is_none() && !spec.ports.is_empty() {
            // On the server's own addresses: never over a port it serves.
            let listening = crate::ports::Listening::read();
            if let Some(p) = spec
                .ports
                .iter()
                .find(|p| listening.taken(&p.proto, p.host_port))
            {
                return Err(AgentError::Conflict(format!(
                    "cannot publish port {}/{}: the server listens on port {} itself",
                    p.container_port, p.proto, p.host_port
                )));
            }
        }
        let netns = if spec.networks.is_empty() {
            None
        } else {
            let ports: Vec<net::PortMapping> = spec
                .ports
                .iter()
                .map(|p| net::PortMapping {
                    proto: p.proto.clone(),
                    container_port: p.container_port,
                    host_ip: p.host_ip.clone(),
                    host_port: p.host_port,
                })
                .collect();
            Some(
                self.net
                    .attach(
                        &spec.id,
                        spec.userns.as_ref().map(crate::userns::owner),
                        &attachments(spec)?,
                        &ports,
                        public_ip(spec)?.as_ref(),
                    )
                    .await?,
            )
        };
        if let Some(ns) = &netns {
            // Bound before the process starts: its first lookup must find it.
            self.start_resolver(&spec.id, ns, resolver_upstreams(spec))
                .map_err(|e| AgentError::Internal(format!("starting the resolver: {e}")))?;
        }
        let spec = &crate::volumes::prepare_volumes(
            spec,
            &self.volumes_dir(),
            &paths.rootfs,
            &*self.volume_quota,
        )?;
        write_bundle(spec, paths, netns.as_deref(), &self.cgroup_parent)
            .map_err(|e| AgentError::Runtime(e.to_string()))?;
        let args = ShimArgs {
            id: spec.id.clone(),
            bundle: paths.bundle.clone(),
            state_dir: paths.root.clone(),
            runc_root: self.runc.root().to_path_buf(),
            runc_binary: PathBuf::from("runc"),
            tty: spec.process.tty,
            open_stdin: spec.process.open_stdin,
            log_max_size: spec.log_max_size,
            log_max_files: spec.log_max_files,
            exec: false,
        };
        // runc state left by a run that never reported its end (the server
        // rebooted, the shim was killed) would block `runc create`.
        if self.runc.root().join(&spec.id).exists() {
            let _ = self.runc.delete(&spec.id, true);
        }
        let exe = self.cfg.exe.clone();
        tokio::task::spawn_blocking(move || spawn_shim(&exe, &args))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
            .map_err(|e| {
                AgentError::Runtime(format!(
                    "failed to create task for container: OCI runtime create failed: {e}"
                ))
            })?;
        agent_client::faults::crash_point("agent:start:after-shim");
        // Attach clients that were waiting for this start see all output.
        let pending: Vec<PendingAttach> =
            std::mem::take(&mut *ctr.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for p in pending {
            if let Err(e) = connect_attach(paths, p).await {
                tracing::warn!("attaching waiting client to {}: {e}", spec.id);
            }
        }
        if netns.is_some() {
            // Its ports send nothing until their guards are in.
            self.net.guarded(&spec.id).await.map_err(|e| {
                AgentError::Internal(format!("guarding the container's network ports: {e}"))
            })?;
        }
        if let Err(e) = self.runc.start(&spec.id) {
            // A process that exits at once can be reaped, and its runc state
            // deleted by the shim, before `runc start` finishes tidying up: then
            // runc fails although the container ran. The shim wrote the exit first.
            if read_exit(paths).is_none() {
                return Err(AgentError::Runtime(e.to_string()));
            }
        }
        Ok(())
    }

    /// Undoes what a run set up on the host: network and rootfs mount. The
    /// container's directory (upper layer, logs) stays until removal.
    async fn cleanup_run(&self, spec: &ContainerSpec) {
        self.stop_resolver(&spec.id);
        let paths = self.paths(&spec.id);
        if !spec.networks.is_empty() {
            let r = match attachments(spec) {
                Ok(nets) => {
                    self.net
                        .detach(
                            &spec.id,
                            &nets,
                            !spec.ports.is_empty(),
                            spec.public.as_ref().map(|p| p.ip),
                        )
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!("detaching networks of {}: {e}", spec.id);
            }
        }
        if self.mounter.is_mounted(&paths.rootfs)
            && let Err(e) = self.mounter.unmount(&paths.rootfs)
        {
            tracing::warn!("unmounting rootfs of {}: {e}", spec.id);
        }
    }

    /// Waits (through the shim's control socket) for the container to exit, then
    /// cleans up and reports.
    fn spawn_waiter(self: &Arc<Self>, ctr: Arc<Ctr>, spec: ContainerSpec) {
        let me = self.clone();
        tokio::spawn(async move {
            let paths = me.paths(&spec.id);
            let exit = wait_exit(&paths).await;
            // Take the cleanup lock before reporting, so that a start or remove
            // triggered by the report waits for the teardown below.
            let cleanup = ctr.cleanup.clone().lock_owned().await;
            let mut st = stopped(&spec.id, spec.generation);
            st.started_at = ctr
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .started_at
                .clone();
            match exit {
                Some(e) => {
                    st.exit_code = Some(e.exit_code);
                    st.oom_killed = e.oom_killed;
                    st.finished_at = e.finished_at.or_else(|| Some(now()));
                }
                None => {
                    st.exit_code = Some(255);
                    st.finished_at = Some(now());
                    st.error = Some("the container's shim disappeared".into());
                }
            }
            ctr.paused.store(false, Ordering::SeqCst);
            me.set_status(&ctr, st);
            ctr.exits.send_modify(|n| *n += 1);
            // Networks may have been connected or disconnected meanwhile.
            let spec = ctr.spec.lock().unwrap_or_else(|p| p.into_inner()).clone();
            me.cleanup_run(&spec).await;
            drop(cleanup);
        });
    }

    /// Changes the container's spec, in memory and on disk (what adoption
    /// reads after a restart). The caller holds its op lock.
    pub(crate) fn update_spec(
        &self,
        ctr: &Ctr,
        change: impl FnOnce(&mut ContainerSpec),
    ) -> Result<(), AgentError> {
        let spec = {
            let mut spec = ctr.spec.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut spec);
            spec.clone()
        };
        let paths = self.paths(&spec.id);
        if paths.root.exists() {
            std::fs::write(
                paths.root.join("spec.json"),
                serde_json::to_vec(&spec).map_err(|e| AgentError::Internal(e.to_string()))?,
            )?;
        }
        Ok(())
    }

    /// The container, if it is running here.
    pub(crate) fn running_ctr(&self, id: &str) -> Result<Arc<Ctr>, AgentError> {
        let ctr = self
            .ctr(id)
            .ok_or_else(|| AgentError::NotFound(format!("no such container: {id}")))?;
        if ctr.status.lock().unwrap_or_else(|p| p.into_inner()).state != RunState::Running {
            return Err(AgentError::Conflict(format!(
                "container {id} is not running"
            )));
        }
        Ok(ctr)
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), AgentError> {
        let ctr = self.running_ctr(id)?;
        self.runc.kill(id, signal, true).map_err(|e| {
            if crate::runc::is_not_exist(&e) {
                // It ended a moment ago: its exit is on the way.
                AgentError::Conflict(format!("Container {id} is not running"))
            } else {
                AgentError::Internal(e.to_string())
            }
        })?;
        if matches!(signal.trim_start_matches("SIG"), "KILL" | "kill" | "9") {
            self.thaw(&ctr, id);
        }
        Ok(())
    }

    /// A frozen container cannot act on a signal: thaw it after signalling, as
    /// Docker does for stop and kill of a paused container.
    fn thaw(&self, ctr: &Ctr, id: &str) {
        if ctr.paused.swap(false, Ordering::SeqCst)
            && let Err(e) = self.runc.resume(id)
        {
            tracing::warn!("thawing {id}: {e}");
        }
    }

    /// Freezes (`pause`) or thaws (`unpause`) a running container.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<(), AgentError> {
        let ctr = self
            .ctr(id)
            .ok_or_else(|| AgentError::NotFound(format!("no such container: {id}")))?;
        let _op = ctr.op.lock().await;
        if ctr.status.lock().unwrap_or_else(|p| p.into_inner()).state != RunState::Running {
            return Err(AgentError::Conflict(format!(
                "container {id} is not running"
            )));
        }
        let r = if pause {
            self.runc.pause(id)
        } else {
            self.runc.resume(id)
        };
        r.map_err(|e| AgentError::Conflict(e.to_string()))?;
        ctr.paused.store(pause, Ordering::SeqCst);
        Ok(())
    }

    /// New limits: kept for later starts, and applied to the cgroups now if the
    /// container runs.
    pub async fn update(
        &self,
        id: &str,
        resources: agent_client::Resources,
    ) -> Result<(), AgentError> {
        let ctr = self
            .ctr(id)
            .ok_or_else(|| AgentError::NotFound(format!("no such container: {id}")))?;
        let _op = ctr.op.lock().await;
        self.update_spec(&ctr, |s| s.resources = resources.clone())?;
        if ctr.status.lock().unwrap_or_else(|p| p.into_inner()).state == RunState::Running {
            let swap = Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists();
            let mut r = crate::bundle::resources(&resources, swap);
            if let Some(o) = r.as_object_mut() {
                // Device rules are set at create; runc update leaves them.
                o.remove("devices");
            }
            self.runc
                .update(id, &r)
                .map_err(|e| AgentError::Conflict(format!("Cannot update container {id}: {e}")))?;
        }
        Ok(())
    }

    /// Sends the stop signal, waits up to `timeout` seconds, then SIGKILL.
    pub async fn stop(
        &self,
        id: &str,
        timeout: i64,
        signal: &str,
    ) -> Result<ContainerStatus, AgentError> {
        let ctr = self
            .ctr(id)
            .ok_or_else(|| AgentError::NotFound(format!("no such container: {id}")))?;
        let _op = ctr.op.lock().await;
        let mut exits = ctr.exits.subscribe();
        exits.borrow_and_update();
        let running =
            ctr.status.lock().unwrap_or_else(|p| p.into_inner()).state == RunState::Running;
        if running {
            let _ = self.runc.kill(id, signal, false);
            self.thaw(&ctr, id);
            let waited = if timeout < 0 {
                exits.changed().await.ok()
            } else {
                tokio::time::timeout(Duration::from_secs(timeout as u64), exits.changed())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            };
            if waited.is_none() {
                let _ = self.runc.kill(id, "SIGKILL", true);
                let _ = tokio::time::timeout(Duration::from_secs(30), exits.changed()).await;
            }
        }
        Ok(ctr.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Kills if running and removes every trace of the container on this server.
    /// Returns once the container is gone from the agent's view; the last host
    /// resources (veth deletion is slow in the kernel) are released in the background.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<(), AgentError> {
        let Some(ctr) = self.ctr(id) else {
            // Never started here: only a directory may exist.
            let _ = std::fs::remove_dir_all(self.paths(id).root);
            return Ok(());
        };
        let _op = ctr.op.lock().await;
        let mut exits = ctr.exits.subscribe();
        exits.borrow_and_update();
        if ctr.status.lock().unwrap_or_else(|p| p.into_inner()).state == RunState::Running {
            let _ = self.runc.kill(id, "SIGKILL", true);
            self.thaw(&ctr, id);
            if tokio::time::timeout(Duration::from_secs(30), exits.changed())
                .await
                .is_err()
            {
                // The shim did not report: make sure runc forgets the container.
                let _ = self.runc.delete(id, true);
            }
        }
        self.ctrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let spec = ctr.spec.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let me = self.clone();
        let cleanup = ctr.cleanup.clone();
        tokio::spawn(async move {
            let _g = cleanup.lock().await;
            me.cleanup_run(&spec).await;
            let root = me.paths(&spec.id).root;
            if root.exists()
                && let Err(e) = std::fs::remove_dir_all(&root)
            {
                tracing::warn!("removing the directory of {}: {e}", spec.id);
            }
        });
        Ok(())
    }

    /// Attach: connects now if running, else when the container next starts.
    pub async fn attach(&self, id: &str, p: PendingAttach) -> Result<(), AgentError> {
        let ctr = match self.ctr(id) {
            Some(c) => c,
            None => {
                // Created on the head but never started here: wait for the start.
                let spec = ContainerSpec {
                    id: id.to_string(),
                    ..Default::default()
                };
                self.ctr_or_insert(&spec)
            }
        };
        let running =
            ctr.status.lock().unwrap_or_else(|p| p.into_inner()).state == RunState::Running;
        if running {
            connect_attach(&self.paths(id), p).await?;
        } else {
            ctr.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(p);
        }
        Ok(())
    }

    /// The container's init pid if it runs here; NotFound if unknown.
    pub fn running_pid(&self, id: &str) -> Result<Option<u32>, AgentError> {
        let ctr = self
            .ctr(id)
            .ok_or_else(|| AgentError::NotFound(format!("no such container: {id}")))?;
        let st = ctr.status.lock().unwrap_or_else(|p| p.into_inner());
        Ok((st.state == RunState::Running && st.pid > 0).then_some(st.pid))
    }

    /// Sets the window size of a tty container's terminal.
    pub async fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), AgentError> {
        self.running_ctr(id)?;
        let mut s = connect_sock(&self.paths(id).control_sock).await?;
        s.write_all(format!("resize {rows} {cols}\n").as_bytes())
            .await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| AgentError::Internal(format!("bad answer from shim: {e}")))?;
        match v["error"].as_str() {
            Some(e) => Err(AgentError::Conflict(e.to_string())),
            None => Ok(()),
        }
    }

    pub fn is_tty(&self, id: &str) -> bool {
        self.ctr(id)
            .map(|c| c.spec.lock().unwrap_or_else(|p| p.into_inner()).process.tty)
            .unwrap_or(false)
    }

    pub fn log_path(&self, id: &str) -> Option<PathBuf> {
        self.ctr(id)?;
        Some(self.paths(id).log)
    }

    /// Resolves when the current run of the container has exited.
    pub fn exited(&self, id: &str) -> impl Future<Output = ()> + Send + 'static {
        let ctr = self.ctr(id);
        async move {
            let Some(ctr) = ctr else { return };
            let mut rx = ctr.exits.subscribe();
            if ctr.status.lock().unwrap_or_else(|p| p.into_inner()).state != RunState::Running {
                return;
            }
            let _ = rx.changed().await;
        }
    }
}

fn read_exit(paths: &ContainerPaths) -> Option<ExitInfo> {
    let b = std::fs::read(&paths.exit_file).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Asks a shim for the container's pid; None if no shim answers.
async fn shim_pid(paths: &ContainerPaths) -> Option<u32> {
    let mut s = connect_sock(&paths.control_sock).await.ok()?;
    s.write_all(b"pid\n").await.ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

/// Blocks until the shim reports the exit; falls back to the exit file if the
/// shim is gone.
async fn wait_exit(paths: &ContainerPaths) -> Option<ExitInfo> {
    if let Ok(mut s) = connect_sock(&paths.control_sock).await
        && s.write_all(b"wait\n").await.is_ok()
    {
        let mut line = String::new();
        let mut r = BufReader::new(s);
        if r.read_line(&mut line).await.is_ok()
            && let Ok(e) = serde_json::from_str::<ExitInfo>(&line)
        {
            return Some(e);
        }
    }
    // The shim may have exited between our connect attempts: give it a moment to
    // have written the exit file.
    for _ in 0..50 {
        if let Some(e) = read_exit(paths) {
            return Some(e);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Splices an attach client to the shim's attach socket.
pub(crate) async fn connect_attach(
    paths: &ContainerPaths,
    p: PendingAttach,
) -> Result<(), AgentError> {
    let mut shim = connect_sock(&paths.attach_sock).await?;
    shim.write_all(p.header.as_bytes()).await?;
    shim.write_all(b"\n").await?;
    // Wait for the ack: output produced after it (e.g. once the caller starts
    // the container) reaches this client.
    let mut ack = [0u8; crate::shim::ATTACH_ACK.len()];
    tokio::io::AsyncReadExt::read_exact(&mut shim, &mut ack).await?;
    if ack != crate::shim::ATTACH_ACK {
        return Err(AgentError::Internal("the shim refused the attach".into()));
    }
    tokio::spawn(agent_client::splice::splice(p.stream, shim));
    Ok(())
}

/// Connects to a shim socket. Unix socket paths are limited to 108 bytes and a
/// container's directory can be deeper than that, so connect through a short
/// `/proc/self/fd/N/` path to the open directory instead.
pub(crate) async fn connect_sock(path: &Path) -> std::io::Result<UnixStream> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path).await;
    };
    let dir_fd = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir_fd)
    ))
    .join(name);
    let r = UnixStream::connect(&short).await;
    drop(dir_fd);
    r
}
