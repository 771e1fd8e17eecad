//! The process that plays one lab host's software inside its network namespace
//! (`bulkhead lab host`, started by `bulkhead lab up`): real listeners that answer, and
//! client programs that call other hosts in rounds while the lab's traffic switch is on.
//!
//! Each program runs on threads named after it (`nginx`, `java`, `postgres`, …), so the
//! collector attributes its sockets to that name, as it would the real program.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What one host process runs: given to `bulkhead lab host` as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostPlan {
    pub host: String,
    /// The file holding the Unix second until which client programs make calls.
    pub traffic_file: PathBuf,
    /// Time between two rounds of calls.
    pub round_ms: u64,
    /// Where client programs resolve names (the lab's DNS host), if anywhere.
    pub dns_server: Option<IpAddr>,
    pub programs: Vec<ProgramPlan>,
}

/// One program: a name, what it listens on, whom it calls.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramPlan {
    /// The process name the collector sees (at most 15 bytes).
    pub comm: String,
    #[serde(default)]
    pub tcp_listen: Vec<u16>,
    /// Answer DNS queries on UDP port 53 from this name → address table.
    #[serde(default)]
    pub dns_zone: BTreeMap<String, IpAddr>,
    #[serde(default)]
    pub calls: Vec<CallPlan>,
    /// Calls made per round, taken in turn from `calls` (0: all of them). Scanners
    /// spread their calls over rounds so the traffic stays bounded.
    #[serde(default)]
    pub calls_per_round: usize,
}

/// One outbound TCP call: resolve `name` through the lab DNS when set (falling back to
/// `ip`), connect to `port`, send a request and read the answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallPlan {
    pub name: Option<String>,
    pub ip: IpAddr,
    pub port: u16,
}

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_millis(800);

/// Runs the host's programs until the process is killed.
pub fn run(plan: HostPlan) -> std::io::Result<()> {
    if let Some(first) = plan.programs.first() {
        set_thread_name(&first.comm);
    }
    let mut threads = Vec::new();
    for program in &plan.programs {
        // Sockets are made on the program's own thread: the collector attributes a
        // socket to the thread that created it.
        for &port in &program.tcp_listen {
            let comm = program.comm.clone();
            let what = format!("{}: listen on tcp/{port}", plan.host);
            threads.push(bound_thread(
                &program.comm,
                what,
                move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)),
                move |listener| serve_tcp(listener, &comm, port),
            )?);
        }
        if !program.dns_zone.is_empty() {
            let zone = program.dns_zone.clone();
            let what = format!("{}: listen on udp/53", plan.host);
            threads.push(bound_thread(
                &program.comm,
                what,
                || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 53)),
                move |socket| serve_dns(socket, &zone),
            )?);
        }
        if !program.calls.is_empty() {
            let program = program.clone();
            let plan = plan.clone();
            threads.push(named(&program.comm.clone(), move || {
                call_in_rounds(&plan, &program)
            })?);
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn named(
    comm: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // Linux thread names (the `comm` the collector reports) hold 15 bytes.
    let name: String = comm.chars().take(15).collect();
    std::thread::Builder::new().name(name).spawn(f)
}

/// A thread named `comm` that binds a socket, reports the outcome, then serves it.
fn bound_thread<S: Send + 'static>(
    comm: &str,
    what: String,
    bind: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    serve: impl FnOnce(S) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = named(comm, move || match bind() {
        Ok(socket) => {
            let _ = tx.send(Ok(()));
            serve(socket);
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(std::io::Error::new(e.kind(), format!("{what}: {e}"))),
        Err(_) => Err(std::io::Error::other(format!("{what}: the thread died"))),
    }
}

fn set_thread_name(comm: &str) {
    let mut name: Vec<u8> = comm.bytes().take(15).collect();
    name.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Answers every connection with a small HTTP-like response whose size depends on the
/// port, so the map's byte counts differ per service.
fn serve_tcp(listener: TcpListener, comm: &str, port: u16) {
    let body = format!("{comm} on {port}\n").repeat(1 + usize::from(port % 17));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

fn call_in_rounds(plan: &HostPlan, program: &ProgramPlan) {
    let per_round = match program.calls_per_round {
        0 => program.calls.len(),
        n => n.min(program.calls.len()),
    };
    let mut cursor = 0;
    loop {
        std::thread::sleep(Duration::from_millis(plan.round_ms));
        if !traffic_on(&plan.traffic_file) {
            continue;
        }
        for _ in 0..per_round {
            let call = &program.calls[cursor % program.calls.len()];
            cursor += 1;
            let ip = match (&call.name, plan.dns_server) {
                (Some(name), Some(server)) => resolve(server, name).unwrap_or(call.ip),
                _ => call.ip,
            };
            call_once(SocketAddr::new(ip, call.port), &plan.host);
        }
    }
}

/// Whether the lab's traffic switch is on: the file holds a Unix second in the future.
pub fn traffic_on(file: &Path) -> bool {
    let until: u64 = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now < until
}

fn call_once(addr: SocketAddr, host: &str) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = write!(
        stream,
        "GET / HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: {host}\r\n\r\n"
    );
    let mut answer = Vec::new();
    let _ = stream.take(64 * 1024).read_to_end(&mut answer);
}

// ---- DNS: just enough of RFC 1035 for A queries of the lab's names ----

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// Encodes a standard query for `name`'s A record.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The question of a query: (id, lower-case name, qtype, end of the question section).
fn parse_question(packet: &[u8]) -> Option<(u16, String, u16, usize)> {
    if packet.len() < 12 || u16::from_be_bytes([packet[4], packet[5]]) != 1 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*packet.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers never appear in a question we accept
        }
        labels.push(String::from_utf8_lossy(packet.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
    Some((id, labels.join("."), qtype, at + 4))
}

/// The answer to a query: the address for an A question in the zone, NXDOMAIN for an
/// unknown name, an empty answer for other types. None for what is not a query.
pub fn dns_answer(query: &[u8], zone: &BTreeMap<String, IpAddr>) -> Option<Vec<u8>> {
    let (id, name, qtype, end) = parse_question(query)?;
    let address = zone.get(&name);
    let a = match address {
        Some(IpAddr::V4(a)) if qtype == TYPE_A => Some(*a),
        _ => None,
    };
    let rcode = if address.is_none() { 3 } else { 0 };
    let mut out = Vec::with_capacity(end + 16);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x85, 0x80 | rcode]); // response, authoritative, RD, RA
    out.extend_from_slice(&[0, 1, 0, u8::from(a.is_some()), 0, 0, 0, 0]);
    out.extend_from_slice(&query[12..end]);
    if let Some(a) = a {
        out.extend_from_slice(&[0xc0, 12]); // the question's name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&60u32.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    Some(out)
}

/// The first A record of a response to the query with `id`.
pub fn dns_parse_answer(id: u16, packet: &[u8]) -> Option<Ipv4Addr> {
    let (answer_id, _, _, mut at) = parse_question(packet)?;
    let ancount = u16::from_be_bytes([packet[6], packet[7]]);
    if answer_id != id || packet[2] & 0x80 == 0 || packet[3] & 0x0f != 0 || ancount == 0 {
        return None;
    }
    for _ in 0..ancount {
        // Name: a pointer (2 bytes) or labels.
        loop {
            let len = *packet.get(at)?;
            if len & 0xc0 == 0xc0 {
                at += 2;
                break;
            }
            at += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        let rtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([
            *packet.get(at + 8)?,
            *packet.get(at + 9)?,
        ]));
        let rdata = packet.get(at + 10..at + 10 + rdlen)?;
        if rtype == TYPE_A && rdlen == 4 {
            return Some(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        at += 10 + rdlen;
    }
    None
}

fn serve_dns(socket: UdpSocket, zone: &BTreeMap<String, IpAddr>) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Some(answer) = dns_answer(&buf[..n], zone) {
            let _ = socket.send_to(&answer, from);
        }
    }
}

/// A UDP socket that was never bound: `connect` gives it an ephemeral port, as the C
/// library's resolver does. (An explicit `bind` to port 0 would make the collector take
/// the client for a server: it learns servers from bind(2).)
fn unbound_udp_socket(server: IpAddr) -> Option<UdpSocket> {
    use std::os::fd::FromRawFd as _;
    let family = if server.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments; the descriptor is owned by the
    // UdpSocket from here on (closed when it drops).
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh, valid datagram socket that nothing else owns.
    Some(unsafe { UdpSocket::from_raw_fd(fd) })
}

/// Resolves `name` through the lab's DNS server (one UDP query, bounded wait).
pub fn resolve(server: IpAddr, name: &str) -> Option<IpAddr> {
    let socket = unbound_udp_socket(server)?;
    socket.connect(SocketAddr::new(server, 53)).ok()?;
    socket.set_read_timeout(Some(CONNECT_TIMEOUT)).ok()?;
    let id = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .subsec_nanos()
        & 0xffff) as u16;
    socket.send(&dns_query(id, name)).ok()?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    dns_parse_answer(id, &buf[..n]).map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_round_trip() {
        let zone: BTreeMap<String, IpAddr> =
            [("app-crm.lab".to_string(), "10.250.240.12".parse().unwrap())].into();
        let query = dns_query(7, "App-CRM.lab");
        let answer = dns_answer(&query, &zone).unwrap();
        assert_eq!(
            dns_parse_answer(7, &answer),
            Some("10.250.240.12".parse().unwrap())
        );
        assert_eq!(dns_parse_answer(8, &answer), None, "another query's answer");
        let unknown = dns_answer(&dns_query(9, "nope.lab"), &zone).unwrap();
        assert_eq!(unknown[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(dns_parse_answer(9, &unknown), None);
        assert_eq!(dns_answer(&[1, 2, 3], &zone), None, "not a query");
    }
}
