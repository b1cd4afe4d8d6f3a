//! Shared helpers of the runtime tests (real mounts, real runc, as root): a
//! busybox rootfs, an overlay-mounted container dir, and Drop guards that
//! remove runc containers, mounts and cgroups even when a test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agent::bundle::{ContainerPaths, write_bundle};
use agent::rootfs::{Mounter, RealMounter};
use agent::runc::{Runc, Runtime};
use agent::shim::ShimArgs;
use agent_client::{ContainerSpec, ProcessSpec};

pub const RUNC: &str = "/usr/sbin/runc";
pub const SHIM_EXE: &str = env!("CARGO_BIN_EXE_atoll-test-shim");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Unique per process and call: tests run in parallel (threads and processes).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A minimal image layer: static busybox with a few applet links, and
/// /etc/passwd with root and nobody.
pub fn busybox_layer(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).expect("bin");
    std::fs::create_dir_all(dir.join("etc")).expect("etc");
    std::fs::create_dir_all(dir.join("tmp")).expect("tmp");
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "sleep", "true", "id", "ls", "tty", "head", "env", "hostname",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).expect("applet");
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
}

pub fn spec(id: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        id: id.to_string(),
        process: ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        },
        hostname: "testhost".into(),
        log_max_size: 0,
        log_max_files: 1,
        ..Default::default()
    }
}

/// One container's directory with its rootfs mounted; cleans up on drop.
pub struct Ctr {
    pub tmp: tempfile::TempDir,
    pub id: String,
    pub paths: ContainerPaths,
    pub runc: Runc,
    pub cgroup_parent: String,
}

impl Ctr {
    /// Mounts a busybox rootfs for a new container.
    pub fn new() -> Ctr {
        // Short paths: unix socket paths are limited to 108 bytes.
        let tmp = tempfile::Builder::new()
            .prefix("rt")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let id = unique("c");
        let layer = tmp.path().join("layer");
        busybox_layer(&layer);
        let paths = ContainerPaths::new(&tmp.path().join("containers"), &id);
        RealMounter
            .mount_overlay(&[layer], &paths.upper, &paths.work, &paths.rootfs, None)
            .expect("mount overlay");
        let runc = Runc::new(PathBuf::from(RUNC), tmp.path().join("runc"));
        Ctr {
            tmp,
            id,
            paths,
            runc,
            cgroup_parent: unique("atoll-test-"),
        }
    }

    pub fn spec(&self, args: &[&str]) -> ContainerSpec {
        spec(&self.id, args)
    }

    pub fn write_bundle(&self, spec: &ContainerSpec) {
        write_bundle(spec, &self.paths, None, &self.cgroup_parent).expect("write bundle");
    }

    pub fn shim_args(&self, spec: &ContainerSpec) -> ShimArgs {
        ShimArgs {
            id: self.id.clone(),
            bundle: self.paths.bundle.clone(),
            state_dir: self.paths.root.clone(),
            runc_root: self.runc.root().to_path_buf(),
            runc_binary: PathBuf::from(RUNC),
            tty: spec.process.tty,
            open_stdin: spec.process.open_stdin,
            log_max_size: spec.log_max_size,
            log_max_files: spec.log_max_files,
            exec: false,
        }
    }

    /// Sends `wait` on the control socket and returns the exit JSON; if the
    /// shim already finished (and removed its socket), reads exit.json as the
    /// agent does.
    pub fn wait(&self) -> serde_json::Value {
        if let Ok(v) = try_control(&self.paths.control_sock, "wait") {
            return v;
        }
        let b = std::fs::read(&self.paths.exit_file).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&self.paths.shim_log).unwrap_or_default();
            panic!("no shim and no exit file ({e}); shim log: {log}")
        });
        serde_json::from_slice(&b).expect("exit json")
    }

    /// The json-file log entries (current file only).
    pub fn log_entries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.paths.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json log line"))
            .collect()
    }

    pub fn log_text(&self, stream: &str) -> String {
        self.log_entries()
            .iter()
            .filter(|e| e["stream"] == stream)
            .map(|e| e["log"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = self.runc.kill(&self.id, "SIGKILL", true);
        let _ = self.runc.delete(&self.id, true);
        // Let the shim see the exit and go.
        let deadline = Instant::now() + Duration::from_secs(5);
        while UnixStream::connect(&self.paths.control_sock).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = RealMounter.unmount(&self.paths.rootfs);
        if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in ctrls.flatten() {
                let dir = c.path().join(&self.cgroup_parent);
                let _ = std::fs::remove_dir(dir.join(&self.id));
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

/// One request on a shim's control socket; the JSON answer.
pub fn control(sock: &Path, cmd: &str) -> serde_json::Value {
    try_control(sock, cmd).expect("control request")
}

pub fn try_control(sock: &Path, cmd: &str) -> std::io::Result<serde_json::Value> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// Connects to attach.sock with the given header.
pub fn attach(sock: &Path, stdin: bool, stdout: bool, stderr: bool) -> UnixStream {
    let mut s = UnixStream::connect(sock).expect("connect attach socket");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(
        format!("{{\"stdin\":{stdin},\"stdout\":{stdout},\"stderr\":{stderr}}}\n").as_bytes(),
    )
    .expect("write header");
    let mut ack = [0u8; 3];
    s.read_exact(&mut ack).expect("attach ack");
    assert_eq!(&ack, b"ok\n");
    s
}

/// Reads Docker frames until EOF: (stdout, stderr).
pub fn read_frames(mut s: impl Read) -> (String, String) {
    let mut out = String::new();
    let mut err = String::new();
    loop {
        let mut h = [0u8; 8];
        if s.read_exact(&mut h).is_err() {
            break;
        }
        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).expect("frame payload");
        let text = String::from_utf8_lossy(&p);
        match h[0] {
            1 => out.push_str(&text),
            2 => err.push_str(&text),
            b => panic!("bad stream byte {b}"),
        }
    }
    (out, err)
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
