//! `atoll reset`: removes everything one instance created on this server —
//! containers (and their shims), mounts, network devices, cgroups.

use std::path::{Path, PathBuf};

use crate::error::AgentError;
use crate::runc::{Runc, Runtime};

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = crate::rootfs::mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// Names the agent's public interface (written at start), for [`reset`].
pub(crate) const PUBLIC_INTERFACE_FILE: &str = "public-interface";

pub async fn reset(agent_dir: &Path, instance: &str) -> Result<(), AgentError> {
    let runc = Runc::new(PathBuf::from("runc"), agent_dir.join("runc"));
    let containers = agent_dir.join("containers");
    if let Ok(entries) = std::fs::read_dir(&containers) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = runc.kill(&id, "SIGKILL", true);
            let _ = runc.delete(&id, true);
        }
    }
    // Shims exit once their container is gone; give them a moment, then make sure.
    for _ in 0..50 {
        if !any_shim_alive(&containers) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for m in mounts_under(agent_dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    net::NodeNet::teardown(instance, &agent_dir.join("netns")).await?;
    if let Ok(iface) = std::fs::read_to_string(agent_dir.join(PUBLIC_INTERFACE_FILE)) {
        net::public::teardown(iface.trim()).await?;
    }
    let parent = format!("atoll-{instance}");
    if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in ctrls.flatten() {
            let dir = c.path().join(&parent);
            if dir.is_dir() {
                if let Ok(kids) = std::fs::read_dir(&dir) {
                    for k in kids.flatten() {
                        if k.path().is_dir() {
                            let _ = std::fs::remove_dir(k.path());
                        }
                    }
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
    Ok(())
}

fn any_shim_alive(containers: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(containers) else {
        return false;
    };
    entries.flatten().any(|e| {
        let Ok(dir) = std::fs::File::open(e.path()) else {
            return false;
        };
        let short = format!(
            "/proc/self/fd/{}/control.sock",
            std::os::fd::AsRawFd::as_raw_fd(&dir)
        );
        std::os::unix::net::UnixStream::connect(short).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_finds_proc() {
        assert!(
            mounts_under(Path::new("/proc"))
                .iter()
                .any(|p| p == Path::new("/proc"))
        );
        assert!(mounts_under(Path::new("/nonexistent-atoll")).is_empty());
    }
}
