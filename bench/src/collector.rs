//! Collector benchmarks, each against a baseline measured in the same run (root needed
//! for the kernel parts; figures are only meaningful from a release build):
//!
//! 1. Kernel cost per packet of the TC program (BPF_PROG_TEST_RUN, hot flow) vs. an
//!    empty TC program.
//! 2. Packets per second through a veth pair with the collector attached vs. without,
//!    alternating rounds in the same run.
//! 3. User space: drain + convert + encode of flows from the kernel map; convert + encode
//!    of synthetic flows vs. encode alone; end to end into Kafka (the `kafka` figure) vs.
//!    raw produce of the same bytes; peak memory.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_collector::bpf::abi::{DIR_EGRESS, FlowKey, FlowValue};
use bulkhead_collector::bpf::{self, Kernel, MapSizes, RawFlow};
use bulkhead_collector::publisher::{Output, Publisher, Sink};
use bulkhead_collector::records::{BatchBuilder, Clock, Enrichment, to_record};
use bulkhead_collector::telemetry::Stats;
use bulkhead_collector::{CollectorConfig, CollectorThread, netns};
use bulkhead_kafka::{KafkaConfig, Producer};
use bulkhead_schemas::proto::FlowBatch;
use prost::Message as _;

use crate::report::Figure;
use crate::stats::Summary;

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub test_runs: u32,
    pub kernel_rounds: usize,
    pub veth_rounds: usize,
    pub veth_seconds: f64,
    pub flows: usize,
    /// Rounds of each user-space figure, alternating with its baseline.
    pub user_rounds: usize,
}

impl Sizes {
    pub const FULL: Sizes = Sizes {
        test_runs: 1_000_000,
        kernel_rounds: 5,
        veth_rounds: 4,
        veth_seconds: 2.0,
        flows: 1_000_000,
        user_rounds: 5,
    };
    pub const QUICK: Sizes = Sizes {
        test_runs: 20_000,
        kernel_rounds: 3,
        veth_rounds: 2,
        veth_seconds: 0.3,
        flows: 50_000,
        user_rounds: 2,
    };
}

/// Why the collector benchmarks cannot run here, if they cannot.
pub fn problem() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("the kernel benchmarks need root".into());
    }
    None
}

/// Runs every collector benchmark; `kafka` is the broker for the end-to-end figure
/// (skipped, and said so, when unreachable).
pub fn run(sizes: Sizes, kafka: &str, figures: &mut Vec<Figure>) {
    // The main thread stays in the host namespace (Kafka is reached from there); the veth
    // benchmark's sender and collector run in the lab's namespace.
    let lab = Lab::new();
    figures.extend(kernel_cost(sizes));
    figures.extend(veth_pps(&lab, sizes));
    figures.extend(user_space(sizes, kafka));
    println!(
        "   peak memory (VmHWM): {:.0} MiB",
        crate::stats::peak_rss_mib()
    );
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("run ip");
    assert!(status.success(), "{args:?} failed");
}

struct Lab {
    a: String,
    b: String,
}

impl Lab {
    fn new() -> Self {
        let pid = std::process::id();
        let lab = Self {
            a: format!("bhbench-{pid}-a"),
            b: format!("bhbench-{pid}-b"),
        };
        for ns in [&lab.a, &lab.b] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "-n", &lab.a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns",
            &lab.b,
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.a,
            "addr",
            "add",
            "10.203.0.1/24",
            "dev",
            "va",
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.b,
            "addr",
            "add",
            "10.203.0.2/24",
            "dev",
            "vb",
        ]);
        sh(&["ip", "-n", &lab.a, "link", "set", "va", "up"]);
        sh(&["ip", "-n", &lab.b, "link", "set", "vb", "up"]);
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Ethernet + IPv4 + TCP (ACK), no payload.
fn tcp_packet(src_port: u16, src_ip: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 20];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src_ip);
    ip[16..20].copy_from_slice(&[10, 203, 0, 1]);
    let tcp = &mut p[34..54];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    p
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn load_kernel(flow_entries: u32) -> Kernel {
    let cgroup = bulkhead_collector::preflight::cgroup2_dir(None).expect("a cgroup2 mount");
    let cookie = netns::current_cookie().expect("netns cookie");
    Kernel::load(
        MapSizes {
            flows: flow_entries,
            sockets: 1024,
            ports: 1024,
        },
        cookie,
        &cgroup,
    )
    .expect("load the collector programs")
}

fn kernel_cost(sizes: Sizes) -> Vec<Figure> {
    println!(
        "== collector 1. TC program cost per packet (BPF_PROG_TEST_RUN, hot flow, {} runs x {} rounds)",
        sizes.test_runs, sizes.kernel_rounds
    );
    let kernel = load_kernel(65_536);
    let empty = bpf::load_empty().expect("load the empty program");
    let packet = tcp_packet(40_000, [10, 203, 0, 2]);
    kernel.test_run_ingress(&packet, 1).expect("warm up");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..sizes.kernel_rounds {
        base.push(
            bpf::test_run(&empty, "bh_tc_empty", &packet, sizes.test_runs)
                .expect("empty")
                .as_nanos() as f64,
        );
        ours.push(
            kernel
                .test_run_ingress(&packet, sizes.test_runs)
                .expect("collector")
                .as_nanos() as f64,
        );
    }
    let figure = Figure::new(
        "collector",
        "TC program cost per packet",
        "ns",
        Summary::of(ours.clone()),
    )
    .against("empty TC program", Summary::of(base.clone()))
    .target("≤ 100 ns added");
    let (ours, base) = (median(ours), median(base));
    println!(
        "   collector TC program: {ours:.0} ns/packet; empty TC program (baseline): {base:.0} ns/packet"
    );
    println!(
        "   added by the collector: {:.0} ns/packet (ratio {:.2}x the empty program; target <= 100 ns)",
        ours - base,
        ours / base.max(1.0)
    );
    vec![figure]
}

fn veth_pps(lab: &Lab, sizes: Sizes) -> Vec<Figure> {
    println!(
        "== collector 2. UDP packets/s through a veth pair, collector attached vs. not ({} alternating rounds of {} s: none, empty program, collector)",
        sizes.veth_rounds * 3,
        sizes.veth_seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (stop, received, ns) = (stop.clone(), received.clone(), lab.b.clone());
        std::thread::spawn(move || {
            netns::enter(&netns::named(&ns)).expect("enter b");
            let socket = UdpSocket::bind("10.203.0.2:9999").expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // `empty`: attach the do-nothing TC program (tcx, both directions) for the round, to
    // tell the cost of the hook itself from the collector's.
    let round = |seconds: f64, empty: bool| {
        let ns = lab.a.clone();
        std::thread::spawn(move || {
            netns::enter(&netns::named(&ns)).expect("enter a");
            let _empty = empty.then(|| {
                let mut obj = bpf::load_empty().expect("load the empty program");
                let program: &mut aya::programs::SchedClassifier = obj
                    .program_mut("bh_tc_empty")
                    .expect("bh_tc_empty")
                    .try_into()
                    .expect("a TC program");
                for direction in [
                    aya::programs::TcAttachType::Ingress,
                    aya::programs::TcAttachType::Egress,
                ] {
                    program
                        .attach("va", direction)
                        .expect("attach the empty program");
                }
                obj
            });
            let sender = UdpSocket::bind("10.203.0.1:0").expect("bind the sender");
            sender.connect("10.203.0.2:9999").expect("connect");
            let payload = [0u8; 18];
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                for _ in 0..256 {
                    if sender.send(&payload).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent as f64 / start.elapsed().as_secs_f64()
        })
        .join()
        .expect("sender thread")
    };
    round(sizes.veth_seconds / 4.0, false);
    let (mut with, mut without, mut empty) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..sizes.veth_rounds {
        without.push(round(sizes.veth_seconds, false));
        empty.push(round(sizes.veth_seconds, true));
        let dir = std::env::temp_dir().join(format!("bhbench-{}", std::process::id()));
        let config = CollectorConfig {
            host_id_file: dir.join("host-id"),
            ..CollectorConfig::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let collector =
            CollectorThread::spawn(config, Output::Channel(tx), Some(netns::named(&lab.a)))
                .expect("collector");
        with.push(round(sizes.veth_seconds, false));
        collector.stop().expect("stop");
        drop(rx);
        let _ = std::fs::remove_dir_all(dir);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    // Medians, as in the report's table.
    let median = |v: &[f64]| Summary::of(v.to_vec()).median;
    let (w, wo, e) = (median(&with), median(&without), median(&empty));
    println!("   without collector (baseline): {wo:.0} pps (median)  {without:.0?}");
    println!(
        "   empty TC program attached:    {e:.0} pps  {empty:.0?} (ratio {:.3}: the tcx hook alone)",
        e / wo
    );
    println!("   with collector:               {w:.0} pps  {with:.0?}");
    println!(
        "   ratio with/without: {:.3} (target >= 0.95); receiver got {} packets",
        w / wo,
        received.load(Ordering::Relaxed)
    );
    vec![
        Figure::new(
            "collector",
            "veth UDP throughput with the collector",
            "pps",
            Summary::of(with),
        )
        .against("no TC program", Summary::of(without.clone()))
        .target("ratio ≥ 0.95"),
        Figure::new(
            "collector",
            "veth UDP throughput, empty TC program",
            "pps",
            Summary::of(empty),
        )
        .against("no TC program", Summary::of(without)),
    ]
}

fn synthetic_flows(n: usize) -> Vec<RawFlow> {
    (0..n)
        .map(|i| {
            let mut key = FlowKey {
                ifindex: 2,
                sport: (i % 60_000) as u16,
                dport: 443,
                proto: 6,
                family: 4,
                direction: DIR_EGRESS,
                ..Default::default()
            };
            key.src[..4].copy_from_slice(&[10, 1, (i >> 16) as u8, (i >> 8) as u8]);
            key.dst[..4].copy_from_slice(&[10, 2, 0, i as u8]);
            RawFlow {
                key,
                value: FlowValue {
                    packets: 10 + i as u64 % 100,
                    bytes: 5_000 + i as u64,
                    first_ns: 1_000_000 + i as u64,
                    last_ns: 2_000_000 + i as u64,
                    tcp_flags: 0x1b,
                    ..Default::default()
                },
            }
        })
        .collect()
}

/// The collector's conversion: kernel flows → `FlowRecord`s → batches of 10,000.
fn batches_of(flows: &[RawFlow], builder: &mut BatchBuilder) -> Vec<FlowBatch> {
    let clock = Clock::now();
    let records = flows
        .iter()
        .map(|f| {
            to_record(
                "bench-host",
                f,
                clock,
                Enrichment {
                    interface: "eth0",
                    ..Default::default()
                },
            )
        })
        .collect();
    builder.build(records, 10_000, 0, 0)
}

fn convert_and_encode(flows: &[RawFlow], builder: &mut BatchBuilder) -> usize {
    batches_of(flows, builder)
        .iter()
        .map(|b| b.encode_to_vec().len())
        .sum()
}

fn user_space(sizes: Sizes, kafka: &str) -> Vec<Figure> {
    println!("== collector 3. User space");
    let mut figures = Vec::new();
    // 3a. Drain a kernel flow map filled through the real program.
    let n = sizes.flows.min(60_000);
    let mut kernel = load_kernel(65_536);
    for i in 0..n {
        let packet = tcp_packet(1024 + (i % 60_000) as u16, [10, 9, (i / 60_000) as u8, 1]);
        kernel.test_run_ingress(&packet, 1).expect("fill");
    }
    let mut builder = BatchBuilder::new("bench-host".into(), "bench".into());
    let start = Instant::now();
    let flows = kernel.drain_flows().expect("drain");
    let drained = start.elapsed();
    let bytes = convert_and_encode(&flows, &mut builder);
    let total = start.elapsed();
    println!(
        "   evict from the kernel map: {} flows drained in {:.1} ms ({:.0} flows/s); + convert + encode: {:.0} flows/s ({} bytes)",
        flows.len(),
        drained.as_secs_f64() * 1e3,
        flows.len() as f64 / drained.as_secs_f64(),
        flows.len() as f64 / total.as_secs_f64(),
        bytes
    );
    drop(kernel);

    // 3b. Convert + encode vs. encode of ready records (baseline), alternating.
    let flows = synthetic_flows(sizes.flows);
    let batches = batches_of(&flows, &mut builder);
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let (mut bytes, mut encoded) = (0, Vec::new());
    for _ in 0..sizes.user_rounds {
        let start = Instant::now();
        bytes = convert_and_encode(&flows, &mut builder);
        ours.push(flows.len() as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        encoded = batches.iter().map(|b| b.encode_to_vec()).collect();
        base.push(flows.len() as f64 / start.elapsed().as_secs_f64());
    }
    let (ours, base) = (Summary::of(ours), Summary::of(base));
    println!(
        "   convert + batch + encode: {:.0} flows/s on one core (median of {}; {bytes} bytes); encode alone (baseline): {:.0} flows/s; ratio {:.2} (target >= 1,000,000 flows/s)",
        ours.median,
        ours.n,
        base.median,
        ours.median / base.median
    );
    figures.push(
        Figure::new(
            "collector",
            "convert + batch + encode, one core",
            "flows/s",
            ours,
        )
        .against("encode alone", base)
        .target("≥ 1M flows/s"),
    );

    // 3c. End to end into Kafka vs. raw produce of the same bytes.
    let config = {
        let mut c = KafkaConfig::local();
        c.brokers = kafka.to_string();
        c.topic_prefix = format!("bench.collector.{}.", std::process::id());
        c
    };
    let reachable = kafka
        .parse()
        .ok()
        .and_then(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .is_some();
    if !reachable {
        println!(
            "   end to end into Kafka: SKIPPED (no broker on {kafka}; start one with dev/kafka/up)"
        );
        return figures;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let kafka_figure = runtime.block_on(async {
        // Kafka clients must live in the namespace that reaches the broker: the host's.
        let sink = match Sink::connect(Output::Kafka(config.clone())).await {
            Ok(sink) => sink,
            Err(e) => {
                println!("   end to end into Kafka: SKIPPED ({e})");
                return None;
            }
        };
        let stats = Arc::new(Stats::default());
        let publisher = Publisher::start(sink, 1 << 30, stats.clone());
        let producer = Producer::new(&config).expect("producer");
        let topic = config.topic(bulkhead_schemas::topics::Topic::Flows);
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        let mut published = 0;
        let mut builder = BatchBuilder::new("bench-host".into(), "bench".into());
        for _ in 0..sizes.user_rounds {
            let start = Instant::now();
            let batches = batches_of(&flows, &mut builder);
            published += batches.len() as u64;
            for batch in batches {
                publisher.flows(batch);
            }
            while Stats::get(&stats.published_batches) < published {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ours.push(flows.len() as f64 / start.elapsed().as_secs_f64());

            let start = Instant::now();
            let sends = encoded.iter().map(|payload| producer.send(&topic, b"bench-host", payload));
            for result in futures::future::join_all(sends).await {
                result.expect("produce");
            }
            base.push(flows.len() as f64 / start.elapsed().as_secs_f64());
        }
        publisher.shutdown(Duration::from_secs(10)).await;
        let (ours, base) = (Summary::of(ours), Summary::of(base));
        println!(
            "   end to end (convert + encode + bounded queue + produce, acks=all): {:.0} flows/s (median of {}); raw pipelined produce of the same bytes (baseline): {:.0} flows/s; ratio {:.2} (target >= 500,000 flows/s)",
            ours.median,
            ours.n,
            base.median,
            ours.median / base.median
        );
        Some(
            Figure::new("kafka", "collector path into Kafka (acks=all)", "flows/s", ours)
                .against("raw librdkafka produce, same bytes", base)
                .target("≥ 500k flows/s"),
        )
    });
    figures.extend(kafka_figure);
    figures
}
