//! The `bulkhead` binary as users meet it: its help, its errors on bad input, the command
//! lines the README shows, and what `docker-compose.yml` and the `Dockerfile` rely on.

use std::process::{Command, Output};

fn bulkhead(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .env_remove("BULKHEAD_KAFKA")
        .env_remove("BULKHEAD_CONFIG")
        .output()
        .expect("the bulkhead binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The subcommands `bulkhead --help` lists.
fn listed_commands() -> Vec<String> {
    subcommands(&[])
}

/// The subcommands `bulkhead <path…> --help` lists.
fn subcommands(path: &[&str]) -> Vec<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let help = text(&bulkhead(&args));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A command sits at two spaces; wrapped description lines are indented deeper.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn help_lists_only_commands_that_run() {
    let commands = listed_commands();
    assert!(commands.len() >= 4, "{commands:?}");
    for command in &commands {
        let output = bulkhead(&[command, "--help"]);
        assert!(
            output.status.success(),
            "bulkhead {command} --help: {}",
            text(&output)
        );
        let help = text(&output);
        assert!(
            !help.to_lowercase().contains("not implemented"),
            "{command}: {help}"
        );
        for sub in subcommands(&[command]) {
            let output = bulkhead(&[command, &sub, "--help"]);
            assert!(
                output.status.success(),
                "bulkhead {command} {sub} --help: {}",
                text(&output)
            );
        }
    }
}

#[test]
fn compose_services_run_real_subcommands() {
    let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(bulkhead_kafka::testkit::repo_root().join("docker-compose.yml"))
            .unwrap(),
    )
    .expect("docker-compose.yml is YAML");
    let services = compose["services"].as_mapping().expect("services");
    let listed = listed_commands();
    let mut checked = 0;
    for (name, service) in services {
        let uses_bulkhead = service
            .get("image")
            .and_then(|i| i.as_str())
            .is_some_and(|i| i.starts_with("bulkhead"))
            || service.get("<<").is_some()
            || service.get("build").is_some();
        if !uses_bulkhead {
            continue;
        }
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("service {name:?} has a command list"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            listed.iter().any(|c| c == command[0]),
            "{name:?} runs `{}`, which `bulkhead --help` does not list",
            command[0]
        );
        // The whole command line must parse: append --help so nothing runs.
        let mut args = command.clone();
        args.push("--help");
        let output = bulkhead(&args);
        assert!(
            output.status.success(),
            "service {name:?}: `bulkhead {}` does not parse: {}",
            command.join(" "),
            text(&output)
        );
        checked += 1;
    }
    assert!(
        checked >= 1,
        "no bulkhead service found in docker-compose.yml"
    );
}

/// The `bulkhead …` command lines of the README's code blocks: continuation lines joined,
/// comments dropped, `a && b` split.
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(bulkhead_kafka::testkit::repo_root().join("README.md")).unwrap();
    let without_comment = |line: &str| -> String {
        match line.find(" #") {
            Some(at) => line[..at].trim_end().to_string(),
            None => line.trim_end().to_string(),
        }
    };
    let mut commands = Vec::new();
    let mut in_code = false;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let line = line.trim_start().trim_start_matches("sudo ");
        if !in_code || !line.starts_with("bulkhead ") {
            continue;
        }
        let mut command = without_comment(line);
        while let Some(head) = command.strip_suffix('\\') {
            let next = lines.next().unwrap_or_default();
            command = format!("{head} {}", without_comment(next.trim()));
        }
        commands.extend(command.split(" && ").map(str::to_string));
    }
    commands
}

#[test]
fn every_command_line_the_readme_shows_parses() {
    let commands = readme_commands();
    assert!(commands.len() >= 30, "{commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_bulkhead");
    for command in &commands {
        // `[--json]` is an optional flag; `…` stands for the flags given before (dropped)
        // or for a value (any value parses).
        let command = command.replace(['[', ']'], "");
        let variants = [
            command.replace(" … ", " ").replace(" …", ""),
            command.replace('…', "x"),
        ];
        let parses = variants.iter().any(|variant| {
            let line = format!("{binary}{} --help", &variant["bulkhead".len()..]);
            Command::new("sh")
                .args(["-c", &line])
                .current_dir(dir.path())
                .env_remove("BULKHEAD_KAFKA")
                .env_remove("BULKHEAD_CONFIG")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success()
        });
        assert!(
            parses,
            "the README shows `{command}`, which bulkhead does not accept"
        );
    }
}

/// The words of the `packages=(…)` list in `dev/setup`.
fn dev_setup_packages() -> Vec<String> {
    let setup =
        std::fs::read_to_string(bulkhead_kafka::testkit::repo_root().join("dev/setup")).unwrap();
    let list = setup
        .split_once("packages=(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .expect("dev/setup has a packages=(…) list")
        .0;
    list.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_image_build_installs_what_dev_setup_installs_for_building() {
    // What dev/setup installs for the tests or that the rust image already has; everything
    // else it installs is needed to build the binary (a new build dependency added to
    // dev/setup alone would break `docker build`).
    const NOT_FOR_THE_BUILD: &[&str] = &[
        "gcc",
        "g++",
        "make",
        "maven",
        "nftables",
        "iproute2",
        "chromium",
        "prometheus",
    ];
    let dockerfile =
        std::fs::read_to_string(bulkhead_kafka::testkit::repo_root().join("Dockerfile")).unwrap();
    let build_stage = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.contains("AS build"))
        .expect("the Dockerfile has a build stage");
    let installed: Vec<&str> = build_stage
        .split(|c: char| c.is_whitespace() || c == '\\')
        .collect();
    let packages = dev_setup_packages();
    assert!(packages.len() >= 10, "{packages:?}");
    let missing: Vec<&String> = packages
        .iter()
        .filter(|p| !NOT_FOR_THE_BUILD.contains(&p.as_str()))
        .filter(|p| !installed.contains(&p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile's build stage does not install {missing:?}, which dev/setup installs"
    );
    // The image serves the console it built.
    assert!(
        dockerfile.contains("ENV BULKHEAD_CONSOLE_DIR="),
        "{dockerfile}"
    );
}

#[test]
fn a_broken_config_file_is_named_with_its_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.toml");
    std::fs::write(&path, "[kafka]\nbrokers = \"localhost\"\n").unwrap();
    let output = bulkhead(&["--config", path.to_str().unwrap(), "topics", "list"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("\"localhost\"") && text(&output).contains("host:port"),
        "{}",
        text(&output)
    );

    std::fs::write(&path, "[kafka]\nbrokrs = \"a:1\"\n").unwrap();
    let output = bulkhead(&["--config", path.to_str().unwrap(), "topics", "list"]);
    assert!(
        text(&output).contains(path.to_str().unwrap()) && text(&output).contains("brokrs"),
        "{}",
        text(&output)
    );

    let output = bulkhead(&["--config", "/nonexistent/bulkhead.toml", "topics", "list"]);
    assert!(
        text(&output).contains("cannot read config file /nonexistent/bulkhead.toml"),
        "{}",
        text(&output)
    );
}

#[test]
fn policy_validate_reports_every_problem_and_fails() {
    let ok = bulkhead(&[
        "policy",
        "validate",
        &bulkhead_kafka::testkit::repo_root()
            .join("examples/policy.yaml")
            .display()
            .to_string(),
    ]);
    assert!(ok.status.success(), "{}", text(&ok));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "rulesets:\n  - name: r\n    scope: []\n    rules:\n      - {id: a, consumers: [{labels: [tier=web]}], providers: [{any: true}], services: [tcp/99999]}\n").unwrap();
    let output = bulkhead(&["policy", "validate", bad.to_str().unwrap()]);
    assert!(!output.status.success());
    let report = text(&output);
    for expected in [
        "rulesets[r].scope: empty scope",
        "unknown label key \"tier\"",
        "port 99999 is out of range",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let output = bulkhead(&["policy", "keygen", "--out", out]);
    assert!(output.status.success(), "{}", text(&output));
    let private = dir.path().join("policy-signing.pem");
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let public = std::fs::read_to_string(dir.path().join("policy-signing.pub.pem")).unwrap();
    bulkhead_schemas::policy::parse_verifying_key(&public, "pub").unwrap();
    // A second run refuses to overwrite.
    let again = bulkhead(&["policy", "keygen", "--out", out]);
    assert!(
        !again.status.success() && text(&again).contains("--force"),
        "{}",
        text(&again)
    );
}

#[test]
fn gen_to_stdout_prints_json_lines_and_stops_quietly_on_a_closed_pipe() {
    let output = bulkhead(&[
        "gen", "--to", "stdout", "--flows", "25", "--hosts", "10", "--seed", "3",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 25);
    assert!(
        lines
            .iter()
            .all(|l| l["src_ip"].is_string() && l["bytes"].is_u64())
    );

    // A reader that stops early (`| head -1`) ends the run without an error.
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "gen", "--to", "stdout", "--flows", "2000000", "--hosts", "10",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('{'));
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn must_run_privileged() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
        || std::env::var_os("BULKHEAD_REQUIRE_KAFKA").is_some_and(|v| v == "1")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn collect_refuses_bad_settings_with_the_input_named() {
    let output = bulkhead(&["collect", "--stdout", "--evict-interval", "fast"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("\"fast\""), "{}", text(&output));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.toml");
    std::fs::write(&path, "[collector]\nflow_map_entrys = 5\n").unwrap();
    let output = bulkhead(&["--config", path.to_str().unwrap(), "collect", "--stdout"]);
    assert!(
        text(&output).contains("flow_map_entrys"),
        "{}",
        text(&output)
    );

    // Not root: says so. Root: a named interface that does not exist is named.
    let host_id = dir.path().join("host-id");
    let output = bulkhead(&[
        "collect",
        "--stdout",
        "--duration",
        "1s",
        "--interface",
        "nope0",
        "--host-id-file",
        host_id.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let expected = if is_root() {
        "interface \"nope0\" does not exist"
    } else {
        "must run as root"
    };
    assert!(text(&output).contains(expected), "{}", text(&output));
}

#[test]
fn agent_and_enforcer_refuse_bad_metrics_settings_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().to_str().unwrap();
    assert!(
        bulkhead(&["policy", "keygen", "--out", keys])
            .status
            .success()
    );
    let public = dir.path().join("policy-signing.pub.pem");
    let public = public.to_str().unwrap();
    for (args, needle) in [
        // The agent's one endpoint is --metrics-addr; the collector's flag would be unused.
        (
            vec![
                "agent",
                "--policy-key",
                public,
                "--metrics-listen",
                "127.0.0.1:9",
            ],
            "give it with --metrics-addr",
        ),
        (
            vec![
                "enforce",
                "--policy-key",
                public,
                "--host-id",
                "h1",
                "--metrics-addr",
                "nine",
            ],
            "--metrics-addr \"nine\"",
        ),
    ] {
        let output = bulkhead(&args);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(
            text(&output).contains(needle),
            "{args:?}: {}",
            text(&output)
        );
    }
}

/// Ids of the loaded BPF programs named `bh_*` (the collector's), from `bpftool`.
fn bh_programs() -> Vec<u32> {
    let output = std::process::Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(" name bh_"))
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

/// `bulkhead collect --netns NAME --stdout` against real traffic in a namespace.
#[test]
fn collect_prints_the_flows_of_a_namespace_as_json_lines() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    if !is_root() {
        assert!(
            !must_run_privileged(),
            "this run requires root for the collector test"
        );
        eprintln!("\n*** SKIPPED: bulkhead collect needs root (eBPF, network namespaces).\n");
        return;
    }
    let ns = format!("bhcli-{}-a", std::process::id());
    let peer = format!("bhcli-{}-b", std::process::id());
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
    let _cleanup = Cleanup(vec![ns.clone(), peer.clone()]);
    for args in [
        vec!["netns", "add", &ns],
        vec!["netns", "add", &peer],
        vec![
            "-n", &ns, "link", "add", "ca", "type", "veth", "peer", "name", "cb", "netns", &peer,
        ],
        vec!["-n", &ns, "addr", "add", "10.202.0.1/24", "dev", "ca"],
        vec!["-n", &peer, "addr", "add", "10.202.0.2/24", "dev", "cb"],
        vec!["-n", &ns, "link", "set", "ca", "up"],
        vec!["-n", &peer, "link", "set", "cb", "up"],
    ] {
        let status = Command::new("ip").args(&args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let host_id = dir.path().join("host-id");
    let before = bh_programs();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = metrics.local_addr().unwrap().to_string();
    drop(metrics);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "collect",
            "--stdout",
            "--netns",
            &ns,
            "--metrics-listen",
            &metrics_addr,
        ])
        .args([
            "--interface",
            "ca",
            "--host-id-file",
            host_id.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "collect ended before attaching:\n{log}"
        );
        log.push_str(&line);
        if line.contains("collector attached") {
            break;
        }
    }
    // Three 10-byte datagrams leave through ca: 3 packets, 3 × (20 + 8 + 10) bytes.
    let send = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                [s.sendto(b'x' * 10, ('10.202.0.2', 5999)) for _ in range(3)]";
    let status = Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c", send])
        .status()
        .unwrap();
    assert!(status.success());
    // Prometheus metrics, served from the caller's namespace.
    let mut http = std::net::TcpStream::connect(&metrics_addr).unwrap();
    std::io::Write::write_all(&mut http, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    std::io::Read::read_to_string(&mut http, &mut page).unwrap();
    assert!(
        page.contains("bulkhead_collector_attached_interfaces 1"),
        "{page}"
    );
    // The collector's programs: loaded now, and not before it started.
    let ours: Vec<u32> = bh_programs()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert!(
        ours.len() >= 6,
        "expected the collector's programs loaded: {ours:?}"
    );
    // SIGTERM: the last flows are still evicted and printed, and every program detached.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    log.push_str(&rest);
    assert!(output.status.success(), "collect failed:\n{log}");
    assert!(log.contains("SIGTERM") && log.contains("detached"), "{log}");
    // The kernel frees programs after an RCU grace period: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let loaded = bh_programs();
        let left: Vec<&u32> = ours.iter().filter(|id| loaded.contains(id)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "programs {left:?} still loaded 5 s after exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let records: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let udp: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["dst_port"] == 5999 && r["direction"] == "egress")
        .collect();
    let packets: u64 = udp.iter().map(|r| r["packets"].as_u64().unwrap()).sum();
    let bytes: u64 = udp.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!((packets, bytes), (3, 114), "{records:#?}");
    assert!(
        udp.iter()
            .all(|r| r["protocol"] == "udp" && r["interface"] == "ca")
    );
    assert!(
        udp.iter().all(|r| r["process_name"]
            .as_str()
            .is_some_and(|n| n.starts_with("python"))),
        "{udp:#?}"
    );
}

#[test]
fn lake_commands_on_a_lake_that_is_not_there_say_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-lake");
    let lake = missing.to_str().unwrap();
    for command in [
        &["compact"][..],
        &["vacuum"],
        &["retain", "--days", "3"],
        &["check"],
    ] {
        let mut args = vec!["lake"];
        args.extend_from_slice(command);
        args.extend_from_slice(&["--lake", lake]);
        let output = bulkhead(&args);
        let text = text(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {text}");
        assert_eq!(
            text.trim().lines().count(),
            1,
            "{args:?}: one line, no debug dump:\n{text}"
        );
        assert!(
            text.contains("no table flows there") && text.contains(lake),
            "{args:?}: {text}"
        );
    }
}
