//! `docker events` through the real docker CLI against a temporary `atoll up`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use testkit::{AtollInstance, docker_cli, wait_for};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Events since `since` up to now (plus a moment), as "Type Action name extra".
fn events(a: &AtollInstance, since: f64, filters: &[&str]) -> Vec<String> {
    let since = format!("{since:.3}");
    let until = format!("{:.3}", now() + 0.5);
    let mut args = vec!["events", "--since", &since, "--until", &until];
    for f in filters {
        args.push("--filter");
        args.push(f);
    }
    args.extend([
        "--format",
        "{{.Type}} {{.Action}} {{or (index .Actor.Attributes \"name\") .Actor.ID}}{{with .Actor.Attributes.exitCode}} exit={{.}}{{end}}{{with .Actor.Attributes.signal}} sig={{.}}{{end}}",
    ]);
    a.docker_ok(&args).lines().map(String::from).collect()
}

#[test]
fn lifecycle_events_in_dockers_order() {
    let a = AtollInstance::start();
    a.load_busybox();
    let t0 = now();
    a.docker_ok(&["run", "-d", "--name", "ev", "busybox", "sleep", "1000"]);
    let out = a.docker(&["exec", "ev", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    a.docker_ok(&["rename", "ev", "ev2"]);
    a.docker_ok(&["pause", "ev2"]);
    a.docker_ok(&["unpause", "ev2"]);
    a.docker_ok(&["kill", "-s", "HUP", "ev2"]);
    a.docker_ok(&["stop", "-t", "1", "ev2"]);
    a.docker_ok(&["start", "ev2"]);
    a.docker_ok(&["rm", "-f", "ev2"]);
    let got = events(&a, t0, &["type=container"]);
    let want = [
        "container create ev",
        "container start ev",
        "container exec_create: sh -c exit 3 ev",
        "container exec_start: sh -c exit 3 ev",
        "container exec_die ev exit=3",
        "container rename ev2",
        "container pause ev2",
        "container unpause ev2",
        "container kill ev2 sig=1",
        "container kill ev2 sig=15",
        "container die ev2 exit=137",
        "container stop ev2",
        "container start ev2",
        "container kill ev2 sig=9",
        "container die ev2 exit=137",
        "container destroy ev2",
    ];
    assert_eq!(got, want, "{got:#?}");

    // Filters: by event (several), by container name, by type.
    let dies = events(&a, t0, &["event=die", "event=destroy"]);
    assert_eq!(
        dies,
        [
            "container die ev2 exit=137",
            "container die ev2 exit=137",
            "container destroy ev2"
        ]
    );
    assert!(events(&a, t0, &["container=nosuch"]).is_empty());
    a.docker_ok(&["volume", "create", "evvol"]);
    assert_eq!(events(&a, t0, &["type=volume"]), ["volume create evvol"]);
    // Nothing after `until`.
    let before = now();
    std::thread::sleep(Duration::from_millis(20));
    a.docker_ok(&["volume", "rm", "evvol"]);
    let out = a.docker_ok(&[
        "events",
        "--since",
        &format!("{t0:.3}"),
        "--until",
        &format!("{before:.3}"),
        "--filter",
        "type=volume",
        "--format",
        "{{.Action}}",
    ]);
    assert_eq!(out, "create");
    let err = a.docker_err(&["events", "--filter", "bogus=1", "--until", "1"]);
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn events_stream_live_and_carry_health_status() {
    let a = AtollInstance::start();
    a.load_busybox();
    let mut follow = Command::new(docker_cli())
        .args([
            "events",
            "--filter",
            "type=container",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ])
        .env("DOCKER_HOST", a.docker_host())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    // The subscription is live once an event shows up.
    wait_for(
        || {
            a.docker_ok(&["run", "--rm", "busybox", "true"]);
            !lines.lock().unwrap().is_empty()
        },
        Duration::from_secs(20),
        "the first live event",
    );
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "hc",
        "--health-cmd",
        "true",
        "--health-interval",
        "100ms",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_for(
        || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l == "health_status: healthy hc")
        },
        Duration::from_secs(20),
        "a health_status event",
    );
    let _ = follow.kill();
    let _ = follow.wait();
}
