//! `bulkhead demo`: the whole system on one machine — ingest, serve (API, console, policy
//! engine, periodic recommender) and the lab estate with an agent on every host — until
//! Ctrl-C or SIGTERM, then everything torn down (bulkhead_bench::demo_lab::demo does the
//! work; this module shows the steps). `--synthetic` runs the older root-free pipeline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulkhead_bench::demo_lab::demo::{self, Demo, DemoOptions, Interrupted};
use bulkhead_bench::demo_lab::{DEFAULT_NET, LabState};
use bulkhead_bench::lab::LAB_KAFKA;

use super::recommend::parse_duration_secs;

use crate::config::Settings;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Third octet N of the lab's addresses, 10.250.N.0/24 (220-254).
    #[arg(long, default_value_t = DEFAULT_NET)]
    pub net: u8,
    /// The broker's lab listener, which the agents in the lab's namespaces use.
    #[arg(long, default_value = LAB_KAFKA)]
    pub agent_kafka: String,
    /// HTTP API and console listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Arrow Flight SQL listen address (empty: off).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub flight_listen: String,
    /// The policy signing key (made on first run), logs and the lab's state.
    #[arg(
        long,
        default_value = "/var/lib/bulkhead/demo",
        env = "BULKHEAD_DEMO_DIR"
    )]
    pub state_dir: PathBuf,
    /// The lake [default: STATE_DIR/lake].
    #[arg(long)]
    pub lake: Option<PathBuf>,
    /// The console's built assets (console/build makes them).
    #[arg(long, default_value = "console/dist")]
    pub console_dir: PathBuf,
    /// How often serve reruns the recommender (new traffic, new recommendations).
    #[arg(long, default_value = "60s")]
    pub recommend_every: String,
    /// The lab's background traffic stops by itself after this long.
    #[arg(long, default_value = "8h")]
    pub traffic_for: String,
    /// Non-interactive (tests, CI): plain progress lines, `demo ready: <url>` on stdout
    /// once the recommender has run; stop it with SIGTERM.
    #[arg(long)]
    pub ci: bool,
    /// Run the older synthetic pipeline instead (no root, no lab): publish a generated
    /// estate's flows, read them back, sign and verify a policy.
    #[arg(long)]
    pub synthetic: bool,
    #[command(flatten, next_help_heading = "With --synthetic")]
    pub synthetic_args: super::demo_synthetic::SyntheticArgs,
}

pub async fn run(settings: &Settings, args: DemoArgs) -> anyhow::Result<()> {
    if args.synthetic {
        return super::demo_synthetic::run(settings, args.synthetic_args).await;
    }
    let flight_listen = match args.flight_listen.trim() {
        "" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|e| {
            anyhow::anyhow!("--flight-listen {text:?}: expected host:port or empty ({e})")
        })?),
    };
    let options = DemoOptions {
        bulkhead: std::env::current_exe()?,
        kafka: settings.kafka.brokers.clone(),
        agent_kafka: args.agent_kafka,
        topic_prefix: settings.kafka.topic_prefix.clone(),
        net: args.net,
        listen: args.listen,
        flight_listen,
        lake: args.lake.unwrap_or_else(|| args.state_dir.join("lake")),
        state_dir: args.state_dir,
        console_dir: args.console_dir,
        recommend_every: Duration::from_secs(
            parse_duration_secs(&args.recommend_every)
                .map_err(|e| anyhow::anyhow!("--recommend-every {e}"))?,
        ),
        traffic_for: Duration::from_secs(
            parse_duration_secs(&args.traffic_for)
                .map_err(|e| anyhow::anyhow!("--traffic-for {e}"))?,
        ),
    };
    options.validate()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // SIGHUP too: a closed terminal must not leave the lab behind (its processes are
    // detached and would outlive the demo) — unless started under nohup.
    let mut hangup = if demo::hangup_ignored() {
        None
    } else {
        Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        )?)
    };
    tokio::spawn(async move {
        let hung_up = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = super::shutdown_signal() => {}
            _ = hung_up => tracing::info!("SIGHUP received"),
        }
        flag.store(true, Ordering::SeqCst);
    });
    tokio::task::block_in_place(|| run_blocking(options, &stop, args.ci))
}

/// One step at a time, each with a spinner (or a plain line in --ci).
struct Steps {
    ci: bool,
    current: Option<indicatif::ProgressBar>,
}

impl Steps {
    fn begin(&mut self, what: &str) {
        self.done("");
        if self.ci || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("demo: {what} …");
            return;
        }
        self.current = Some(super::spinner(what));
    }

    fn done(&mut self, note: &str) {
        if let Some(bar) = self.current.take() {
            let msg = bar.message();
            bar.finish_with_message(if note.is_empty() {
                format!("{msg}: done")
            } else {
                format!("{msg}: {note}")
            });
        } else if !note.is_empty() {
            eprintln!("demo:   {note}");
        }
    }
}

fn run_blocking(options: DemoOptions, stop: &AtomicBool, ci: bool) -> anyhow::Result<()> {
    let mut steps = Steps { ci, current: None };
    steps.begin("checking root, ip, nft, the broker and its lab listener, console assets");
    demo::preflight(&options)?;
    steps.done(&format!(
        "broker {} (lab listener {})",
        options.kafka, options.agent_kafka
    ));

    steps.begin("creating topics, starting ingest and serve");
    let mut running = Demo::start(options.clone())?;
    steps.done(&format!(
        "policy key {}, logs in {}",
        options.policy_key().display(),
        options.logs_dir().display()
    ));

    let result = (|| -> Result<(), Interrupted> {
        steps.begin(&format!(
            "bringing the lab up on 10.250.{}.0/24 (10 hosts, an agent in each)",
            options.net
        ));
        running.lab_up().map_err(Interrupted::Failed)?;
        steps.done("traffic on");
        steps.begin("waiting for the HTTP API");
        running.wait_for_api(stop, Duration::from_secs(120))?;
        steps.done(&options.console_url());
        steps.begin("labelling the lab's workloads in the policy engine");
        let labelled = running.label_workloads().map_err(Interrupted::Failed)?;
        steps.done(&format!(
            "{labelled} workloads (app, env, role), mode visibility_only"
        ));
        steps.begin("waiting for the first flows and edges in the lake");
        running.wait_for_flows(stop, Duration::from_secs(180))?;
        steps.done(&format!("lake {}", options.lake.display()));
        steps.begin("running the recommender once");
        let summary = running.recommend_once(stop)?;
        steps.done(&summary);
        Ok(())
    })();
    let outcome = match result {
        Ok(()) => {
            print_what_to_try(&options, running.lab());
            if ci {
                println!("demo ready: {}", options.console_url());
            }
            running.run_until(stop)
        }
        Err(Interrupted::Stopped) => Ok(()),
        Err(Interrupted::Failed(e)) => Err(e),
    };
    steps.done("");
    eprintln!("demo: tearing down (lab down, serve and ingest stopped) …");
    let teardown = running.stop();
    eprintln!(
        "demo: removed {} namespaces and {} lab processes; stopped {}",
        teardown.namespaces,
        teardown.lab_processes,
        teardown.children.join(", ")
    );
    if !teardown.problems.is_empty() {
        let problems = teardown.problems.join("; ");
        return match outcome {
            Ok(()) => Err(anyhow::anyhow!(
                "teardown left something behind: {problems}"
            )),
            Err(e) => Err(e.context(format!("and the teardown: {problems}"))),
        };
    }
    outcome
}

fn print_what_to_try(options: &DemoOptions, lab: Option<&LabState>) {
    let ip = |name: &str| {
        lab.and_then(|l| l.host(name))
            .map(|h| h.ip.to_string())
            .unwrap_or_else(|| name.to_string())
    };
    let ns = |name: &str| {
        lab.and_then(|l| l.host(name))
            .map(|h| h.ns.clone())
            .unwrap_or_else(|| name.to_string())
    };
    let url = options.console_url();
    println!(
        "\nBulkhead is running. Open the console: {url}\n\n\
         What to try:\n\
         1. Map: crm, shop and infra with their connections, the internet reaching the web\n   \
            tiers, and the unlabeled rogue host {rogue} touching everything. Click a group for\n   \
            its roles. Every decision is `unknown`: nothing is provisioned yet.\n\
         2. Recommendations: accept the rules for crm, shop and infra, reject suspicious\n   \
            findings and anything about the rogue host; Simulate shows what the draft would\n   \
            block; Provision signs it and every agent applies it within seconds.\n\
         3. Explorer → SQL: the rogue host's attempts on the crm database are now\n   \
            potentially_blocked (the hosts are in visibility only) and still connect:\n   \
            ip netns exec {rogue_ns} timeout 2 bash -c 'exec 3<>/dev/tcp/{db}/5432'\n\
         4. Workloads: set the estate hosts to `full` and provision again: the attempts are\n   \
            blocked and the command above times out, while web → app → db keeps working.\n\
         5. Workloads: Quarantine a host (e.g. app-shop); it is cut off at once.\n\n\
         SQL over the lake: bulkhead sql --lake {lake} \"SELECT policy_decision, count(*) FROM flows GROUP BY 1\"\n\
         Logs: {logs} and {lablogs}. Ctrl-C stops everything.",
        rogue = ip("rogue"),
        rogue_ns = ns("rogue"),
        db = ip("db-crm"),
        lake = options.lake.display(),
        logs = options.logs_dir().display(),
        lablogs = options.lab_dir().join("logs").display(),
    );
}
