//! Enrichment of flows with workloads and labels, from the inventory topic.
//!
//! [`Inventory`] is the read model of `bulkhead.inventory.v1` (compacted, key = host id):
//! for every address, which host had it from when, with that host's labels. A flow's
//! source and destination are looked up at the flow's `first_seen`: the owner is the
//! latest inventory observed at or before that time (or, for flows older than any
//! inventory, the first one). Unknown addresses stay addresses (NULL workload). Fields
//! the collector already filled are kept.
//!
//! [`follow`] loads the topic to its end before ingest reads flows, then keeps the
//! model current in the background. Replaying flows after a crash enriches them with
//! the inventory known at replay time (the row count stays exact).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use bulkhead_kafka::{KafkaConfig, KafkaError};
use bulkhead_schemas::lake::{Labels, SharedLabels};
use bulkhead_schemas::proto::{FlowBatch, HostInventory};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;
use rustc_hash::FxHashMap;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Sighting {
    from_unix_ns: u64,
    host_id: Arc<str>,
    labels: Arc<Labels>,
}

/// Which host had which address when.
#[derive(Debug, Default)]
pub struct Inventory {
    by_ip: FxHashMap<IpAddr, Vec<Sighting>>,
    hosts: usize,
    /// The latest inventory of every host (the `workloads` read model).
    pub latest: BTreeMap<String, HostInventory>,
    /// Bumped by every change, so that writers know when to rewrite the read model.
    pub generation: u64,
}

/// Shared between the follower task and the ingest loop.
pub type SharedInventory = Arc<RwLock<Inventory>>;

impl Inventory {
    /// Applies one inventory message (`None` payload: the host was removed).
    pub fn apply(&mut self, host_id: &str, inventory: Option<&HostInventory>) {
        self.generation += 1;
        match inventory {
            Some(inv) => {
                let newer = self
                    .latest
                    .get(host_id)
                    .is_none_or(|old| old.observed_unix_ns <= inv.observed_unix_ns);
                if newer {
                    self.latest.insert(host_id.to_string(), inv.clone());
                }
            }
            None => {
                self.latest.remove(host_id);
            }
        }
        let Some(inventory) = inventory else {
            for sightings in self.by_ip.values_mut() {
                sightings.retain(|s| &*s.host_id != host_id);
            }
            self.by_ip.retain(|_, s| !s.is_empty());
            return;
        };
        self.hosts += 1;
        let host: Arc<str> = Arc::from(host_id);
        let labels = Arc::new(inventory.labels.clone());
        for interface in &inventory.interfaces {
            for cidr in &interface.addresses {
                let text = cidr.split('/').next().unwrap_or_default();
                let Ok(ip) = text.parse::<IpAddr>() else {
                    tracing::debug!(host_id, cidr, "inventory address is not an IP; ignored");
                    continue;
                };
                let sightings = self.by_ip.entry(ip).or_default();
                let sighting = Sighting {
                    from_unix_ns: inventory.observed_unix_ns,
                    host_id: host.clone(),
                    labels: labels.clone(),
                };
                let at = sightings.partition_point(|s| s.from_unix_ns <= sighting.from_unix_ns);
                sightings.insert(at, sighting);
            }
        }
    }

    /// The host that had `ip` at `unix_ns`.
    fn owner(&self, ip: &IpAddr, unix_ns: u64) -> Option<&Sighting> {
        let sightings = self.by_ip.get(ip)?;
        let at = sightings.partition_point(|s| s.from_unix_ns <= unix_ns);
        sightings.get(at.saturating_sub(1))
    }

    /// Addresses known.
    pub fn addresses(&self) -> usize {
        self.by_ip.len()
    }

    /// Fills the workload of both ends of every record that the collector left empty, and
    /// puts the owners' labels for the ends without labels of their own in `labels`
    /// (`labels[i]` for record `i`; shared with the inventory, not copied).
    pub fn enrich(&self, batch: &mut FlowBatch, labels: &mut Vec<SharedLabels>) {
        labels.clear();
        if self.by_ip.is_empty() {
            return;
        }
        labels.reserve(batch.records.len());
        for record in &mut batch.records {
            let at = record.first_seen_unix_ns;
            let src = self.fill(
                &record.src_ip,
                at,
                &mut record.src_workload,
                record.src_labels.is_empty(),
            );
            let dst = self.fill(
                &record.dst_ip,
                at,
                &mut record.dst_workload,
                record.dst_labels.is_empty(),
            );
            labels.push([src, dst]);
        }
    }

    /// One end of a record: the workload of the address's owner at `at`, and its labels
    /// when the end `wants_labels`.
    fn fill(
        &self,
        ip: &[u8],
        at: u64,
        workload: &mut String,
        wants_labels: bool,
    ) -> Option<Arc<Labels>> {
        if !workload.is_empty() {
            return None;
        }
        let owner = bulkhead_schemas::ip::from_bytes(ip).and_then(|ip| self.owner(&ip, at))?;
        *workload = owner.host_id.to_string();
        wants_labels.then(|| owner.labels.clone())
    }
}

/// Reads the inventory topic to its end into a new [`Inventory`], then keeps it current
/// in a background task.
pub async fn follow(kafka: &KafkaConfig, group: &str) -> Result<SharedInventory, KafkaError> {
    let inventory: SharedInventory = Arc::default();
    let shared = inventory.clone();
    crate::follow::follow_topic(kafka, Topic::Inventory, group, move |message| {
        apply_message(&shared, message)
    })
    .await?;
    if let Ok(inv) = inventory.read() {
        tracing::info!(
            addresses = inv.addresses(),
            hosts = inv.latest.len(),
            "inventory loaded for enrichment"
        );
    }
    Ok(inventory)
}

fn apply_message(inventory: &SharedInventory, message: &impl bulkhead_kafka::rdkafka::Message) {
    let host_id = String::from_utf8_lossy(message.key().unwrap_or_default()).to_string();
    let decoded = match message.payload() {
        None | Some([]) => None,
        Some(bytes) => match HostInventory::decode(bytes) {
            Ok(inv) => Some(inv),
            Err(e) => {
                tracing::warn!(
                    host_id,
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %e,
                    "inventory message does not decode; ignored"
                );
                return;
            }
        },
    };
    let host_id = decoded
        .as_ref()
        .map(|i| i.host_id.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or(host_id);
    if let Ok(mut inv) = inventory.write() {
        inv.apply(&host_id, decoded.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_schemas::proto::{FlowRecord, Interface};

    fn inv(host: &str, ip: &str, at: u64, app: &str) -> HostInventory {
        HostInventory {
            host_id: host.into(),
            interfaces: vec![Interface {
                addresses: vec![format!("{ip}/24"), "not-an-ip".into()],
                ..Default::default()
            }],
            labels: [("app".to_string(), app.to_string())].into(),
            observed_unix_ns: at,
            ..Default::default()
        }
    }

    fn record(src: [u8; 4], dst: [u8; 4], at: u64) -> FlowRecord {
        FlowRecord {
            src_ip: src.to_vec(),
            dst_ip: dst.to_vec(),
            first_seen_unix_ns: at,
            ..Default::default()
        }
    }

    #[test]
    fn addresses_resolve_to_the_host_that_had_them_at_the_flow_time() {
        let mut inventory = Inventory::default();
        inventory.apply("web-1", Some(&inv("web-1", "10.0.0.5", 100, "shop")));
        inventory.apply("web-2", Some(&inv("web-2", "10.0.0.5", 200, "crm")));
        let mut batch = FlowBatch {
            records: vec![
                record([10, 0, 0, 5], [8, 8, 8, 8], 150),
                record([10, 0, 0, 5], [10, 0, 0, 5], 250),
                record([10, 0, 0, 5], [1, 1, 1, 1], 50),
            ],
            ..Default::default()
        };
        batch.records[0].dst_workload = "kept".into();
        batch.records[1].src_labels = [("app".to_string(), "own".to_string())].into();
        let mut labels = Vec::new();
        inventory.enrich(&mut batch, &mut labels);
        let r = &batch.records;
        let label = |i: usize, end: usize| labels[i][end].as_ref().map(|l| l["app"].as_str());
        assert_eq!(r[0].src_workload, "web-1");
        assert_eq!(label(0, 0), Some("shop"));
        assert_eq!(
            label(0, 1),
            None,
            "the collector's workload kept, and its labels"
        );
        assert_eq!(r[0].dst_workload, "kept", "collector's value kept");
        assert_eq!(
            (r[1].src_workload.as_str(), r[1].dst_workload.as_str()),
            ("web-2", "web-2")
        );
        assert_eq!(label(1, 1), Some("crm"));
        assert_eq!(label(1, 0), None, "the record's own labels kept");
        assert_eq!(
            r[2].src_workload, "web-1",
            "older than any inventory: the first owner"
        );
        assert!(
            r[2].dst_workload.is_empty() && label(2, 1).is_none(),
            "unknown stays an IP"
        );

        inventory.apply("web-1", None);
        inventory.apply("web-2", None);
        assert_eq!(inventory.addresses(), 0, "tombstones remove hosts");
    }
}
