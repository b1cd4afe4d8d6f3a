//! Operator commands (`atoll server|package|container|placement|network|cert …`): a
//! client of the head's operator API, on `<data>/head/operator.sock` on the
//! head's machine, or on its cluster port over TLS with an operator certificate
//! (`--head ADDR:PORT --cert-dir DIR`). Tables for people, `--json` for programs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use placement::Package;
use serde_json::Value;

use crate::instance::Instance;

/// How operator commands find their instance.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The instance's data dir (its head serves `head/operator.sock` there).
    #[arg(long, default_value = "/var/lib/atoll", global = true)]
    pub data_dir: PathBuf,
    /// A remote head's cluster port, ADDR:PORT (instead of --data-dir).
    #[arg(long, env = "ATOLL_HEAD", global = true)]
    pub head: Option<String>,
    /// With --head: the directory of an operator certificate (`atoll cert`).
    #[arg(long, env = "ATOLL_CERT_DIR", global = true)]
    pub cert_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ServerCmd {
    /// List servers: state, capacity, what is reserved, containers.
    Ls,
    /// Stop placing new containers on a server; its containers keep running.
    Drain { id: String },
    /// Place containers on a drained server again.
    Enable { id: String },
    /// Forget a server that is down and holds no containers.
    Forget { id: String },
    /// Print a one-time token for a new server to join with
    /// (`atoll agent --head ADDR:PORT --token TOKEN …`).
    Token {
        /// How long it stays valid, e.g. 30m, 1h, 7d (at most 7 days).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct PackageSpec {
    /// Memory, e.g. 512M, 2G.
    #[arg(long)]
    pub memory: Option<String>,
    /// Relative CPU weight (cpu.shares).
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    /// CPU cap in percent of one CPU (0: none).
    #[arg(long)]
    pub cpu_cap: Option<u32>,
    /// Disk, e.g. 10G.
    #[arg(long)]
    pub disk: Option<String>,
    /// Most processes (0: no limit).
    #[arg(long)]
    pub pids: Option<u64>,
    /// Accounts that may use it (repeat; none: every account).
    #[arg(long = "account")]
    pub accounts: Vec<String>,
    /// Make it the package of containers that ask for nothing.
    #[arg(long)]
    pub default: bool,
}

#[derive(Subcommand, Debug)]
pub enum PackageCmd {
    /// List packages.
    Ls,
    /// Create a package (`--memory` is required).
    Create {
        name: String,
        #[command(flatten)]
        spec: PackageSpec,
    },
    /// Change a package; unset options keep their values.
    Update {
        name: String,
        #[command(flatten)]
        spec: PackageSpec,
    },
    /// Delete a package (containers sized by it keep their limits).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Show the public network, or set it: containers that publish ports
    /// get an address of `--range` and are reached there.
    Public {
        /// CIDR of the public network, e.g. 198.51.100.0/24.
        #[arg(long, requires_all = ["gateway"])]
        subnet: Option<String>,
        /// The datacenter's router on it.
        #[arg(long, requires = "subnet")]
        gateway: Option<std::net::Ipv4Addr>,
        /// CIDR inside the subnet for containers' addresses (default: all of it).
        #[arg(long, requires = "subnet")]
        range: Option<String>,
        /// Remove the public network (ports are then published on servers).
        #[arg(long, conflicts_with = "subnet")]
        remove: bool,
    },
}

/// `atoll network public`.
pub async fn network(t: &Target, cmd: NetworkCmd) -> Result<()> {
    let NetworkCmd::Public {
        subnet,
        gateway,
        range,
        remove,
    } = cmd;
    let c = Client::new(t)?;
    let v = if remove {
        c.call("DELETE", "/v1/public-network", None).await?
    } else if let (Some(subnet), Some(gateway)) = (subnet, gateway) {
        let range = range.unwrap_or_else(|| subnet.clone());
        let body = serde_json::to_vec(
            &serde_json::json!({ "subnet": subnet, "gateway": gateway, "range": range }),
        )?;
        c.call("PUT", "/v1/public-network", Some(body)).await?
    } else {
        c.call("GET", "/v1/public-network", None).await?
    };
    if t.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v.is_null() {
        println!("no public network: ports are published on the containers' servers");
    } else {
        println!("subnet:  {}", str_of(&v["subnet"]));
        println!("gateway: {}", str_of(&v["gateway"]));
        println!("range:   {}", str_of(&v["range"]));
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Where every container runs: account, name, server, package, status.
    Ls,
}

pub async fn server(t: &Target, cmd: ServerCmd) -> Result<()> {
    let c = Client::new(t)?;
    let v = match &cmd {
        ServerCmd::Token { ttl } => {
            let body = serde_json::json!({ "ttl_seconds": parse_duration(ttl)? });
            let v = c
                .call("POST", "/v1/join-tokens", Some(serde_json::to_vec(&body)?))
                .await?;
            if t.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", str_of(&v["token"]));
                eprintln!(
                    "valid once, until {}: atoll agent --head <this head's cluster port> --token <it> --listen tcp://ADDR:7070",
                    str_of(&v["expires_at"])
                );
            }
            return Ok(());
        }
        ServerCmd::Ls => c.call("GET", "/v1/servers", None).await?,
        ServerCmd::Drain { id } => {
            c.call("POST", &format!("/v1/servers/{}/drain", segment(id)), None)
                .await?
        }
        ServerCmd::Enable { id } => {
            c.call("POST", &format!("/v1/servers/{}/enable", segment(id)), None)
                .await?
        }
        ServerCmd::Forget { id } => {
            c.call("DELETE", &format!("/v1/servers/{}", segment(id)), None)
                .await?;
            println!("forgot {id}");
            return Ok(());
        }
    };
    let list = match v {
        Value::Array(a) => a,
        one => vec![one],
    };
    if t.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut rows = vec![vec![
        "ID".into(),
        "STATE".into(),
        "CPUS".into(),
        "MEMORY".into(),
        "RESERVED".into(),
        "DISK".into(),
        "CONTAINERS".into(),
    ]];
    for s in &list {
        rows.push(vec![
            str_of(&s["id"]),
            str_of(&s["state"]),
            s["cpus"].to_string(),
            size(&s["memory_bytes"]),
            size(&s["memory_reserved"]),
            format!("{} / {}", size(&s["disk_reserved"]), size(&s["disk_bytes"])),
            s["containers"].to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

pub async fn package(t: &Target, cmd: PackageCmd) -> Result<()> {
    let c = Client::new(t)?;
    let list: Vec<Package> = match cmd {
        PackageCmd::Ls => serde_json::from_value(c.call("GET", "/v1/packages", None).await?)?,
        PackageCmd::Create { name, spec } => {
            let existing: Vec<Package> =
                serde_json::from_value(c.call("GET", "/v1/packages", None).await?)?;
            if existing.iter().any(|p| p.name == name) {
                bail!("package {name} exists already (use `atoll package update`)");
            }
            let Some(mem) = &spec.memory else {
                bail!("--memory is required");
            };
            let memory = parse_size(mem)?;
            let p = Package {
                name: name.clone(),
                memory_bytes: memory,
                cpu_shares: spec.cpu_shares.unwrap_or(1024),
                cpu_cap: spec.cpu_cap.unwrap_or(0),
                disk_bytes: match &spec.disk {
                    Some(d) => parse_size(d)?,
                    None => (memory * 10).max(1 << 30),
                },
                pids: spec.pids.unwrap_or(0),
                accounts: spec.accounts.clone(),
                default: spec.default,
            };
            vec![put(&c, &p).await?]
        }
        PackageCmd::Update { name, spec } => {
            let existing: Vec<Package> =
                serde_json::from_value(c.call("GET", "/v1/packages", None).await?)?;
            let Some(mut p) = existing.into_iter().find(|p| p.name == name) else {
                bail!("No such package: {name}");
            };
            if let Some(m) = &spec.memory {
                p.memory_bytes = parse_size(m)?;
            }
            if let Some(d) = &spec.disk {
                p.disk_bytes = parse_size(d)?;
            }
            if let Some(v) = spec.cpu_shares {
                p.cpu_shares = v;
            }
            if let Some(v) = spec.cpu_cap {
                p.cpu_cap = v;
            }
            if let Some(v) = spec.pids {
                p.pids = v;
            }
            if !spec.accounts.is_empty() {
                p.accounts = spec.accounts.clone();
            }
            if spec.default {
                p.default = true;
            }
            vec![put(&c, &p).await?]
        }
        PackageCmd::Rm { name } => {
            c.call("DELETE", &format!("/v1/packages/{}", segment(&name)), None)
                .await?;
            println!("deleted {name}");
            return Ok(());
        }
    };
    if t.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut rows = vec![vec![
        "NAME".into(),
        "MEMORY".into(),
        "CPU SHARES".into(),
        "CPU CAP".into(),
        "DISK".into(),
        "PIDS".into(),
        "ACCOUNTS".into(),
        "DEFAULT".into(),
    ]];
    for p in &list {
        rows.push(vec![
            p.name.clone(),
            placement::human(p.memory_bytes),
            p.cpu_shares.to_string(),
            if p.cpu_cap == 0 {
                "-".into()
            } else {
                format!("{}%", p.cpu_cap)
            },
            placement::human(p.disk_bytes),
            if p.pids == 0 {
                "-".into()
            } else {
                p.pids.to_string()
            },
            if p.accounts.is_empty() {
                "*".into()
            } else {
                p.accounts.join(",")
            },
            if p.default {
                "yes".into()
            } else {
                String::new()
            },
        ]);
    }
    print_table(&rows);
    Ok(())
}

pub async fn container(t: &Target, cmd: ContainerCmd) -> Result<()> {
    let c = Client::new(t)?;
    let ContainerCmd::Ls = cmd;
    let v = c.call("GET", "/v1/containers", None).await?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut rows = vec![vec![
        "CONTAINER ID".into(),
        "ACCOUNT".into(),
        "NAME".into(),
        "SERVER".into(),
        "PACKAGE".into(),
        "STATUS".into(),
    ]];
    for x in v.as_array().into_iter().flatten() {
        let id = str_of(&x["id"]);
        rows.push(vec![
            id.chars().take(12).collect(),
            str_of(&x["account"]),
            str_of(&x["name"]),
            str_of(&x["server"]),
            str_of(&x["package"]),
            str_of(&x["status"]),
        ]);
    }
    print_table(&rows);
    Ok(())
}

pub async fn placement(
    t: &Target,
    strategy: Option<String>,
    reserved_ports: Option<String>,
) -> Result<()> {
    let c = Client::new(t)?;
    let v = if strategy.is_some() || reserved_ports.is_some() {
        let body = serde_json::to_vec(
            &serde_json::json!({ "strategy": strategy, "reserved_ports": reserved_ports }),
        )?;
        c.call("PUT", "/v1/placement", Some(body)).await?
    } else {
        c.call("GET", "/v1/placement", None).await?
    };
    if t.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("strategy: {}", str_of(&v["strategy"]));
        let reserved = str_of(&v["reserved_ports"]);
        println!(
            "reserved ports: {} (and atoll's own: 2375-2376, 7071, each server's agent port)",
            if reserved.is_empty() {
                "none"
            } else {
                &reserved
            }
        );
    }
    Ok(())
}

async fn put(c: &Client, p: &Package) -> Result<Package> {
    let body = serde_json::to_vec(p)?;
    Ok(serde_json::from_value(
        c.call(
            "PUT",
            &format!("/v1/packages/{}", segment(&p.name)),
            Some(body),
        )
        .await?,
    )?)
}

/// A name as one URL path segment (the head validates it).
pub(crate) fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(crate) fn str_of(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

pub(crate) fn size(v: &Value) -> String {
    v.as_u64()
        .map(placement::human)
        .unwrap_or_else(|| "-".into())
}

/// Writes an operator certificate for `name` into `out` (`ca.pem`, `cert.pem`,
/// `key.pem`), for operator commands from another machine.
pub async fn cert(t: &Target, name: &str, out: &Path) -> Result<()> {
    let c = Client::new(t)?;
    let body = serde_json::json!({ "name": name });
    let v: operator_api::CertificateResponse = serde_json::from_value(
        c.call("POST", "/v1/certificates", Some(serde_json::to_vec(&body)?))
            .await?,
    )?;
    pki::Credentials {
        ca_pem: v.ca,
        cert_pem: v.cert,
        key_pem: v.key,
    }
    .save(out)?;
    println!(
        "wrote {}/{{ca,cert,key}}.pem: atoll server ls --head <ADDR:PORT> --cert-dir {}",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `30s`, `15m`, `1h`, `7d`, or seconds.
pub fn parse_duration(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('d') => (&t[..t.len() - 1], 86400),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}: use e.g. 30m, 1h, 7d"))?;
    Ok(n.saturating_mul(mult))
}

/// `512M`, `2G`, `1.5G`, `1024` (bytes); K, M, G, T, binary.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => bail!("invalid size {s:?}: use a number with K, M, G or T"),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid size {s:?}: use a number with K, M, G or T"))?;
    if !n.is_finite() || n <= 0.0 {
        bail!("invalid size {s:?}: must be more than 0");
    }
    Ok((n * mult as f64) as u64)
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map(|c| c.chars().count()).unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// One request per connection, to the operator socket or a remote cluster port.
pub(crate) struct Client {
    inner: agent_client::AgentClient,
    place: String,
}

impl Client {
    pub(crate) fn new(t: &Target) -> Result<Client> {
        if let Some(head) = &t.head {
            let Some(dir) = &t.cert_dir else {
                bail!(
                    "--head needs --cert-dir: the directory of an operator certificate (`atoll cert`)"
                );
            };
            let creds = pki::Credentials::load(dir)?
                .with_context(|| format!("no ca.pem, cert.pem and key.pem in {}", dir.display()))?;
            let inner = agent_client::AgentClient::new(agent_client::AgentAddr::Tcp(head.clone()))
                .with_tls(pki::client_config(&creds)?, pki::HEAD_NAME)?;
            return Ok(Client {
                inner,
                place: format!("the head at {head}"),
            });
        }
        if !t.data_dir.is_dir() {
            bail!("no atoll instance at {}", t.data_dir.display());
        }
        let sock = Instance::open(&t.data_dir)?.operator_socket();
        Ok(Client {
            place: format!(
                "the head at {} (is `atoll up` running with this --data-dir?)",
                sock.display()
            ),
            inner: agent_client::AgentClient::new(agent_client::AgentAddr::Unix(sock)),
        })
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value> {
        let body = Full::new(Bytes::from(body.unwrap_or_default()))
            .map_err(|never| match never {})
            .boxed();
        let method = http::Method::from_bytes(method.as_bytes())?;
        let resp = match self.inner.send(method, path, body).await {
            Ok(r) => r,
            Err(agent_client::ClientError::Unreachable(e)) => {
                bail!("cannot reach {}: {e}", self.place)
            }
            Err(e) => bail!("{e}"),
        };
        let bytes = resp.into_body().collect().await?.to_bytes();
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).context("the head's answer")
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
    }
}
