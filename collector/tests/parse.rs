//! The TC program's parser on crafted packets, run by the kernel itself
//! (BPF_PROG_TEST_RUN on the real, loaded program): VLAN and QinQ tags, IPv4 options,
//! IPv6 extension headers, fragments, non-IP and truncated frames, and DNS answers sent
//! to user space. Needs root (skips loudly otherwise).

mod lab;

use std::net::IpAddr;

use bulkhead_collector::bpf::abi::{FlowCounter, dns_payload};
use bulkhead_collector::bpf::{Kernel, MapSizes, RawFlow};
use bulkhead_collector::{dns, netns, preflight};

fn kernel() -> Kernel {
    let cgroup = preflight::cgroup2_dir(None).unwrap_or_else(|e| panic!("{e}"));
    let cookie = netns::current_cookie().unwrap_or_else(|e| panic!("{e}"));
    let sizes = MapSizes {
        flows: 1024,
        sockets: 64,
        ports: 64,
    };
    Kernel::load(sizes, cookie, &cgroup).unwrap_or_else(|e| panic!("load: {e}"))
}

fn eth(ethertypes: &[u16]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, t) in ethertypes.iter().enumerate() {
        p.extend_from_slice(&t.to_be_bytes());
        if i + 1 < ethertypes.len() {
            p.extend_from_slice(&[0x00, 0x07]); // VLAN TCI (id 7)
        }
    }
    p
}

fn ipv4(proto: u8, options: usize, frag_off: u16, payload: &[u8]) -> Vec<u8> {
    let header = 20 + options;
    let mut ip = vec![0u8; header];
    ip[0] = 0x40 | (header / 4) as u8;
    ip[2..4].copy_from_slice(&((header + payload.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&frag_off.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&[10, 9, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 9, 0, 2]);
    for b in &mut ip[20..] {
        *b = 1; // NOP options
    }
    ip.extend_from_slice(payload);
    ip
}

fn ipv6(next: u8, extensions: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&((extensions.len() + payload.len()) as u16).to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&"fd00:9::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    ip[24..40].copy_from_slice(&"fd00:9::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    ip.extend_from_slice(extensions);
    ip.extend_from_slice(payload);
    ip
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}

fn frame(l2: Vec<u8>, l3: Vec<u8>) -> Vec<u8> {
    let mut f = l2;
    f.extend_from_slice(&l3);
    f
}

fn find(flows: &[RawFlow], family: u8, proto: u8, sport: u16, dport: u16) -> RawFlow {
    *flows
        .iter()
        .find(|f| {
            f.key.family == family
                && f.key.proto == proto
                && f.key.sport == sport
                && f.key.dport == dport
        })
        .unwrap_or_else(|| panic!("no flow {family}/{proto} {sport}->{dport} in {flows:#?}"))
}

#[track_caller]
fn run(kernel: &Kernel, packet: &[u8]) {
    kernel
        .test_run_ingress(packet, 3)
        .unwrap_or_else(|e| panic!("test run of {packet:02x?}: {e}"));
}

#[test]
fn the_kernel_parser_handles_tags_options_extension_headers_and_fragments() {
    require_lab!();
    let mut kernel = kernel();
    let before = kernel.flow_counters();
    // 802.1Q-tagged IPv4/UDP with a 10-byte payload: 38 IP bytes per packet.
    run(
        &kernel,
        &frame(
            eth(&[0x8100, 0x0800]),
            ipv4(17, 0, 0, &udp(1111, 2222, &[7; 10])),
        ),
    );
    // QinQ (802.1ad + 802.1Q), IPv6 with a hop-by-hop header, TCP SYN: 40 + 8 + 20 bytes.
    let hop_by_hop = [6u8, 0, 1, 4, 0, 0, 0, 0]; // next = TCP, length 0 (8 bytes), PadN
    run(
        &kernel,
        &frame(
            eth(&[0x88a8, 0x8100, 0x86dd]),
            ipv6(0, &hop_by_hop, &tcp(3333, 443, 0x02)),
        ),
    );
    // IPv6 first fragment (offset 0, more fragments) carrying UDP.
    let fragment = [17u8, 0, 0x00, 0x01, 0, 0, 0, 42];
    run(
        &kernel,
        &frame(
            eth(&[0x86dd]),
            ipv6(44, &fragment, &udp(4444, 5555, &[1; 4])),
        ),
    );
    // IPv4 with 4 bytes of options, TCP ACK.
    run(
        &kernel,
        &frame(eth(&[0x0800]), ipv4(6, 4, 0, &tcp(6666, 7777, 0x10))),
    );
    // IPv4 non-first fragment (offset 100 × 8): no ports to read.
    run(&kernel, &frame(eth(&[0x0800]), ipv4(17, 0, 100, &[0; 16])));
    // ARP (not IP), and IPv4 announcing TCP but cut 4 bytes into the TCP header.
    run(&kernel, &frame(eth(&[0x0806]), vec![0; 28]));
    run(&kernel, &frame(eth(&[0x0800]), ipv4(6, 0, 0, &[0; 4])));
    // A DNS answer (UDP source port 53) arriving: goes to user space.
    let answer = dns::build_response(9, "db.example.test", 1, &["10.1.2.3".parse().unwrap()], 30);
    run(
        &kernel,
        &frame(eth(&[0x0800]), ipv4(17, 0, 0, &udp(53, 40000, &answer))),
    );

    let flows = kernel
        .drain_flows()
        .unwrap_or_else(|e| panic!("drain: {e}"));
    let f = find(&flows, 4, 17, 1111, 2222);
    assert_eq!((f.value.packets, f.value.bytes), (3, 3 * 38));
    let f = find(&flows, 6, 6, 3333, 443);
    assert_eq!(
        (f.value.packets, f.value.bytes, f.value.tcp_flags),
        (3, 3 * 68, 0x02)
    );
    assert_eq!(&f.key.src[..2], &[0xfd, 0x00]);
    let f = find(&flows, 6, 17, 4444, 5555);
    assert_eq!(f.value.bytes, 3 * (40 + 8 + 12));
    let f = find(&flows, 4, 6, 6666, 7777);
    assert_eq!((f.value.bytes, f.value.tcp_flags), (3 * 44, 0x10));
    let f = find(&flows, 4, 17, 0, 0);
    assert_eq!((f.value.packets, f.value.bytes), (3, 3 * 36));
    assert!(f.value.first_ns > 0 && f.value.last_ns >= f.value.first_ns);
    assert_eq!(
        flows.len(),
        6,
        "ARP and the truncated frame make no flow: {flows:#?}"
    );

    let after = kernel.flow_counters();
    let delta = |c: FlowCounter| after[c as usize] - before[c as usize];
    assert_eq!(delta(FlowCounter::NonIp), 3);
    assert_eq!(delta(FlowCounter::Truncated), 3);
    assert_eq!(delta(FlowCounter::Fragments), 3);
    assert_eq!(delta(FlowCounter::DnsEvents), 3);

    let (mut dns_ring, _) = kernel.take_ring_buffers().expect("ring buffers");
    let item = dns_ring.next().expect("a DNS event");
    let (_, payload) = dns_payload(&item).expect("a well-formed event");
    let answers = dns::parse_response(payload).expect("the answer parses");
    assert_eq!(answers[0].name, "db.example.test");
    assert_eq!(answers[0].ip, "10.1.2.3".parse::<IpAddr>().unwrap());
}
