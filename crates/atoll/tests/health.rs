//! Healthchecks through the real docker CLI against a temporary `atoll up`.

use std::time::Duration;

use testkit::{AtollInstance, wait_for};

fn started() -> AtollInstance {
    let a = AtollInstance::start();
    a.load_busybox();
    a
}

fn health(a: &AtollInstance, name: &str) -> String {
    a.docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", name])
}

#[test]
fn health_goes_starting_unhealthy_healthy_and_shows_everywhere() {
    let a = started();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "hc",
        "--health-cmd",
        "cat /tmp/ok",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "busybox",
        "sleep",
        "1000",
    ]);
    assert_eq!(health(&a, "hc"), "starting");
    assert!(
        a.docker_ok(&["ps", "--format", "{{.Status}}"])
            .contains("(health: starting)")
    );
    wait_for(
        || health(&a, "hc") == "unhealthy",
        Duration::from_secs(20),
        "unhealthy",
    );
    let streak: i64 = a
        .docker_ok(&["inspect", "-f", "{{.State.Health.FailingStreak}}", "hc"])
        .parse()
        .unwrap();
    assert!(streak >= 2);
    let log = a.docker_ok(&["inspect", "-f", "{{json .State.Health.Log}}", "hc"]);
    let log: serde_json::Value = serde_json::from_str(&log).unwrap();
    let last = log.as_array().unwrap().last().unwrap();
    assert_eq!(last["ExitCode"], 1);
    assert!(
        last["Output"].as_str().unwrap().contains("No such file"),
        "{last}"
    );

    a.docker_ok(&["exec", "hc", "sh", "-c", "echo fine > /tmp/ok"]);
    wait_for(
        || health(&a, "hc") == "healthy",
        Duration::from_secs(20),
        "healthy",
    );
    let log = a.docker_ok(&["inspect", "-f", "{{json .State.Health.Log}}", "hc"]);
    assert!(log.contains("fine"), "{log}");
    assert!(log.as_str().len() > 10);
    assert!(
        a.docker_ok(&["ps", "--format", "{{.Status}}"])
            .contains("(healthy)")
    );
    assert_eq!(
        a.docker_ok(&["ps", "-q", "--filter", "health=healthy"])
            .lines()
            .count(),
        1
    );
    assert_eq!(
        a.docker_ok(&["ps", "-q", "--filter", "health=unhealthy"]),
        ""
    );
    // Probes do not pile up as exec instances.
    assert_eq!(a.docker_ok(&["inspect", "-f", "{{.ExecIDs}}", "hc"]), "[]");
    let err = a.docker_err(&["ps", "--filter", "health=sick"]);
    assert!(
        err.contains("Unrecognised filter value for health"),
        "{err}"
    );
}

#[test]
fn a_probe_past_its_timeout_fails_and_none_disables() {
    let a = started();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--health-cmd",
        "sleep 5",
        "--health-timeout",
        "300ms",
        "--health-interval",
        "200ms",
        "--health-retries",
        "1",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_for(
        || health(&a, "slow") == "unhealthy",
        Duration::from_secs(20),
        "unhealthy",
    );
    let log = a.docker_ok(&["inspect", "-f", "{{json .State.Health.Log}}", "slow"]);
    assert!(log.contains("Health check exceeded timeout"), "{log}");
    assert!(log.contains("\"ExitCode\":-1"), "{log}");

    // Test NONE (what --no-healthcheck sends) means no healthcheck at all.
    let r = a.api(
        "POST",
        "/containers/create?name=nohc",
        Some(
            &serde_json::json!({"Image": "busybox", "Cmd": ["sleep", "100"],
                                  "Healthcheck": {"Test": ["NONE"]}}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    a.docker_ok(&["start", "nohc"]);
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.Health}}", "nohc"]),
        "<nil>"
    );
    assert_eq!(
        a.docker_ok(&["ps", "-q", "--filter", "health=none"])
            .lines()
            .count(),
        1
    );

    for (hc, msg) in [
        (
            serde_json::json!({"Test": ["CMD", "true"], "Interval": 1000}),
            "cannot be less than 1ms",
        ),
        (
            serde_json::json!({"Test": ["CMD", "true"], "Retries": -1}),
            "cannot be negative",
        ),
        (
            serde_json::json!({"Test": ["BOGUS"]}),
            "invalid healthcheck",
        ),
    ] {
        let r = a.api(
            "POST",
            "/containers/create",
            Some(&serde_json::json!({"Image": "busybox", "Healthcheck": hc})),
        );
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(msg), "{}", r.text());
    }
}
