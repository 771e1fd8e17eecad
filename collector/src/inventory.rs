//! The host as its agent describes it: a persisted host id, hostname, interfaces with
//! addresses, and listening sockets with the processes that own them. Everything is read
//! from the calling thread's network namespace (`getifaddrs`, `/proc/thread-self/net`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use bulkhead_schemas::proto::{HostInventory, Interface, ListeningSocket};

use crate::error::CollectorError;

/// The host id stored at `path`, or a new random one written there (directories created).
pub fn host_id(path: &Path) -> Result<String, CollectorError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim();
            let valid = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                return Err(CollectorError::Config(format!(
                    "host id file {} holds {id:?}: expected 1-128 letters, digits, '-', '_' or '.' \
                     (delete the file to get a new id)",
                    path.display()
                )));
            }
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = new_id();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| CollectorError::io(format!("create {}", dir.display()), e))?;
            }
            std::fs::write(path, format!("{id}\n"))
                .map_err(|e| CollectorError::io(format!("write host id {}", path.display()), e))?;
            tracing::info!(host_id = %id, file = %path.display(), "generated a new host id");
            Ok(id)
        }
        Err(e) => Err(CollectorError::io(
            format!("read host id {}", path.display()),
            e,
        )),
    }
}

/// A random id in UUID v4 text form.
pub fn new_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// An interface as seen now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub mac: Vec<u8>,
    pub addresses: Vec<String>,
    /// Administratively and operationally up (carrier).
    pub up: bool,
    /// Administratively up (`ip link set X up`), carrier or not yet.
    pub admin_up: bool,
    pub loopback: bool,
}

fn prefix_len(mask: &[u8]) -> u32 {
    mask.iter().map(|b| b.count_ones()).sum()
}

/// # Safety
/// `sa` must be null or point to a valid sockaddr of its family.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: per the contract, the family tells which struct it is.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

fn mask_bytes(ip: Option<IpAddr>) -> Vec<u8> {
    match ip {
        Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
        Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
        None => vec![],
    }
}

/// Every interface of the calling thread's network namespace, by name.
pub fn links() -> Result<Vec<Link>, CollectorError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(CollectorError::io(
            "getifaddrs",
            std::io::Error::last_os_error(),
        ));
    }
    let mut by_name: BTreeMap<String, Link> = BTreeMap::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned; freed after the loop.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let flags = ifa.ifa_flags as i32;
        let link = by_name.entry(name.clone()).or_insert_with(|| Link {
            // SAFETY: ifa_name is a NUL-terminated name.
            ifindex: unsafe { libc::if_nametoindex(ifa.ifa_name) },
            name,
            ..Default::default()
        });
        link.up = flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0;
        link.admin_up = flags & libc::IFF_UP != 0;
        link.loopback = flags & libc::IFF_LOOPBACK != 0;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and of its family.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_PACKET {
            // SAFETY: AF_PACKET entries carry a sockaddr_ll.
            let ll = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_ll) };
            let len = usize::from(ll.sll_halen).min(8);
            if len > 0 && ll.sll_addr[..len].iter().any(|&b| b != 0) {
                link.mac = ll.sll_addr[..len].to_vec();
            }
        } else if let Some(ip) = unsafe { sockaddr_ip(ifa.ifa_addr) } {
            let prefix = prefix_len(&mask_bytes(unsafe { sockaddr_ip(ifa.ifa_netmask) }));
            link.addresses.push(format!("{ip}/{prefix}"));
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(by_name.into_values().collect())
}

/// One row of /proc/net/{tcp,udp}{,6}.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcSocket {
    pub local: IpAddr,
    pub lport: u16,
    pub remote: IpAddr,
    pub rport: u16,
    /// Kernel state in hex as printed (TCP LISTEN = 0x0A, UDP unconnected = 0x07).
    pub state: u8,
    pub inode: u64,
}

fn proc_address(text: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (addr_hex, port_hex) = text.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let raw = hex::decode(addr_hex).ok()?;
    // The kernel prints each 32-bit word in host (little-endian) order.
    let mut bytes = Vec::with_capacity(raw.len());
    for word in raw.chunks(4) {
        bytes.extend(word.iter().rev());
    }
    let ip = match (v6, bytes.len()) {
        (false, 4) => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        (true, 16) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&bytes);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Every well-formed row of a /proc/net/{tcp,udp}{,6} file (junk lines are skipped).
pub fn parse_proc_sockets(text: &str, v6: bool) -> Vec<ProcSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 {
                return None;
            }
            let (local, lport) = proc_address(fields[1], v6)?;
            let (remote, rport) = proc_address(fields[2], v6)?;
            Some(ProcSocket {
                local,
                lport,
                remote,
                rport,
                state: u8::from_str_radix(fields[3], 16).ok()?,
                inode: fields[9].parse().ok()?,
            })
        })
        .collect()
}

/// (local address, port, inode) of the rows in state `want` (hex, e.g. "0A").
pub fn parse_proc_net(text: &str, v6: bool, want: &str) -> Vec<(IpAddr, u16, u64)> {
    let Ok(want) = u8::from_str_radix(want, 16) else {
        return Vec::new();
    };
    parse_proc_sockets(text, v6)
        .into_iter()
        .filter(|s| s.state == want)
        .map(|s| (s.local, s.lport, s.inode))
        .collect()
}

/// Every TCP and UDP socket of the calling thread's namespace: (protocol, row).
pub fn proc_sockets() -> Vec<(u8, ProcSocket)> {
    let mut rows = Vec::new();
    for (file, proto, v6) in [
        ("tcp", 6u8, false),
        ("tcp6", 6, true),
        ("udp", 17, false),
        ("udp6", 17, true),
    ] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) {
            rows.extend(
                parse_proc_sockets(&text, v6)
                    .into_iter()
                    .map(|r| (proto, r)),
            );
        }
    }
    rows
}

/// Socket inode → pid, for every process (scan of /proc/*/fd).
pub fn socket_owners() -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse().ok())
                {
                    owners.entry(inode).or_insert(pid);
                }
            }
        }
    }
    owners
}

/// A process as /proc describes it, in the kernel's owner shape (cgroup id unknown: 0).
pub fn process_owner(pid: u32) -> Option<crate::bpf::abi::Owner> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    let mut owner = crate::bpf::abi::Owner {
        pid,
        uid,
        ..Default::default()
    };
    let comm = comm.trim_end().as_bytes();
    let n = comm.len().min(crate::bpf::abi::COMM_LEN - 1);
    owner.comm[..n].copy_from_slice(&comm[..n]);
    Some(owner)
}

/// Listening TCP sockets and bound UDP sockets of the calling thread's namespace.
pub fn listening() -> Vec<ListeningSocket> {
    let mut rows = Vec::new();
    for (file, proto, v6, state) in [
        ("tcp", 6u32, false, "0A"),
        ("tcp6", 6, true, "0A"),
        ("udp", 17, false, "07"),
        ("udp6", 17, true, "07"),
    ] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) {
            for (ip, port, inode) in parse_proc_net(&text, v6, state) {
                rows.push((proto, ip, port, inode));
            }
        }
    }
    let owners = if rows.is_empty() {
        HashMap::new()
    } else {
        socket_owners()
    };
    let mut sockets: Vec<ListeningSocket> = rows
        .into_iter()
        .map(|(protocol, ip, port, inode)| {
            let pid = owners.get(&inode).copied().unwrap_or(0);
            let (process_name, executable) = if pid == 0 {
                (String::new(), String::new())
            } else {
                (
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|s| s.trim_end().to_string())
                        .unwrap_or_default(),
                    std::fs::read_link(format!("/proc/{pid}/exe"))
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                )
            };
            ListeningSocket {
                protocol,
                address: ip.to_string(),
                port: u32::from(port),
                pid,
                process_name,
                executable,
            }
        })
        .collect();
    sockets.sort_by(|a, b| (a.protocol, a.port, &a.address).cmp(&(b.protocol, b.port, &b.address)));
    sockets.dedup();
    sockets
}

/// The whole inventory, observed now.
pub fn observe(
    host_id: &str,
    labels: &BTreeMap<String, String>,
    started_unix_ns: u64,
) -> Result<HostInventory, CollectorError> {
    let interfaces = links()?
        .into_iter()
        .map(|l| Interface {
            name: l.name,
            ifindex: l.ifindex,
            mac: l.mac,
            addresses: l.addresses,
            up: l.up,
        })
        .collect();
    Ok(HostInventory {
        schema_version: 1,
        host_id: host_id.to_string(),
        hostname: hostname(),
        os: format!("Linux {}", crate::preflight::kernel_release()),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        interfaces,
        listening: listening(),
        labels: labels.clone().into_iter().collect(),
        observed_unix_ns: bulkhead_schemas::now_unix_ns(),
        agent_started_unix_ns: started_unix_ns,
    })
}

/// Whether two inventories differ in anything but the observation time.
pub fn changed(old: &HostInventory, new: &HostInventory) -> bool {
    let mut a = old.clone();
    a.observed_unix_ns = new.observed_unix_ns;
    a != *new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_rows_parse_and_junk_is_skipped() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F91 00000000:0000 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n\
   garbage line\n";
        let rows = parse_proc_net(tcp, false, "0A");
        assert_eq!(rows, vec![("127.0.0.1".parse().unwrap(), 8080, 12345)]);
        let tcp6 = "header\n 0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 77 1\n";
        let rows = parse_proc_net(tcp6, true, "0A");
        assert_eq!(rows, vec![("::1".parse().unwrap(), 80, 77)]);
    }

    #[test]
    fn host_id_persists_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/host-id");
        let first = host_id(&path).unwrap();
        assert_eq!(host_id(&path).unwrap(), first);
        std::fs::write(&path, "bad id with spaces").unwrap();
        let err = host_id(&path).unwrap_err().to_string();
        assert!(err.contains("host-id") && err.contains("bad id"), "{err}");
    }

    #[test]
    fn inventory_sees_loopback_and_changes_ignore_time() {
        let links = links().unwrap();
        assert!(links.iter().any(|l| l.loopback), "{links:?}");
        let a = observe("h", &BTreeMap::new(), 1).unwrap();
        let mut b = a.clone();
        b.observed_unix_ns += 10;
        assert!(!changed(&a, &b));
        b.hostname.push('x');
        assert!(changed(&a, &b));
    }
}
