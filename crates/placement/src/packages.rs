//! Packages size containers (Triton's model): memory, CPU weight and cap, disk,
//! pids. `-m` picks the smallest package that fits; the label
//! `com.joyent.package=<name>` picks one by name; neither picks the default.

use serde::{Deserialize, Serialize};

/// The label that names a package.
pub const PACKAGE_LABEL: &str = "com.joyent.package";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub memory_bytes: u64,
    /// Relative CPU weight (cgroup cpu.shares).
    pub cpu_shares: u64,
    /// Hard CPU cap in percent of one CPU; 0 is none.
    pub cpu_cap: u32,
    pub disk_bytes: u64,
    /// Most processes; 0 is no limit.
    pub pids: u64,
    /// Accounts that may use it; empty is every account.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Used when a create asks for neither memory nor a package.
    #[serde(default)]
    pub default: bool,
}

impl Package {
    pub fn allows(&self, account: &str) -> bool {
        self.accounts.is_empty() || self.accounts.iter().any(|a| a == account)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// Also the answer for a package the account may not use: its existence is
    /// not the caller's business.
    #[error("no such package: {0}")]
    NoSuchPackage(String),
    #[error("package {name} has {have} memory, less than the {want} asked for")]
    TooSmall {
        name: String,
        have: String,
        want: String,
    },
    #[error("no package offers {0} memory or more")]
    NoneFits(String),
    #[error("no package is available to this account")]
    NoPackages,
}

/// The package for a create: by name, else the smallest holding `memory`, else
/// the default (or the smallest) one the account may use.
pub fn choose_package<'a>(
    packages: &'a [Package],
    account: &str,
    by_name: Option<&str>,
    memory: Option<u64>,
) -> Result<&'a Package, PackageError> {
    let mut usable: Vec<&Package> = packages.iter().filter(|p| p.allows(account)).collect();
    usable.sort_by(|a, b| (a.memory_bytes, &a.name).cmp(&(b.memory_bytes, &b.name)));
    if let Some(name) = by_name {
        let p = usable
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| PackageError::NoSuchPackage(name.to_string()))?;
        if let Some(m) = memory
            && m > p.memory_bytes
        {
            return Err(PackageError::TooSmall {
                name: p.name.clone(),
                have: crate::human(p.memory_bytes),
                want: crate::human(m),
            });
        }
        return Ok(p);
    }
    if let Some(m) = memory.filter(|m| *m > 0) {
        return usable
            .iter()
            .find(|p| p.memory_bytes >= m)
            .copied()
            .ok_or_else(|| PackageError::NoneFits(crate::human(m)));
    }
    usable
        .iter()
        .find(|p| p.default)
        .or(usable.first())
        .copied()
        .ok_or(PackageError::NoPackages)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    fn pkg(name: &str, mb: u64, accounts: &[&str], default: bool) -> Package {
        Package {
            name: name.into(),
            memory_bytes: mb * MB,
            cpu_shares: mb,
            cpu_cap: 100,
            disk_bytes: 10 * 1024 * MB,
            pids: 1024,
            accounts: accounts.iter().map(|s| s.to_string()).collect(),
            default,
        }
    }

    #[test]
    fn smallest_fitting_by_name_and_default() {
        let p = [
            pkg("g-1G", 1024, &[], true),
            pkg("g-256M", 256, &[], false),
            pkg("g-512M", 512, &[], false),
            pkg("alice-only-128M", 128, &["alice"], false),
        ];
        let pick = |acct, name, mem| choose_package(&p, acct, name, mem).map(|p| p.name.clone());
        assert_eq!(pick("bob", None, Some(300 * MB)).unwrap(), "g-512M");
        assert_eq!(pick("bob", None, Some(256 * MB)).unwrap(), "g-256M");
        assert_eq!(pick("bob", None, Some(100 * MB)).unwrap(), "g-256M");
        assert_eq!(
            pick("alice", None, Some(100 * MB)).unwrap(),
            "alice-only-128M"
        );
        assert_eq!(pick("bob", None, None).unwrap(), "g-1G");
        assert_eq!(pick("bob", Some("g-512M"), None).unwrap(), "g-512M");
        assert_eq!(
            pick("bob", Some("g-512M"), Some(512 * MB)).unwrap(),
            "g-512M"
        );
        assert_eq!(
            pick("bob", Some("g-512M"), Some(1024 * MB)).unwrap_err(),
            PackageError::TooSmall {
                name: "g-512M".into(),
                have: "512 MB".into(),
                want: "1 GB".into()
            }
        );
        // Another account's package is as unknown as a missing one.
        assert_eq!(
            pick("bob", Some("alice-only-128M"), None).unwrap_err(),
            PackageError::NoSuchPackage("alice-only-128M".into())
        );
        assert_eq!(
            pick("bob", None, Some(4096 * MB)).unwrap_err().to_string(),
            "no package offers 4 GB memory or more"
        );
        assert_eq!(
            choose_package(&p[3..], "bob", None, None).unwrap_err(),
            PackageError::NoPackages
        );
    }

    #[test]
    fn without_a_default_the_smallest_is_used() {
        let p = [pkg("b", 512, &[], false), pkg("a", 256, &[], false)];
        assert_eq!(choose_package(&p, "x", None, None).unwrap().name, "a");
    }
}
