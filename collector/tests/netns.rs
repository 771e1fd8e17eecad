//! The collector against real traffic: eBPF attached in real network namespaces joined
//! by veth pairs, processes with known names, exact expected counts.
//!
//! Needs root, Linux 6.6+ with BTF, iproute2 and python3; skips loudly otherwise (fails
//! under CI / BULKHEAD_REQUIRE_KAFKA=1).

mod lab;

use std::time::{Duration, Instant};

use lab::{EGRESS, INGRESS, Pair, Watch, get, port_of, sum};

const TCP: u32 = 6;
const UDP: u32 = 17;
const ICMP: u32 = 1;
const SYN: u32 = 0x02;
const ACK: u32 = 0x10;
const FIN: u32 = 0x01;

/// With timestamps, SACK and window scaling off, every TCP segment carries a 20-byte TCP
/// header except the SYN and SYN-ACK (MSS option: 24). So the bytes of one direction are
/// exactly (ip + 20) per packet + 4 + payload.
fn expected_tcp_bytes(ip_header: u64, packets: u64, payload: u64) -> u64 {
    (ip_header + 20) * packets + 4 + payload
}

#[test]
fn flows_are_exact_and_attributed_to_client_and_server() {
    require_lab!();
    let mut lab = Pair::new("exact");
    let (a4, b4, a6, b6) = lab.addresses("va");
    // One collector per namespace: two independent observers of the same packets.
    let watch_a = Watch::start(&lab.a, |_| {});
    let watch_b = Watch::start(&lab.b, |_| {});

    let (server_pid, ready, server) = lab.spawn(
        &lab.b.clone(),
        "bh-server",
        "tcp-server",
        &["8080", "5000", "2"],
    );
    assert_eq!(ready, "ready");
    let (echo_pid, ready, echo) =
        lab.spawn(&lab.b.clone(), "bh-udpecho", "udp-echo", &["9090", "5"]);
    assert_eq!(ready, "ready");

    let (client_pid, line, client) = lab.spawn(
        &lab.a.clone(),
        "bh-client",
        "tcp-client",
        &[&b4, "8080", "100000"],
    );
    let client_port = port_of(&line);
    assert!(lab.wait(client).contains("received=5000"));
    let (client6_pid, line, client6) = lab.spawn(
        &lab.a.clone(),
        "bh-client6",
        "tcp-client",
        &[&b6, "8080", "3000"],
    );
    let client6_port = port_of(&line);
    assert!(lab.wait(client6).contains("received=5000"));
    let (udp_pid, line, udp) = lab.spawn(
        &lab.a.clone(),
        "bh-udpclient",
        "udp-client",
        &[&b4, "9090", "5", "100"],
    );
    let udp_port = port_of(&line);
    lab.wait(udp);
    let (_, done, _) = lab.spawn(&lab.a.clone(), "bh-pinger", "icmp-echo", &[&b4, "3", "56"]);
    assert_eq!(done, "done");
    lab.wait(server);
    lab.wait(echo);
    std::thread::sleep(Duration::from_millis(300));

    let (batches_a, inventories_a) = watch_a.stop();
    let (batches_b, _) = watch_b.stop();
    let a = sum(&batches_a);
    let b = sum(&batches_b);

    // TCP over IPv4, both directions, seen from both ends.
    let c2s = (EGRESS, a4.as_str(), client_port, b4.as_str(), 8080, TCP);
    let s2c = (INGRESS, b4.as_str(), 8080, a4.as_str(), client_port, TCP);
    let a_out = get(&a, c2s, "client namespace, client → server");
    let a_in = get(&a, s2c, "client namespace, server → client");
    let b_in = get(
        &b,
        (INGRESS, c2s.1, c2s.2, c2s.3, c2s.4, TCP),
        "server namespace, client → server",
    );
    let b_out = get(
        &b,
        (EGRESS, s2c.1, s2c.2, s2c.3, s2c.4, TCP),
        "server namespace, server → client",
    );
    eprintln!(
        "client→server at the client: {a_out:?}\nat the server: {b_in:?}\nserver→client at the client: {a_in:?}"
    );
    assert_eq!(
        (a_out.packets, a_out.bytes),
        (b_in.packets, b_in.bytes),
        "client→server differs between the two ends"
    );
    assert_eq!(
        (a_in.packets, a_in.bytes),
        (b_out.packets, b_out.bytes),
        "server→client differs between the two ends"
    );
    assert_eq!(
        a_out.bytes,
        expected_tcp_bytes(20, a_out.packets, 100_000),
        "client→server bytes: {a_out:?}"
    );
    assert_eq!(
        a_in.bytes,
        expected_tcp_bytes(20, a_in.packets, 5_000),
        "server→client bytes: {a_in:?}"
    );
    assert!(a_out.packets >= 100_000 / 1460 + 3, "{a_out:?}");
    for s in [a_out, a_in] {
        assert_eq!(
            s.flags & (SYN | ACK | FIN),
            SYN | ACK | FIN,
            "flags {:#x}",
            s.flags
        );
        assert!(s.closed, "TCP flows are marked closed: {s:?}");
    }
    // Process attribution: the client in its namespace, the server in its own.
    assert_eq!(a_out.names, vec!["bh-client"], "{a_out:?}");
    assert_eq!(a_in.names, vec!["bh-client"], "{a_in:?}");
    assert_eq!(a_out.pids, vec![client_pid]);
    assert!(!a_out.server);
    assert_eq!(b_in.names, vec!["bh-server"], "{b_in:?}");
    assert_eq!(b_out.names, vec!["bh-server"], "{b_out:?}");
    assert_eq!(b_in.pids, vec![server_pid]);
    assert!(b_in.server && b_out.server);

    // TCP over IPv6 (40-byte IP header).
    let c2s6 = (EGRESS, a6.as_str(), client6_port, b6.as_str(), 8080, TCP);
    let out6 = get(&a, c2s6, "IPv6 client → server");
    let in6 = get(
        &a,
        (INGRESS, b6.as_str(), 8080, a6.as_str(), client6_port, TCP),
        "IPv6 server → client",
    );
    assert_eq!(
        out6.bytes,
        expected_tcp_bytes(40, out6.packets, 3_000),
        "{out6:?}"
    );
    assert_eq!(
        in6.bytes,
        expected_tcp_bytes(40, in6.packets, 5_000),
        "{in6:?}"
    );
    assert_eq!(out6.names, vec!["bh-client6"]);
    assert_eq!(out6.pids, vec![client6_pid]);
    let b6_in = get(
        &b,
        (INGRESS, c2s6.1, c2s6.2, c2s6.3, 8080, TCP),
        "IPv6 at the server",
    );
    assert_eq!((b6_in.packets, b6_in.bytes), (out6.packets, out6.bytes));
    assert_eq!(b6_in.names, vec!["bh-server"]);

    // UDP: 5 datagrams of 100 bytes each way: 5 packets, 5 × (20 + 8 + 100) bytes.
    let u_out = get(
        &a,
        (EGRESS, a4.as_str(), udp_port, b4.as_str(), 9090, UDP),
        "UDP out",
    );
    let u_in = get(
        &a,
        (INGRESS, b4.as_str(), 9090, a4.as_str(), udp_port, UDP),
        "UDP back",
    );
    assert_eq!((u_out.packets, u_out.bytes), (5, 640));
    assert_eq!((u_in.packets, u_in.bytes), (5, 640));
    assert_eq!(u_out.names, vec!["bh-udpclient"]);
    assert_eq!(
        u_in.names,
        vec!["bh-udpclient"],
        "replies inherit the sender's owner"
    );
    assert_eq!(u_out.pids, vec![udp_pid]);
    let ub = get(
        &b,
        (INGRESS, a4.as_str(), udp_port, b4.as_str(), 9090, UDP),
        "UDP at the server",
    );
    assert_eq!((ub.packets, ub.bytes), (5, 640));
    assert_eq!(ub.names, vec!["bh-udpecho"]);
    assert_eq!(ub.pids, vec![echo_pid]);
    assert!(ub.server);

    // ICMP echo: 3 requests (type 8) and 3 replies (type 0) of 20 + 8 + 56 bytes.
    let ping = get(
        &a,
        (EGRESS, a4.as_str(), 8, b4.as_str(), 0, ICMP),
        "ICMP echo requests",
    );
    let pong = get(
        &a,
        (INGRESS, b4.as_str(), 0, a4.as_str(), 0, ICMP),
        "ICMP echo replies",
    );
    assert_eq!((ping.packets, ping.bytes), (3, 252));
    assert_eq!((pong.packets, pong.bytes), (3, 252));

    // Each collector reports only its own namespace's processes.
    let names_a: Vec<&String> = a.values().flat_map(|s| &s.names).collect();
    let names_b: Vec<&String> = b.values().flat_map(|s| &s.names).collect();
    assert!(
        !names_a
            .iter()
            .any(|n| n.starts_with("bh-server") || n.starts_with("bh-udpecho")),
        "{names_a:?}"
    );
    assert!(
        !names_b
            .iter()
            .any(|n| n.starts_with("bh-client") || n.starts_with("bh-udpclient")),
        "{names_b:?}"
    );

    // Batches are well formed, numbered from 0 within the instance, wall-clock times sane.
    let now = bulkhead_schemas::now_unix_ns();
    for (i, batch) in batches_a.iter().enumerate() {
        assert_eq!(batch.schema_version, 1);
        assert_eq!(batch.batch_seq, i as u64);
        assert_eq!(batch.agent_instance_id, batches_a[0].agent_instance_id);
        for r in &batch.records {
            assert_eq!(r.host_id, batch.host_id);
            assert!(r.first_seen_unix_ns <= r.last_seen_unix_ns);
            assert!(
                now - r.last_seen_unix_ns < 120_000_000_000,
                "times are wall clock: {r:?}"
            );
            assert_eq!(r.interface, "va");
        }
    }
    // The inventory names the interface and its addresses, and the host id.
    let inventory = inventories_a.first().expect("an inventory at start");
    assert_eq!(inventory.host_id, batches_a[0].host_id);
    let va = inventory
        .interfaces
        .iter()
        .find(|i| i.name == "va")
        .expect("va in the inventory");
    assert!(va.addresses.contains(&format!("{a4}/24")), "{va:?}");
    assert!(va.up && va.mac.len() == 6);
}

#[test]
fn dns_names_close_eviction_and_interfaces_added_later() {
    require_lab!();
    let mut lab = Pair::new("dns");
    let (a4, b4, _, _) = lab.addresses("va");
    // A long interval: whatever arrives before the end was evicted by a close.
    let watch = Watch::start(&lab.a, |c| c.evict_interval = Duration::from_secs(120));
    let started = watch.thread.as_ref().map(|t| t.started.interfaces.len());
    assert_eq!(started, Some(1), "only va at start");

    let (_, ready, resolver) = lab.spawn(
        &lab.b.clone(),
        "bh-resolver",
        "resolver",
        &[&b4, "53", &b4, "1"],
    );
    assert_eq!(ready, "ready");
    let (_, ready, server) = lab.spawn(
        &lab.b.clone(),
        "bh-server",
        "tcp-server",
        &["8080", "10", "1"],
    );
    assert_eq!(ready, "ready");
    let closed_at = Instant::now();
    let (_, resolved, client) = lab.spawn(
        &lab.a.clone(),
        "bh-dnsclient",
        "dns-then-tcp",
        &[&b4, "db.bulkhead.test", "8080", "1000"],
    );
    assert_eq!(resolved, format!("resolved={b4}"));
    let rest = lab.wait(client);
    let client_port = port_of(rest.lines().next().unwrap_or_default());
    lab.wait(server);
    lab.wait(resolver);

    // Eviction on close: the connection's records arrive long before the 120 s tick.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut early = Vec::new();
    let mut inventories = Vec::new();
    let flow = (EGRESS, a4.as_str(), client_port, b4.as_str(), 8080, TCP);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match watch.received.recv_timeout(remaining) {
            Ok(bulkhead_collector::Published::Flows(batch)) => {
                early.push(batch);
                if lab::sum(&early).keys().any(|k| {
                    k == &(
                        flow.0,
                        flow.1.to_string(),
                        flow.2,
                        flow.3.to_string(),
                        flow.4,
                        flow.5,
                    )
                }) {
                    break;
                }
            }
            Ok(bulkhead_collector::Published::Inventory(i)) => inventories.push(i),
            Err(_) => panic!("no record of the closed connection within 10 s (eviction on close)"),
        }
    }
    assert!(closed_at.elapsed() < Duration::from_secs(10));
    let sums = sum(&early);
    let conn = get(&sums, flow, "the closed connection");
    assert!(conn.closed);
    assert_eq!(conn.names, vec!["bh-dnsclient"]);
    // The name the process resolved is on its flow.
    assert_eq!(conn.dns, vec!["db.bulkhead.test"], "{conn:?}");

    // An interface added after start is attached within a few polls.
    lab.link("va2", "vb2", 0);
    let (a4_2, b4_2, _, _) = lab.addresses("va2");
    let stats = watch
        .thread
        .as_ref()
        .map(|t| t.stats.clone())
        .expect("running");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bulkhead_collector::telemetry::Stats::get(&stats.attached_interfaces) < 2 {
        assert!(
            Instant::now() < deadline,
            "va2 was not attached within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, ready, echo) = lab.spawn(&lab.b.clone(), "bh-udpecho", "udp-echo", &["9191", "2"]);
    assert_eq!(ready, "ready");
    let (_, line, udp) = lab.spawn(
        &lab.a.clone(),
        "bh-late",
        "udp-client",
        &[&b4_2, "9191", "2", "10"],
    );
    let port = port_of(&line);
    lab.wait(udp);
    lab.wait(echo);
    let (batches, later) = watch.stop();
    inventories.extend(later);
    // The inventory is published at start and again when it changes: the last has va2.
    let last = inventories.last().expect("inventories");
    assert!(!inventories[0].interfaces.iter().any(|i| i.name == "va2"));
    assert!(inventories.len() >= 2, "{} inventories", inventories.len());
    assert!(last.interfaces.iter().any(|i| i.name == "va2"), "{last:?}");
    let late = sum(&batches);
    let out = get(
        &late,
        (EGRESS, a4_2.as_str(), port, b4_2.as_str(), 9191, UDP),
        "UDP over the late interface",
    );
    assert_eq!((out.packets, out.bytes), (2, 2 * 38));
    assert_eq!(out.interfaces, vec!["va2"]);
    assert_eq!(out.names, vec!["bh-late"]);
}

#[test]
fn a_full_flow_map_is_counted_not_silent() {
    require_lab!();
    let mut lab = Pair::new("full");
    let (_, b4, _, _) = lab.addresses("va");
    let watch = Watch::start(&lab.a, |c| c.flow_map_entries = 4);
    let (_, done, spray) = lab.spawn(
        &lab.a.clone(),
        "bh-spray",
        "udp-spray",
        &[&b4, "20000", "50"],
    );
    assert_eq!(done, "done");
    lab.wait(spray);
    std::thread::sleep(Duration::from_millis(200));
    let stats = watch
        .thread
        .as_ref()
        .map(|t| t.stats.clone())
        .expect("running");
    let (batches, _) = watch.stop();
    let records: usize = batches.iter().map(|b| b.records.len()).sum();
    let dropped: u64 = batches.iter().map(|b| b.dropped_flows).sum();
    assert!(
        records <= 2 * 4 + 4,
        "a 4-entry map cannot hold {records} flows per eviction"
    );
    assert!(
        dropped > 0,
        "the drop counter stayed 0 with 50 flows into a 4-entry map"
    );
    assert_eq!(
        dropped,
        bulkhead_collector::telemetry::Stats::get(&stats.dropped_flows_map_full)
    );
    // 50 datagrams to 50 ports: everything either recorded or counted as dropped.
    let recorded_spray: u64 = batches
        .iter()
        .flat_map(|b| &b.records)
        .filter(|r| r.protocol == UDP && (20000..20050).contains(&r.dst_port))
        .map(|r| r.packets)
        .sum();
    assert!(
        recorded_spray + dropped >= 50,
        "recorded {recorded_spray} + dropped {dropped} < 50"
    );
}

#[test]
fn sockets_opened_before_the_collector_are_attributed_from_proc() {
    require_lab!();
    let mut lab = Pair::new("old");
    let (a4, b4, _, _) = lab.addresses("va");
    // The servers start first: the socket hooks never see their sockets being made.
    let (server_pid, ready, _) = lab.spawn(
        &lab.b.clone(),
        "bh-oldserver",
        "tcp-server",
        &["8181", "100", "2"],
    );
    assert_eq!(ready, "ready");
    let (echo_pid, ready, _) = lab.spawn(&lab.b.clone(), "bh-oldecho", "udp-echo", &["9191", "3"]);
    assert_eq!(ready, "ready");
    let watch = Watch::start(&lab.b, |_| {});

    let (_, line, client) = lab.spawn(
        &lab.a.clone(),
        "bh-newclient",
        "tcp-client",
        &[&b4, "8181", "500"],
    );
    let port = port_of(&line);
    assert!(lab.wait(client).contains("received=100"));
    let (_, line, udp) = lab.spawn(
        &lab.a.clone(),
        "bh-newudp",
        "udp-client",
        &[&b4, "9191", "2", "20"],
    );
    let udp_port = port_of(&line);
    lab.wait(udp);
    std::thread::sleep(Duration::from_millis(300));
    let (batches, _) = watch.stop();
    let b = sum(&batches);

    let tcp_in = get(
        &b,
        (INGRESS, a4.as_str(), port, b4.as_str(), 8181, TCP),
        "TCP to the old server",
    );
    assert_eq!(tcp_in.names, vec!["bh-oldserver"], "{tcp_in:?}");
    assert_eq!(tcp_in.pids, vec![server_pid]);
    assert!(tcp_in.server);
    let udp_in = get(
        &b,
        (INGRESS, a4.as_str(), udp_port, b4.as_str(), 9191, UDP),
        "UDP to the old echo",
    );
    assert_eq!(udp_in.names, vec!["bh-oldecho"], "{udp_in:?}");
    assert_eq!(udp_in.pids, vec![echo_pid]);
    assert!(udp_in.server);
}
