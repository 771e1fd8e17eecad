//! Compiles the eBPF programs in `bpf/*.c` with clang-19 against a `vmlinux.h` generated
//! from the build host's kernel BTF (`bpftool btf dump file /sys/kernel/btf/vmlinux format
//! c`, written to OUT_DIR once per build directory). The objects are embedded by
//! `src/bpf/mod.rs` with `include_bytes_aligned!`.
//!
//! Overrides: `BULKHEAD_CLANG` (default `clang-19`), `BULKHEAD_BPFTOOL` (default
//! `bpftool`), `BULKHEAD_VMLINUX_H` (use this header instead of generating one).

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL: &str = "apt-get install clang-19 llvm-19 libbpf-dev bpftool";
const PROGRAMS: &[&str] = &["flows", "sockets", "empty"];

fn main() {
    if let Err(message) = build() {
        // A build script's panic message is what cargo shows: make it the whole story.
        panic!("\n\nbulkhead-collector: cannot build the eBPF programs: {message}\n\n");
    }
}

fn build() -> Result<(), String> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let bpf_dir = manifest.join("bpf");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    for var in ["BULKHEAD_CLANG", "BULKHEAD_BPFTOOL", "BULKHEAD_VMLINUX_H"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let clang = std::env::var("BULKHEAD_CLANG").unwrap_or_else(|_| "clang-19".into());
    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err(format!("{clang} is missing; install it with: {INSTALL}")),
    }

    let include = out.join("include");
    std::fs::create_dir_all(&include).map_err(|e| format!("create {}: {e}", include.display()))?;
    let vmlinux = include.join("vmlinux.h");
    match std::env::var("BULKHEAD_VMLINUX_H") {
        Ok(path) => {
            std::fs::copy(&path, &vmlinux)
                .map_err(|e| format!("BULKHEAD_VMLINUX_H={path}: {e}"))?;
        }
        Err(_) if !vmlinux.exists() => generate_vmlinux(&vmlinux)?,
        Err(_) => {}
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        return Err(format!(
            "libbpf headers (bpf/bpf_helpers.h) are missing; install them with: {INSTALL}"
        ));
    }

    for program in PROGRAMS {
        let source = bpf_dir.join(format!("{program}.c"));
        let object = out.join(format!("{program}.o"));
        let output = Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-D__TARGET_ARCH_x86",
                "-Wall",
                "-Werror",
            ])
            .arg("-I")
            .arg(&include)
            .arg("-I")
            .arg(&bpf_dir)
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .output()
            .map_err(|e| format!("run {clang}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{clang} failed on {}:\n{}",
                source.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    Ok(())
}

fn generate_vmlinux(target: &Path) -> Result<(), String> {
    let btf = "/sys/kernel/btf/vmlinux";
    if !Path::new(btf).exists() {
        return Err(format!(
            "{btf} is missing: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y is needed), \
             or set BULKHEAD_VMLINUX_H to a vmlinux.h generated on a kernel that has it"
        ));
    }
    let bpftool = std::env::var("BULKHEAD_BPFTOOL").unwrap_or_else(|_| "bpftool".into());
    let output = Command::new(&bpftool)
        .args(["btf", "dump", "file", btf, "format", "c"])
        .output()
        .map_err(|e| format!("{bpftool} is missing ({e}); install it with: {INSTALL}"))?;
    if !output.status.success() {
        return Err(format!(
            "{bpftool} btf dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::write(target, &output.stdout).map_err(|e| format!("write {}: {e}", target.display()))
}
