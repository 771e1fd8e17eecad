//! Lab hosts: network namespaces on a lab bridge, listeners and clients inside them, and
//! real `bulkhead` processes running inside a namespace. Used by the end-to-end tests and
//! the benchmarks.
//!
//! Every host sits on the bridge `bhlab0` (10.250.0.1/16, fd00:250::1/64 in the root
//! namespace), which is where the dev broker's lab listener is advertised
//! (`dev/kafka/up`). Namespaces and veths are removed on drop, even when a test fails.
//! Addresses are only ever in 10.250.0.0/16 and fd00:250::/64, inside namespaces this
//! process made.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const LAB_BRIDGE: &str = "bhlab0";
pub const LAB_GATEWAY: &str = "10.250.0.1";
pub const LAB_KAFKA: &str = "10.250.0.1:9094";

/// Whether this run requires every test to run (CI, `BULKHEAD_REQUIRE_ALL=1`): a missing
/// prerequisite is then a failure, never a skip.
pub fn required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
        || std::env::var_os("BULKHEAD_REQUIRE_ALL").is_some_and(|v| v == "1")
}

fn sh(args: &[&str]) -> Result<String, String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs a command that must succeed (setup steps); panics with its stderr otherwise.
pub fn run(args: &[&str]) -> String {
    sh(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether this process can build test hosts (root, `ip`, `nft`). When it cannot, says so
/// loudly; under CI (or BULKHEAD_REQUIRE_ALL=1) that is a failure instead.
pub fn can_build_hosts() -> bool {
    match host_problem() {
        None => true,
        Some(p) if required() => {
            panic!("this test needs test hosts, and this run requires them: {p}")
        }
        Some(p) => {
            eprintln!(
                "\n*** SKIPPED: this test needs network namespaces: {p}. Run dev/test as root.\n"
            );
            false
        }
    }
}

/// Why this process cannot build lab hosts, if it cannot.
pub fn host_problem() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        Some("not root (network namespaces and nftables need CAP_NET_ADMIN)".to_string())
    } else if let Err(e) = sh(&["ip", "-V"]) {
        Some(format!("no iproute2: {e}"))
    } else if let Err(e) = sh(&["nft", "--version"]) {
        Some(format!("no nft (apt-get install nftables): {e}"))
    } else {
        None
    }
}

/// The lab bridge's MAC address, fixed ("bhlab", locally administered). A bridge without
/// one takes the lowest MAC of its ports, so it changed whenever a test host came or went;
/// hosts that had cached the old one could not reach the gateway (the broker's lab
/// listener) until their ARP entries expired, and enforcers in parallel tests timed out
/// connecting to Kafka.
pub const LAB_BRIDGE_MAC: &str = "02:62:68:6c:61:62";

/// The lab bridge in the root namespace (created once, shared by every test).
pub fn lab_bridge() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if sh(&["ip", "link", "show", LAB_BRIDGE]).is_err() {
            // Another test process may win the race; that is fine.
            let _ = sh(&["ip", "link", "add", LAB_BRIDGE, "type", "bridge"]);
        }
        run(&["ip", "link", "set", LAB_BRIDGE, "address", LAB_BRIDGE_MAC]);
        let _ = sh(&["ip", "addr", "add", "10.250.0.1/16", "dev", LAB_BRIDGE]);
        let _ = sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:250::1/64",
            "dev",
            LAB_BRIDGE,
            "nodad",
        ]);
        run(&["ip", "link", "set", LAB_BRIDGE, "up"]);
    });
}

static NEXT_HOST: AtomicU32 = AtomicU32::new(0);

/// A test host: a network namespace with `eth0` on the lab bridge.
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ipv4: IpAddr,
    pub ipv6: IpAddr,
    veth: String,
}

impl Host {
    /// A new host; its address is unique among this process's hosts and, by the pid,
    /// very likely among concurrent test processes.
    pub fn new(name: &str) -> Self {
        lab_bridge();
        let n = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() % 200) as u8 + 20;
        let ns = format!("bh-{}-{n}-{name}", std::process::id());
        let veth = format!("bh{}v{n}", std::process::id() % 100_000);
        let ipv4: IpAddr = format!("10.250.{tag}.{}", n + 2).parse().unwrap();
        let ipv6: IpAddr = format!("fd00:250::{tag}:{}", n + 2).parse().unwrap();
        let _ = sh(&["ip", "netns", "del", &ns]);
        run(&["ip", "netns", "add", &ns]);
        let host = Host {
            name: name.into(),
            ns: ns.clone(),
            ipv4,
            ipv6,
            veth: veth.clone(),
        };
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        run(&["ip", "link", "set", &veth, "master", LAB_BRIDGE, "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ipv4}/16"),
            "dev",
            "eth0",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ipv6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        host
    }

    /// Runs `f` on a thread inside this host's network namespace; sockets it creates
    /// belong to the host.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("the thread inside the namespace panicked")
    }

    /// A TCP server on `port` (IPv4 and IPv6) that accepts and closes every connection,
    /// for the test's life.
    pub fn listen(&self, port: u16) {
        self.listen_on_cpu(port, None);
    }

    /// [`Host::listen`] with the accepting thread pinned to `cpu` (benchmarks: a client
    /// and an acceptor that the scheduler moves between cores make bimodal timings).
    pub fn listen_on_cpu(&self, port: u16, cpu: Option<usize>) {
        let listener =
            self.within(move || TcpListener::bind(("::", port)).expect("bind in namespace"));
        std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                pin_to_cpu(cpu);
            }
            for stream in listener.incoming().flatten() {
                drop(stream);
            }
        });
    }

    /// Whether a TCP connection from this host to `addr` completes within `timeout`.
    pub fn connects(&self, addr: SocketAddr, timeout: Duration) -> bool {
        self.within(move || TcpStream::connect_timeout(&addr, timeout).is_ok())
    }

    /// Waits (bounded) until connecting to `addr` gives `expected`.
    pub fn eventually_connects(&self, addr: SocketAddr, expected: bool, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.connects(addr, Duration::from_millis(300)) == expected {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `nft` inside the host.
    pub fn nft(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.ns, "nft"];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Starts `<bulkhead> <args>` inside the host; it is killed when the guard drops. Its
    /// output goes to a log file that is printed if the caller is panicking.
    pub fn spawn_bulkhead(&self, bulkhead: &str, args: &[&str]) -> Process {
        let log_path = std::env::temp_dir().join(format!("{}.log", self.ns));
        let log = File::create(&log_path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, bulkhead])
            .args(args)
            .env("BULKHEAD_LOG", "info,bulkhead_enforcer=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn bulkhead in the namespace");
        Process {
            child,
            log_path,
            name: self.name.clone(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.veth]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

/// A `bulkhead` process; killed on drop, its log shown when the test is failing.
pub struct Process {
    child: Child,
    log_path: std::path::PathBuf,
    name: String,
}

impl Process {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded: 60 s, then SIGKILL) for a process that exits by itself.
    pub fn terminate_or_wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.terminate()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log of bulkhead on {} ----\n{}", self.name, self.log());
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// Pins the calling thread to one CPU (best effort: a failure leaves it unpinned).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it for
    // cpu < CPU_SETSIZE, and sched_setaffinity reads exactly its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}
