//! A registry for tests outside Rust (docker-py): Debian's `docker-registry`
//! over TLS (its CA installed where atoll looks) with htpasswd basic auth.
//! Prints `{"addr": "127.0.0.1:PORT", "ca": PEM}` once it listens and serves until its
//! standard input closes; then it stops and its CA is removed.
//!
//! Usage: test-registry USER PASSWORD

use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [user, password] = args.as_slice() else {
        eprintln!("usage: test-registry USER PASSWORD");
        std::process::exit(2);
    };
    let reg = testkit::Registry::start_secure(user, password);
    let mut out = std::io::stdout();
    let line = serde_json::json!({"addr": reg.addr(), "ca": reg.ca_pem()}).to_string();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        return;
    }
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(reg);
}
