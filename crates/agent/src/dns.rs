//! The containers' resolver at 127.0.0.11 (Docker's embedded DNS), served by
//! the agent: one UDP socket bound inside each networked container's
//! namespace (and a TCP listener), answered from the overlay maps the head
//! pushes (container names, short ids and aliases of the networks the asker
//! is on, and the reverse names of their addresses), anything else
//! forwarded to the upstream servers from the server's own namespace. The
//! maps name running containers only, as Docker's resolver does.
//!
//! A name answers only on networks the asker shares with it, so one
//! account's names never resolve for another. Several containers with one
//! alias answer together, in rotated order (round robin).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use agent_client::NetworkMap;

use crate::manager::Agent;

pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const TTL: u32 = 600;
const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
/// Forwarded queries in flight per container; more are answered SERVFAIL.
const MAX_FORWARDS: usize = 32;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// One question of a query, and where the question ends in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// Lower case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    question_end: usize,
}

/// Parses a standard query with one question (no compression: questions
/// never need it). None: not something to answer.
pub fn parse_query(buf: &[u8]) -> Option<Query> {
    if buf.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([buf[0], buf[1]]);
    let flags = u16::from_be_bytes([buf[2], buf[3]]);
    let qdcount = u16::from_be_bytes([buf[4], buf[5]]);
    // A response, or not exactly one question.
    if flags & 0x8000 != 0 || qdcount != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = *buf.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        let label = buf.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
        if i > 12 + 255 {
            return None;
        }
    }
    let qtype = u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*buf.get(i + 2)?, *buf.get(i + 3)?]);
    Some(Query {
        id,
        flags,
        name: labels.join("."),
        qtype,
        qclass,
        question_end: i + 4,
    })
}

/// The answer to `q` (as it came, in `buf`): `ips` as A records, and `rcode`.
pub fn answer(q: &Query, buf: &[u8], ips: &[Ipv4Addr], rcode: u8) -> Vec<u8> {
    let records: Vec<(u16, Vec<u8>)> = ips
        .iter()
        .map(|ip| (TYPE_A, ip.octets().to_vec()))
        .collect();
    answer_records(q, buf, &records, rcode)
}

/// The answer to `q` with one PTR record naming `target`.
pub fn answer_ptr(q: &Query, buf: &[u8], target: &str) -> Vec<u8> {
    let mut rdata = Vec::with_capacity(target.len() + 2);
    for label in target.split('.').filter(|l| !l.is_empty()) {
        let label = &label.as_bytes()[..label.len().min(63)];
        rdata.push(label.len() as u8);
        rdata.extend_from_slice(label);
    }
    rdata.push(0);
    answer_records(q, buf, &[(TYPE_PTR, rdata)], 0)
}

/// The answer to `q`: its question, then `records` (type, data), each for
/// the question's name.
fn answer_records(q: &Query, buf: &[u8], records: &[(u16, Vec<u8>)], rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end + records.len() * 16);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, the query's opcode and RD, RA, the rcode.
    let flags = 0x8000 | (q.flags & 0x7900) | 0x0080 | u16::from(rcode & 0x0f);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&buf[12..q.question_end]);
    for (rtype, data) in records {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// The address a reverse name (`d.c.b.a.in-addr.arpa`) asks about.
fn reverse_address(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let o: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (o.len() == 4).then(|| Ipv4Addr::new(o[3], o[2], o[1], o[0]))
}

/// The overlay maps' names, per VNI (the newest version of each).
#[derive(Default)]
pub struct Names {
    maps: RwLock<HashMap<u32, NetworkMap>>,
}

impl Names {
    /// Keeps `map` unless a newer one is held; whether it was kept.
    pub fn update(&self, map: &NetworkMap) -> bool {
        let mut m = self.maps.write().unwrap_or_else(|p| p.into_inner());
        if m.get(&map.vni).is_some_and(|old| old.version > map.version) {
            return false;
        }
        m.insert(map.vni, map.clone());
        true
    }

    /// The addresses `name` has on the given networks (VNI, network name):
    /// a container name, short id or alias on any of them, or
    /// `<name>.<network>` on that one. None: not a name of these networks.
    pub fn lookup(&self, networks: &[(u32, String)], name: &str) -> Option<Vec<Ipv4Addr>> {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        let mut ips: Vec<Ipv4Addr> = Vec::new();
        for (vni, net) in networks {
            let Some(map) = maps.get(vni) else { continue };
            let suffix = format!(".{}", net.to_ascii_lowercase());
            let short = name.strip_suffix(suffix.as_str());
            for m in &map.members {
                let hit = m.names.iter().any(|n| {
                    let n = n.to_ascii_lowercase();
                    n == name || short == Some(n.as_str())
                });
                if hit && !ips.contains(&m.ip) {
                    ips.push(m.ip);
                }
            }
        }
        (!ips.is_empty()).then_some(ips)
    }

    /// The name of the container at `ip` on one of the given networks, as
    /// Docker gives it: `<container>.<network>`.
    pub fn reverse(&self, networks: &[(u32, String)], ip: Ipv4Addr) -> Option<String> {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        networks.iter().find_map(|(vni, net)| {
            let m = maps.get(vni)?.members.iter().find(|m| m.ip == ip)?;
            m.names.first().map(|n| format!("{n}.{net}"))
        })
    }
}

/// What to do with one query.
enum Reply {
    /// Send this.
    Now(Vec<u8>),
    /// Not ours: ask the upstream servers.
    Forward(Query),
}

/// Where a container's unanswered questions go: `--dns`, else the server's
/// own resolvers (loopback ones too: the agent asks from the server's
/// namespace).
pub fn upstreams(spec_dns: &[String], host_resolv: &str) -> Vec<SocketAddr> {
    let parse = |s: &str| {
        s.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    };
    if !spec_dns.is_empty() {
        return spec_dns.iter().filter_map(|s| parse(s)).collect();
    }
    host_resolv
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver")).then(|| f.next()).flatten()
        })
        .filter_map(parse)
        .collect()
}

/// UDP and TCP sockets bound to 127.0.0.11:53 inside the namespace at
/// `netns` (bound from a thread that joined it; the sockets stay there).
fn bind_in(netns: &Path) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let ns = std::fs::File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let udp = std::net::UdpSocket::bind((RESOLVER, 53))?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind((RESOLVER, 53))?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("resolver thread panicked")))
}

/// Asks the upstream servers in turn; their answer as it came.
async fn forward(query: &[u8], id: u16, upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let got = tokio::time::timeout(FORWARD_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    return Some(n);
                }
            }
        })
        .await;
        if let Ok(Some(n)) = got {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

impl Agent {
    /// What container `cid`'s resolver does with `query`. None: not a query
    /// (answered FORMERR with its header when it has one).
    fn reply(&self, cid: &str, query: &[u8], forwarding: bool) -> Option<Reply> {
        let Some(q) = parse_query(query) else {
            if query.len() < 12 {
                return None;
            }
            // Not one question: say so (FORMERR) with the header only.
            let mut r = query[..12].to_vec();
            r[2] |= 0x80;
            r[3] = (r[3] & 0xf0) | RCODE_FORMERR;
            r[4..12].fill(0);
            return Some(Reply::Now(r));
        };
        let networks = self.resolver_networks(cid);
        if q.qclass == CLASS_IN {
            if let Some(mut ips) = self.names.lookup(&networks, &q.name) {
                if q.qtype == TYPE_A {
                    let k = rand_index(ips.len());
                    ips.rotate_left(k);
                } else {
                    // A known name without records of that type.
                    ips.clear();
                }
                return Some(Reply::Now(answer(&q, query, &ips, 0)));
            }
            if q.qtype == TYPE_PTR
                && let Some(ip) = reverse_address(&q.name)
                && let Some(target) = self.names.reverse(&networks, ip)
            {
                return Some(Reply::Now(answer_ptr(&q, query, &target)));
            }
        }
        Some(if forwarding {
            Reply::Forward(q)
        } else {
            Reply::Now(answer(&q, query, &[], RCODE_NXDOMAIN))
        })
    }

    /// Serves container `id`'s resolver inside its namespace, over UDP and
    /// TCP, until [`Agent::stop_resolver`] (its exit).
    pub(crate) fn start_resolver(
        self: &Arc<Self>,
        id: &str,
        netns: &Path,
        upstreams: Vec<SocketAddr>,
    ) -> std::io::Result<()> {
        let (udp, tcp) = bind_in(netns)?;
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let upstreams = Arc::new(upstreams);
        let me: Weak<Agent> = Arc::downgrade(self);
        let cid: Arc<str> = Arc::from(id);
        let task = tokio::spawn(async move {
            tokio::join!(
                serve_udp(me.clone(), cid.clone(), udp, upstreams.clone()),
                serve_tcp(me, cid, tcp, upstreams),
            );
        });
        if let Some(old) = self
            .resolvers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), task)
        {
            old.abort();
        }
        Ok(())
    }

    pub(crate) fn stop_resolver(&self, id: &str) {
        if let Some(t) = self
            .resolvers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            t.abort();
        }
    }

    /// The networks (VNI, name) container `id` is on now.
    fn resolver_networks(&self, id: &str) -> Vec<(u32, String)> {
        self.ctr(id)
            .map(|c| {
                c.spec
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .networks
                    .iter()
                    .map(|e| (e.vni, e.name.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The resolver's UDP side: local answers at once, forwarded ones each in
/// a task (at most [`MAX_FORWARDS`] at a time; more are SERVFAIL).
async fn serve_udp(
    me: Weak<Agent>,
    cid: Arc<str>,
    sock: tokio::net::UdpSocket,
    upstreams: Arc<Vec<SocketAddr>>,
) {
    let sock = Arc::new(sock);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let Some(agent) = me.upgrade() else { return };
        let query = &buf[..n];
        match agent.reply(&cid, query, !upstreams.is_empty()) {
            None => {}
            Some(Reply::Now(r)) => {
                let _ = sock.send_to(&r, from).await;
            }
            Some(Reply::Forward(q)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    let _ = sock
                        .send_to(&answer(&q, query, &[], RCODE_SERVFAIL), from)
                        .await;
                    continue;
                };
                let (sock, upstreams, query) = (sock.clone(), upstreams.clone(), query.to_vec());
                tokio::spawn(async move {
                    let r = forward(&query, q.id, &upstreams)
                        .await
                        .unwrap_or_else(|| answer(&q, &query, &[], RCODE_SERVFAIL));
                    let _ = sock.send_to(&r, from).await;
                    drop(slot);
                });
            }
        }
    }
}

/// How long a TCP client of the resolver may stay silent.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once per container; more are closed at once.
const MAX_TCP: usize = 16;

/// The resolver's TCP side (RFC 7766: each message after its 2-byte
/// length; several per connection). Connections go with the resolver.
async fn serve_tcp(
    me: Weak<Agent>,
    cid: Arc<str>,
    listener: tokio::net::TcpListener,
    upstreams: Arc<Vec<SocketAddr>>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { return };
                if conns.len() >= MAX_TCP {
                    continue;
                }
                conns.spawn(serve_tcp_conn(me.clone(), cid.clone(), conn, upstreams.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_tcp_conn(
    me: Weak<Agent>,
    cid: Arc<str>,
    mut conn: tokio::net::TcpStream,
    upstreams: Arc<Vec<SocketAddr>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if conn.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(agent) = me.upgrade() else { return };
        let reply = match agent.reply(&cid, &query, !upstreams.is_empty()) {
            None => return,
            Some(Reply::Now(r)) => r,
            Some(Reply::Forward(q)) => forward(&query, q.id, &upstreams)
                .await
                .unwrap_or_else(|| answer(&q, &query, &[], RCODE_SERVFAIL)),
        };
        drop(agent);
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        if conn.write_all(&n.to_be_bytes()).await.is_err() || conn.write_all(&reply).await.is_err()
        {
            return;
        }
    }
}

fn rand_index(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos as usize % n
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_client::NetworkMember;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn queries_parse_and_answers_are_well_formed() {
        let buf = query("Web.App", TYPE_A);
        let q = parse_query(&buf).unwrap();
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype),
            (0x1234, "web.app", TYPE_A)
        );
        let ips = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];
        let a = answer(&q, &buf, &ips, 0);
        // Id, QR|RD|RA, one question, two answers.
        assert_eq!(&a[..8], &[0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2]);
        assert_eq!(&a[12..buf.len()], &buf[12..]);
        let first = &a[buf.len()..buf.len() + 16];
        assert_eq!(&first[..4], &[0xc0, 0x0c, 0, 1]);
        assert_eq!(&first[12..], &[10, 0, 0, 2]);
        assert_eq!(a.len(), buf.len() + 32);
        let nx = answer(&q, &buf, &[], RCODE_NXDOMAIN);
        assert_eq!(nx[3] & 0x0f, RCODE_NXDOMAIN);
        // Garbage, responses and truncated questions are not answered.
        assert!(parse_query(&[1, 2, 3]).is_none());
        let mut resp = buf.clone();
        resp[2] |= 0x80;
        assert!(parse_query(&resp).is_none());
        assert!(parse_query(&buf[..buf.len() - 3]).is_none());
        let mut ptr = buf.clone();
        ptr[12] = 0xc0;
        assert!(parse_query(&ptr).is_none());
    }

    #[test]
    fn names_answer_only_on_shared_networks() {
        let names = Names::default();
        let member = |ip: [u8; 4], n: &[&str]| NetworkMember {
            mac: "02:42:00:00:00:01".into(),
            ip: Ipv4Addr::from(ip),
            vtep: None,
            names: n.iter().map(|s| s.to_string()).collect(),
        };
        let map = |vni, version, members| NetworkMap {
            vni,
            version,
            members,
        };
        assert!(names.update(&map(
            1,
            2,
            vec![
                member([10, 0, 0, 2], &["web", "abc123", "www"]),
                member([10, 0, 0, 3], &["web2", "www"]),
            ]
        )));
        assert!(names.update(&map(2, 1, vec![member([10, 9, 0, 2], &["db"])])));
        // An older map does not replace a newer one.
        assert!(!names.update(&map(1, 1, vec![])));
        let front = vec![(1, "front".to_string())];
        assert_eq!(
            names.lookup(&front, "web"),
            Some(vec![Ipv4Addr::new(10, 0, 0, 2)])
        );
        assert_eq!(
            names.lookup(&front, "web.front"),
            Some(vec![Ipv4Addr::new(10, 0, 0, 2)])
        );
        assert_eq!(names.lookup(&front, "www").map(|v| v.len()), Some(2));
        // Not a name of the asker's networks.
        assert_eq!(names.lookup(&front, "db"), None);
        assert_eq!(names.lookup(&front, "web.back"), None);
        let both = vec![(1, "front".to_string()), (2, "back".to_string())];
        assert_eq!(
            names.lookup(&both, "db.back"),
            Some(vec![Ipv4Addr::new(10, 9, 0, 2)])
        );
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_address("4.0.0.10.in-addr.arpa"),
            Some(Ipv4Addr::new(10, 0, 0, 4))
        );
        for bad in [
            "0.10.in-addr.arpa",
            "x.0.0.10.in-addr.arpa",
            "4.0.0.10",
            "4.0.0.300.in-addr.arpa",
        ] {
            assert_eq!(reverse_address(bad), None, "{bad}");
        }
        let names = Names::default();
        names.update(&NetworkMap {
            vni: 1,
            version: 1,
            members: vec![NetworkMember {
                mac: "02:42:0a:00:00:04".into(),
                ip: Ipv4Addr::new(10, 0, 0, 4),
                vtep: None,
                names: vec!["web".into(), "abc".into()],
            }],
        });
        let app = vec![(1, "app".to_string())];
        assert_eq!(
            names.reverse(&app, Ipv4Addr::new(10, 0, 0, 4)).as_deref(),
            Some("web.app")
        );
        assert_eq!(names.reverse(&app, Ipv4Addr::new(10, 0, 0, 5)), None);
        assert_eq!(
            names.reverse(&[(2, "b".into())], Ipv4Addr::new(10, 0, 0, 4)),
            None
        );
        let buf = query("4.0.0.10.in-addr.arpa", TYPE_PTR);
        let q = parse_query(&buf).unwrap();
        let a = answer_ptr(&q, &buf, "web.app");
        assert_eq!(&a[6..8], &[0, 1], "one answer");
        let rr = &a[buf.len()..];
        assert_eq!(&rr[..4], &[0xc0, 0x0c, 0, 12]);
        assert_eq!(&rr[10..12], &[0, 9]);
        assert_eq!(&rr[12..], b"\x03web\x03app\x00");
    }

    #[test]
    fn upstreams_come_from_dns_or_the_host() {
        let host = "nameserver 127.0.0.53\nsearch x\nnameserver 10.0.0.1\n";
        assert_eq!(
            upstreams(&[], host),
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap()
            ]
        );
        assert_eq!(
            upstreams(&["1.1.1.1".into()], host),
            vec!["1.1.1.1:53".parse().unwrap()]
        );
    }
}
