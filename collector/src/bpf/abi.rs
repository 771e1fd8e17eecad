//! Rust mirror of `collector/bpf/bulkhead.h`: the map keys, values and ring-buffer events
//! shared with the kernel programs. Every struct is `#[repr(C)]`, and its size and every
//! field offset are asserted at compile time, so a drift from the C header fails the
//! build instead of corrupting data in production.

use std::mem::{offset_of, size_of};

pub const COMM_LEN: usize = 16;
pub const DNS_MAX: usize = 512;

pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

pub const EV_CLOSE: u32 = 1;
pub const EV_DNS: u32 = 2;

/// Index of the per-CPU counters of `flows.o` (`BH_FC_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowCounter {
    NonIp = 0,
    Truncated = 1,
    FlowMapFull = 2,
    DnsEvents = 3,
    DnsRingbufFull = 4,
    Fragments = 5,
}

impl FlowCounter {
    pub const COUNT: u32 = 6;
    pub const ALL: [FlowCounter; 6] = [
        Self::NonIp,
        Self::Truncated,
        Self::FlowMapFull,
        Self::DnsEvents,
        Self::DnsRingbufFull,
        Self::Fragments,
    ];
    /// Low-cardinality name used as the metric's `reason` tag.
    pub fn name(self) -> &'static str {
        match self {
            Self::NonIp => "non_ip",
            Self::Truncated => "truncated",
            Self::FlowMapFull => "flow_map_full",
            Self::DnsEvents => "dns_events",
            Self::DnsRingbufFull => "dns_ringbuf_full",
            Self::Fragments => "fragments",
        }
    }
}

/// Index of the per-CPU counters of `sockets.o` (`BH_SC_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketCounter {
    OtherNetns = 0,
    OwnerMapFull = 1,
    ConnMapFull = 2,
    PortMapFull = 3,
    EventsFull = 4,
    NoOwner = 5,
}

impl SocketCounter {
    pub const COUNT: u32 = 6;
    pub const ALL: [SocketCounter; 6] = [
        Self::OtherNetns,
        Self::OwnerMapFull,
        Self::ConnMapFull,
        Self::PortMapFull,
        Self::EventsFull,
        Self::NoOwner,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Self::OtherNetns => "other_netns",
            Self::OwnerMapFull => "owner_map_full",
            Self::ConnMapFull => "conn_map_full",
            Self::PortMapFull => "port_map_full",
            Self::EventsFull => "close_ringbuf_full",
            Self::NoOwner => "no_owner",
        }
    }
}

/// `struct bh_flow_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub direction: u8,
    pub pad: u8,
}

/// `struct bh_flow_value` (one CPU's share).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub sock_cookie: u64,
    pub tcp_flags: u8,
    pub pad: [u8; 7],
}

/// `struct bh_sock_tuple`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTuple {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub lport: u16,
    pub rport: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// `struct bh_owner`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub cgroup_id: u64,
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; COMM_LEN],
}

/// `struct bh_conn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub owner: Owner,
    pub cookie: u64,
    pub is_server: u8,
    pub has_owner: u8,
    pub pad: [u8; 6],
}

/// `struct bh_port_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// `struct bh_close_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloseEvent {
    pub kind: u32,
    pub pad: u32,
    pub tuple: SockTuple,
    pub conn: Conn,
}

/// `struct bh_dns_event` header; `payload` follows at [`DNS_PAYLOAD_OFFSET`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsEvent {
    pub kind: u32,
    pub len: u32,
    pub ifindex: u32,
    pub pad: u32,
    pub payload: [u8; DNS_MAX],
}

pub const DNS_PAYLOAD_OFFSET: usize = offset_of!(DnsEvent, payload);

// SAFETY: plain old data: repr(C), only integer fields and arrays of them, explicit
// padding, so every bit pattern is valid and there are no uninitialised bytes.
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowValue {}
unsafe impl aya::Pod for SockTuple {}
unsafe impl aya::Pod for Owner {}
unsafe impl aya::Pod for Conn {}
unsafe impl aya::Pod for PortKey {}

impl Owner {
    /// The command name up to its first NUL, lossily as UTF-8.
    pub fn comm(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

impl CloseEvent {
    /// Reads an event from ring-buffer bytes; `None` when they are too short or of
    /// another kind.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; every bit pattern is a valid CloseEvent; unaligned read.
        let event: Self = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        (event.kind == EV_CLOSE).then_some(event)
    }
}

/// The DNS message carried by a `bh_dns_event`, or `None` for a malformed event.
pub fn dns_payload(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
    };
    if word(0)? != EV_DNS {
        return None;
    }
    let len = (word(4)? as usize).min(DNS_MAX);
    let ifindex = word(8)?;
    bytes
        .get(DNS_PAYLOAD_OFFSET..DNS_PAYLOAD_OFFSET + len)
        .map(|p| (ifindex, p))
}

macro_rules! assert_layout {
    ($ty:ty, $size:expr, { $($field:ident : $offset:expr),* $(,)? }) => {
        const _: () = assert!(size_of::<$ty>() == $size, concat!("size of ", stringify!($ty)));
        $(const _: () = assert!(
            offset_of!($ty, $field) == $offset,
            concat!("offset of ", stringify!($ty), ".", stringify!($field))
        );)*
    };
}

assert_layout!(FlowKey, 44, { src: 0, dst: 16, ifindex: 32, sport: 36, dport: 38, proto: 40, family: 41, direction: 42, pad: 43 });
assert_layout!(FlowValue, 48, { packets: 0, bytes: 8, first_ns: 16, last_ns: 24, sock_cookie: 32, tcp_flags: 40, pad: 41 });
assert_layout!(SockTuple, 40, { local: 0, remote: 16, lport: 32, rport: 34, proto: 36, family: 37, pad: 38 });
assert_layout!(Owner, 32, { cgroup_id: 0, pid: 8, uid: 12, comm: 16 });
assert_layout!(Conn, 48, { owner: 0, cookie: 32, is_server: 40, has_owner: 41, pad: 42 });
assert_layout!(PortKey, 4, { port: 0, proto: 2, pad: 3 });
assert_layout!(CloseEvent, 96, { kind: 0, pad: 4, tuple: 8, conn: 48 });
assert_layout!(DnsEvent, 528, { kind: 0, len: 4, ifindex: 8, pad: 12, payload: 16 });
