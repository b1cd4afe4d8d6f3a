//! Domain records kept in the store. Every record names its owning account.

use std::collections::BTreeMap;

use agent_client::{ContainerSpec, LayerRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The account the local unix socket acts as.
pub const OPERATOR: &str = "operator";

/// An image as one account has it. Content (blobs) is shared; the record is per account,
/// so one tenant can never reach another's image by id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub account: String,
    /// `sha256:<hex>` of the config blob (Docker's image ID).
    pub id: String,
    pub layers: Vec<ImageLayer>,
    /// Sum of the layer blob sizes.
    pub size: i64,
    pub created: DateTime<Utc>,
    /// When this account got it (load, pull, import, commit).
    pub added: DateTime<Utc>,
    /// `repo@sha256:...` digests known from a registry.
    pub repo_digests: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageLayer {
    pub blob: String,
    pub diff_id: String,
    pub size: i64,
    pub media_type: String,
}

impl ImageLayer {
    pub fn new(
        blob: &images::Digest,
        diff_id: &images::Digest,
        size: u64,
        media_type: &str,
    ) -> ImageLayer {
        ImageLayer {
            blob: blob.to_string(),
            diff_id: diff_id.to_string(),
            size: size as i64,
            media_type: media_type.to_string(),
        }
    }

    pub fn layer_ref(&self) -> LayerRef {
        LayerRef {
            diff_id: self.diff_id.clone(),
            blob: self.blob.clone(),
        }
    }
}

/// The result of one build step, kept per account so a later build with the
/// same inputs reuses it ("Using cache") on any server: the step's image
/// config and layers (its blobs stay while the entry does).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildCacheRecord {
    pub account: String,
    /// `build::cache::step_key` of the step.
    pub key: String,
    /// The step's image (config digest).
    pub image_id: String,
    pub layers: Vec<ImageLayer>,
    /// The step as `Step N/M :` showed it.
    pub description: String,
    /// Bytes of the layer this step added (0 for config-only steps).
    pub size: i64,
    pub created: DateTime<Utc>,
    pub last_used: DateTime<Utc>,
    #[serde(default)]
    pub usage_count: u64,
}

/// A tag: `docker.io/library/busybox:latest` → image id, per account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagRecord {
    pub account: String,
    /// Fully qualified reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    pub image_id: String,
}

/// Docker's container states.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "created" => Status::Created,
            "running" => Status::Running,
            "paused" => Status::Paused,
            "restarting" => Status::Restarting,
            "removing" => Status::Removing,
            "exited" => Status::Exited,
            "dead" => Status::Dead,
            _ => return None,
        })
    }
    /// Docker counts restarting containers as running for `docker ps`.
    pub fn is_running(self) -> bool {
        matches!(self, Status::Running | Status::Paused | Status::Restarting)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    pub status: Status,
    pub pid: u32,
    pub exit_code: i32,
    pub error: String,
    pub oom_killed: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub restart_count: u32,
    /// Set by `docker stop`/`kill`/`rm -f`: the exit was asked for, so restart
    /// policies other than `always` do not bring the container back.
    pub stopped_by_user: bool,
    /// The healthcheck's last known state (kept after the container stops, as
    /// Docker does; reset by the next start).
    #[serde(default)]
    pub health: Option<agent_client::HealthState>,
}

impl Default for ContainerState {
    fn default() -> Self {
        ContainerState {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            oom_killed: false,
            started_at: None,
            finished_at: None,
            restart_count: 0,
            stopped_by_user: false,
            health: None,
        }
    }
}

/// A container. `config` is the create request as the client sent it (Docker's
/// ContainerCreateBody), normalised; `spec` is what the agent will run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub account: String,
    pub id: String,
    /// Without Docker's leading slash.
    pub name: String,
    /// The image as the user named it.
    pub image_ref: String,
    pub image_id: String,
    pub created: DateTime<Utc>,
    pub node: String,
    pub config: serde_json::Value,
    pub spec: ContainerSpec,
    pub state: ContainerState,
    pub labels: BTreeMap<String, String>,
    /// Bumped on each instruction to the agent.
    pub generation: u64,
    /// The package that sized it (empty for records older than packages).
    #[serde(default)]
    pub package: String,
    /// What it holds on its server for placement.
    #[serde(default)]
    pub reservation: Reservation,
}

/// The memory and disk a container's package reserves on its server: what
/// placement counts, whatever the container uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub memory: u64,
    pub disk: u64,
}

/// A server running an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// How the head reaches the agent, e.g. `unix:///var/lib/atoll/agent/agent.sock`.
    pub address: String,
    pub info: agent_client::AgentInfo,
    pub last_seen: DateTime<Utc>,
    /// The operator drains it: it keeps its containers and takes no new ones.
    #[serde(default)]
    pub draining: bool,
}

/// A volume: data that outlives containers, on one server (`node`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeRecord {
    pub account: String,
    pub name: String,
    /// 64 hex chars: the volume's directory on its server (names are per
    /// account, so they cannot name directories).
    pub id: String,
    pub node: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub created: DateTime<Utc>,
    /// Made for a container (image `VOLUME`, `-v /path`), not by name.
    pub anonymous: bool,
    /// Most bytes it may hold (0: unbounded; see `storage::volume_size`).
    #[serde(default)]
    pub size_bytes: u64,
}

/// A network of one account: a VXLAN segment (`vni`) spanning every server
/// that holds one of its containers. Its addresses are handed out from
/// `subnet` (or `ip_range`) by the head; the store keeps them unique.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkRecord {
    pub account: String,
    /// 64 hex chars.
    pub id: String,
    pub name: String,
    /// Given by the store at insert, never reused.
    pub vni: u32,
    /// "bridge" or "overlay", as asked (both are fabric networks here).
    pub driver: String,
    /// CIDR, e.g. "10.0.0.0/24".
    pub subnet: String,
    pub gateway: std::net::Ipv4Addr,
    /// Where container addresses come from; None: the whole subnet.
    pub ip_range: Option<String>,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub created: DateTime<Utc>,
    /// The account's default network ("bridge"), made on first use and never
    /// removed.
    pub default: bool,
}

impl ContainerRecord {
    /// The container's config as Docker shows it (inspect's `Config`, and
    /// a committed image's `container_config`).
    pub fn docker_config(&self) -> serde_json::Value {
        let cfg = &self.config;
        let flag = |k: &str| cfg[k].as_bool().unwrap_or(false);
        serde_json::json!({
            "Hostname": self.spec.hostname,
            "Domainname": self.spec.domainname,
            "User": self.spec.process.user,
            "AttachStdin": flag("AttachStdin"),
            "AttachStdout": flag("AttachStdout"),
            "AttachStderr": flag("AttachStderr"),
            "Tty": self.spec.process.tty,
            "OpenStdin": self.spec.process.open_stdin,
            "StdinOnce": flag("StdinOnce"),
            "Env": self.spec.process.env,
            "Cmd": cfg.get("Cmd").cloned().unwrap_or_default(),
            "Image": self.image_ref,
            "Volumes": null,
            "WorkingDir": cfg["WorkingDir"].as_str().unwrap_or(""),
            "Entrypoint": cfg.get("Entrypoint").cloned().unwrap_or_default(),
            "OnBuild": null,
            "Labels": self.labels,
        })
    }

    /// The names this container answers to on a network (Docker's): its
    /// name, its short id and its aliases there.
    pub fn dns_names(&self, e: &agent_client::Endpoint) -> Vec<String> {
        // Docker's DNS answers for running containers only.
        if !matches!(self.state.status, Status::Running | Status::Paused) {
            return Vec::new();
        }
        let mut v = vec![
            self.name.clone(),
            self.id[..self.id.len().min(12)].to_string(),
        ];
        v.extend(e.aliases.iter().cloned());
        v
    }
}

/// One container's address on one network, as the overlay map needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub container: String,
    pub node: String,
    pub ip: std::net::Ipv4Addr,
    pub mac: String,
    /// What the network's resolver answers with this address.
    pub names: Vec<String>,
}

/// A tenant account. Its name is the CN of its certificates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountRecord {
    pub name: String,
    pub created: DateTime<Utc>,
    /// A disabled account's certificates are refused; its containers keep running.
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub limits: AccountLimits,
}

/// What one account may hold at most (none: no limit beyond the servers').
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountLimits {
    /// Containers, in any state.
    #[serde(default)]
    pub containers: Option<u64>,
    /// The sum of its containers' package memory.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// What it may hold on disk: images, volumes, containers' writable
    /// layers and logs (see `storage`).
    #[serde(default)]
    pub storage_bytes: Option<u64>,
}

/// A certificate the cluster CA issued to an account or an operator; a revoked
/// one is refused (checked on every request, whatever its expiry).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertificateRecord {
    /// Hex, as `pki::Identity::serial`.
    pub serial: String,
    /// The account (or operator name) it names.
    pub holder: String,
    /// `account` or `operator`.
    pub role: String,
    pub issued: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    #[serde(default)]
    pub revoked: Option<DateTime<Utc>>,
}
