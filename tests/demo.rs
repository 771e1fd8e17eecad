//! `bulkhead demo` end to end, as root, with the real broker, real namespaces, real
//! nftables and a real browser: the demo starts (`--ci`, its own lab net, ports and topic
//! prefix), the console's Playwright script (console/e2e/demo.test.mjs, Debian's
//! Chromium) drives it — map, explorer, accepting recommendations, simulating and
//! provisioning in visibility only (the rogue host's attempts become potentially blocked),
//! full enforcement (blocked), quarantine — and checks blocking with real connection
//! attempts from the lab's namespaces; then SIGTERM stops the demo, which must leave no namespace and no
//! process behind. Screenshots: `<target dir>/tmp/demo-e2e/` (CARGO_TARGET_TMPDIR).

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bulkhead_bench::lab as support;

/// A lab octet of its own (the demo's default is 240, tests/lab.rs uses 251).
const NET: &str = "245";
const CHROMIUM: &str = "/usr/bin/chromium";

fn repo() -> PathBuf {
    bulkhead_kafka::testkit::repo_root()
}

/// Why the browser part cannot run here, if it cannot.
fn browser_problem() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!(
            "no browser at {CHROMIUM} (apt-get install chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node (apt-get install nodejs npm)".into());
    }
    let console = repo().join("console");
    if !console.join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "no playwright-core in {}/node_modules (run console/build)",
            console.display()
        ));
    }
    if !console.join("dist/index.html").is_file() {
        return Some(format!(
            "the console is not built ({}/dist; run console/build)",
            console.display()
        ));
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("bhl{NET}-")))
        .map(String::from)
        .collect()
}

/// Processes whose command line mentions `needle` (the demo's state directory: every
/// child and lab process has it in an argument).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) && bulkhead_bench::demo_lab::alive(pid) {
            found.push(format!("{pid}: {}", cmdline.trim()));
        }
    }
    found
}

/// Removes a file when the test ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Stops the demo even when an assertion fails, and shows its output then.
struct Running {
    child: Option<Child>,
    state_dir: PathBuf,
    output: Vec<String>,
}

impl Running {
    /// SIGTERM, then waits for the teardown; returns whether the demo exited cleanly.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) of the child this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- bulkhead demo output ----");
            for line in &self.output {
                eprintln!("{line}");
            }
            for log in ["serve", "ingest"] {
                let path = self.state_dir.join("logs").join(format!("{log}.log"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("---- {} ----", path.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        self.stop();
        // Whatever a killed demo left: the lab is removed by its own `down`.
        let _ = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["lab", "down", "--net", NET, "--state-dir"])
            .arg(self.state_dir.join("lab"))
            .output();
    }
}

#[test]
fn demo_runs_the_console_browser_test_and_leaves_nothing_behind() {
    if !support::can_build_hosts() {
        return;
    }
    let Some(kit) = bulkhead_kafka::testkit::kafka() else {
        return;
    };
    if let Some(problem) = browser_problem() {
        if support::required() {
            panic!("this test needs a browser, and this run requires it: {problem}");
        }
        eprintln!("\n*** SKIPPED: the demo's browser test cannot run: {problem}.\n");
        return;
    }
    assert!(
        std::net::TcpStream::connect_timeout(
            &support::LAB_KAFKA.parse().unwrap(),
            Duration::from_secs(2)
        )
        .is_ok(),
        "the broker has no lab listener on {}: restart it with dev/kafka/down && dev/kafka/up",
        support::LAB_KAFKA
    );
    // Two worktrees sharing one CARGO_TARGET_DIR overwrite each other's target/debug/bulkhead:
    // run a link of this build (it survives a replacement), after checking it is this tree's.
    let bulkhead = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bulkhead-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&bulkhead);
    if std::fs::hard_link(env!("CARGO_BIN_EXE_bulkhead"), &bulkhead).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_bulkhead"), &bulkhead).expect("a copy of bulkhead");
    }
    let _remove_link = RemoveOnDrop(bulkhead.clone());
    let help = Command::new(&bulkhead)
        .args(["demo", "--help"])
        .output()
        .expect("the bulkhead binary runs");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--ci"),
        "{} has no `demo --ci`: it is not this tree's build (another build with the same \
         CARGO_TARGET_DIR replaced it?)",
        env!("CARGO_BIN_EXE_bulkhead")
    );
    let kafka = kit.config("demo");
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("demo");
    let listen = format!("127.0.0.1:{}", free_port());
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-e2e");
    let _ = std::fs::remove_dir_all(&artifacts);

    let mut child = Command::new(&bulkhead)
        .args([
            "--kafka",
            &kit.brokers,
            "--topic-prefix",
            &kafka.topic_prefix,
        ])
        .args(["demo", "--ci", "--net", NET, "--listen", &listen])
        .args(["--flight-listen", "", "--recommend-every", "20s"])
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--console-dir")
        .arg(repo().join("console/dist"))
        .env_remove("BULKHEAD_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the bulkhead binary runs");
    let (lines, received) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
    }
    let mut demo = Running {
        child: Some(child),
        state_dir: state_dir.clone(),
        output: Vec::new(),
    };

    // Up: lab, API, first flows, one recommender run (about a minute on 2 cores).
    let deadline = Instant::now() + Duration::from_secs(300);
    let url = loop {
        match received.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let ready = line.strip_prefix("demo ready: ").map(str::to_string);
                demo.output.push(line);
                if let Some(url) = ready {
                    break url;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("bulkhead demo exited early"),
        }
        if let Some(status) = demo
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            while let Ok(line) = received.recv_timeout(Duration::from_millis(200)) {
                demo.output.push(line);
            }
            panic!(
                "bulkhead demo exited ({status}) before it was ready:\n{}",
                demo.output.join("\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "bulkhead demo did not print `demo ready:` within 300 s"
        );
    };
    assert_eq!(url, format!("http://{listen}/"));
    assert_eq!(
        namespaces().len(),
        10,
        "the lab's namespaces: {:?}",
        namespaces()
    );

    // The browser test, against the running demo.
    let e2e = Command::new("node")
        .arg(repo().join("console/e2e/demo.test.mjs"))
        .env("BULKHEAD_CONSOLE_URL", &url)
        .env("BULKHEAD_LAB_DIR", state_dir.join("lab"))
        .env("BULKHEAD_ARTIFACTS", &artifacts)
        .env("CHROMIUM", CHROMIUM)
        .current_dir(repo().join("console"))
        .output()
        .expect("node runs");
    let report = String::from_utf8_lossy(&e2e.stdout).into_owned();
    let errors = String::from_utf8_lossy(&e2e.stderr).into_owned();
    while let Ok(line) = received.try_recv() {
        demo.output.push(line);
    }
    assert!(
        e2e.status.success() && report.contains(" passed, 0 failed"),
        "the console's browser test failed ({}):\n{report}\n{errors}",
        e2e.status
    );
    for page in [
        "map",
        "explorer",
        "workloads",
        "recommendations",
        "simulate",
        "provisioned",
        "explorer-potentially-blocked",
        "workloads-full",
        "explorer-blocked",
        "versions",
        "quarantine",
    ] {
        let shot = artifacts.join(format!("{page}.png"));
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 1000),
            "no screenshot {}",
            shot.display()
        );
    }

    // Teardown: SIGTERM, then nothing left.
    let status = demo.stop().expect("the demo was running");
    while let Ok(line) = received.try_recv() {
        demo.output.push(line);
    }
    let output = demo.output.join("\n");
    assert!(status.success(), "bulkhead demo exited {status}:\n{output}");
    assert!(
        output.contains("removed 10 namespaces"),
        "the teardown did not report the lab's namespaces:\n{output}"
    );
    assert_eq!(namespaces(), Vec::<String>::new(), "namespaces left behind");
    let left = processes_mentioning(&state_dir.display().to_string());
    assert!(
        left.is_empty(),
        "processes left behind:\n{}",
        left.join("\n")
    );
    assert!(
        std::net::TcpStream::connect_timeout(&listen.parse().unwrap(), Duration::from_secs(1))
            .is_err(),
        "something still listens on {listen}"
    );
    assert!(
        !state_dir.join("lab").exists(),
        "the lab's state directory is left behind"
    );
}
