//! DNS responses → an IP → name cache, so that flows carry the name the process asked for.
//!
//! The kernel forwards UDP payloads from source port 53 seen on ingress (up to 512
//! bytes); this module parses them defensively (any malformed message is rejected with a
//! reason, never a panic) and remembers, for every A/AAAA answer, the *question* name
//! (so `www.example.com → CNAME → cdn... → 1.2.3.4` maps 1.2.3.4 to `www.example.com`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const MAX_POINTER_HOPS: usize = 16;

/// One answer: address → name, valid for `ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub ip: IpAddr,
    pub name: String,
    pub ttl: Duration,
}

/// Why a message was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("shorter than a DNS header")]
    Short,
    #[error("a query, not a response")]
    NotResponse,
    #[error("no question")]
    NoQuestion,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("bad name at byte {0}")]
    BadName(usize),
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    msg.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DnsError::Truncated(at))
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset after it.
fn read_name(msg: &[u8], at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut pos = at;
    let mut end = None;
    let mut hops = 0;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated(pos))? as usize;
        if len & 0xc0 == 0xc0 {
            let pointer = (u16_at(msg, pos)? & 0x3fff) as usize;
            end.get_or_insert(pos + 2);
            hops += 1;
            if hops > MAX_POINTER_HOPS || pointer >= msg.len() {
                return Err(DnsError::BadName(pos));
            }
            pos = pointer;
            continue;
        }
        if len & 0xc0 != 0 {
            return Err(DnsError::BadName(pos));
        }
        if len == 0 {
            return Ok((name, end.unwrap_or(pos + 1)));
        }
        let label = msg
            .get(pos + 1..pos + 1 + len)
            .ok_or(DnsError::Truncated(pos))?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            // Names are case-insensitive: store lower case; keep odd bytes visible.
            if b.is_ascii_graphic() {
                name.push(b.to_ascii_lowercase() as char);
            } else {
                name.push_str(&format!("\\{b:03}"));
            }
        }
        if name.len() > 255 {
            return Err(DnsError::BadName(pos));
        }
        pos += 1 + len;
    }
}

/// The A/AAAA answers of a response, named by its first question.
pub fn parse_response(msg: &[u8]) -> Result<Vec<Answer>, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Short);
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    let questions = u16_at(msg, 4)?;
    let answers = u16_at(msg, 6)?;
    if questions == 0 {
        return Err(DnsError::NoQuestion);
    }
    let (question, mut pos) = read_name(msg, 12)?;
    pos += 4; // type, class
    for _ in 1..questions {
        let (_, next) = read_name(msg, pos)?;
        pos = next + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        let (_, next) = read_name(msg, pos)?;
        let rtype = u16_at(msg, next)?;
        let class = u16_at(msg, next + 2)?;
        let ttl = msg
            .get(next + 4..next + 8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DnsError::Truncated(next + 4))?;
        let rdlen = u16_at(msg, next + 8)? as usize;
        let data = msg
            .get(next + 10..next + 10 + rdlen)
            .ok_or(DnsError::Truncated(next + 10))?;
        pos = next + 10 + rdlen;
        if class != CLASS_IN {
            continue;
        }
        let ip = match (rtype, data.len()) {
            (TYPE_A, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            (TYPE_AAAA, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => continue,
        };
        out.push(Answer {
            ip,
            name: question.clone(),
            ttl: Duration::from_secs(u64::from(ttl)),
        });
    }
    Ok(out)
}

/// IP → name, bounded; an entry lives for its TTL but at least `min_ttl`, so flows that
/// start right after a short-TTL answer still get the name.
pub struct DnsCache {
    entries: HashMap<IpAddr, (String, Instant)>,
    capacity: usize,
    min_ttl: Duration,
}

impl DnsCache {
    pub fn new(capacity: usize, min_ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            min_ttl,
        }
    }

    /// Records answers; returns how many could not be stored (cache full).
    pub fn insert(&mut self, answers: Vec<Answer>, now: Instant) -> usize {
        let mut refused = 0;
        for answer in answers {
            if self.entries.len() >= self.capacity && !self.entries.contains_key(&answer.ip) {
                self.entries.retain(|_, (_, expires)| *expires > now);
                if self.entries.len() >= self.capacity {
                    refused += 1;
                    continue;
                }
            }
            let expires = now + answer.ttl.max(self.min_ttl);
            self.entries.insert(answer.ip, (answer.name, expires));
        }
        refused
    }

    pub fn name(&self, ip: &IpAddr, now: Instant) -> Option<&str> {
        self.entries
            .get(ip)
            .filter(|(_, expires)| *expires > now)
            .map(|(name, _)| name.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Builds a response (used by tests and the test resolver): question `name`, one answer
/// per address, name compression for answers.
pub fn build_response(id: u16, name: &str, rtype: u16, addresses: &[IpAddr], ttl: u32) -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&0x8180u16.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        msg.push(label.len().min(63) as u8);
        msg.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    msg.push(0);
    msg.extend_from_slice(&rtype.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    for address in addresses {
        msg.extend_from_slice(&[0xc0, 12]);
        let (t, data) = match address {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        msg.extend_from_slice(&t.to_be_bytes());
        msg.extend_from_slice(&CLASS_IN.to_be_bytes());
        msg.extend_from_slice(&ttl.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u16).to_be_bytes());
        msg.extend_from_slice(&data);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_named_by_the_question() {
        let ips: Vec<IpAddr> = vec!["10.1.2.3".parse().unwrap(), "fd00::7".parse().unwrap()];
        let msg = build_response(7, "DB.Example.test", TYPE_A, &ips, 30);
        let answers = parse_response(&msg).unwrap();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].name, "db.example.test");
        assert_eq!(answers[0].ip, ips[0]);
        assert_eq!(answers[1].ip, ips[1]);
        assert_eq!(answers[1].ttl, Duration::from_secs(30));
    }

    #[test]
    fn malformed_messages_are_refused_without_panicking() {
        let msg = build_response(1, "a.b", TYPE_A, &["1.2.3.4".parse().unwrap()], 5);
        for cut in 0..msg.len() {
            let _ = parse_response(&msg[..cut]);
        }
        assert_eq!(parse_response(&[0; 5]), Err(DnsError::Short));
        let mut query = msg.clone();
        query[2] = 0;
        assert_eq!(parse_response(&query), Err(DnsError::NotResponse));
        // A pointer loop.
        let mut looped = msg[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 12]);
        assert!(matches!(parse_response(&looped), Err(DnsError::BadName(_))));
        // Every byte value at every position: never a panic.
        for i in 0..msg.len() {
            for b in [0u8, 0x3f, 0xc0, 0xff] {
                let mut m = msg.clone();
                m[i] = b;
                let _ = parse_response(&m);
            }
        }
    }

    #[test]
    fn cache_is_bounded_and_expires() {
        let now = Instant::now();
        let mut cache = DnsCache::new(1, Duration::from_secs(1));
        let a = |ip: &str, name: &str| Answer {
            ip: ip.parse().unwrap(),
            name: name.into(),
            ttl: Duration::from_secs(0),
        };
        assert_eq!(cache.insert(vec![a("1.1.1.1", "one")], now), 0);
        assert_eq!(cache.insert(vec![a("2.2.2.2", "two")], now), 1);
        assert_eq!(cache.name(&"1.1.1.1".parse().unwrap(), now), Some("one"));
        let later = now + Duration::from_secs(2);
        assert_eq!(cache.name(&"1.1.1.1".parse().unwrap(), later), None);
        assert_eq!(cache.insert(vec![a("2.2.2.2", "two")], later), 0);
    }
}
