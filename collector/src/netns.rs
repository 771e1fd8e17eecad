//! Network namespaces: the collector reports the namespace of the thread that runs it.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use crate::error::CollectorError;

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie of a socket's network namespace.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace (what `bpf_get_netns_cookie`
/// returns for its sockets).
pub fn current_cookie() -> Result<u64, CollectorError> {
    // SAFETY: plain socket syscalls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(CollectorError::io(
                "socket() for the netns cookie",
                std::io::Error::last_os_error(),
            ));
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(CollectorError::Unsupported(format!(
                "getsockopt(SO_NETNS_COOKIE) failed ({error}); Linux 5.14 or later is needed"
            )));
        }
        Ok(cookie)
    }
}

/// Moves the calling thread into the network namespace at `path` (e.g.
/// `/run/netns/<name>`). Other threads stay where they are.
pub fn enter(path: &Path) -> Result<(), CollectorError> {
    let file = File::open(path)
        .map_err(|e| CollectorError::io(format!("open network namespace {}", path.display()), e))?;
    // SAFETY: setns on a namespace descriptor we hold open.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(CollectorError::io(
            format!("enter network namespace {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The path of a namespace created by `ip netns add <name>`.
pub fn named(name: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(name)
}
