//! Wire types of the agent API (head → agent). Both sides depend on this crate,
//! so the head never links agent code: the split is a real network boundary.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// One image layer as the agent needs it: the uncompressed digest names the
/// unpacked directory in the layer cache; the blob digest is what the head serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// `sha256:<hex>` of the uncompressed tar (the image config's diff_id).
    pub diff_id: String,
    /// `sha256:<hex>` of the blob as stored by the head (maybe gzip/zstd compressed).
    pub blob: String,
}

/// A user namespace's id mapping, the same for uids and gids: container ids
/// `0..size` are host ids `host_base..host_base + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdMap {
    pub host_base: u32,
    pub size: u32,
}

impl IdMap {
    /// The host id that unmapped ids show as (the kernel's overflow id).
    pub const OVERFLOW: u32 = 65534;

    /// The host id of container id `id`; ids outside the range become the
    /// overflow id of the range.
    pub fn to_host(&self, id: u32) -> u32 {
        if id < self.size {
            self.host_base + id
        } else {
            self.host_base + Self::OVERFLOW.min(self.size - 1)
        }
    }

    /// The container id of host id `id`; ids outside the range are the
    /// overflow id, as the kernel shows them inside the namespace.
    pub fn to_container(&self, id: u32) -> u32 {
        match id.checked_sub(self.host_base) {
            Some(c) if c < self.size => c,
            _ => Self::OVERFLOW,
        }
    }
}

/// `map.to_host(id)`, or `id` itself without a user namespace.
pub fn host_id(map: Option<&IdMap>, id: u32) -> u32 {
    map.map_or(id, |m| m.to_host(id))
}

/// `map.to_container(id)`, or `id` itself without a user namespace.
pub fn container_id(map: Option<&IdMap>, id: u32) -> u32 {
    map.map_or(id, |m| m.to_container(id))
}

/// The process to run, resolved from image config + create options by the head.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; never empty (the head refuses a container without a command).
    pub args: Vec<String>,
    /// `KEY=value` entries, image env first, then the container's.
    pub env: Vec<String>,
    /// Working directory inside the container; absolute. Empty means "/".
    pub cwd: String,
    /// Docker's `-u`: `user`, `uid`, `user:group`, `uid:gid`; empty means root.
    /// Names are resolved against the container's /etc/passwd and /etc/group.
    pub user: String,
    /// Docker's `--group-add`: more groups (names from /etc/group, or gids)
    /// for the container's processes and its execs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    pub tty: bool,
    pub open_stdin: bool,
}

/// A published port, Docker's `-p [host_ip:]host_port:container_port[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// "tcp" or "udp".
    pub proto: String,
    pub container_port: u16,
    /// Empty means all addresses.
    pub host_ip: String,
    pub host_port: u16,
}

/// A container's address on the datacenter's public network (Triton's
/// model: a published port is reached at the container's own address, so
/// tenants never compete for ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicAddress {
    pub ip: Ipv4Addr,
    /// The public network's CIDR and gateway, as the operator set them.
    pub subnet: String,
    pub gateway: Ipv4Addr,
}

/// One network a container is attached to (a fabric network: its account's
/// VXLAN segment, spanning servers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The network's id (64 hex).
    pub network: String,
    /// Its name, as the account knows it.
    pub name: String,
    pub vni: u32,
    /// CIDR, e.g. "10.0.0.0/24".
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub ip: Ipv4Addr,
    /// The user chose `ip` (`--ip`): inspect's `IPAMConfig` shows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ip_requested: bool,
    /// `02:42:..` style MAC, lower-case, colon separated.
    pub mac: String,
    /// No route out of the network (`docker network create --internal`).
    #[serde(default)]
    pub internal: bool,
    /// Names this container answers to on this network (`--network-alias`).
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A container on a network, wherever it runs: one entry of a network's
/// overlay map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkMember {
    pub mac: String,
    pub ip: Ipv4Addr,
    /// The underlay address of its server (its VXLAN endpoint); None: a
    /// server without one (everything on it is local).
    pub vtep: Option<Ipv4Addr>,
    /// The names the network's resolver answers with `ip`.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Body of `PUT /v1/networks/{vni}`: a network's whole overlay map. The agent
/// keeps the highest version it was given and programs it wherever the
/// network's segment exists on its server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMap {
    pub vni: u32,
    pub version: u64,
    pub members: Vec<NetworkMember>,
}

/// Resource limits from `-m`, `--cpus`, etc. Zero means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory: i64,
    pub memory_swap: i64,
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub pids_limit: i64,
    /// Bytes the container's writable layer may hold (its package's disk),
    /// enforced where the server's filesystem can (btrfs quotas).
    #[serde(default)]
    pub disk: u64,
}

/// One `--ulimit`: Docker's name (`nofile`, `nproc`, …) and its soft and
/// hard values (-1: unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// Where a mount's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A volume on this server; `source` is its id (the directory name).
    Volume,
    /// A host path (operator only; the head checks).
    Bind,
}

/// A volume or bind mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub kind: MountKind,
    pub source: String,
    /// Absolute path inside the container.
    pub destination: String,
    pub read_only: bool,
    /// A volume's size limit, set when the server makes it (0: none).
    #[serde(default)]
    pub size_bytes: u64,
    /// A new volume made empty (no copy-up) with this owner and mode, in
    /// the container's ids: a build's cache mount with `uid`, `gid`, `mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh: Option<FreshVolume>,
}

/// A server's device node made in a container (`--device HOST:CONTAINER:PERMS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub host: String,
    pub container: String,
    /// Cgroup access: some of `r`, `w`, `m`.
    pub perms: String,
}

/// The root of a volume made empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreshVolume {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// A container's healthcheck, resolved by the head from the image and the create
/// options. Durations in nanoseconds, as Docker's API has them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// The probe's argv (Docker's `CMD-SHELL x` is already `/bin/sh -c x`).
    pub args: Vec<String>,
    pub interval_ns: i64,
    pub timeout_ns: i64,
    pub start_period_ns: i64,
    pub start_interval_ns: i64,
    pub retries: i64,
}

/// One probe's result, as Docker's `State.Health.Log` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResult {
    /// RFC 3339 with nanoseconds.
    pub start: String,
    pub end: String,
    pub exit_code: i64,
    pub output: String,
}

/// A running container's health: `starting`, `healthy` or `unhealthy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthState {
    pub status: String,
    pub failing_streak: i64,
    /// The last few results, oldest first.
    pub log: Vec<HealthResult>,
}

/// Everything the agent needs to run a container. Sent in full on every start, so
/// that the agent holds no state the head cannot re-send (idempotent instructions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// 64 hex chars.
    pub id: String,
    /// Bumped by the head on every instruction; the agent ignores stale ones.
    pub generation: u64,
    /// Bottom layer first.
    pub layers: Vec<LayerRef>,
    pub process: ProcessSpec,
    /// The process's capabilities by OCI name (`--cap-add`/`--cap-drop` applied
    /// by the head); none: Docker's default set.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// `--security-opt no-new-privileges`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// `--security-opt seccomp=unconfined`: no seccomp profile (the operator's
    /// account only); otherwise the default profile.
    #[serde(default)]
    pub seccomp_unconfined: bool,
    /// `--privileged` (the operator's account only): every capability and
    /// device, no seccomp profile, no masked paths, `/sys` writable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// The server's own namespaces the container shares (`--pid host`,
    /// `--ipc host`, `--uts host`; the operator's account only): `pid`,
    /// `ipc`, `uts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_namespaces: Vec<String>,
    /// The server's devices given to it (`--device`; the operator's only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
    /// Device cgroup rules beyond Docker's defaults (`--device-cgroup-rule
    /// 'c 10:229 rwm'`; the operator's only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_rules: Vec<String>,
    /// The account's user-namespace id range: container root is host id
    /// `host_base`. None: the host's ids (the operator's account).
    #[serde(default)]
    pub userns: Option<IdMap>,
    pub hostname: String,
    pub domainname: String,
    pub read_only: bool,
    /// mount point → mount options (Docker's `--tmpfs /run:rw,size=64m`).
    pub tmpfs: BTreeMap<String, String>,
    /// Run an init process (tini) as PID 1.
    pub init: bool,
    pub resources: Resources,
    /// `--ulimit`s (rlimits of the container's processes), checked by the
    /// head; RLIMIT_NOFILE has a default where none is given.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// The networks in Docker's order: the first is `eth0` and carries the
    /// default route (unless internal). Empty: `--network none`.
    #[serde(default)]
    pub networks: Vec<Endpoint>,
    /// Published ports, reached through the first network: on `public`
    /// when the container has one, else on the server's own addresses.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// `--network host` (operator only): the server's own network
    /// namespace, no networks of its own.
    #[serde(default)]
    pub host_network: bool,
    /// The container's own address on the datacenter's public network
    /// (where the operator configured one and the container publishes ports).
    #[serde(default)]
    pub public: Option<PublicAddress>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// `host:ip` entries for /etc/hosts.
    pub extra_hosts: Vec<String>,
    /// Signal name or number used by `stop`, e.g. "SIGTERM".
    pub stop_signal: String,
    /// Docker json-file rotation: max bytes per file (0 = unlimited) and file count.
    pub log_max_size: u64,
    pub log_max_files: u32,
    /// None: no healthcheck (none in the image, or `--no-healthcheck`).
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Volumes and bind mounts, in Docker's order.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
}

/// Actual state of a container as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Known to the agent but not running (never started, or exited).
    Stopped,
    Running,
}

/// Reported by the agent on its event stream and in listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub generation: u64,
    pub state: RunState,
    pub pid: u32,
    /// RFC 3339 with nanoseconds.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    /// True if the process was killed by the kernel OOM killer.
    pub oom_killed: bool,
    /// Set when starting failed (e.g. executable not found); shown by inspect.
    pub error: Option<String>,
    /// The healthcheck's state while it runs (None without a healthcheck).
    #[serde(default)]
    pub health: Option<HealthState>,
}

/// Server facts reported to the head.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub hostname: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub kernel_version: String,
    pub operating_system: String,
    pub cgroup_version: String,
    pub runtime: String,
    /// The server's underlay address, where other servers send its VXLAN
    /// traffic; None: a server alone (no VXLAN, networks stay local).
    #[serde(default)]
    pub vtep: Option<Ipv4Addr>,
    /// The server has an interface on the datacenter's public network (it
    /// can run containers with public addresses).
    #[serde(default)]
    pub public: bool,
    /// Size of the filesystem of the agent's data directory.
    #[serde(default)]
    pub disk_bytes: u64,
}

/// Body of `POST /v1/containers/{id}/stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// Seconds to wait after the stop signal before SIGKILL; negative waits forever.
    pub timeout: i64,
    pub signal: String,
}

/// Body of `POST /v1/containers/{id}/kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    pub signal: String,
}

/// Body of `PUT /v1/containers/{id}/execs/{exec}`: a process to run in the
/// running container. Empty `cwd`/`user` mean the container's own; `env`
/// entries override the container's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub tty: bool,
    pub open_stdin: bool,
    /// All capabilities (operator only; the head decides who may ask).
    pub privileged: bool,
}

/// What the agent knows about an exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecState {
    pub running: bool,
    /// Host pid of the process while it runs; 0 otherwise.
    pub pid: u32,
    /// Set once it has ended (or failed to start: 126/127).
    pub exit_code: Option<i32>,
}

/// Body of `POST /v1/containers/{id}/resize`: the terminal's new size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeRequest {
    pub rows: u16,
    pub cols: u16,
}

/// Error body the agent answers with on any non-2xx status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentErrorBody {
    pub message: String,
}

/// An agent asks the head to admit its server (`POST /v1/join` on the head's
/// cluster port, before the agent has a certificate).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The one-time join token the operator got from the head.
    pub token: String,
    /// The server's name in the datacenter.
    pub name: String,
    /// Where the head reaches its agent: `tcp://ADDR:PORT`.
    pub address: String,
    /// A PEM signing request for the key the agent made; only the key is used.
    pub csr: String,
}

/// The head's answer: the agent's certificate and the cluster CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub certificate: String,
    pub ca: String,
}

/// The cluster CA certificate (`GET /v1/ca`), checked by a joining agent
/// against the fingerprint in its token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaResponse {
    pub ca: String,
}

/// Paths of /proc and /sys every container sees masked (Docker's defaults).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// ... and read-only.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[cfg(test)]
mod id_map_tests {
    use super::*;

    #[test]
    fn ids_shift_both_ways_and_strays_are_nobody() {
        let m = IdMap {
            host_base: 1_000_000_000,
            size: 65536,
        };
        assert_eq!(m.to_host(0), 1_000_000_000);
        assert_eq!(m.to_host(1234), 1_000_001_234);
        assert_eq!(m.to_host(70000), 1_000_065_534);
        assert_eq!(m.to_container(1_000_001_234), 1234);
        assert_eq!(m.to_container(0), IdMap::OVERFLOW);
        assert_eq!(m.to_container(1_000_065_536), IdMap::OVERFLOW);
        assert_eq!(host_id(None, 7), 7);
        assert_eq!(container_id(Some(&m), 1_000_000_007), 7);
    }
}
