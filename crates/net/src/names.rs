//! Every host-wide name derives from the instance id, so several atoll instances (and
//! parallel tests) share one machine without stepping on each other, and teardown can find
//! everything an instance made from the id alone.

use crate::error::NetError;
use crate::ipv4net::Ipv4Net;
use std::net::Ipv4Addr;

/// Length of the container-id hash in a host veth name.
const VETH_HASH_LEN: usize = 7;

/// Pool the automatic /24 comes from: 10.200.0.0/13 holds 2048 of them.
const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 200, 0, 0), 13);

/// Instance ids are short so `va<inst><hash>` fits IFNAMSIZ (15 chars).
pub fn validate_instance(inst: &str) -> Result<(), NetError> {
    let ok = !inst.is_empty()
        && inst.len() <= 6
        && inst
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidInstance(inst.to_string()))
    }
}

/// Container ids become file names and nft comments: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<(), NetError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidId(id.to_string()))
    }
}

pub fn bridge_name(inst: &str) -> String {
    format!("atl{inst}")
}

pub fn table_name(inst: &str) -> String {
    format!("atoll_{inst}")
}

/// The comment marking this instance's rules in chains we do not own (DOCKER-USER).
pub fn foreign_comment(inst: &str) -> String {
    format!("atoll_{inst}")
}

fn veth_prefix(inst: &str) -> String {
    format!("va{inst}")
}

/// Host side of a container's veth: `va<inst><7 hex of hash(id)>`. The full id is kept in
/// the link's alias, so a (rare) hash collision is detected rather than silently shared.
pub fn host_veth_name(inst: &str, id: &str) -> String {
    let h = format!("{:016x}", fnv1a(id.as_bytes()));
    format!("{}{}", veth_prefix(inst), &h[..VETH_HASH_LEN])
}

/// Whether `name` is a host veth of instance `inst`. The exact length matters: instance
/// "abc" must not claim the veths of instance "abc123".
pub fn is_instance_veth(inst: &str, name: &str) -> bool {
    let p = veth_prefix(inst);
    name.len() == p.len() + VETH_HASH_LEN
        && name.starts_with(&p)
        && name[p.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A stable, locally administered bridge MAC, so the bridge keeps its address instead of
/// adopting (and changing with) its lowest port's MAC.
pub fn bridge_mac(inst: &str) -> [u8; 6] {
    let h = fnv1a(inst.as_bytes()).to_be_bytes();
    [0x02, 0xa7, h[0], h[1], h[2], h[3]]
}

pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::InvalidMac(s.to_string());
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || out[0] & 1 == 1 {
        // Trailing parts, or a multicast address no NIC may use.
        return Err(bad());
    }
    Ok(out)
}

/// Picks a /24 from the pool that overlaps nothing in `in_use`. The probe starts at a
/// point derived from the instance id so parallel instances rarely race for the same one.
pub fn pick_subnet(inst: &str, in_use: &[Ipv4Net]) -> Result<Ipv4Net, NetError> {
    let count: u32 = 1 << (24 - POOL.1);
    let base = u32::from(POOL.0);
    let start = (fnv1a(inst.as_bytes()) % u64::from(count)) as u32;
    for i in 0..count {
        let idx = (start + i) % count;
        let cand = Ipv4Net::new(Ipv4Addr::from(base + (idx << 8)), 24)?;
        if !in_use.iter().any(|n| n.overlaps(&cand)) {
            return Ok(cand);
        }
    }
    Err(NetError::NoFreeSubnet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        let id = "f".repeat(64);
        let v = host_veth_name("abc123", &id);
        assert_eq!(v.len(), 15);
        assert!(v.starts_with("vaabc123"));
        assert!(bridge_name("abc123").len() <= 15);
        assert!(is_instance_veth("abc123", &v));
        assert!(
            !is_instance_veth("abc", &v),
            "shorter instance id must not match"
        );
        assert!(!is_instance_veth("abc124", &v));
        assert_ne!(host_veth_name("abc123", "a"), host_veth_name("abc123", "b"));
    }

    #[test]
    fn validation() {
        assert!(validate_instance("abc123").is_ok());
        assert!(validate_instance("ABC123").is_err());
        assert!(validate_instance("abc1234").is_err());
        assert!(validate_instance("").is_err());
        assert!(validate_id("0123abcd").is_ok());
        assert!(validate_id("../etc").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("a\"b").is_err());
        assert!(validate_id("").is_err());
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02").unwrap(),
            [2, 0x42, 0xac, 0x11, 0, 2]
        );
        assert!(parse_mac("02:42:ac:11:00").is_err());
        assert!(parse_mac("02:42:ac:11:00:02:03").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("zz:42:ac:11:00:02").is_err());
        let m = bridge_mac("abc123");
        assert_eq!(m[0] & 3, 2, "locally administered unicast");
    }

    #[test]
    fn picks_deterministically_and_skips_used() {
        let a = pick_subnet("abc123", &[]).unwrap();
        assert_eq!(a, pick_subnet("abc123", &[]).unwrap());
        assert_eq!(a.prefix(), 24);
        let pool: Ipv4Net = "10.200.0.0/13".parse().unwrap();
        assert!(pool.overlaps(&a));
        // A host address inside the first choice pushes us to another /24.
        let host = Ipv4Net::new(a.host(77).unwrap(), 32).unwrap();
        let b = pick_subnet("abc123", &[host]).unwrap();
        assert_ne!(a, b);
        assert!(!b.overlaps(&host));
        // Different instances usually start elsewhere.
        assert_ne!(a, pick_subnet("def456", &[]).unwrap());
    }

    #[test]
    fn pool_exhaustion() {
        let pool: Ipv4Net = "10.200.0.0/13".parse().unwrap();
        assert!(matches!(
            pick_subnet("abc123", &[pool]),
            Err(NetError::NoFreeSubnet)
        ));
        // Only one /24 free: found wherever the probe starts.
        let used: Vec<Ipv4Net> = (0..2048u32)
            .filter(|i| *i != 1000)
            .map(|i| {
                Ipv4Net::new(Ipv4Addr::from(u32::from(pool.network()) + (i << 8)), 24).unwrap()
            })
            .collect();
        let got = pick_subnet("abc123", &used).unwrap();
        assert_eq!(got.to_string(), "10.203.232.0/24");
    }
}
