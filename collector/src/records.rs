//! Pure conversion of evicted kernel flows into protobuf `FlowRecord`s and `FlowBatch`es
//! (no I/O: unit-tested and benchmarked on its own).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bulkhead_schemas::proto::{Direction, FlowBatch, FlowRecord};

use crate::attribution::Process;
use crate::bpf::RawFlow;
use crate::bpf::abi::{DIR_EGRESS, DIR_INGRESS};

/// FlowBatch wire version this collector writes.
pub const SCHEMA_VERSION: u32 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// Kernel monotonic time (what `bpf_ktime_get_ns` returns) → Unix time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Unix epoch ns minus CLOCK_MONOTONIC ns, read back to back.
    pub offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    // SAFETY: clock_gettime writes into a zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    /// Reads both clocks now (re-read at each eviction, so clock steps are followed).
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    pub fn to_unix_ns(self, ktime_ns: u64) -> u64 {
        if ktime_ns == 0 {
            return 0;
        }
        (i128::from(ktime_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// The address bytes of a flow key as they travel (4 or 16 bytes, network order).
pub fn address_bytes(family: u8, raw: &[u8; 16]) -> Vec<u8> {
    if family == 4 {
        raw[..4].to_vec()
    } else {
        raw.to_vec()
    }
}

pub fn ip_addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

/// The remote end of a flow (for the DNS name).
pub fn remote_ip(flow: &RawFlow) -> IpAddr {
    let raw = if flow.key.direction == DIR_EGRESS {
        &flow.key.dst
    } else {
        &flow.key.src
    };
    ip_addr(flow.key.family, raw)
}

/// What user space knows about a flow beyond the kernel's counts.
#[derive(Clone, Debug, Default)]
pub struct Enrichment<'a> {
    pub interface: &'a str,
    pub process: Option<Process>,
    pub dns_name: Option<&'a str>,
    /// Executable of the owning process, when it still runs.
    pub executable: Option<&'a str>,
    /// The connection's close was reported by the kernel.
    pub close_seen: bool,
}

pub fn to_record(host_id: &str, flow: &RawFlow, clock: Clock, extra: Enrichment<'_>) -> FlowRecord {
    let (k, v) = (&flow.key, &flow.value);
    let direction = match k.direction {
        DIR_INGRESS => Direction::Ingress,
        DIR_EGRESS => Direction::Egress,
        _ => Direction::Unspecified,
    };
    let process = extra.process.as_ref();
    FlowRecord {
        host_id: host_id.to_string(),
        interface: extra.interface.to_string(),
        ifindex: k.ifindex,
        direction: direction as i32,
        ip_version: u32::from(k.family),
        src_ip: address_bytes(k.family, &k.src),
        dst_ip: address_bytes(k.family, &k.dst),
        src_port: u32::from(k.sport),
        dst_port: u32::from(k.dport),
        protocol: u32::from(k.proto),
        packets: v.packets,
        bytes: v.bytes,
        tcp_flags: u32::from(v.tcp_flags),
        first_seen_unix_ns: clock.to_unix_ns(v.first_ns),
        last_seen_unix_ns: clock.to_unix_ns(v.last_ns),
        sampling_rate: 1,
        pid: process.map_or(0, |p| p.owner.pid),
        process_name: process.map(|p| p.owner.comm()).unwrap_or_default(),
        executable: extra.executable.unwrap_or_default().to_string(),
        cgroup_id: process.map_or(0, |p| p.owner.cgroup_id),
        closed: extra.close_seen || (k.proto == 6 && v.tcp_flags & (TCP_FIN | TCP_RST) != 0),
        local_is_server: process.is_some_and(|p| p.is_server),
        remote_dns_name: extra.dns_name.unwrap_or_default().to_string(),
        uid: process.map_or(0, |p| p.owner.uid),
        ..Default::default()
    }
}

/// Numbers batches within one collector instance.
pub struct BatchBuilder {
    pub host_id: String,
    pub agent_instance_id: String,
    next_seq: u64,
}

impl BatchBuilder {
    pub fn new(host_id: String, agent_instance_id: String) -> Self {
        Self {
            host_id,
            agent_instance_id,
            next_seq: 0,
        }
    }

    /// Splits `records` into batches of at most `max_records` (at least one batch, so
    /// that drop counts and liveness travel even when nothing flowed); `dropped` goes on
    /// the first.
    pub fn build(
        &mut self,
        records: Vec<FlowRecord>,
        max_records: usize,
        dropped: u64,
        now_ns: u64,
    ) -> Vec<FlowBatch> {
        let max_records = max_records.max(1);
        let mut batches = Vec::new();
        let mut records = records.into_iter().peekable();
        loop {
            let chunk: Vec<FlowRecord> = records.by_ref().take(max_records).collect();
            if chunk.is_empty() && !batches.is_empty() {
                break;
            }
            batches.push(FlowBatch {
                schema_version: SCHEMA_VERSION,
                host_id: self.host_id.clone(),
                agent_instance_id: self.agent_instance_id.clone(),
                batch_seq: self.next_seq,
                created_unix_ns: now_ns,
                records: chunk,
                dropped_flows: if batches.is_empty() { dropped } else { 0 },
            });
            self.next_seq += 1;
            if records.peek().is_none() {
                break;
            }
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::abi::{FlowKey, FlowValue};

    fn flow() -> RawFlow {
        let mut key = FlowKey {
            ifindex: 3,
            sport: 40000,
            dport: 443,
            proto: 6,
            family: 4,
            direction: DIR_EGRESS,
            ..Default::default()
        };
        key.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        key.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        RawFlow {
            key,
            value: FlowValue {
                packets: 3,
                bytes: 180,
                first_ns: 1_000,
                last_ns: 2_000,
                tcp_flags: 0x12,
                ..Default::default()
            },
        }
    }

    #[test]
    fn records_carry_counts_addresses_and_wall_clock() {
        let clock = Clock { offset_ns: 5_000 };
        let r = to_record(
            "h",
            &flow(),
            clock,
            Enrichment {
                interface: "eth0",
                ..Default::default()
            },
        );
        assert_eq!((r.packets, r.bytes, r.tcp_flags), (3, 180, 0x12));
        assert_eq!(r.src_ip, vec![10, 0, 0, 1]);
        assert_eq!((r.src_port, r.dst_port, r.protocol), (40000, 443, 6));
        assert_eq!((r.first_seen_unix_ns, r.last_seen_unix_ns), (6_000, 7_000));
        assert_eq!(r.direction, Direction::Egress as i32);
        assert!(!r.closed);
        let mut fin = flow();
        fin.value.tcp_flags |= TCP_FIN;
        assert!(to_record("h", &fin, clock, Enrichment::default()).closed);
        assert!(Clock::now().to_unix_ns(1) > 1_600_000_000_000_000_000);
    }

    #[test]
    fn batches_are_numbered_split_and_never_empty_of_liveness() {
        let mut builder = BatchBuilder::new("h".into(), "i".into());
        let empty = builder.build(vec![], 10, 4, 1);
        assert_eq!(empty.len(), 1);
        assert_eq!((empty[0].batch_seq, empty[0].dropped_flows), (0, 4));
        let records = vec![FlowRecord::default(); 25];
        let batches = builder.build(records, 10, 0, 2);
        let sizes: Vec<usize> = batches.iter().map(|b| b.records.len()).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        assert_eq!(batches[2].batch_seq, 3);
        assert!(
            batches
                .iter()
                .all(|b| b.schema_version == 1 && b.host_id == "h")
        );
    }
}
