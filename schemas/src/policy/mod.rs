//! The policy model in Illumio's vocabulary, as people write it (JSON or YAML) and as
//! enforcers apply it.
//!
//! - **Labels** `key=value`; standard keys `role`, `app`, `env`, `loc`, others declared in
//!   [`PolicyDocument::custom_label_keys`].
//! - **IP lists** (named CIDR sets) and **services** (named port/protocol sets).
//! - **Rulesets** scoped by labels, holding allow **rules**: consumers → providers on
//!   services. **Deny rules** (boundaries) override every allow.
//! - **Workloads** with their labels, **enforcement mode** and quarantine flag.
//! - A [`PolicyVersion`] is one provisioned document, numbered and signed
//!   ([`PolicySigner`], [`PolicyVerifier`]).
//!
//! Load with [`PolicyDocument::from_yaml`] / [`PolicyDocument::from_json`] (syntax errors
//! name the path and line), then [`PolicyDocument::validate`] (every semantic problem,
//! each with its path). Convert to and from protobuf with `From`/`TryFrom`.
//!
//! ```yaml
//! custom_label_keys: [team]
//! ip_lists:
//!   - name: internet
//!     cidrs: [0.0.0.0/0, ::/0]
//! services:
//!   - name: https
//!     ports: [tcp/443]
//! rulesets:
//!   - name: crm-prod
//!     scope: [app=crm, env=prod]
//!     rules:
//!       - id: web-to-api
//!         consumers: [{labels: [role=web]}]
//!         providers: [{labels: [role=api]}]
//!         services: [https, tcp/8080]
//! deny_rules: []
//! workloads:
//!   - workload_id: host-1
//!     labels: {app: crm, env: prod, role: web}
//!     mode: full
//! default_mode: visibility_only
//! ```

mod convert;
mod decide;
mod sign;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use decide::{Decider, Decision, DecisionMemo, Endpoint, Verdict, ip_lists_containing};
pub use sign::{
    KeyError, PolicySigner, PolicyVerifier, SIGNATURE_DOMAIN, key_id, parse_verifying_key,
    signed_message,
};
pub use validate::{ValidationErrors, ValidationIssue};

/// Serde as the type's text form (`Display` / `FromStr`): labels, port ranges and
/// service references are written as people write them, in YAML and JSON alike.
macro_rules! serde_as_text {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_text!(Label, PortRange, ServiceRef);

/// The label keys every deployment has.
pub const STANDARD_LABEL_KEYS: [&str; 4] = ["role", "app", "env", "loc"];

/// A label: `key=value`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub key: String,
    pub value: String,
}

impl Label {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl FromStr for Label {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() && !value.trim().is_empty() => {
                Ok(Label::new(key.trim(), value.trim()))
            }
            _ => Err(format!("label {s:?} is not of the form key=value")),
        }
    }
}

/// IANA protocol numbers Bulkhead names.
pub mod protocol {
    pub const ANY: u32 = 0;
    pub const ICMP: u32 = 1;
    pub const TCP: u32 = 6;
    pub const UDP: u32 = 17;
    pub const ICMPV6: u32 = 58;
    pub const SCTP: u32 = 132;

    /// Protocols whose packets carry ports.
    pub fn has_ports(protocol: u32) -> bool {
        matches!(protocol, TCP | UDP | SCTP)
    }

    /// Name of a protocol number, or `None` for one without a name here.
    pub fn name(protocol: u32) -> Option<&'static str> {
        Some(match protocol {
            ANY => "any",
            ICMP => "icmp",
            TCP => "tcp",
            UDP => "udp",
            ICMPV6 => "icmpv6",
            SCTP => "sctp",
            _ => return None,
        })
    }

    /// Number of a protocol name (case-insensitive) or decimal number.
    pub fn parse(text: &str) -> Option<u32> {
        Some(match text.to_ascii_lowercase().as_str() {
            "any" => ANY,
            "icmp" => ICMP,
            "tcp" => TCP,
            "udp" => UDP,
            "icmpv6" => ICMPV6,
            "sctp" => SCTP,
            other => other.parse().ok()?,
        })
    }
}

/// A protocol and an inclusive port range, written `tcp/443`, `tcp/8000-8100`, `udp/*`
/// (every port), `icmp`, `any`. `from = to = 0` means every port (or none, for protocols
/// without ports). Ranges are checked by [`PolicyDocument::validate`], not by parsing, so
/// that every problem is reported at once with its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub protocol: u32,
    pub from: u32,
    pub to: u32,
}

impl PortRange {
    pub fn tcp(port: u16) -> Self {
        Self {
            protocol: protocol::TCP,
            from: port.into(),
            to: port.into(),
        }
    }
    pub fn udp(port: u16) -> Self {
        Self {
            protocol: protocol::UDP,
            from: port.into(),
            to: port.into(),
        }
    }
    /// Whether the range covers every port of its protocol.
    pub fn all_ports(&self) -> bool {
        self.from == 0 && self.to == 0
    }
    /// Whether a packet of `protocol` to `port` falls in this range.
    pub fn contains(&self, protocol: u32, port: u32) -> bool {
        (self.protocol == protocol::ANY || self.protocol == protocol)
            && (self.all_ports() || (self.from..=self.to).contains(&port))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match protocol::name(self.protocol) {
            Some(name) => f.write_str(name)?,
            None => write!(f, "{}", self.protocol)?,
        }
        if !protocol::has_ports(self.protocol) && self.all_ports() {
            return Ok(());
        }
        match (self.from, self.to) {
            (0, 0) => f.write_str("/*"),
            (a, b) if a == b => write!(f, "/{a}"),
            (a, b) => write!(f, "/{a}-{b}"),
        }
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!("service {s:?}: {why} (expected e.g. tcp/443, tcp/8000-8100, udp/*, icmp)")
        };
        let (proto_text, ports) = match s.split_once('/') {
            Some((p, ports)) => (p, Some(ports)),
            None => (s, None),
        };
        let protocol = protocol::parse(proto_text.trim()).ok_or_else(|| bad("unknown protocol"))?;
        let (from, to) = match ports.map(str::trim) {
            None | Some("*") => (0, 0),
            Some(ports) => {
                let number = |p: &str| {
                    p.trim()
                        .parse::<u32>()
                        .map_err(|_| bad("ports must be numbers"))
                };
                match ports.split_once('-') {
                    Some((a, b)) => (number(a)?, number(b)?),
                    None => {
                        let p = number(ports)?;
                        (p, p)
                    }
                }
            }
        };
        Ok(PortRange { protocol, from, to })
    }
}

/// A service in a rule: a named [`Service`], or an inline port range. Written as the
/// service name, or as a port range (`tcp/443`); a name may not be a protocol word.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceRef {
    Named(String),
    Ports(PortRange),
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceRef::Named(name) => f.write_str(name),
            ServiceRef::Ports(range) => range.fmt(f),
        }
    }
}

impl FromStr for ServiceRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let head = s.split('/').next().unwrap_or(s);
        if s.contains('/') || protocol::parse(head).is_some() {
            s.parse().map(ServiceRef::Ports)
        } else if s.trim().is_empty() {
            Err("empty service name".into())
        } else {
            Ok(ServiceRef::Named(s.trim().to_string()))
        }
    }
}

/// Who a rule is about. Written as exactly one of `{any: true}`, `{labels: [...]}`,
/// `{ip_list: name}`, `{workload: id}`.
///
/// Label sets follow Illumio: labels with the same key are alternatives (OR), labels with
/// different keys must all match (AND).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "ActorRepr", into = "ActorRepr")]
pub enum Actor {
    Any,
    Labels(Vec<Label>),
    IpList(String),
    Workload(String),
}

impl Actor {
    /// Whether a workload with `labels` is this actor (IP lists never match a workload by
    /// label; `workload_id` matches `Workload`).
    pub fn matches_workload(&self, workload_id: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Actor::Any => true,
            Actor::Workload(id) => id == workload_id,
            Actor::IpList(_) => false,
            Actor::Labels(set) => label_set_matches(set, labels),
        }
    }
}

/// Illumio semantics: for every key in `set`, the workload's value is one of the set's
/// values for that key.
pub fn label_set_matches(set: &[Label], labels: &BTreeMap<String, String>) -> bool {
    set.iter().all(|wanted| {
        labels.get(&wanted.key).is_some_and(|have| {
            set.iter()
                .any(|alt| alt.key == wanted.key && &alt.value == have)
        })
    })
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Any => f.write_str("any"),
            Actor::Labels(labels) => {
                let text: Vec<String> = labels.iter().map(Label::to_string).collect();
                write!(f, "[{}]", text.join(", "))
            }
            Actor::IpList(name) => write!(f, "ip_list:{name}"),
            Actor::Workload(id) => write!(f, "workload:{id}"),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActorRepr {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    any: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<Vec<Label>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip_list: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workload: Option<String>,
}

impl TryFrom<ActorRepr> for Actor {
    type Error = String;
    fn try_from(repr: ActorRepr) -> Result<Self, Self::Error> {
        match (repr.any, repr.labels, repr.ip_list, repr.workload) {
            (true, None, None, None) => Ok(Actor::Any),
            (false, Some(labels), None, None) => Ok(Actor::Labels(labels)),
            (false, None, Some(name), None) => Ok(Actor::IpList(name)),
            (false, None, None, Some(id)) => Ok(Actor::Workload(id)),
            _ => Err("an actor is exactly one of {any: true}, {labels: [...]}, {ip_list: name}, {workload: id}".into()),
        }
    }
}

impl From<Actor> for ActorRepr {
    fn from(actor: Actor) -> Self {
        match actor {
            Actor::Any => ActorRepr {
                any: true,
                ..Default::default()
            },
            Actor::Labels(labels) => ActorRepr {
                labels: Some(labels),
                ..Default::default()
            },
            Actor::IpList(name) => ActorRepr {
                ip_list: Some(name),
                ..Default::default()
            },
            Actor::Workload(id) => ActorRepr {
                workload: Some(id),
                ..Default::default()
            },
        }
    }
}

/// A named set of CIDRs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpList {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub cidrs: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusions: Vec<IpNet>,
}

impl IpList {
    /// Whether `ip` is in the list (in a CIDR and in no exclusion).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.cidrs.iter().any(|net| net.contains(&ip))
            && !self.exclusions.iter().any(|net| net.contains(&ip))
    }
}

/// A named set of port ranges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub ports: Vec<PortRange>,
}

/// An allow rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub consumers: Vec<Actor>,
    pub providers: Vec<Actor>,
    pub services: Vec<ServiceRef>,
    /// Consumers may be outside the ruleset's scope (providers never are).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extra_scope: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// Rules that apply within a label scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ruleset {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Workloads carrying all these labels (one value per key). Never empty.
    pub scope: Vec<Label>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A deny boundary: overrides every allow rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub consumers: Vec<Actor>,
    pub providers: Vec<Actor>,
    pub services: Vec<ServiceRef>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// How much of the policy a workload's enforcer applies.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementMode {
    /// No bulkhead table at all.
    #[default]
    Idle,
    /// Nothing dropped; what would be dropped is counted.
    VisibilityOnly,
    /// Only deny boundaries enforced.
    Selective,
    /// Default deny inbound.
    Full,
}

impl EnforcementMode {
    pub const ALL: [EnforcementMode; 4] = [
        EnforcementMode::Idle,
        EnforcementMode::VisibilityOnly,
        EnforcementMode::Selective,
        EnforcementMode::Full,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementMode::Idle => "idle",
            EnforcementMode::VisibilityOnly => "visibility_only",
            EnforcementMode::Selective => "selective",
            EnforcementMode::Full => "full",
        }
    }
}

impl fmt::Display for EnforcementMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnforcementMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown enforcement mode {s:?} (expected idle, visibility_only, selective or full)"))
    }
}

/// A workload as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPolicy {
    pub workload_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `None`: the document's `default_mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EnforcementMode>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enforce_outbound: bool,
}

/// The whole policy at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(default)]
    pub custom_label_keys: Vec<String>,
    #[serde(default)]
    pub ip_lists: Vec<IpList>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub rulesets: Vec<Ruleset>,
    #[serde(default)]
    pub deny_rules: Vec<DenyRule>,
    #[serde(default)]
    pub workloads: Vec<WorkloadPolicy>,
    #[serde(default)]
    pub default_mode: EnforcementMode,
}

/// Why a policy could not be read, verified or accepted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is not a policy document (syntax, unknown field, bad value).
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("policy message has no signature: refusing unsigned policy")]
    Unsigned,
    #[error("policy signed by key {key_id}, which is not a trusted policy key")]
    UnknownKey { key_id: String },
    #[error("policy signature does not verify with key {key_id}: forged or corrupted")]
    BadSignature { key_id: String },
    #[error(
        "policy version {version} is not newer than the applied version {applied}: refusing stale policy"
    )]
    Stale { version: u64, applied: u64 },
    #[error("policy schema_version {found} is newer than this build understands ({supported})")]
    UnsupportedSchemaVersion { found: u32, supported: u32 },
    #[error("malformed policy message: {0}")]
    Malformed(String),
}

impl PolicyDocument {
    /// Reads a document from YAML; `source_name` (a file name) is used in errors.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| PolicyError::Parse {
            source_name: source_name.to_string(),
            message: format!("at {}: {}", e.path(), e.inner()),
        })
    }

    /// Reads a document from JSON; `source_name` is used in errors.
    pub fn from_json(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| PolicyError::Parse {
            source_name: source_name.to_string(),
            message: format!("at {}: {}", e.path(), e.inner()),
        })
    }

    /// Reads YAML or JSON (by the first non-blank character) and validates.
    pub fn load(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let doc = if text.trim_start().starts_with('{') {
            Self::from_json(text, source_name)?
        } else {
            Self::from_yaml(text, source_name)?
        };
        doc.validate()?;
        Ok(doc)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("the policy model always serializes")
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("the policy model always serializes")
    }

    /// The effective mode of `workload_id` (default mode for workloads not listed).
    pub fn mode_of(&self, workload_id: &str) -> EnforcementMode {
        self.workloads
            .iter()
            .find(|w| w.workload_id == workload_id)
            .and_then(|w| w.mode)
            .unwrap_or(self.default_mode)
    }

    /// The port ranges `services` stand for (named services resolved; unknown names,
    /// which validation reports, stand for nothing).
    pub fn port_ranges(&self, services: &[ServiceRef]) -> Vec<PortRange> {
        services
            .iter()
            .flat_map(|s| match s {
                ServiceRef::Ports(range) => vec![*range],
                ServiceRef::Named(name) => self
                    .services
                    .iter()
                    .find(|svc| &svc.name == name)
                    .map(|svc| svc.ports.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Every allow rule, with the ruleset it belongs to.
    pub fn rules(&self) -> impl Iterator<Item = (&Ruleset, &Rule)> {
        self.rulesets
            .iter()
            .flat_map(|rs| rs.rules.iter().map(move |r| (rs, r)))
    }

    /// SHA-256 of the document's protobuf encoding (deterministic).
    pub fn content_sha256(&self) -> [u8; 32] {
        use prost::Message as _;
        use sha2::Digest as _;
        let proto = crate::proto::PolicyDocument::from(self);
        sha2::Sha256::digest(proto.encode_to_vec()).into()
    }
}

/// One provisioned version of the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub parent_version: u64,
    pub created_unix_ns: u64,
    pub provisioned_by: String,
    pub note: String,
    /// SHA-256 of the document (see [`PolicyDocument::content_sha256`]).
    #[serde(with = "hex_bytes")]
    pub content_sha256: [u8; 32],
    pub document: PolicyDocument,
}

impl PolicyVersion {
    /// A version of `document`, with its content hash computed.
    pub fn new(
        version: u64,
        parent_version: u64,
        provisioned_by: &str,
        note: &str,
        document: PolicyDocument,
    ) -> Self {
        Self {
            version,
            parent_version,
            created_unix_ns: crate::now_unix_ns(),
            provisioned_by: provisioned_by.to_string(),
            note: note.to_string(),
            content_sha256: document.content_sha256(),
            document,
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
