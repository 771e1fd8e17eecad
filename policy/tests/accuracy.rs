//! The recommender measured on generated datacenters (several seeds, 60 apps): every
//! recommendation accepted, the draft provisioned, then every generated flow simulated.
//! The policy must allow every legitimate flow, admit at most 1% of the injected
//! illegitimate flows, and stay within 1.5× the ground truth's rule count.

mod common;

use bulkhead_policy::simulate::simulate;
use bulkhead_policy::state::{PolicyState, accept_changes};
use bulkhead_schemas::policy::{Decider, Decision, Endpoint};
use bulkhead_schemas::proto::{self, control_event::Event};

fn fold(state: &mut PolicyState, n: &mut u64, change: Event) {
    *n += 1;
    let event = proto::ControlEvent {
        schema_version: 1,
        event_id: format!("e{n}"),
        at_unix_ns: common::END_NS + *n,
        actor: "analyst".into(),
        reason: "adopt recommendations".into(),
        event: Some(change),
    };
    state
        .apply(&event, &common::signer())
        .unwrap_or_else(|e| panic!("event {n} refused: {e}"));
}

#[test]
fn recommended_policy_allows_all_legitimate_flows_and_almost_no_illegitimate_ones() {
    for seed in [11, 22, 33] {
        let dc = common::datacenter(seed, 60);
        let recs = common::recommendations(&dc);
        let mut state = PolicyState::default();
        let mut n = 0;
        for change in common::labelling_changes(&dc) {
            fold(&mut state, &mut n, change);
        }
        for r in recs.rules() {
            for change in accept_changes(&state.draft, r, r.rule.clone()).unwrap() {
                fold(&mut state, &mut n, change);
            }
        }
        let provision = Event::PolicyProvisioned(proto::PolicyProvisioned {
            version: 1,
            content_sha256: state.draft.content_sha256().to_vec(),
        });
        fold(&mut state, &mut n, provision);
        let policy = &state.active().expect("provisioned").version.document;

        let decider = Decider::new(policy);
        let flows = common::flow_keys(&dc);
        let (mut legit, mut legit_allowed, mut bad, mut bad_admitted) = (0u64, 0u64, 0u64, 0u64);
        let mut denied_examples = Vec::new();
        for (f, legitimate) in &flows {
            let d = decider.decide(
                Endpoint {
                    ip: f.src_ip,
                    workload: f.src_workload.as_deref(),
                },
                Endpoint {
                    ip: f.dst_ip,
                    workload: f.dst_workload.as_deref(),
                },
                f.protocol,
                f.port,
            );
            if *legitimate {
                legit += f.flows;
                if d == Decision::Allowed {
                    legit_allowed += f.flows;
                } else if denied_examples.len() < 5 {
                    denied_examples.push(format!("{f:?} → {d}"));
                }
            } else {
                bad += f.flows;
                bad_admitted += u64::from(d == Decision::Allowed) * f.flows;
            }
        }
        let rules = policy.rules().count();
        let truth = dc.ground_truth.rules().count();
        let suspicious = recs.suspicious().count();
        println!(
            "seed {seed}: {} workloads, {} connections; {rules} rules recommended vs {truth} in the ground truth ({:.2}×); legitimate flows allowed {legit_allowed}/{legit}; illegitimate admitted {bad_admitted}/{bad} ({:.2}%); {suspicious} suspicious findings",
            dc.workloads.len(),
            dc.connections.len(),
            rules as f64 / truth as f64,
            100.0 * bad_admitted as f64 / bad as f64
        );
        assert_eq!(
            legit_allowed, legit,
            "seed {seed}: legitimate flows denied, e.g. {denied_examples:#?}"
        );
        assert!(bad > 0);
        assert!(
            bad_admitted * 100 <= bad,
            "seed {seed}: {bad_admitted} of {bad} illegitimate flows admitted (> 1%)"
        );
        assert!(
            rules * 2 <= truth * 3,
            "seed {seed}: {rules} rules > 1.5 × {truth}"
        );
        assert!(suspicious >= 1, "seed {seed}: the scanner must be flagged");

        // The same judgement through the simulation report: nothing active before, so
        // every legitimate flow is "allowed" under the draft.
        let report = simulate(
            None,
            policy,
            &flows.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
        );
        assert_eq!(
            report
                .totals
                .draft_decisions
                .get("allowed")
                .copied()
                .unwrap_or(0),
            legit + bad_admitted
        );
        assert!(report.per_app.len() >= 60);

        // The ground truth itself allows every legitimate flow (the generator is consistent).
        let truth_decider = Decider::new(&dc.ground_truth);
        for (f, legitimate) in flows.iter().filter(|(_, l)| *l) {
            let d = truth_decider.decide(
                Endpoint {
                    ip: f.src_ip,
                    workload: f.src_workload.as_deref(),
                },
                Endpoint {
                    ip: f.dst_ip,
                    workload: f.dst_workload.as_deref(),
                },
                f.protocol,
                f.port,
            );
            assert_eq!(
                d,
                Decision::Allowed,
                "ground truth denies {f:?} (legitimate: {legitimate})"
            );
        }
    }
}
