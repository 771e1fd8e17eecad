//! The collector's telemetry: one place for metric names (`bulkhead_collector_<thing>_<unit>_total`),
//! and [`Stats`], the same counts as plain atomics for callers and tests.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::bpf::abi::{FlowCounter, SocketCounter};

/// Every metric the collector exports.
#[derive(Clone, Copy, Debug)]
pub enum Metric {
    /// Flows evicted from the kernel and turned into records.
    EvictedFlows,
    /// FlowBatches handed to the output (Kafka: acknowledged by the broker).
    PublishedBatches,
    /// Bytes of encoded FlowBatches acknowledged by Kafka.
    PublishedBytes,
    /// Flows lost, tagged `reason`: `flow_map_full` (kernel), `queue_full` (Kafka slow or down).
    DroppedFlows,
    /// Batches lost, tagged `reason` = `queue_full`.
    DroppedBatches,
    /// Kernel program counters, tagged `reason` (packets, non_ip, truncated, ...).
    KernelEvents,
    /// HostInventory messages published.
    PublishedInventories,
    /// DNS answers learnt.
    DnsAnswers,
    /// Gauge: flows found in the drained flow map at the last eviction.
    FlowMapEntries,
    /// Gauge: capacity of one flow map.
    FlowMapCapacity,
    /// Gauge: bytes waiting in the publish queue.
    QueueBytes,
    /// Gauge: interfaces with the TC programs attached.
    AttachedInterfaces,
}

impl Metric {
    pub const fn name(self) -> &'static str {
        match self {
            Self::EvictedFlows => "bulkhead_collector_evicted_flows_total",
            Self::PublishedBatches => "bulkhead_collector_published_batches_total",
            Self::PublishedBytes => "bulkhead_collector_published_bytes_total",
            Self::DroppedFlows => "bulkhead_collector_dropped_flows_total",
            Self::DroppedBatches => "bulkhead_collector_dropped_batches_total",
            Self::KernelEvents => "bulkhead_collector_kernel_events_total",
            Self::PublishedInventories => "bulkhead_collector_published_inventories_total",
            Self::DnsAnswers => "bulkhead_collector_dns_answers_total",
            Self::FlowMapEntries => "bulkhead_collector_flow_map_entries",
            Self::FlowMapCapacity => "bulkhead_collector_flow_map_capacity_entries",
            Self::QueueBytes => "bulkhead_collector_queue_bytes",
            Self::AttachedInterfaces => "bulkhead_collector_attached_interfaces",
        }
    }

    pub const ALL: [Metric; 12] = [
        Self::EvictedFlows,
        Self::PublishedBatches,
        Self::PublishedBytes,
        Self::DroppedFlows,
        Self::DroppedBatches,
        Self::KernelEvents,
        Self::PublishedInventories,
        Self::DnsAnswers,
        Self::FlowMapEntries,
        Self::FlowMapCapacity,
        Self::QueueBytes,
        Self::AttachedInterfaces,
    ];

    pub fn add(self, n: u64) {
        metrics::counter!(self.name()).increment(n);
    }

    pub fn add_tagged(self, reason: &'static str, n: u64) {
        metrics::counter!(self.name(), "reason" => reason).increment(n);
    }

    pub fn set(self, value: f64) {
        metrics::gauge!(self.name()).set(value);
    }
}

/// Running totals of one collector instance (what the metrics say, readable in-process).
#[derive(Debug, Default)]
pub struct Stats {
    pub evicted_flows: AtomicU64,
    pub published_batches: AtomicU64,
    pub published_bytes: AtomicU64,
    pub dropped_flows_map_full: AtomicU64,
    pub dropped_flows_queue_full: AtomicU64,
    pub dropped_batches_queue_full: AtomicU64,
    pub evictions: AtomicU64,
    pub dns_answers: AtomicU64,
    pub published_inventories: AtomicU64,
    pub attached_interfaces: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Exports kernel counter deltas as `bulkhead_collector_kernel_events_total{reason}`.
pub fn export_kernel_counters(
    flows: &[u64],
    sockets: &[u64],
    last_flows: &mut [u64],
    last_sockets: &mut [u64],
) {
    for (counter, (now, last)) in FlowCounter::ALL
        .iter()
        .zip(flows.iter().zip(last_flows.iter_mut()))
    {
        Metric::KernelEvents.add_tagged(counter.name(), now.saturating_sub(*last));
        *last = *now;
    }
    for (counter, (now, last)) in SocketCounter::ALL
        .iter()
        .zip(sockets.iter().zip(last_sockets.iter_mut()))
    {
        Metric::KernelEvents.add_tagged(counter.name(), now.saturating_sub(*last));
        *last = *now;
    }
}

/// Serves `/metrics` for Prometheus on `addr` (installs the global recorder).
pub fn serve_prometheus(addr: std::net::SocketAddr) -> Result<(), crate::error::CollectorError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| crate::error::CollectorError::Config(format!("metrics endpoint {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_follow_the_convention_and_are_unique() {
        let mut names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("bulkhead_collector_")));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len());
    }
}
