//! User-space half of process attribution: joins each evicted flow to the process that
//! owns its local socket, from what the kernel recorded in process context.
//!
//! Lookup order for a flow (seen from its local end, see [`local_tuple`]):
//! 1. a tuple learnt before (from any source below, or a close event);
//! 2. the TCP connection table (`conns`, filled by the state tracepoint), one lookup per
//!    new connection — the table is never read whole;
//! 3. the owner of the sending socket's cookie (egress packets carry it);
//! 4. the owner of the bound local port (servers: listeners and bound UDP sockets).
//!
//! The run loop adds a last resort for sockets older than the collector: /proc.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::bpf::abi::{
    CloseEvent, Conn, DIR_EGRESS, FlowKey, FlowValue, Owner, PortKey, SockTuple,
};

const TCP: u8 = 6;

/// What attribution asks the kernel's tables (one lookup per unknown socket).
pub trait KernelTables {
    /// The process that created the socket with this cookie.
    fn owner(&self, cookie: u64) -> Option<Owner>;
    /// The connection recorded for this local tuple.
    fn conn(&self, tuple: &SockTuple) -> Option<Conn>;
}

/// An IPv4 tuple in the IPv4-mapped IPv6 form a dual-stack socket has.
fn v4_as_mapped(tuple: &SockTuple) -> Option<SockTuple> {
    if tuple.family != 4 {
        return None;
    }
    let map = |a: &[u8; 16]| {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..16].copy_from_slice(&a[..4]);
        m
    };
    Some(SockTuple {
        local: map(&tuple.local),
        remote: map(&tuple.remote),
        family: 6,
        ..*tuple
    })
}

/// Who owns a flow's local socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub owner: Owner,
    pub is_server: bool,
}

/// A flow's 5-tuple from its local end: egress = (src → dst), ingress = (dst ← src).
pub fn local_tuple(key: &FlowKey) -> SockTuple {
    let (local, remote, lport, rport) = if key.direction == DIR_EGRESS {
        (key.src, key.dst, key.sport, key.dport)
    } else {
        (key.dst, key.src, key.dport, key.sport)
    };
    SockTuple {
        local,
        remote,
        lport,
        rport,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    }
}

fn v4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    (addr[..10].iter().all(|&b| b == 0) && addr[10] == 0xff && addr[11] == 0xff)
        .then(|| [addr[12], addr[13], addr[14], addr[15]])
}

/// IPv4-mapped IPv6 sockets (a dual-stack socket talking IPv4) carry IPv4 packets:
/// express their tuple as IPv4 so it matches the packets.
pub fn normalize(mut tuple: SockTuple) -> SockTuple {
    if tuple.family == 6
        && let (Some(l), Some(r)) = (v4_mapped(&tuple.local), v4_mapped(&tuple.remote))
    {
        tuple.local = [0; 16];
        tuple.remote = [0; 16];
        tuple.local[..4].copy_from_slice(&l);
        tuple.remote[..4].copy_from_slice(&r);
        tuple.family = 4;
    }
    tuple.pad = [0; 2];
    tuple
}

struct Known {
    process: Process,
    seen: Instant,
}

/// The join state, kept across evictions.
pub struct Attribution {
    tuples: HashMap<SockTuple, Known>,
    ports: HashMap<PortKey, Owner>,
    closed: HashSet<SockTuple>,
    idle: Duration,
}

impl Attribution {
    /// `idle`: how long a learnt tuple is kept after it was last used.
    pub fn new(idle: Duration) -> Self {
        Self {
            tuples: HashMap::new(),
            ports: HashMap::new(),
            closed: HashSet::new(),
            idle,
        }
    }

    /// Remembers who owns a local tuple (also for owners found outside the kernel, e.g.
    /// in /proc for sockets older than the collector).
    pub fn learn(&mut self, tuple: SockTuple, process: Process, now: Instant) {
        self.tuples
            .insert(normalize(tuple), Known { process, seen: now });
    }

    /// Takes in the kernel's bound-port table.
    pub fn refresh_ports(&mut self, ports: Vec<(PortKey, Owner)>) {
        self.ports = ports
            .into_iter()
            .map(|(mut k, o)| {
                k.pad = 0;
                (k, o)
            })
            .collect();
    }

    /// A TCP connection closed: remember its owner and mark its flows closed.
    pub fn close(&mut self, event: &CloseEvent, now: Instant) {
        let tuple = normalize(event.tuple);
        if event.conn.has_owner != 0 {
            let process = Process {
                owner: event.conn.owner,
                is_server: event.conn.is_server != 0,
            };
            self.learn(tuple, process, now);
        }
        self.closed.insert(tuple);
    }

    /// Whether the connection of this local tuple closed since the last eviction.
    pub fn is_closed(&self, tuple: &SockTuple) -> bool {
        self.closed.contains(&normalize(*tuple))
    }

    /// The owner of a flow's local socket, if known. `owner_of_cookie` asks the kernel.
    pub fn attribute(
        &mut self,
        key: &FlowKey,
        value: &FlowValue,
        kernel: &impl KernelTables,
        now: Instant,
    ) -> Option<Process> {
        let tuple = normalize(local_tuple(key));
        let port_key = PortKey {
            port: tuple.lport,
            proto: tuple.proto,
            pad: 0,
        };
        if let Some(known) = self.tuples.get_mut(&tuple) {
            known.seen = now;
            return Some(known.process.clone());
        }
        if tuple.proto == TCP {
            // The kernel keys a dual-stack socket's IPv4 connection by its mapped form.
            let conn = kernel
                .conn(&tuple)
                .or_else(|| v4_as_mapped(&tuple).and_then(|m| kernel.conn(&m)));
            if let Some(conn) = conn.filter(|c| c.has_owner != 0) {
                let process = Process {
                    owner: conn.owner,
                    is_server: conn.is_server != 0,
                };
                self.learn(tuple, process.clone(), now);
                return Some(process);
            }
        }
        if value.sock_cookie != 0
            && let Some(owner) = kernel.owner(value.sock_cookie)
        {
            let process = Process {
                owner,
                is_server: self
                    .ports
                    .get(&port_key)
                    .is_some_and(|p| p.pid == owner.pid),
            };
            self.learn(tuple, process.clone(), now);
            return Some(process);
        }
        self.ports.get(&port_key).map(|owner| Process {
            owner: *owner,
            is_server: true,
        })
    }

    /// After an eviction: the closed tuples (for the kernel table to forget), and the
    /// learnt tuples idle for longer than `idle` are dropped.
    pub fn finish_eviction(&mut self, now: Instant) -> Vec<SockTuple> {
        let idle = self.idle;
        self.tuples
            .retain(|_, known| now.duration_since(known.seen) < idle);
        self.closed.drain().collect()
    }

    pub fn known_tuples(&self) -> usize {
        self.tuples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::abi::DIR_INGRESS;

    struct Tables(Vec<(u64, Owner)>);

    impl KernelTables for Tables {
        fn owner(&self, cookie: u64) -> Option<Owner> {
            self.0.iter().find(|(c, _)| *c == cookie).map(|(_, o)| *o)
        }
        fn conn(&self, _: &SockTuple) -> Option<Conn> {
            None
        }
    }

    fn owner(pid: u32, name: &str) -> Owner {
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        Owner {
            pid,
            comm,
            ..Default::default()
        }
    }

    fn key(direction: u8, src: u8, sport: u16, dst: u8, dport: u16) -> FlowKey {
        let mut key = FlowKey {
            direction,
            sport,
            dport,
            proto: 17,
            family: 4,
            ..Default::default()
        };
        key.src[..4].copy_from_slice(&[10, 0, 0, src]);
        key.dst[..4].copy_from_slice(&[10, 0, 0, dst]);
        key
    }

    #[test]
    fn udp_reply_inherits_the_owner_learnt_from_egress() {
        let now = Instant::now();
        let mut attribution = Attribution::new(Duration::from_secs(60));
        let out = key(DIR_EGRESS, 1, 5000, 2, 53);
        let cookie_value = FlowValue {
            sock_cookie: 9,
            ..Default::default()
        };
        let tables = Tables(vec![(9, owner(42, "dig"))]);
        let p = attribution
            .attribute(&out, &cookie_value, &tables, now)
            .unwrap();
        assert_eq!((p.owner.pid, p.is_server), (42, false));
        let back = key(DIR_INGRESS, 2, 53, 1, 5000);
        let p = attribution
            .attribute(&back, &FlowValue::default(), &Tables(vec![]), now)
            .unwrap();
        assert_eq!(p.owner.comm(), "dig");
    }

    #[test]
    fn bound_ports_make_servers_and_mapped_tuples_are_ipv4() {
        let now = Instant::now();
        let mut attribution = Attribution::new(Duration::from_secs(60));
        let port = PortKey {
            port: 53,
            proto: 17,
            pad: 0,
        };
        attribution.refresh_ports(vec![(port, owner(7, "resolver"))]);
        let inbound = key(DIR_INGRESS, 1, 5000, 2, 53);
        let p = attribution
            .attribute(&inbound, &FlowValue::default(), &Tables(vec![]), now)
            .unwrap();
        assert!(p.is_server);
        assert_eq!(p.owner.comm(), "resolver");

        let mut mapped = SockTuple {
            family: 6,
            ..Default::default()
        };
        mapped.local[10..16].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        mapped.remote[10..16].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        let n = normalize(mapped);
        assert_eq!((n.family, &n.local[..4]), (4, &[10, 0, 0, 1][..]));
    }
}
