//! The head's configuration file (`/etc/atoll/config.json`, or `--config`):
//! what an operator keeps in one place, in dockerd's `daemon.json` words.
//! Flags add to it (lists) or override it (single values).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Where the head looks when `--config` is not given; its absence is fine.
pub const DEFAULT_PATH: &str = "/etc/atoll/config.json";
/// A configuration file is a few lines; anything larger is a mistake.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HeadConfig {
    /// Docker Hub mirrors, tried in order before Docker Hub itself.
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
    /// Registries spoken to in plain HTTP when they do not speak TLS.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Registries' CAs and client certificates (Docker's `certs.d` layout).
    pub registry_certs: Option<PathBuf>,
    /// Networks (CIDRs) besides the public internet that a build's
    /// `ADD <url>` may download from.
    #[serde(default)]
    pub build_url_allow: Vec<String>,
}

impl HeadConfig {
    /// Reads `path`; a missing file is an empty configuration unless it was
    /// named explicitly.
    pub fn load(path: &Path, explicit: bool) -> Result<HeadConfig> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(HeadConfig::default());
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut text = String::new();
        file.take(MAX_BYTES + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        if text.len() as u64 > MAX_BYTES {
            bail!("{}: larger than {MAX_BYTES} bytes", path.display());
        }
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dockerd_style_keys_and_refuses_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"registry-mirrors": ["https://m1.example"], "insecure-registries": ["10.0.0.0/8"]}"#,
        )
        .unwrap();
        let c = HeadConfig::load(&p, true).unwrap();
        assert_eq!(c.registry_mirrors, ["https://m1.example"]);
        assert_eq!(c.insecure_registries, ["10.0.0.0/8"]);
        assert_eq!(c.registry_certs, None);

        std::fs::write(&p, r#"{"registry-mirors": []}"#).unwrap();
        let e = format!("{:#}", HeadConfig::load(&p, true).unwrap_err());
        assert!(e.contains("unknown field `registry-mirors`"), "{e}");

        let missing = dir.path().join("absent.json");
        assert_eq!(
            HeadConfig::load(&missing, false).unwrap(),
            HeadConfig::default()
        );
        let e = format!("{:#}", HeadConfig::load(&missing, true).unwrap_err());
        assert!(
            e.contains("absent.json") && e.contains("No such file"),
            "{e}"
        );
    }
}
