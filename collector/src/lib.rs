//! # bulkhead-collector — the agent's eyes
//!
//! Role: capture every flow of the host's network namespace with eBPF, attribute it to
//! the process that owns the local socket, name the remote end from DNS answers seen on
//! the wire, and publish the result.
//!
//! Consumes: packets on the chosen interfaces (TC programs attached with tcx), socket
//! events of its own network namespace (cgroup `sock_create`/`post_bind` hooks and the
//! `inet_sock_set_state` BTF tracepoint) and DNS responses (UDP source port 53).
//!
//! Produces: `FlowBatch`es on `bulkhead.flows.v1` keyed by host id, and `HostInventory`
//! on the compacted `bulkhead.inventory.v1` (types in `bulkhead-schemas`); or JSON lines
//! (`--stdout`); or [`publisher::Published`] values on a channel (embedding).
//!
//! ## Using
//!
//! `bulkhead collect` runs [`Collector::run`]; embedders (`bulkhead agent`, tests) use
//! [`CollectorThread::spawn`], which can watch another network namespace.
//!
//! ## Layout
//!
//! | file | what |
//! |---|---|
//! | `bpf/*.c`, `bpf/bulkhead.h` | kernel programs and the shared map structs |
//! | [`bpf`] (+ [`bpf::abi`]) | load, attach, flip/drain maps; `#[repr(C)]` mirror |
//! | [`config`] | flags/file/defaults and a pure `validate()` |
//! | [`run`] | the loop: evict, DNS, closes, interfaces, inventory, shutdown |
//! | [`records`], [`attribution`], [`dns`] | pure conversion and joins (unit-tested) |
//! | [`publisher`], [`queue`] | outputs; the bytes-bounded drop-oldest queue |
//! | [`inventory`], [`netns`], [`preflight`], [`telemetry`] | the host, namespaces, checks, metrics |
//!
//! ## Extending
//!
//! - A new per-flow fact from the kernel: add the field to `bpf/bulkhead.h`, mirror it in
//!   [`bpf::abi`] (the layout assertions will insist), fill it in `bpf/flows.c`, merge
//!   it in [`bpf::merge_per_cpu`] and map it in [`records::to_record`].
//! - A new kernel drop reason: a `BH_FC_*`/`BH_SC_*` index in the header and a variant
//!   in [`bpf::abi::FlowCounter`]/[`bpf::abi::SocketCounter`]; it is exported as
//!   `bulkhead_collector_kernel_events_total{reason}`.
//! - A new output: a variant of [`publisher::Output`]; eviction never blocks on it.

pub mod attribution;
pub mod bpf;
pub mod config;
pub mod dns;
pub mod error;
pub mod inventory;
pub mod netns;
pub mod preflight;
pub mod publisher;
pub mod queue;
pub mod records;
pub mod run;
pub mod telemetry;

pub use config::{CollectArgs, CollectorConfig, CollectorFileConfig};
pub use error::CollectorError;
pub use publisher::{Output, Published, Sink};
pub use run::{Collector, CollectorThread, Started};
