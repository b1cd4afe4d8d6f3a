//! Test-only stand-in for the `atoll` binary's shim entry points, so the agent
//! crate's tests can run real shims without the atoll binary:
//! - `atoll-test-shim shim <args>`: what `atoll shim <args>` does.
//! - `atoll-test-shim spawn <exe> <args>`: plays the agent: spawns the shim,
//!   prints `ok <pid> <shim_pid>` or `err <message>`, then sleeps until killed
//!   (to test that a shim outlives its agent).

use std::io::Write;
use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("shim") => {
            let code = match agent::shim::ShimArgs::parse(&args[1..]) {
                Ok(a) => agent::shim::shim_main(a),
                Err(e) => {
                    eprintln!("atoll-test-shim: {e}");
                    2
                }
            };
            std::process::ExitCode::from(code as u8)
        }
        Some("spawn") if args.len() > 2 => {
            let exe = PathBuf::from(&args[1]);
            let line = match agent::shim::ShimArgs::parse(&args[2..]) {
                Ok(a) => match agent::shim::spawn_shim(&exe, &a) {
                    Ok(h) => format!("ok {} {}\n", h.pid, h.shim_pid),
                    Err(e) => format!("err {e}\n"),
                },
                Err(e) => format!("err {e}\n"),
            };
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
            drop(out);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => {
            eprintln!("usage: atoll-test-shim shim <args> | spawn <exe> <args>");
            std::process::ExitCode::from(2)
        }
    }
}
