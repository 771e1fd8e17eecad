//! # bulkhead-recommender — policy from traffic
//!
//! Role: lift observed edges to label-based allow rules an analyst can review.
//! Consumes: an edges DataFrame (the `edges` table's columns; [`lake::load_edges`] reads the
//! lake's Delta table with polars) and the workloads' current labels.
//! Produces: [`Recommendation`]s (a candidate rule with evidence, confidence and coverage,
//! or a suspicious pattern to review), as protobuf for `bulkhead.recommendations.v1` and as
//! rows of the `recommendations` table.
//!
//! How edges become rules (every threshold is an [`Options`] field):
//! 1. **Suspicious first.** A source that touches at least `scan_min_targets` (host, port)
//!    pairs on at least `scan_min_ports` ports with under `scan_max_bytes_per_flow` bytes
//!    a flow is a scanner: those thin edges are flagged. An edge first seen in the last
//!    `recent_fraction` of the window with at most `new_edge_max_flows` flows is flagged
//!    (possible lateral movement) — unless the same label-level pattern (source group →
//!    destination group on the port) was already established by other edges: a new member
//!    behaving like its peers is not suspicious. Flagged edges are never lifted into rules.
//! 2. **Shared infrastructure.** A provider group (scope + role) used on a port by
//!    consumers from at least `shared_min_scope_share` of all scopes (and at least 3) is
//!    a shared service: one explicit rule in its own ruleset, consumers = every
//!    environment seen (or the apps seen, when fewer than `support_threshold` of the
//!    environments' workloads use it). A consumer group that reaches that share of scopes
//!    (monitoring) gets one rule per environment whose providers are every workload of
//!    that environment — stated in the rationale, never silent.
//! 3. **Workload edges → label rules.** Edges are grouped by (consumer scope + role,
//!    provider scope + role, protocol, port): same scope → an intra-scope rule, different
//!    scopes → an extra-scope rule in the provider's ruleset. A side is written as its
//!    label group only when at least `support_threshold` of the group's members showed the
//!    pattern; otherwise as the individual workloads seen.
//! 4. **Addresses outside the estate → IP lists.** Per (workload group, port), the
//!    external addresses seen; at least `internet_min_addresses` distinct public addresses
//!    become the `internet` list (everything but private ranges), fewer become a list of
//!    exactly those addresses.
//! 5. **Ports merge into services**: rules with the same ruleset, consumers and providers
//!    become one rule listing every port.
//!
//! [`suggest`] proposes labels for workloads that miss them, from how they behave.
//!
//! Nothing is ever widened to `any` except the explicit per-environment monitoring rule
//! described above, whose rationale says so.

pub mod frame;
pub mod lake;
mod lift;
pub mod suggest;

use bulkhead_schemas::policy::{IpList, Label, Rule};
use serde::{Deserialize, Serialize};

pub use frame::{EdgeRow, EdgeSum, End, WorkloadLabels, aggregate, edges_frame, lay_labels_over};
pub use lift::recommend_from_sums;

/// The recommender's thresholds (see the crate documentation).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    /// A label group replaces its members only when this share of them showed the pattern.
    pub support_threshold: f64,
    /// A provider (consumer) group is shared infrastructure when its consumers (providers)
    /// come from at least this share of all scopes (and at least 3 scopes).
    pub shared_min_scope_share: f64,
    /// Scanner: at least this many (host, port) pairs…
    pub scan_min_targets: usize,
    /// …on at least this many distinct ports…
    pub scan_min_ports: usize,
    /// …with fewer bytes per flow than this.
    pub scan_max_bytes_per_flow: u64,
    /// "Recent": first seen in this last share of the observed window.
    pub recent_fraction: f64,
    /// A recent edge with at most this many flows and no established pattern is flagged.
    pub new_edge_max_flows: u64,
    /// At least this many distinct external addresses on one pattern → the `internet` list.
    pub internet_min_addresses: usize,
    /// Label keys that make a ruleset scope, in order.
    pub scope_keys: Vec<String>,
    /// Only recommend for providers in this scope (`--scope app=crm,env=prod`).
    pub scope_filter: Vec<Label>,
    /// Evidence edges kept per recommendation.
    pub sample_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            support_threshold: 0.5,
            shared_min_scope_share: 0.25,
            scan_min_targets: 10,
            scan_min_ports: 5,
            scan_max_bytes_per_flow: 500,
            recent_fraction: 0.1,
            new_edge_max_flows: 3,
            internet_min_addresses: 5,
            scope_keys: vec!["app".into(), "env".into()],
            scope_filter: Vec::new(),
            sample_size: 5,
        }
    }
}

/// What a recommendation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    IntraScope,
    ExtraScope,
    IpList,
    SharedService,
    /// Not a rule to accept: a pattern that looks like scanning or lateral movement.
    Suspicious,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IntraScope => "intra_scope",
            Kind::ExtraScope => "extra_scope",
            Kind::IpList => "ip_list",
            Kind::SharedService => "shared_service",
            Kind::Suspicious => "suspicious",
        }
    }
}

/// One observed edge that supports a recommendation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceEdge {
    pub src: String,
    pub dst: String,
    pub port: u32,
    pub protocol: u32,
    pub process: Option<String>,
    pub flows: u64,
    pub bytes: u64,
}

/// Why a recommendation is made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub flows: u64,
    pub bytes: u64,
    pub first_seen_unix_ns: u64,
    pub last_seen_unix_ns: u64,
    pub consumer_workloads: u32,
    pub provider_workloads: u32,
    /// Share of the label groups' members that showed the pattern (the smaller side).
    pub support: f64,
    /// Server-side processes seen.
    pub processes: Vec<String>,
    /// The heaviest supporting edges.
    pub sample: Vec<EvidenceEdge>,
}

/// A candidate rule (or a suspicious pattern) with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Stable: the same rule in the same ruleset keeps its id across runs.
    pub id: String,
    pub kind: Kind,
    pub ruleset: String,
    pub scope: Vec<Label>,
    pub rule: Rule,
    /// IP lists the rule refers to (drafted with it when accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_lists: Vec<IpList>,
    pub evidence: Evidence,
    /// 0..1.
    pub confidence: f64,
    /// Share of the window's observed flows this rule allows (0..1).
    pub coverage: f64,
    pub rationale: String,
    pub created_unix_ns: u64,
}

/// What a run produced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Recommendations {
    pub items: Vec<Recommendation>,
    /// Edges left out because a workload has no scope labels.
    pub unlabeled_edges: usize,
    pub edges: usize,
    pub flows: u64,
}

impl Recommendations {
    /// The rule recommendations (everything but suspicious findings).
    pub fn rules(&self) -> impl Iterator<Item = &Recommendation> {
        self.items.iter().filter(|r| r.kind != Kind::Suspicious)
    }
    pub fn suspicious(&self) -> impl Iterator<Item = &Recommendation> {
        self.items.iter().filter(|r| r.kind == Kind::Suspicious)
    }
}

/// Recommendations from an edges frame (see [`edges_frame`] for the columns).
pub fn recommend(
    edges: polars::prelude::LazyFrame,
    labels: &WorkloadLabels,
    options: &Options,
) -> anyhow::Result<Recommendations> {
    let sums = aggregate(edges)?;
    Ok(recommend_from_sums(&sums, labels, options))
}

impl Recommendation {
    pub fn to_proto(&self) -> bulkhead_schemas::proto::Recommendation {
        use bulkhead_schemas::proto;
        let kind = match self.kind {
            Kind::IntraScope => proto::RecommendationKind::IntraScope,
            Kind::ExtraScope => proto::RecommendationKind::ExtraScope,
            Kind::IpList => proto::RecommendationKind::IpList,
            Kind::SharedService => proto::RecommendationKind::SharedService,
            Kind::Suspicious => proto::RecommendationKind::Suspicious,
        };
        let parse_end = |text: &str| -> (String, String) {
            if text.parse::<std::net::IpAddr>().is_ok() {
                (String::new(), text.to_string())
            } else {
                (text.to_string(), String::new())
            }
        };
        proto::Recommendation {
            schema_version: bulkhead_schemas::SCHEMA_VERSION,
            id: self.id.clone(),
            kind: kind as i32,
            scope: self.scope.iter().map(proto::Label::from).collect(),
            ruleset: self.ruleset.clone(),
            rule: Some(proto::Rule::from(&self.rule)),
            evidence: Some(proto::Evidence {
                flows: self.evidence.flows,
                bytes: self.evidence.bytes,
                first_seen_unix_ns: self.evidence.first_seen_unix_ns,
                last_seen_unix_ns: self.evidence.last_seen_unix_ns,
                consumer_workloads: self.evidence.consumer_workloads,
                provider_workloads: self.evidence.provider_workloads,
                support: self.evidence.support,
                sample: self
                    .evidence
                    .sample
                    .iter()
                    .map(|e| {
                        let (src_workload, src_ip) = parse_end(&e.src);
                        let (dst_workload, dst_ip) = parse_end(&e.dst);
                        proto::EvidenceEdge {
                            src_workload,
                            dst_workload,
                            src_ip,
                            dst_ip,
                            port: e.port,
                            protocol: e.protocol,
                            process: e.process.clone().unwrap_or_default(),
                            flows: e.flows,
                            bytes: e.bytes,
                        }
                    })
                    .collect(),
            }),
            confidence: self.confidence,
            rationale: self.rationale.clone(),
            created_unix_ns: self.created_unix_ns,
        }
    }

    /// The Kafka key: the scope, e.g. `app=crm,env=prod`.
    pub fn key(&self) -> String {
        self.scope
            .iter()
            .map(Label::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}
