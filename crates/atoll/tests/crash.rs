//! Crashes at every step of create, start, stop and rm (`ATOLL_CRASH_AT`: the
//! head, with its in-process agent, SIGKILLs itself there), then a restart
//! without the fault: no container is lost, duplicated or left half-made, and
//! `docker ps` converges to what the runtime actually runs.

use std::time::Duration;

use testkit::{AtollInstance, StartOptions, wait_for};

fn crashing_at(point: &str) -> AtollInstance {
    let a = AtollInstance::start_with(StartOptions {
        env: vec![("ATOLL_CRASH_AT".into(), point.into())],
        ..Default::default()
    });
    a.load_busybox();
    a
}

/// The command fails (the server died under it); the server is gone; it comes
/// back without the fault.
fn crash_and_restart(a: &mut AtollInstance, args: &[&str], point: &str) {
    let out = a.docker(args);
    assert!(
        !out.status.success(),
        "docker {args:?} should have been cut off at {point}"
    );
    wait_for(|| !a.is_running(), Duration::from_secs(10), "the crash");
    assert!(
        a.log().contains(&format!("crash injected at {point}")),
        "{}",
        a.log_tail(20)
    );
    a.set_env(Vec::new());
    a.restart();
}

/// Container ids the runtime (runc) knows for this instance.
fn runc_ids(a: &AtollInstance) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(a.data_dir().join("agent/runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn state(a: &AtollInstance, name: &str) -> String {
    a.docker_ok(&["inspect", "-f", "{{.State.Status}}", name])
}

/// After recovery the container can finish its life: removal leaves nothing.
fn remove_cleanly(a: &AtollInstance, name: &str) {
    let id = a.docker_ok(&["inspect", "-f", "{{.Id}}", name]);
    a.docker_ok(&["rm", "-f", name]);
    assert_eq!(a.docker_ok(&["ps", "-aq"]), "");
    assert!(!runc_ids(a).contains(&id), "{id} left in runc");
}

#[test]
fn crash_after_the_create_is_recorded() {
    let point = "head:create:after-insert";
    let mut a = crashing_at(point);
    crash_and_restart(
        &mut a,
        &["create", "--name", "cc", "busybox", "sleep", "300"],
        point,
    );
    // Created once, whole: it starts.
    assert_eq!(a.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]), "cc");
    a.docker_ok(&["start", "cc"]);
    assert_eq!(state(&a, "cc"), "running");
    remove_cleanly(&a, "cc");
}

#[test]
fn crash_around_the_agents_start() {
    for point in [
        "head:start:before-agent",
        "head:start:after-agent",
        "agent:start:after-shim",
    ] {
        let mut a = crashing_at(point);
        a.docker_ok(&["create", "--name", "cs", "busybox", "sleep", "300"]);
        crash_and_restart(&mut a, &["start", "cs"], point);
        let id = a.docker_ok(&["inspect", "-f", "{{.Id}}", "cs"]);
        // Converges to the truth: running if the runtime runs it, else startable.
        let running = runc_ids(&a).contains(&id);
        if point == "head:start:before-agent" {
            assert!(!running, "{point}: started without the agent being asked");
        } else {
            wait_for(
                || state(&a, "cs") == "running",
                Duration::from_secs(10),
                &format!("the store to see the run ({point})"),
            );
        }
        if state(&a, "cs") != "running" {
            a.docker_ok(&["start", "cs"]);
        }
        assert_eq!(a.docker_ok(&["exec", "cs", "echo", "ok"]), "ok", "{point}");
        assert_eq!(
            a.docker_ok(&["ps", "-q"]).lines().count(),
            1,
            "{point}: duplicated"
        );
        remove_cleanly(&a, "cs");
    }
}

#[test]
fn crash_after_the_agent_stopped_it() {
    let point = "head:stop:after-agent";
    let mut a = crashing_at(point);
    a.docker_ok(&["run", "-d", "--name", "st", "busybox", "sleep", "300"]);
    crash_and_restart(&mut a, &["stop", "-t", "1", "st"], point);
    wait_for(
        || state(&a, "st") == "exited",
        Duration::from_secs(10),
        "the stop to be seen",
    );
    a.docker_ok(&["start", "st"]);
    assert_eq!(state(&a, "st"), "running");
    remove_cleanly(&a, "st");
}

#[test]
fn crash_in_the_middle_of_a_removal() {
    for point in ["head:rm:before-agent", "head:rm:after-agent"] {
        let mut a = crashing_at(point);
        a.docker_ok(&["run", "-d", "--name", "rr", "busybox", "sleep", "300"]);
        crash_and_restart(&mut a, &["rm", "-f", "rr"], point);
        // Still listed (not lost silently), and removable now.
        assert_eq!(
            a.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]),
            "rr",
            "{point}"
        );
        remove_cleanly(&a, "rr");
    }
}

#[test]
fn a_server_that_dies_while_starting_a_container_converges() {
    // One simulated server: its agent is its own process, and dies alone.
    let point = "agent:start:after-shim";
    let a = AtollInstance::start_with(StartOptions {
        args: vec!["--nodes".into(), "1".into()],
        env: vec![("ATOLL_CRASH_AT".into(), point.into())],
        ..Default::default()
    });
    a.load_busybox();
    let out = a.docker(&["run", "-d", "--name", "ac", "busybox", "sleep", "300"]);
    assert!(!out.status.success(), "the start should have been cut off");
    // The head lives on; the server comes back (after 3 s) and reports the
    // run it adopted, which the head had never recorded.
    wait_for(
        || state(&a, "ac") == "running",
        Duration::from_secs(20),
        "the adopted run to show",
    );
    assert_eq!(a.docker_ok(&["ps", "-q"]).lines().count(), 1);
    let log = std::fs::read_to_string(a.data_dir().join("nodes/node-1/agent.log")).unwrap();
    assert!(log.contains(&format!("crash injected at {point}")), "{log}");
    // Removal needs no start: it completes on the restarted server.
    a.docker_ok(&["rm", "-f", "ac"]);
    assert_eq!(a.docker_ok(&["ps", "-aq"]), "");
}
