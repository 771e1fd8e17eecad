//! The run loop: one task that owns the kernel side and reacts to five things —
//! shutdown, DNS responses, TCP closes, the eviction tick and the interface/inventory
//! ticks. Eviction never waits for Kafka: batches go to the bounded publish queue.
//!
//! ```text
//!   start ──▶ load + attach ──▶ running ──(SIGINT/SIGTERM, --duration, stop())──▶ final
//!               (preflight)       │  ▲                                        eviction
//!                                 ▼  │ evict every N s, 250 ms after a TCP close  │
//!                                 └──┘ attach new interfaces, publish inventory   ▼
//!                                                               flush queue ─▶ detach
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use bulkhead_schemas::proto::HostInventory;
use tokio::io::unix::AsyncFd;

use crate::attribution::{Attribution, Process, local_tuple, normalize};
use crate::bpf::abi::{CloseEvent, FlowCounter, SockTuple, SocketCounter, dns_payload};
use crate::bpf::{Kernel, MapSizes, RawFlow};
use crate::config::CollectorConfig;
use crate::dns::{DnsCache, parse_response};
use crate::error::CollectorError;
use crate::inventory;
use crate::publisher::{Output, Publisher, Sink};
use crate::records::{BatchBuilder, Clock, Enrichment, remote_ip, to_record};
use crate::telemetry::{Metric, Stats, export_kernel_counters};

/// What a started collector tells its caller.
#[derive(Clone, Debug)]
pub struct Started {
    pub host_id: String,
    pub agent_instance_id: String,
    /// Interfaces attached at start: ifindex → name.
    pub interfaces: BTreeMap<u32, String>,
}

/// A configured collector, not yet running.
pub struct Collector {
    config: CollectorConfig,
    stats: Arc<Stats>,
}

enum Event {
    Stop,
    Dns,
    Close,
    Evict,
    Interfaces,
    Inventory,
}

struct State {
    config: CollectorConfig,
    kernel: Kernel,
    publisher: Publisher,
    stats: Arc<Stats>,
    builder: BatchBuilder,
    attribution: Attribution,
    dns: DnsCache,
    names: HashMap<u32, String>,
    closed_raw: Vec<SockTuple>,
    last_flow_counters: [u64; FlowCounter::COUNT as usize],
    last_socket_counters: [u64; SocketCounter::COUNT as usize],
    dropped_reported: u64,
    inventory: Option<HostInventory>,
    started_unix_ns: u64,
    /// The last /proc scan: when, and the owners it found. Sockets older than the
    /// collector are all in the first scan, so between scans flows are attributed from
    /// it rather than left without an owner.
    proc_scan: Option<(Instant, ProcOwners)>,
}

/// Socket owners from /proc: connected sockets by tuple, listeners by (protocol, port).
#[derive(Default)]
struct ProcOwners {
    by_tuple: HashMap<SockTuple, u32>,
    listeners: HashMap<(u8, u16), u32>,
}

impl ProcOwners {
    fn scan() -> Self {
        let rows = inventory::proc_sockets();
        let inodes = inventory::socket_owners();
        let mut owners = Self::default();
        for (proto, row) in rows {
            let Some(&pid) = inodes.get(&row.inode) else {
                continue;
            };
            let tuple = normalize(proc_tuple(proto, &row));
            let unconnected = row.rport == 0 && row.remote.is_unspecified();
            if (proto == 6 && row.state == 0x0a) || (proto == 17 && unconnected) {
                owners.listeners.insert((proto, row.lport), pid);
            } else {
                owners.by_tuple.insert(tuple, pid);
            }
        }
        owners
    }
}

/// How often /proc may be scanned for owners of sockets older than the collector.
const PROC_SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// A /proc/net row as the kernel tables key it.
fn proc_tuple(proto: u8, row: &inventory::ProcSocket) -> SockTuple {
    let mut tuple = SockTuple {
        lport: row.lport,
        rport: row.rport,
        proto,
        ..Default::default()
    };
    match (row.local, row.remote) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            tuple.family = 4;
            tuple.local[..4].copy_from_slice(&l.octets());
            tuple.remote[..4].copy_from_slice(&r.octets());
        }
        (l, r) => {
            tuple.family = 6;
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            tuple.local = v6(l);
            tuple.remote = v6(r);
        }
    }
    tuple
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Collector {
    pub fn new(config: CollectorConfig) -> Result<Self, CollectorError> {
        config.validate()?;
        Ok(Self {
            config,
            stats: Arc::new(Stats::default()),
        })
    }

    /// The live counters of this collector.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs in the calling thread's network namespace until `shutdown` resolves (or
    /// `--duration` passes), then evicts what is left, flushes and detaches. `ready` is
    /// called once everything is attached.
    pub async fn run(
        self,
        sink: Sink,
        ready: impl FnOnce(&Started),
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), CollectorError> {
        let config = self.config;
        if let Some(addr) = config.metrics_listen {
            crate::telemetry::serve_prometheus(addr)?;
        }
        let host_id = inventory::host_id(&config.host_id_file)?;
        let agent_instance_id = inventory::new_id();
        let netns_cookie = crate::netns::current_cookie()?;
        let sizes = MapSizes {
            flows: config.flow_map_entries,
            sockets: config.socket_map_entries,
            ports: config.port_map_entries,
        };
        let cgroup = crate::preflight::cgroup2_dir(config.cgroup.as_deref())?;
        let mut kernel = Kernel::load(sizes, netns_cookie, &cgroup)?;
        let (dns_ring, close_ring) = kernel
            .take_ring_buffers()
            .ok_or_else(|| CollectorError::Internal("ring buffers taken twice".into()))?;
        #[expect(
            deprecated,
            reason = "RingBuf owns its fd (MapData); the I/O-safety concern of AsyncFd::new does not apply"
        )]
        let wrap = |ring: RingBuf<MapData>, what: &str| {
            AsyncFd::new(ring)
                .map_err(|e| CollectorError::io(format!("poll the {what} ring buffer"), e))
        };
        let mut dns_ring = wrap(dns_ring, "DNS")?;
        let mut close_ring = wrap(close_ring, "close event")?;
        Metric::FlowMapCapacity.set(f64::from(config.flow_map_entries));

        let publisher = Publisher::start(sink, config.queue_bytes, self.stats.clone());
        let mut state = State {
            builder: BatchBuilder::new(host_id.clone(), agent_instance_id.clone()),
            attribution: Attribution::new(Duration::from_secs(600)),
            dns: DnsCache::new(config.dns_cache_entries, Duration::from_secs(300)),
            names: HashMap::new(),
            closed_raw: Vec::new(),
            last_flow_counters: [0; FlowCounter::COUNT as usize],
            last_socket_counters: [0; SocketCounter::COUNT as usize],
            dropped_reported: 0,
            inventory: None,
            started_unix_ns: bulkhead_schemas::now_unix_ns(),
            proc_scan: None,
            config,
            kernel,
            publisher,
            stats: self.stats.clone(),
        };
        state.sync_interfaces(true)?;
        state.publish_inventory();
        tracing::info!(
            host_id = %host_id,
            agent_instance_id = %agent_instance_id,
            interfaces = ?state.kernel.attached().values().collect::<Vec<_>>(),
            cgroup = %state.kernel.cgroup().display(),
            evict_interval = ?state.config.evict_interval,
            "collector attached"
        );
        ready(&Started {
            host_id,
            agent_instance_id,
            interfaces: state.kernel.attached(),
        });

        let deadline = state.config.duration.map(|d| Instant::now() + d);
        let start = tokio::time::Instant::now();
        let mut evict_tick = tokio::time::interval_at(
            start + state.config.evict_interval,
            state.config.evict_interval,
        );
        let mut iface_tick = tokio::time::interval_at(
            start + state.config.interface_poll,
            state.config.interface_poll,
        );
        let mut inventory_tick = tokio::time::interval_at(
            start + state.config.inventory_interval,
            state.config.inventory_interval,
        );
        for tick in [&mut evict_tick, &mut iface_tick, &mut inventory_tick] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut close_at: Option<Instant> = None;
        let mut shutdown = std::pin::pin!(shutdown);

        let result = loop {
            let event = tokio::select! {
                biased;
                () = &mut shutdown => Event::Stop,
                () = sleep_until_opt(deadline) => Event::Stop,
                guard = dns_ring.readable_mut() => {
                    if let Ok(mut guard) = guard { guard.clear_ready(); }
                    Event::Dns
                }
                guard = close_ring.readable_mut() => {
                    if let Ok(mut guard) = guard { guard.clear_ready(); }
                    Event::Close
                }
                () = sleep_until_opt(close_at) => { close_at = None; Event::Evict }
                _ = evict_tick.tick() => Event::Evict,
                _ = iface_tick.tick() => Event::Interfaces,
                _ = inventory_tick.tick() => Event::Inventory,
            };
            let outcome = match event {
                Event::Stop => break Ok(()),
                Event::Dns => {
                    state.read_dns(dns_ring.get_mut());
                    Ok(())
                }
                Event::Close => {
                    if state.read_closes(close_ring.get_mut()) && close_at.is_none() {
                        close_at = Some(Instant::now() + state.config.close_delay);
                    }
                    Ok(())
                }
                Event::Evict => {
                    state.read_dns(dns_ring.get_mut());
                    state.read_closes(close_ring.get_mut());
                    state.evict()
                }
                Event::Interfaces => match state.sync_interfaces(false) {
                    Ok(true) => {
                        state.publish_inventory();
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                },
                Event::Inventory => {
                    state.publish_inventory();
                    Ok(())
                }
            };
            if let Err(e) = outcome {
                break Err(e);
            }
        };

        // Final eviction: what was counted since the last tick is not lost on exit.
        state.read_dns(dns_ring.get_mut());
        state.read_closes(close_ring.get_mut());
        let last = state.evict();
        let State {
            kernel,
            publisher,
            stats,
            ..
        } = state;
        publisher.shutdown(Duration::from_secs(10)).await;
        drop(dns_ring);
        drop(close_ring);
        drop(kernel); // closes every link: programs detached
        tracing::info!(
            evicted_flows = Stats::get(&stats.evicted_flows),
            published_batches = Stats::get(&stats.published_batches),
            "collector stopped and detached"
        );
        result.and(last)
    }
}

impl State {
    fn read_dns(&mut self, ring: &mut RingBuf<MapData>) {
        let now = Instant::now();
        while let Some(item) = ring.next() {
            let Some((_, payload)) = dns_payload(&item) else {
                continue;
            };
            match parse_response(payload) {
                Ok(answers) => {
                    let n = answers.len() as u64;
                    self.dns.insert(answers, now);
                    Stats::add(&self.stats.dns_answers, n);
                    Metric::DnsAnswers.add(n);
                }
                Err(e) => tracing::debug!(error = %e, "ignored a DNS message"),
            }
        }
    }

    /// Returns whether any close was read.
    fn read_closes(&mut self, ring: &mut RingBuf<MapData>) -> bool {
        let now = Instant::now();
        let mut any = false;
        while let Some(item) = ring.next() {
            if let Some(event) = CloseEvent::parse(&item) {
                self.attribution.close(&event, now);
                self.closed_raw.push(event.tuple);
                any = true;
            }
        }
        any
    }

    fn interface_name(&self, ifindex: u32) -> String {
        self.names
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{ifindex}"))
    }

    fn evict(&mut self) -> Result<(), CollectorError> {
        let clock = Clock::now();
        let now = Instant::now();
        let mut flows: Vec<RawFlow> = self.kernel.drain_flows()?;
        Metric::FlowMapEntries.set(flows.len() as f64);
        self.attribution.refresh_ports(self.kernel.ports());
        // Egress first: a socket's cookie, seen on egress, names the owner of its replies.
        flows.sort_by_key(|f| std::cmp::Reverse(f.key.direction));
        let kernel = &self.kernel;
        let mut processes: Vec<Option<Process>> = flows
            .iter()
            .map(|flow| {
                self.attribution
                    .attribute(&flow.key, &flow.value, kernel, now)
            })
            .collect();
        self.attribute_from_proc(&flows, &mut processes, now);
        // Executables by pid, read once per eviction (a pid may be reused later).
        let mut executables: HashMap<u32, String> = HashMap::new();
        let mut records = Vec::with_capacity(flows.len());
        for (flow, process) in flows.iter().zip(processes) {
            let interface = self.interface_name(flow.key.ifindex);
            let close_seen = self.attribution.is_closed(&local_tuple(&flow.key));
            let remote = remote_ip(flow);
            let executable = process.as_ref().map(|p| {
                executables
                    .entry(p.owner.pid)
                    .or_insert_with(|| {
                        std::fs::read_link(format!("/proc/{}/exe", p.owner.pid))
                            .map(|path| path.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    })
                    .clone()
            });
            let extra = Enrichment {
                interface: &interface,
                process,
                dns_name: self.dns.name(&remote, now),
                executable: executable.as_deref().filter(|e| !e.is_empty()),
                close_seen,
            };
            records.push(to_record(&self.builder.host_id, flow, clock, extra));
        }
        for tuple in std::mem::take(&mut self.closed_raw) {
            self.kernel.remove_conn(&tuple);
        }
        self.attribution.finish_eviction(now);

        let flow_counters = self.kernel.flow_counters();
        let socket_counters = self.kernel.socket_counters();
        let map_full = flow_counters[FlowCounter::FlowMapFull as usize];
        let dropped = map_full.saturating_sub(self.dropped_reported);
        self.dropped_reported = map_full;
        export_kernel_counters(
            &flow_counters,
            &socket_counters,
            &mut self.last_flow_counters,
            &mut self.last_socket_counters,
        );
        if dropped > 0 {
            Stats::add(&self.stats.dropped_flows_map_full, dropped);
            Metric::DroppedFlows.add_tagged("flow_map_full", dropped);
            tracing::warn!(
                dropped,
                capacity = self.config.flow_map_entries,
                "flow map full: packets of new flows were not recorded (raise --flow-map-entries)"
            );
        }
        tracing::debug!(flows = flows.len(), dropped, "evicted");
        Stats::add(&self.stats.evictions, 1);
        let n = records.len() as u64;
        Stats::add(&self.stats.evicted_flows, n);
        Metric::EvictedFlows.add(n);
        if records.is_empty() && dropped == 0 {
            return Ok(());
        }
        let now_ns = bulkhead_schemas::now_unix_ns();
        for batch in self
            .builder
            .build(records, self.config.max_batch_records, dropped, now_ns)
        {
            self.publisher.flows(batch);
        }
        Ok(())
    }

    /// Sockets opened before the collector started were never seen by the socket hooks:
    /// for TCP/UDP flows still without an owner, look the socket up in the last /proc
    /// scan (rescanned at most once per [`PROC_SCAN_INTERVAL`]) and remember what is
    /// found.
    fn attribute_from_proc(
        &mut self,
        flows: &[RawFlow],
        processes: &mut [Option<Process>],
        now: Instant,
    ) {
        let missing = flows
            .iter()
            .zip(processes.iter())
            .any(|(f, p)| p.is_none() && (f.key.proto == 6 || f.key.proto == 17));
        if !missing {
            return;
        }
        if self
            .proc_scan
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= PROC_SCAN_INTERVAL)
        {
            self.proc_scan = Some((now, ProcOwners::scan()));
        }
        let Some((_, scanned)) = &self.proc_scan else {
            return;
        };
        let (by_tuple, listeners) = (&scanned.by_tuple, &scanned.listeners);
        let mut owners: HashMap<u32, Option<crate::bpf::abi::Owner>> = HashMap::new();
        for (flow, process) in flows.iter().zip(processes.iter_mut()) {
            if process.is_some() || !(flow.key.proto == 6 || flow.key.proto == 17) {
                continue;
            }
            let tuple = normalize(local_tuple(&flow.key));
            let listener = listeners.get(&(tuple.proto, tuple.lport)).copied();
            let Some(pid) = by_tuple.get(&tuple).copied().or(listener) else {
                continue;
            };
            let Some(owner) = *owners
                .entry(pid)
                .or_insert_with(|| inventory::process_owner(pid))
            else {
                continue;
            };
            let found = Process {
                owner,
                is_server: listener.is_some_and(|l| l == pid),
            };
            self.attribution.learn(tuple, found.clone(), now);
            *process = Some(found);
        }
    }

    /// Attaches to interfaces that should be watched and are not yet; forgets the ones
    /// that disappeared. Returns whether anything changed. At start, a named interface
    /// that does not exist is an error.
    fn sync_interfaces(&mut self, at_start: bool) -> Result<bool, CollectorError> {
        let links = inventory::links()?;
        let mut changed = false;
        for link in &links {
            self.names.insert(link.ifindex, link.name.clone());
        }
        let present: HashMap<u32, &str> =
            links.iter().map(|l| (l.ifindex, l.name.as_str())).collect();
        for (ifindex, name) in self.kernel.attached() {
            if present.get(&ifindex) != Some(&name.as_str()) {
                self.kernel.detach_interface(ifindex);
                tracing::info!(interface = %name, ifindex, "interface gone");
                changed = true;
            }
        }
        if at_start {
            for wanted in &self.config.interfaces {
                if !links.iter().any(|l| &l.name == wanted) {
                    return Err(CollectorError::Config(format!(
                        "interface {wanted:?} does not exist in this network namespace (have: {})",
                        links
                            .iter()
                            .map(|l| l.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        let attached = self.kernel.attached();
        for link in &links {
            let wanted = if self.config.interfaces.is_empty() {
                // Admin up is enough: the carrier of a new link comes a moment later,
                // and its first packets must not be missed.
                link.admin_up && !link.loopback
            } else {
                self.config.interfaces.contains(&link.name)
            };
            if !wanted || attached.contains_key(&link.ifindex) {
                continue;
            }
            match self.kernel.attach_interface(&link.name, link.ifindex) {
                Ok(()) => {
                    tracing::info!(interface = %link.name, ifindex = link.ifindex, "attached");
                    changed = true;
                }
                // An explicitly named interface must work; a passing one may vanish.
                Err(e) if at_start && !self.config.interfaces.is_empty() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "could not attach; will retry"),
            }
        }
        let count = self.kernel.attached().len();
        self.stats
            .attached_interfaces
            .store(count as u64, std::sync::atomic::Ordering::Relaxed);
        Metric::AttachedInterfaces.set(count as f64);
        Ok(changed)
    }

    fn publish_inventory(&mut self) {
        match inventory::observe(
            &self.builder.host_id,
            &self.config.labels,
            self.started_unix_ns,
        ) {
            Ok(new) => {
                let changed = self
                    .inventory
                    .as_ref()
                    .is_none_or(|old| inventory::changed(old, &new));
                if changed {
                    self.publisher.inventory(new.clone());
                    self.inventory = Some(new);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not observe the host inventory"),
        }
    }
}

/// A collector on its own thread, optionally in another network namespace (the
/// output is connected first, from the caller's namespace). Stops on [`Self::stop`] or
/// drop.
pub struct CollectorThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<Result<(), CollectorError>>>,
    done: tokio::sync::watch::Receiver<bool>,
    pub started: Started,
    pub stats: Arc<Stats>,
}

impl CollectorThread {
    pub fn spawn(
        config: CollectorConfig,
        output: Output,
        netns: Option<PathBuf>,
    ) -> Result<Self, CollectorError> {
        let mut config = config;
        // The metrics endpoint listens where the caller is, not in the watched namespace.
        let metrics_listen = config.metrics_listen.take();
        let collector = Collector::new(config)?;
        let stats = collector.stats();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Started>();
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let join = std::thread::Builder::new()
            .name("bh-collector".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| CollectorError::io("start a runtime", e))?;
                let result = runtime.block_on(async move {
                    if let Some(addr) = metrics_listen {
                        crate::telemetry::serve_prometheus(addr)?;
                    }
                    let sink = Sink::connect(output).await?;
                    if let Some(path) = &netns {
                        crate::netns::enter(path)?;
                    }
                    collector
                        .run(
                            sink,
                            |started| {
                                let _ = ready_tx.send(started.clone());
                            },
                            async {
                                let _ = stop_rx.await;
                            },
                        )
                        .await
                });
                let _ = done_tx.send(true);
                result
            })
            .map_err(|e| CollectorError::io("spawn the collector thread", e))?;
        match ready_rx.recv() {
            Ok(started) => Ok(Self {
                stop: Some(stop_tx),
                join: Some(join),
                done,
                started,
                stats,
            }),
            Err(_) => Err(match join.join() {
                Ok(Err(e)) => e,
                Ok(Ok(())) => {
                    CollectorError::Internal("collector ended before it was ready".into())
                }
                Err(_) => CollectorError::Internal("collector thread panicked".into()),
            }),
        }
    }

    /// Resolves when the collector ended by itself (`--duration`, or an error).
    pub fn finished(&self) -> impl Future<Output = ()> + use<> {
        let mut done = self.done.clone();
        async move {
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// Stops (final eviction, flush, detach) and returns how the run ended.
    pub fn stop(mut self) -> Result<(), CollectorError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), CollectorError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.join.take().map(|j| j.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(CollectorError::Internal("collector thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for CollectorThread {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "collector ended with an error");
        }
    }
}
