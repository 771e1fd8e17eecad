//! Checks that say clearly why the collector cannot start: not root, no BTF, no tcx, no
//! cgroup2 hierarchy. Run before anything is loaded.

use std::fs::File;
use std::path::Path;

use crate::error::CollectorError;

/// tcx (BPF links on TC ingress/egress) arrived in Linux 6.6.
const TCX_KERNEL: (u32, u32) = (6, 6);
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The running kernel's release, e.g. "6.18.44-fc".
pub fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed utsname; the fields are NUL-terminated.
    unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(uts.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// `(major, minor)` of a release string, `None` when it does not start with `N.N`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Root, BTF and tcx.
pub fn check_kernel() -> Result<(), CollectorError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(CollectorError::NotRoot { euid });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(CollectorError::Unsupported(
            "/sys/kernel/btf/vmlinux is missing: the kernel was built without BTF \
             (CONFIG_DEBUG_INFO_BTF=y), which tp_btf programs need"
                .into(),
        ));
    }
    let release = kernel_release();
    match parse_release(&release) {
        Some(version) if version >= TCX_KERNEL => Ok(()),
        Some(_) => Err(CollectorError::Unsupported(format!(
            "kernel {release} has no tcx (TC BPF links need Linux {}.{} or later)",
            TCX_KERNEL.0, TCX_KERNEL.1
        ))),
        None => Err(CollectorError::Unsupported(format!(
            "cannot read the kernel version from {release:?}"
        ))),
    }
}

/// The first cgroup2 mount point in `mountinfo` text (field 5 = mount point, the file
/// system type follows the " - " separator).
pub fn cgroup2_mount(mountinfo: &str) -> Option<std::path::PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        // mountinfo escapes spaces and the like as octal (\040).
        Some(std::path::PathBuf::from(mount_point.replace("\\040", " ")))
    })
}

/// The cgroup2 hierarchy to attach to: `configured`, or the first one mounted.
pub fn cgroup2_dir(configured: Option<&Path>) -> Result<std::path::PathBuf, CollectorError> {
    if let Some(path) = configured {
        return Ok(path.to_path_buf());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CollectorError::io("read /proc/self/mountinfo", e))?;
    cgroup2_mount(&mountinfo).ok_or_else(|| CollectorError::Cgroup {
        path: "(none mounted)".into(),
        reason: "no cgroup2 file system is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) \
                 or pass --cgroup DIR"
            .into(),
    })
}

/// Opens `path` and checks that it is a cgroup2 directory.
pub fn open_cgroup2(path: &Path) -> Result<File, CollectorError> {
    let err = |reason: String| CollectorError::Cgroup {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| {
        err(format!(
            "{e}; mount one (mount -t cgroup2 none {}) or set --cgroup",
            path.display()
        ))
    })?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| err("the path contains a NUL byte".into()))?;
    // SAFETY: statfs writes into a zeroed struct; the path is NUL-terminated.
    let magic = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c_path.as_ptr(), &mut st) != 0 {
            return Err(err(std::io::Error::last_os_error().to_string()));
        }
        st.f_type as i64
    };
    if magic != CGROUP2_SUPER_MAGIC {
        return Err(err(format!(
            "not a cgroup2 file system (magic {magic:#x}); mount one with: mount -t cgroup2 none <dir>"
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_or_are_refused() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-generic"), Some((5, 15)));
        assert_eq!(parse_release("weird"), None);
        assert_eq!(parse_release(""), None);
    }

    #[test]
    fn the_cgroup2_mount_is_found_in_mountinfo() {
        let info = "22 1 0:21 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                    30 22 0:26 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(info), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(cgroup2_mount("garbage\n"), None);
    }
}
