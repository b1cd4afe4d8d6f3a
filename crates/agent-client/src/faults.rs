//! Fault injection for crash tests, shared by head and agent: with
//! `ATOLL_CRASH_AT=<point>` in its environment, the process kills itself with
//! SIGKILL at that point (no cleanup, as a power cut or an OOM kill would).
//! Points are named `<side>:<operation>:<moment>`, e.g. `head:start:after-agent`.

use std::sync::OnceLock;

/// Dies here if this is the configured crash point.
pub fn crash_point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("ATOLL_CRASH_AT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("atoll: crash injected at {name}");
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
