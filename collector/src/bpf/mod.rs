//! The kernel side: loads the embedded eBPF objects, attaches them, and reads their maps.
//!
//! - `flows.o`: TC programs (tcx) on ingress and egress of each chosen interface; two
//!   per-CPU flow maps written alternately (`ctl[0]` says which), so [`Kernel::drain_flows`]
//!   flips and drains the idle one: eviction never races with accounting.
//! - `sockets.o`: cgroup `sock_create` / `post_bind4/6` hooks and the
//!   `inet_sock_set_state` BTF tracepoint, for process attribution (see `bpf/sockets.c`).
//!
//! Dropping a [`Kernel`] closes every link: programs are detached on every exit path.

pub mod abi;

use std::collections::BTreeMap;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSock, ProgramError, SchedClassifier, TcAttachType,
};
use aya::{Btf, Ebpf, EbpfLoader, include_bytes_aligned};

use self::abi::{Conn, FlowCounter, FlowKey, FlowValue, Owner, PortKey, SockTuple, SocketCounter};
use crate::error::CollectorError;

/// The compiled programs (built by `build.rs` from `collector/bpf/*.c`).
pub static FLOWS_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flows.o"));
pub static SOCKETS_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockets.o"));
/// A TC program that does nothing: the baseline of the benchmarks.
pub static EMPTY_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/empty.o"));

/// How long [`Kernel::drain_flows`] waits after flipping the active map for programs
/// that read the old index to finish. TC programs run with bottom halves disabled and
/// take well under a microsecond, so this is a wide margin.
const FLIP_GRACE: Duration = Duration::from_millis(2);

/// Map sizes (entries), from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Each of the two flow maps.
    pub flows: u32,
    /// Socket owners and connections.
    pub sockets: u32,
    /// Bound ports.
    pub ports: u32,
}

/// One flow with its per-CPU shares merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFlow {
    pub key: FlowKey,
    pub value: FlowValue,
}

/// Merges the per-CPU shares of one flow: sums, earliest first, latest last, OR of flags.
pub fn merge_per_cpu<'a>(values: impl IntoIterator<Item = &'a FlowValue>) -> FlowValue {
    let mut merged = FlowValue::default();
    for v in values {
        if v.packets == 0 && v.first_ns == 0 {
            continue;
        }
        merged.packets += v.packets;
        merged.bytes += v.bytes;
        if merged.first_ns == 0 || (v.first_ns != 0 && v.first_ns < merged.first_ns) {
            merged.first_ns = v.first_ns;
        }
        merged.last_ns = merged.last_ns.max(v.last_ns);
        merged.tcp_flags |= v.tcp_flags;
        if v.sock_cookie != 0 {
            merged.sock_cookie = v.sock_cookie;
        }
    }
    merged
}

/// BPF_PROG_TEST_RUN of a loaded TC program of `obj`: mean time per run.
pub fn test_run(
    obj: &Ebpf,
    program: &str,
    packet: &[u8],
    repeat: u32,
) -> Result<Duration, CollectorError> {
    use aya::programs::TestRun as _;
    let prog: &SchedClassifier = obj
        .program(program)
        .ok_or_else(|| CollectorError::Internal(format!("program {program} missing")))?
        .try_into()
        .map_err(|e| program_err(program, e))?;
    let result = prog
        .test_run(aya::programs::TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        })
        .map_err(|e| program_err(&format!("test run of {program}"), e))?;
    Ok(result.duration)
}

/// Loads the do-nothing TC program of `empty.o` (the benchmarks' baseline).
pub fn load_empty() -> Result<Ebpf, CollectorError> {
    let mut obj = Ebpf::load(EMPTY_OBJ).map_err(|e| load_err("load empty.o", e))?;
    let program: &mut SchedClassifier = obj
        .program_mut("bh_tc_empty")
        .ok_or_else(|| CollectorError::Internal("program bh_tc_empty missing".into()))?
        .try_into()
        .map_err(|e| program_err("bh_tc_empty", e))?;
    program.load().map_err(|e| program_err("bh_tc_empty", e))?;
    Ok(obj)
}

struct Attached {
    name: String,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

/// The loaded and attached programs and their maps.
pub struct Kernel {
    flows_obj: Ebpf,
    // Kept alive for its links (cgroup hooks, tracepoint); dropped last.
    _sockets_obj: Ebpf,
    flows: [PerCpuHashMap<MapData, FlowKey, FlowValue>; 2],
    ctl: Array<MapData, u32>,
    active: u32,
    flow_counters: PerCpuArray<MapData, u64>,
    socket_counters: PerCpuArray<MapData, u64>,
    owners: BpfHashMap<MapData, u64, Owner>,
    conns: BpfHashMap<MapData, SockTuple, Conn>,
    ports: BpfHashMap<MapData, PortKey, Owner>,
    dns_events: Option<RingBuf<MapData>>,
    close_events: Option<RingBuf<MapData>>,
    attached: BTreeMap<u32, Attached>,
    cgroup: PathBuf,
}

fn load_err(what: &str, e: impl std::fmt::Display) -> CollectorError {
    CollectorError::Kernel(format!("{what}: {e}"))
}

fn program_err(what: &str, e: ProgramError) -> CollectorError {
    // The verifier log is the only useful part of a load failure: show it.
    match &e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => CollectorError::Kernel(format!(
            "{what}: the kernel refused the program ({io_error}); verifier log:\n{verifier_log}"
        )),
        _ => {
            let mut message = format!("{what}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            CollectorError::Kernel(message)
        }
    }
}

fn take<T>(obj: &mut Ebpf, name: &str) -> Result<T, CollectorError>
where
    T: TryFrom<aya::maps::Map>,
    <T as TryFrom<aya::maps::Map>>::Error: std::fmt::Display,
{
    let map = obj
        .take_map(name)
        .ok_or_else(|| CollectorError::Internal(format!("map {name} missing from the object")))?;
    T::try_from(map).map_err(|e| load_err(&format!("map {name}"), e))
}

impl Kernel {
    /// Loads both objects, attaches the socket hooks to the cgroup2 hierarchy at
    /// `cgroup` (its root sees every process) and the state tracepoint. Interfaces are
    /// attached separately ([`Kernel::attach_interface`]).
    pub fn load(sizes: MapSizes, netns_cookie: u64, cgroup: &Path) -> Result<Self, CollectorError> {
        crate::preflight::check_kernel()?;
        let cgroup_dir = crate::preflight::open_cgroup2(cgroup)?;

        let mut flows_obj = EbpfLoader::new()
            .map_max_entries("flows_a", sizes.flows)
            .map_max_entries("flows_b", sizes.flows)
            .load(FLOWS_OBJ)
            .map_err(|e| load_err("load flows.o", e))?;
        for name in ["bh_tc_ingress", "bh_tc_egress"] {
            let program: &mut SchedClassifier = flows_obj
                .program_mut(name)
                .ok_or_else(|| CollectorError::Internal(format!("program {name} missing")))?
                .try_into()
                .map_err(|e| program_err(name, e))?;
            program.load().map_err(|e| program_err(name, e))?;
        }

        let mut sockets_obj = EbpfLoader::new()
            .map_max_entries("owners", sizes.sockets)
            .map_max_entries("conns", sizes.sockets)
            .map_max_entries("ports", sizes.ports)
            .override_global("netns_cookie", &netns_cookie, true)
            .load(SOCKETS_OBJ)
            .map_err(|e| load_err("load sockets.o", e))?;
        for name in ["bh_sock_create", "bh_post_bind4", "bh_post_bind6"] {
            let program: &mut CgroupSock = sockets_obj
                .program_mut(name)
                .ok_or_else(|| CollectorError::Internal(format!("program {name} missing")))?
                .try_into()
                .map_err(|e| program_err(name, e))?;
            program.load().map_err(|e| program_err(name, e))?;
            // With BPF links (aya uses them on 5.7+) the kernel refuses any attach flag
            // (EINVAL) and always lets several programs share a cgroup: `Single` is 0.
            program
                .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
                .map_err(|e| program_err(&format!("attach {name} to {}", cgroup.display()), e))?;
        }
        let btf = Btf::from_sys_fs().map_err(|e| load_err("read kernel BTF", e))?;
        let state: &mut BtfTracePoint = sockets_obj
            .program_mut("bh_sock_state")
            .ok_or_else(|| CollectorError::Internal("program bh_sock_state missing".into()))?
            .try_into()
            .map_err(|e| program_err("bh_sock_state", e))?;
        state
            .load("inet_sock_set_state", &btf)
            .map_err(|e| program_err("bh_sock_state", e))?;
        state
            .attach()
            .map_err(|e| program_err("attach tp_btf/inet_sock_set_state", e))?;

        let flows = [
            take(&mut flows_obj, "flows_a")?,
            take(&mut flows_obj, "flows_b")?,
        ];
        let mut ctl: Array<MapData, u32> = take(&mut flows_obj, "ctl")?;
        ctl.set(0, 0, 0).map_err(|e| load_err("set ctl", e))?;
        Ok(Self {
            flows,
            ctl,
            active: 0,
            flow_counters: take(&mut flows_obj, "counters")?,
            dns_events: Some(take(&mut flows_obj, "dns_events")?),
            socket_counters: take(&mut sockets_obj, "counters")?,
            owners: take(&mut sockets_obj, "owners")?,
            conns: take(&mut sockets_obj, "conns")?,
            ports: take(&mut sockets_obj, "ports")?,
            close_events: Some(take(&mut sockets_obj, "events")?),
            flows_obj,
            _sockets_obj: sockets_obj,
            attached: BTreeMap::new(),
            cgroup: cgroup.to_path_buf(),
        })
    }

    /// The cgroup2 directory the socket hooks hang off.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The ring buffers, for the run loop to poll (once).
    pub fn take_ring_buffers(&mut self) -> Option<(RingBuf<MapData>, RingBuf<MapData>)> {
        Some((self.dns_events.take()?, self.close_events.take()?))
    }

    /// Attaches the TC programs (tcx, ingress and egress) to `name`; returns its ifindex.
    pub fn attach_interface(&mut self, name: &str, ifindex: u32) -> Result<(), CollectorError> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let mut link = |program: &str, direction: TcAttachType| {
            let program: &mut SchedClassifier = self
                .flows_obj
                .program_mut(program)
                .ok_or_else(|| CollectorError::Internal(format!("program {program} missing")))?
                .try_into()
                .map_err(|e| program_err(program, e))?;
            program
                .attach(name, direction)
                .map_err(|e| CollectorError::Attach {
                    interface: name.to_string(),
                    reason: e.to_string(),
                })
        };
        let ingress = link("bh_tc_ingress", TcAttachType::Ingress)?;
        let egress = match link("bh_tc_egress", TcAttachType::Egress) {
            Ok(egress) => egress,
            Err(e) => {
                self.detach_link("bh_tc_ingress", ingress);
                return Err(e);
            }
        };
        self.attached.insert(
            ifindex,
            Attached {
                name: name.to_string(),
                ingress,
                egress,
            },
        );
        Ok(())
    }

    fn detach_link(&mut self, program: &str, link: SchedClassifierLinkId) {
        if let Some(program) = self.flows_obj.program_mut(program)
            && let Ok(program) = <&mut SchedClassifier>::try_from(program)
        {
            // The link of an interface that is gone is already gone in the kernel.
            let _ = program.detach(link);
        }
    }

    /// Detaches from an interface (or forgets one the kernel removed).
    pub fn detach_interface(&mut self, ifindex: u32) -> Option<String> {
        let attached = self.attached.remove(&ifindex)?;
        self.detach_link("bh_tc_ingress", attached.ingress);
        self.detach_link("bh_tc_egress", attached.egress);
        Some(attached.name)
    }

    /// Interfaces attached now: ifindex → name.
    pub fn attached(&self) -> BTreeMap<u32, String> {
        self.attached
            .iter()
            .map(|(i, a)| (*i, a.name.clone()))
            .collect()
    }

    /// Flips the active flow map, waits for programs still writing the old one, then reads
    /// and deletes every flow of the old one. Exact: no packet is counted twice or lost.
    pub fn drain_flows(&mut self) -> Result<Vec<RawFlow>, CollectorError> {
        let idle = self.active;
        self.active ^= 1;
        self.ctl
            .set(0, self.active, 0)
            .map_err(|e| load_err("flip the active flow map", e))?;
        std::thread::sleep(FLIP_GRACE);
        let map = &mut self.flows[idle as usize];
        let keys: Vec<FlowKey> = map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| load_err("list flows", e))?;
        let mut flows = Vec::with_capacity(keys.len());
        for key in keys {
            match map.get(&key, 0) {
                Ok(values) => flows.push(RawFlow {
                    key,
                    value: merge_per_cpu(values.iter()),
                }),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(load_err("read a flow", e)),
            }
            match map.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(load_err("delete a flow", e)),
            }
        }
        Ok(flows)
    }

    /// Runs the ingress TC program on `packet` (an Ethernet frame) `repeat` times with
    /// BPF_PROG_TEST_RUN, as if it arrived; returns the kernel's mean time per run. The
    /// packets are accounted like real ones (benchmarks fill the flow map this way).
    pub fn test_run_ingress(&self, packet: &[u8], repeat: u32) -> Result<Duration, CollectorError> {
        test_run(&self.flows_obj, "bh_tc_ingress", packet, repeat)
    }

    /// Totals of the kernel counters, summed over CPUs.
    pub fn flow_counters(&self) -> [u64; FlowCounter::COUNT as usize] {
        let mut totals = [0; FlowCounter::COUNT as usize];
        for (i, total) in totals.iter_mut().enumerate() {
            if let Ok(values) = self.flow_counters.get(&(i as u32), 0) {
                *total = values.iter().sum();
            }
        }
        totals
    }

    pub fn socket_counters(&self) -> [u64; SocketCounter::COUNT as usize] {
        let mut totals = [0; SocketCounter::COUNT as usize];
        for (i, total) in totals.iter_mut().enumerate() {
            if let Ok(values) = self.socket_counters.get(&(i as u32), 0) {
                *total = values.iter().sum();
            }
        }
        totals
    }

    /// The process that created the socket with this cookie, when it was seen.
    pub fn owner(&self, cookie: u64) -> Option<Owner> {
        self.owners.get(&cookie, 0).ok()
    }

    /// The connection the state tracepoint recorded for this local tuple.
    pub fn conn(&self, tuple: &SockTuple) -> Option<Conn> {
        self.conns.get(tuple, 0).ok()
    }

    /// Every bound port with its owner.
    pub fn ports(&self) -> Vec<(PortKey, Owner)> {
        self.ports.iter().filter_map(Result::ok).collect()
    }

    /// Forgets a closed connection.
    pub fn remove_conn(&mut self, tuple: &SockTuple) {
        let _ = self.conns.remove(tuple);
    }
}

impl crate::attribution::KernelTables for Kernel {
    fn owner(&self, cookie: u64) -> Option<Owner> {
        Kernel::owner(self, cookie)
    }

    fn conn(&self, tuple: &SockTuple) -> Option<Conn> {
        Kernel::conn(self, tuple)
    }
}
