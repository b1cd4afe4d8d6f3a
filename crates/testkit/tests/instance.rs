//! AtollInstance's plumbing, against a fake atoll (tests/fixtures/fake_atoll.py) so it
//! does not depend on the real binary: startup wait, docker CLI wiring, stop/restart,
//! cleanup through `atoll reset`, and the failure paths.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use testkit::instance::expect_success;
use testkit::testimages::target_dir;
use testkit::{AtollInstance, StartOptions, test_images};

fn fake_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_atoll.py");
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    if perm.mode() & 0o111 != 0o111 {
        perm.set_mode(0o755);
        std::fs::set_permissions(&p, perm).unwrap();
    }
    p
}

fn start_fake(args: &[&str]) -> AtollInstance {
    AtollInstance::start_with(StartOptions {
        bin: Some(fake_bin()),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

fn process_alive(pid: u32) -> bool {
    // Reaped children disappear from /proc; a zombie would show state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn drives_the_docker_cli_against_the_instance() {
    let inst = start_fake(&[]);
    assert!(inst.ping());
    assert!(inst.socket().starts_with(inst.data_dir()));
    assert!(inst.socket().as_os_str().len() < 108);
    assert_eq!(
        inst.docker_host(),
        format!("unix://{}", inst.socket().display())
    );
    assert!(inst.log().contains("fake atoll up"), "{}", inst.log());

    assert_eq!(
        inst.docker_ok(&["version", "--format", "{{.Server.Version}}"]),
        "fake-1.0"
    );
    let r = inst.api("GET", "/v1.47/_ping", None);
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));

    // `docker load -i` and `docker load` from stdin deliver the archive's exact bytes.
    let bb = &test_images().busybox;
    let want = format!(
        "loaded sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(&bb.path).unwrap()))
    );
    assert!(inst.load_busybox().contains("Loaded image: busybox:latest"));
    let out = inst.docker_stdin(&["load"], &std::fs::read(&bb.path).unwrap());
    assert!(expect_success(&["load"], &out).contains("Loaded image"));
    assert_eq!(inst.log().matches(&want).count(), 2, "{}", inst.log());

    // Failures come back with the server's message.
    let err = inst.docker_err(&["ps"]);
    assert!(err.contains("not in the fake"), "{err}");
    let out = inst.docker(&["ps"]);
    assert!(!out.status.success());

    let dir = inst.data_dir().to_path_buf();
    drop(inst);
    std::fs::remove_file(format!("{}.reset", dir.display())).unwrap();
}

#[test]
fn restart_keeps_the_data_dir_and_drop_cleans_up() {
    let mut inst = start_fake(&[]);
    let dir = inst.data_dir().to_path_buf();
    let first = inst.pid().unwrap();
    assert!(inst.is_running());

    let st = inst.stop().unwrap();
    assert!(st.success(), "{st}");
    assert!(!inst.is_running());
    assert!(!inst.ping());
    assert!(!process_alive(first));

    inst.restart();
    let second = inst.pid().unwrap();
    assert_ne!(first, second);
    assert!(inst.ping());
    assert_eq!(inst.data_dir(), dir);
    let starts = std::fs::read_to_string(dir.join("starts")).unwrap();
    assert_eq!(starts.lines().count(), 2, "{starts}");

    // restart on a running instance stops it first.
    inst.restart();
    assert!(!process_alive(second));
    let third = inst.pid().unwrap();

    drop(inst);
    assert!(!process_alive(third), "atoll left running");
    let marker = PathBuf::from(format!("{}.reset", dir.display()));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        dir.to_string_lossy()
    );
    std::fs::remove_file(&marker).unwrap();
    assert!(!dir.exists(), "data dir left behind");
}

#[test]
fn startup_failure_panics_with_the_log() {
    let err = std::panic::catch_unwind(|| start_fake(&["--fail-fast"])).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("exited during startup"), "{msg}");
    assert!(msg.contains("failing on purpose"), "{msg}");
    // Drop ran during the unwind: `atoll reset` removed the data dir.
    let dir = msg
        .split_once("data dir ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(PathBuf::from)
        .unwrap();
    let marker = PathBuf::from(format!("{}.reset", dir.display()));
    assert!(marker.exists(), "reset did not run for {}", dir.display());
    std::fs::remove_file(&marker).unwrap();
    assert!(!dir.exists());
}

#[test]
fn a_failing_test_keeps_the_log() {
    let name = format!("failing_case_{}", std::process::id());
    let n = name.clone();
    let dir = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let inst = start_fake(&[]);
            let dir = inst.data_dir().to_path_buf();
            std::panic::panic_any(dir);
        })
        .unwrap()
        .join()
        .unwrap_err()
        .downcast::<PathBuf>()
        .unwrap();
    let kept = target_dir().join("atoll-test-logs").join(format!(
        "{n}-{}.log",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let log = std::fs::read_to_string(&kept).unwrap();
    assert!(log.contains("fake atoll up"), "{log}");
    std::fs::remove_file(&kept).unwrap();
    let _ = std::fs::remove_file(format!("{}.reset", dir.display()));
    assert!(!dir.exists());
}
