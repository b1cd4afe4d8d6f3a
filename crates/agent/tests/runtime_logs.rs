//! `docker logs` over json-file logs: frames, tail across rotated files,
//! since/until, timestamps, tty, and follow until the container exits.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use agent::logs::{LogOptions, log_stream};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;

fn t(sec: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, sec)
        .single()
        .expect("time")
}

fn entry(log: &str, stream: &str, time: DateTime<Utc>) -> String {
    format!(
        "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"{}\"}}\n",
        serde_json::to_string(log).expect("json"),
        time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    )
}

fn all() -> LogOptions {
    LogOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

/// Collects the stream and splits frames into (stream byte, payload) pairs.
async fn frames(
    path: &Path,
    opts: LogOptions,
    exited: impl std::future::Future<Output = ()> + Send + 'static,
) -> Vec<(u8, String)> {
    let mut s = std::pin::pin!(log_stream(path.to_path_buf(), opts, false, exited));
    let mut bytes = Vec::new();
    while let Some(chunk) = s.next().await {
        bytes.extend_from_slice(&chunk.expect("chunk"));
    }
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 8 {
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        out.push((
            rest[0],
            String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
        ));
        rest = &rest[8 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes");
    out
}

fn write_rotated(dir: &Path) -> std::path::PathBuf {
    let log = dir.join("container-json.log");
    std::fs::write(
        dir.join("container-json.log.2"),
        entry("one\n", "stdout", t(1)) + &entry("two\n", "stderr", t(2)),
    )
    .expect("write .2");
    std::fs::write(
        dir.join("container-json.log.1"),
        entry("three\n", "stdout", t(3)),
    )
    .expect("write .1");
    std::fs::write(
        &log,
        entry("four\n", "stdout", t(4)) + &entry("five\n", "stderr", t(5)) + "{\"log\":\"partial",
    )
    .expect("write log");
    log
}

#[tokio::test]
async fn reads_rotated_files_oldest_first_with_filters() {
    let d = tempfile::tempdir().expect("tempdir");
    let log = write_rotated(d.path());
    let f = frames(&log, all(), async {}).await;
    let texts: Vec<&str> = f.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(texts, ["one\n", "two\n", "three\n", "four\n", "five\n"]);
    assert_eq!(f[1].0, 2);
    assert_eq!(f[0].0, 1);

    let only_out = LogOptions {
        stderr: false,
        ..all()
    };
    let f = frames(&log, only_out, async {}).await;
    assert!(f.iter().all(|(s, _)| *s == 1));
    assert_eq!(f.len(), 3);

    let tail = LogOptions {
        tail: Some(3),
        ..all()
    };
    let f = frames(&log, tail, async {}).await;
    let texts: Vec<&str> = f.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(texts, ["three\n", "four\n", "five\n"]);

    let tail0 = LogOptions {
        tail: Some(0),
        ..all()
    };
    assert!(frames(&log, tail0, async {}).await.is_empty());

    let window = LogOptions {
        since: Some(t(2)),
        until: Some(t(4)),
        ..all()
    };
    let f = frames(&log, window, async {}).await;
    let texts: Vec<&str> = f.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(texts, ["two\n", "three\n", "four\n"]);

    let stamped = LogOptions {
        timestamps: true,
        tail: Some(1),
        ..all()
    };
    let f = frames(&log, stamped, async {}).await;
    assert_eq!(f[0].1, "2026-01-02T03:04:05.000000000Z five\n");
}

#[tokio::test]
async fn tty_logs_are_raw() {
    let d = tempfile::tempdir().expect("tempdir");
    let log = write_rotated(d.path());
    let mut s = std::pin::pin!(log_stream(log, all(), true, async {}));
    let mut bytes = Vec::new();
    while let Some(c) = s.next().await {
        bytes.extend_from_slice(&c.expect("chunk"));
    }
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        "one\ntwo\nthree\nfour\nfive\n"
    );
}

#[tokio::test]
async fn follow_sees_new_lines_and_rotation_until_exit() {
    let d = tempfile::tempdir().expect("tempdir");
    let log = d.path().join("container-json.log");
    std::fs::write(&log, entry("before\n", "stdout", t(1))).expect("write");
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = LogOptions {
        follow: true,
        tail: Some(1),
        ..all()
    };
    let mut s = Box::pin(log_stream(log.clone(), opts, false, async {
        let _ = exit_rx.await;
    }));
    let first = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("first chunk in time")
        .expect("some")
        .expect("ok");
    assert!(String::from_utf8_lossy(&first).ends_with("before\n"));

    // A line written in two pieces (as a writer mid-line would).
    let line = entry("after\n", "stderr", t(2));
    let (a, b) = line.split_at(10);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open");
    f.write_all(a.as_bytes()).expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.write_all(b.as_bytes()).expect("write");
    drop(f);
    let next = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("second chunk in time")
        .expect("some")
        .expect("ok");
    assert_eq!(next[0], 2);
    assert!(String::from_utf8_lossy(&next).ends_with("after\n"));

    // Rotation: the old file is renamed, a new one takes its name.
    std::fs::rename(&log, d.path().join("container-json.log.1")).expect("rotate");
    std::fs::write(&log, entry("rotated\n", "stdout", t(3))).expect("write new");
    let next = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("third chunk in time")
        .expect("some")
        .expect("ok");
    assert!(String::from_utf8_lossy(&next).ends_with("rotated\n"));

    // Exit: the last lines are drained, then the stream ends.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open")
        .write_all(entry("last\n", "stdout", t(4)).as_bytes())
        .expect("write");
    exit_tx.send(()).expect("exit");
    let mut rest = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("stream ends in time")
    {
        rest.extend_from_slice(&c.expect("ok"));
    }
    assert!(String::from_utf8_lossy(&rest).ends_with("last\n"));
}

#[tokio::test]
async fn follow_on_an_exited_container_returns_what_is_there() {
    let d = tempfile::tempdir().expect("tempdir");
    let log = write_rotated(d.path());
    let opts = LogOptions {
        follow: true,
        ..all()
    };
    let f = tokio::time::timeout(Duration::from_secs(5), frames(&log, opts, async {}))
        .await
        .expect("ends");
    assert_eq!(f.len(), 5);
}

#[tokio::test]
async fn follow_survives_truncation_in_place() {
    // With one log file, the shim rotates by truncating it.
    let d = tempfile::tempdir().expect("tempdir");
    let log = d.path().join("container-json.log");
    std::fs::write(
        &log,
        entry("a long first line to be truncated away\n", "stdout", t(1)),
    )
    .expect("write");
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = LogOptions {
        follow: true,
        ..all()
    };
    let mut s = Box::pin(log_stream(log.clone(), opts, false, async {
        let _ = exit_rx.await;
    }));
    let first = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("in time")
        .expect("some")
        .expect("ok");
    assert!(String::from_utf8_lossy(&first).contains("first line"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .expect("open");
    f.set_len(0).expect("truncate");
    drop(f);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open")
        .write_all(entry("short\n", "stdout", t(2)).as_bytes())
        .expect("write");
    let next = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("in time")
        .expect("some")
        .expect("ok");
    assert!(String::from_utf8_lossy(&next).ends_with("short\n"));
    exit_tx.send(()).expect("exit");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("ends")
            .is_none()
    );
}
