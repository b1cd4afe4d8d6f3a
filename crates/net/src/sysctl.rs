//! Kernel knobs under /proc/sys. Net sysctls resolve against the writing thread's network
//! namespace, which is what tests running in a private namespace rely on.

use crate::error::NetError;

pub trait Sysctl: Send + Sync {
    /// Sets `key` (slash form, e.g. "net/ipv4/ip_forward") to `value`.
    fn set(&self, key: &str, value: &str) -> Result<(), NetError>;
}

pub struct ProcSysctl;

impl Sysctl for ProcSysctl {
    fn set(&self, key: &str, value: &str) -> Result<(), NetError> {
        let path = format!("/proc/sys/{key}");
        let err = |source| NetError::Sysctl {
            key: key.replace('/', "."),
            source,
        };
        // Skip the write when already set: rewriting ip_forward is not free.
        if let Ok(cur) = std::fs::read_to_string(&path)
            && cur.trim() == value
        {
            return Ok(());
        }
        std::fs::write(&path, value).map_err(err)
    }
}
