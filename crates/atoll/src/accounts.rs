//! `atoll account …`: tenant accounts and their certificates (operator).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::instance::Instance;
use crate::operator::{Client, Target, parse_size, print_table, segment, size, str_of};

#[derive(Subcommand, Debug)]
pub enum AccountCmd {
    /// List accounts: state, limits, containers, memory reserved, storage held.
    Ls,
    /// Create an account.
    Create { name: String },
    /// Refuse the account's certificates (its containers keep running).
    Disable { name: String },
    /// Accept the account's certificates again.
    Enable { name: String },
    /// Set the account's limits (`none` removes one; unset options keep theirs).
    Limit {
        name: String,
        /// Most containers, in any state.
        #[arg(long)]
        containers: Option<String>,
        /// Most memory, summed over its containers' packages, e.g. 8G.
        #[arg(long)]
        memory: Option<String>,
        /// Most storage, e.g. 100G: its images, volumes (their sizes) and
        /// containers (package disk and log bound).
        #[arg(long)]
        storage: Option<String>,
    },
    /// Delete an account that holds nothing.
    Rm { name: String },
    /// Write a client certificate (ca.pem, cert.pem, key.pem) for the Docker
    /// API over TLS, and print the environment that uses it.
    Cert {
        name: String,
        /// The directory to write it to.
        #[arg(long)]
        out: PathBuf,
        /// How long it is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// List the certificates issued to the account.
    Certs { name: String },
    /// Revoke a certificate (by serial, from `atoll account certs`).
    Revoke { serial: String },
}

pub async fn account(t: &Target, cmd: AccountCmd) -> Result<()> {
    let c = Client::new(t)?;
    let path = |name: &str| format!("/v1/accounts/{}", segment(name));
    let patch = |v: Value| Some(serde_json::to_vec(&v).unwrap_or_default());
    let v = match cmd {
        AccountCmd::Ls => c.call("GET", "/v1/accounts", None).await?,
        AccountCmd::Create { name } => {
            c.call("POST", "/v1/accounts", patch(json!({ "name": name })))
                .await?
        }
        AccountCmd::Disable { name } => {
            c.call("PATCH", &path(&name), patch(json!({ "disabled": true })))
                .await?
        }
        AccountCmd::Enable { name } => {
            c.call("PATCH", &path(&name), patch(json!({ "disabled": false })))
                .await?
        }
        AccountCmd::Limit {
            name,
            containers,
            memory,
            storage,
        } => {
            let current = c.call("GET", &path(&name), None).await?;
            let mut limits = current["limits"].clone();
            if let Some(n) = containers {
                limits["containers"] =
                    match n.as_str() {
                        "none" => Value::Null,
                        n => json!(n.parse::<u64>().map_err(|_| anyhow::anyhow!(
                            "--containers: a number or none, got {n}"
                        ))?),
                    };
            }
            for (key, value) in [("memory_bytes", memory), ("storage_bytes", storage)] {
                if let Some(v) = value {
                    limits[key] = match v.as_str() {
                        "none" => Value::Null,
                        v => json!(parse_size(v)?),
                    };
                }
            }
            c.call("PATCH", &path(&name), patch(json!({ "limits": limits })))
                .await?
        }
        AccountCmd::Rm { name } => {
            c.call("DELETE", &path(&name), None).await?;
            println!("deleted {name}");
            return Ok(());
        }
        AccountCmd::Cert { name, out, days } => {
            let v = c
                .call(
                    "POST",
                    &format!("{}/certificates", path(&name)),
                    patch(json!({ "days": days })),
                )
                .await?;
            return write_cert(t, &v, &out);
        }
        AccountCmd::Certs { name } => {
            let v = c
                .call("GET", &format!("{}/certificates", path(&name)), None)
                .await?;
            if !t.json {
                let mut rows = vec![vec![
                    "SERIAL".into(),
                    "ISSUED".into(),
                    "EXPIRES".into(),
                    "REVOKED".into(),
                ]];
                for x in v.as_array().into_iter().flatten() {
                    rows.push(vec![
                        str_of(&x["serial"]),
                        str_of(&x["issued"]),
                        str_of(&x["expires"]),
                        x["revoked"].as_str().unwrap_or("-").to_string(),
                    ]);
                }
                print_table(&rows);
                return Ok(());
            }
            v
        }
        AccountCmd::Revoke { serial } => {
            c.call(
                "POST",
                &format!("/v1/certificates/{}/revoke", segment(&serial)),
                None,
            )
            .await?
        }
    };
    if t.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list = match v {
        Value::Array(a) => a,
        Value::Null => return Ok(()),
        one => vec![one],
    };
    if list.first().is_some_and(|x| x.get("serial").is_some()) {
        println!("revoked {}", str_of(&list[0]["serial"]));
        return Ok(());
    }
    let mut rows = vec![vec![
        "NAME".into(),
        "STATE".into(),
        "CONTAINERS".into(),
        "MEMORY".into(),
        "STORAGE".into(),
        "LIMITS".into(),
        "HOST IDS".into(),
    ]];
    for a in &list {
        let l = &a["limits"];
        let limits = match (
            l["containers"].as_u64(),
            l["memory_bytes"].as_u64(),
            l["storage_bytes"].as_u64(),
        ) {
            (None, None, None) => "-".to_string(),
            (c, m, s) => format!(
                "{} containers, {} memory, {} storage",
                c.map(|c| c.to_string()).unwrap_or_else(|| "any".into()),
                m.map(placement::human).unwrap_or_else(|| "any".into()),
                s.map(placement::human).unwrap_or_else(|| "any".into())
            ),
        };
        let st = &a["storage"];
        let held = ["images", "volumes", "containers"]
            .iter()
            .map(|k| st[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        rows.push(vec![
            str_of(&a["name"]),
            if a["disabled"].as_bool() == Some(true) {
                "disabled".into()
            } else {
                "enabled".into()
            },
            a.get("containers")
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            size(&a["memory_reserved"]),
            placement::human(held),
            limits,
            match (
                a["userns"]["host_base"].as_u64(),
                a["userns"]["size"].as_u64(),
            ) {
                (Some(b), Some(n)) => format!("{b}-{}", b + n - 1),
                _ => "-".into(),
            },
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// Writes `ca.pem`, `cert.pem`, `key.pem` and prints how to use them.
fn write_cert(t: &Target, v: &Value, out: &Path) -> Result<()> {
    let creds = pki::Credentials {
        ca_pem: str_of(&v["ca"]),
        cert_pem: str_of(&v["cert"]),
        key_pem: str_of(&v["key"]),
    };
    if creds.cert_pem.is_empty() {
        bail!("the head sent no certificate");
    }
    creds.save(out)?;
    let out = out.canonicalize()?;
    // Where the Docker API listens: known locally, a guess for a remote head.
    let host = match &t.head {
        None => std::fs::read_to_string(
            Instance::open(&t.data_dir)?
                .head_dir()
                .join("docker-tls.addr"),
        )
        .map(|a| format!("tcp://{}", a.trim()))
        .unwrap_or_else(|_| "tcp://127.0.0.1:2376".into()),
        Some(h) => format!(
            "tcp://{}:2376",
            h.rsplit_once(':').map(|(host, _)| host).unwrap_or(h)
        ),
    };
    if t.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "serial": v["serial"], "expires": v["expires"],
                "DOCKER_HOST": host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": out,
            }))?
        );
    } else {
        println!("export DOCKER_HOST={host}");
        println!("export DOCKER_TLS_VERIFY=1");
        println!("export DOCKER_CERT_PATH={}", out.display());
        eprintln!(
            "certificate {} valid until {}",
            str_of(&v["serial"]),
            str_of(&v["expires"])
        );
    }
    Ok(())
}
