//! Label suggestions for workloads that miss scope or role labels, from behaviour.
//!
//! Every labelled group (the workloads sharing `app`, `env` and `role`) gets a profile:
//! the behaviour features shown by at least half of its members — the services it
//! listens on (`listen tcp/5432`), the groups it calls on which port (`calls role=db
//! tcp/5432`), the roles that call it (`called by role=web`). An unlabelled workload's own
//! features are compared with every profile (Jaccard similarity); the best group at or
//! above [`MIN_SIMILARITY`] is suggested, with the similarity as confidence and the shared
//! features as the reason. Suggestions are only ever proposals: an analyst accepts them
//! (the console's Workloads page, `bulkhead labels set`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::frame::{EdgeSum, End, WorkloadLabels};

/// The label keys a suggestion fills in (the scope and the role).
pub const SUGGESTED_KEYS: [&str; 3] = ["app", "env", "role"];
/// Below this similarity nothing is suggested: a guess is worse than no label.
pub const MIN_SIMILARITY: f64 = 0.5;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabelSuggestion {
    pub workload_id: String,
    /// The labels to set (only keys the workload does not have).
    pub set: BTreeMap<String, String>,
    /// Jaccard similarity of the workload's behaviour with the group's profile.
    pub confidence: f64,
    pub reason: String,
    /// Members of the suggested group (a few), for the analyst to compare with.
    pub similar_to: Vec<String>,
}

fn protocol_name(protocol: u32) -> String {
    match protocol {
        6 => "tcp".into(),
        17 => "udp".into(),
        other => format!("ip{other}"),
    }
}

fn role_of(labels: &WorkloadLabels, end: &End) -> Option<String> {
    match end {
        End::Workload(id) => labels.get(id)?.get("role").map(|r| format!("role={r}")),
        End::Address(_) => None,
    }
}

fn labelled(labels: &BTreeMap<String, String>) -> bool {
    SUGGESTED_KEYS.iter().all(|k| labels.contains_key(*k))
}

/// What each workload was seen doing in `edges`.
fn features(edges: &[EdgeSum], labels: &WorkloadLabels) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in edges {
        let service = format!("{}/{}", protocol_name(e.protocol), e.port);
        if let End::Workload(dst) = &e.dst {
            let f = out.entry(dst.clone()).or_default();
            f.insert(format!("listen {service}"));
            if let Some(role) = role_of(labels, &e.src) {
                f.insert(format!("called by {role}"));
            }
        }
        if let End::Workload(src) = &e.src {
            let peer = role_of(labels, &e.dst).unwrap_or_else(|| match &e.dst {
                End::Address(ip) if crate::lift::is_public(ip) => "the internet".into(),
                _ => "unlabelled peers".into(),
            });
            out.entry(src.clone())
                .or_default()
                .insert(format!("calls {peer} {service}"));
        }
    }
    out
}

fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// Suggestions for every workload in `edges` that lacks one of [`SUGGESTED_KEYS`], best
/// first.
pub fn suggest_labels(edges: &[EdgeSum], labels: &WorkloadLabels) -> Vec<LabelSuggestion> {
    let features = features(edges, labels);
    // Profiles of the labelled groups: features at least half the members show.
    let mut members: BTreeMap<Vec<(String, String)>, Vec<&String>> = BTreeMap::new();
    for (id, l) in labels {
        if labelled(l) && features.contains_key(id) {
            let key = SUGGESTED_KEYS
                .iter()
                .map(|k| (k.to_string(), l[*k].clone()))
                .collect();
            members.entry(key).or_default().push(id);
        }
    }
    let profiles: Vec<_> = members
        .iter()
        .map(|(group, ids)| {
            let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
            for id in ids {
                for f in &features[*id] {
                    *counts.entry(f).or_default() += 1;
                }
            }
            let profile = counts
                .into_iter()
                .filter(|(_, n)| n * 2 >= ids.len())
                .map(|(f, _)| f.clone())
                .collect();
            (group.clone(), profile, ids)
        })
        .collect();
    let mut out = Vec::new();
    for (id, seen) in &features {
        let own = labels.get(id).cloned().unwrap_or_default();
        if labelled(&own) {
            continue;
        }
        let best = profiles
            .iter()
            .map(|(group, profile, ids)| (jaccard(seen, profile), group, profile, ids))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((similarity, group, profile, ids)) = best else {
            continue;
        };
        if similarity < MIN_SIMILARITY {
            continue;
        }
        let set: BTreeMap<String, String> = group
            .iter()
            .filter(|(k, _)| !own.contains_key(k))
            .cloned()
            .collect();
        if set.is_empty() {
            continue;
        }
        let shared: Vec<&String> = seen.intersection(profile).take(3).collect();
        out.push(LabelSuggestion {
            workload_id: id.clone(),
            confidence: (similarity * 100.0).round() / 100.0,
            reason: format!(
                "behaves like the {} {} workloads: {}",
                ids.len(),
                group
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                shared
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            similar_to: ids.iter().take(3).map(|s| s.to_string()).collect(),
            set,
        });
    }
    out.sort_by(|a, b| {
        b.confidence
            .total_cmp(&a.confidence)
            .then_with(|| a.workload_id.cmp(&b.workload_id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(src: &str, dst: &str, port: u32) -> EdgeSum {
        EdgeSum {
            src: End::Workload(src.into()),
            dst: End::Workload(dst.into()),
            port,
            protocol: 6,
            process: None,
            flows: 10,
            bytes: 1000,
            first_seen_us: 0,
            last_seen_us: 1,
        }
    }

    fn labels(pairs: &[(&str, &[(&str, &str)])]) -> WorkloadLabels {
        pairs
            .iter()
            .map(|(id, l)| {
                (
                    id.to_string(),
                    l.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn an_unlabelled_database_is_suggested_the_database_group() {
        let crm = |role: &'static str| -> Vec<(&'static str, &'static str)> {
            vec![("app", "crm"), ("env", "prod"), ("role", role)]
        };
        let (web, app, db) = (crm("web"), crm("app"), crm("db"));
        let labels = labels(&[
            ("web1", &web),
            ("app1", &app),
            ("app2", &app),
            ("db1", &db),
            ("db2", &db),
            ("new", &[("env", "prod")]),
            ("odd", &[]),
        ]);
        let edges = vec![
            edge("web1", "app1", 8080),
            edge("web1", "app2", 8080),
            edge("app1", "db1", 5432),
            edge("app2", "db2", 5432),
            edge("app1", "new", 5432),
            edge("app2", "new", 5432),
            // Behaves like nothing labelled: no suggestion.
            edge("odd", "web1", 6379),
        ];
        let out = suggest_labels(&edges, &labels);
        assert_eq!(out.len(), 1, "{out:#?}");
        let s = &out[0];
        assert_eq!(s.workload_id, "new");
        // Only the keys it lacks; its own env stays.
        assert_eq!(
            s.set,
            BTreeMap::from([("app".into(), "crm".into()), ("role".into(), "db".into())])
        );
        assert!(s.confidence >= MIN_SIMILARITY && s.confidence <= 1.0);
        assert!(s.reason.contains("listen tcp/5432"), "{}", s.reason);
        assert!(s.similar_to.contains(&"db1".to_string()));
    }
}
