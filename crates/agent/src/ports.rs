//! What the server itself listens on: a published port must never shadow it
//! (the DNAT would steal the server's own service from every client).

use std::collections::BTreeSet;

/// Ports with a listening TCP socket or a bound UDP socket, on any address,
/// in the agent's network namespace (the server's).
#[derive(Debug, Default)]
pub struct Listening {
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
}

impl Listening {
    pub fn read() -> Listening {
        let mut l = Listening::default();
        for (file, udp) in [
            ("/proc/self/net/tcp", false),
            ("/proc/self/net/tcp6", false),
            ("/proc/self/net/udp", true),
            ("/proc/self/net/udp6", true),
        ] {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            let set = if udp { &mut l.udp } else { &mut l.tcp };
            set.extend(bound_ports(&text, !udp));
        }
        l
    }

    /// Whether `proto`'s `port` is taken on the server.
    pub fn taken(&self, proto: &str, port: u16) -> bool {
        match proto {
            "udp" => self.udp.contains(&port),
            _ => self.tcp.contains(&port),
        }
    }
}

/// Local ports of `/proc/net/{tcp,udp}[6]` lines: listening sockets only for
/// TCP (state 0A), every bound socket for UDP.
fn bound_ports(text: &str, listen_only: bool) -> impl Iterator<Item = u16> + '_ {
    text.lines().skip(1).filter_map(move |l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local = f.get(1)?;
        let state = f.get(3)?;
        if listen_only && *state != "0A" {
            return None;
        }
        let port = local.rsplit_once(':')?.1;
        u16::from_str_radix(port, 16).ok().filter(|p| *p != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_and_bound_ports_are_read() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   1: 0100007F:0948 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        assert_eq!(bound_ports(tcp, true).collect::<Vec<_>>(), [22]);
        let udp = "  sl  local_address rem_address   st\n   0: 3500007F:0035 00000000:0000 07 0\n";
        assert_eq!(bound_ports(udp, false).collect::<Vec<_>>(), [53]);
        // The real thing: a socket we bind shows up.
        let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = s.local_addr().expect("addr").port();
        assert!(Listening::read().taken("tcp", port));
        drop(s);
        assert!(!Listening::read().taken("tcp", port));
    }
}
