//! The Prometheus alerting rules (`deploy/prometheus/alerts.yml`) and the scrape config
//! beside them: Prometheus's own `promtool` checks them and runs their unit tests, every
//! metric they name is one a Bulkhead component emits (a renamed metric would silence its
//! alert for good), and every alert has a test that makes it fire.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    bulkhead_kafka::testkit::repo_root().join("deploy/prometheus")
}

/// `promtool <args>` in `dir`; None (said loudly) when promtool is missing and this run
/// does not require it.
fn promtool_in(dir: &Path, args: &[&str]) -> Option<String> {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(output) => output,
        Err(e) if bulkhead_bench::lab::required() => {
            panic!("promtool is missing (apt-get install prometheus; dev/setup does): {e}")
        }
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED: promtool is missing ({e}): apt-get install prometheus, or run dev/test.\n"
            );
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {}: {text}",
        args.join(" ")
    );
    Some(text)
}

/// `promtool <args>` in `deploy/prometheus`.
fn promtool(args: &[&str]) -> Option<String> {
    promtool_in(&deploy_dir(), args)
}

/// Where compose mounts the API token that Prometheus scrapes `serve` with.
const SCRAPE_TOKEN_FILE: &str = "/etc/bulkhead/api-token";

#[test]
fn promtool_accepts_the_config_and_the_rules_and_their_unit_tests_pass() {
    // promtool checks that the files the config names exist; the token exists only where
    // compose mounts it, so the config is checked in a copy that names a token made here.
    let checked = tempfile::tempdir().unwrap();
    let token = checked.path().join("api-token");
    std::fs::write(&token, "test-token\n").unwrap();
    let config_text = std::fs::read_to_string(deploy_dir().join("prometheus.yml")).unwrap();
    assert!(
        config_text.contains(SCRAPE_TOKEN_FILE),
        "the config scrapes serve with the token compose mounts"
    );
    std::fs::write(
        checked.path().join("prometheus.yml"),
        config_text.replace(SCRAPE_TOKEN_FILE, token.to_str().unwrap()),
    )
    .unwrap();
    std::fs::copy(
        deploy_dir().join("alerts.yml"),
        checked.path().join("alerts.yml"),
    )
    .unwrap();
    let Some(config) = promtool_in(checked.path(), &["check", "config", "prometheus.yml"]) else {
        return;
    };
    assert!(
        config.contains("alerts.yml"),
        "the config loads the rules: {config}"
    );
    promtool(&["check", "rules", "alerts.yml"]);
    let tests = promtool(&["test", "rules", "alerts.test.yml"]).unwrap();
    assert!(tests.contains("SUCCESS"), "{tests}");
}

/// Every `bulkhead_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("bulkhead_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The Rust sources of the workspace's crates (`<crate>/src/**.rs`, and the binary's).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_metric_the_rules_name_is_emitted_and_every_alert_is_tested() {
    let rules = std::fs::read_to_string(deploy_dir().join("alerts.yml")).unwrap();
    let root = bulkhead_kafka::testkit::repo_root();
    let mut files = Vec::new();
    for component in ["collector", "enforcer", "ingest", "analytics", "src"] {
        let dir = match component {
            "src" => root.join("src"),
            crate_dir => root.join(crate_dir).join("src"),
        };
        sources(&dir, &mut files);
    }
    // Quoted names only: what `metrics::counter!("…")` and the like are given.
    let emitted: BTreeSet<String> = files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            metric_names(&text)
                .into_iter()
                .filter(|name| text.contains(&format!("\"{name}\"")))
                .collect::<Vec<_>>()
        })
        .collect();
    let named = metric_names(&rules);
    assert!(named.len() >= 10, "{named:?}");
    let unknown: Vec<&String> = named
        .iter()
        .filter(|name| {
            // A histogram's series carry a suffix the code does not write.
            let base = ["_count", "_sum", "_bucket"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            !emitted.contains(*name) && !emitted.contains(base)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts.yml names metrics no component emits: {unknown:?}"
    );

    let tests = std::fs::read_to_string(deploy_dir().join("alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        // A test of the alert that expects it to fire (a non-empty list of alerts).
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|case| case.starts_with(&format!("{alert}\n")) && case.contains("exp_labels"));
        assert!(fires, "alerts.test.yml never makes {alert} fire");
    }
}
