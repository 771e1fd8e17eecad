//! `bulkhead lab up|traffic|status|down`: the demo lab estate in network namespaces
//! (bulkhead_bench::demo_lab), persistent across commands.

use std::path::PathBuf;
use std::time::Duration;

use bulkhead_bench::demo_lab::{self, DEFAULT_NET, DEFAULT_STATE_DIR, LabOptions};
use bulkhead_bench::lab::LAB_KAFKA;
use bulkhead_collector::config::parse_duration;

use crate::config::Settings;

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// Directory holding the lab's state file, logs, agent state and keys.
    #[arg(long, global = true, default_value = DEFAULT_STATE_DIR, env = "BULKHEAD_LAB_DIR")]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Build the lab: 10 hosts in network namespaces (crm and shop, each web → app → db;
    /// dns; monitoring; an internet host; an unlabeled rogue host), their listeners, and
    /// `bulkhead agent` in every estate host. Needs root and the broker's lab listener.
    Up {
        /// Third octet N of the lab's addresses, 10.250.N.0/24 (220-254).
        #[arg(long, default_value_t = DEFAULT_NET)]
        net: u8,
        /// The broker address the agents use: the lab listener on the bridge bhlab0.
        #[arg(long, default_value = LAB_KAFKA)]
        agent_kafka: String,
        /// Trusted policy public key(s) for the agents (hex or PEM file). Default: a key
        /// pair is made in the state directory (policy-signing.pem signs for the lab).
        #[arg(long = "policy-key")]
        policy_keys: Vec<String>,
        /// Switch the background traffic on for this long at once (e.g. 10m; 0 = off).
        #[arg(long, default_value = "0")]
        traffic: String,
        /// Agents' flow eviction interval.
        #[arg(long, default_value = "2s")]
        evict_interval: String,
        /// Agents' status heartbeat interval in seconds.
        #[arg(long, default_value_t = 5)]
        heartbeat_secs: u64,
    },
    /// Switch the lab's background traffic on for a while (web → app → db calls, DNS
    /// lookups, monitoring scrapes, customers from the internet, the rogue host scanning).
    Traffic {
        /// How long (bounded: the traffic stops by itself), e.g. 90s, 10m.
        #[arg(long = "for", default_value = "10m")]
        duration: String,
        /// Switch it off now.
        #[arg(long, conflicts_with = "duration")]
        stop: bool,
    },
    /// Print the lab's hosts (namespace, address, labels, processes alive).
    Status {
        /// The state file as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything the lab made (processes, namespaces, state). Safe to repeat.
    Down {
        /// The lab's address octet, used when the state file is gone.
        #[arg(long, default_value_t = DEFAULT_NET)]
        net: u8,
    },
    /// (internal) Run one lab host's software; started by `lab up` inside the namespace.
    #[command(hide = true)]
    Host { plan: String },
}

pub fn run(settings: &Settings, args: LabArgs) -> anyhow::Result<()> {
    let state_dir = args.state_dir;
    match args.command {
        LabCommand::Up {
            net,
            agent_kafka,
            policy_keys,
            traffic,
            evict_interval,
            heartbeat_secs,
        } => {
            let traffic_for = parse_duration("--traffic", &traffic)?;
            parse_duration("--evict-interval", &evict_interval)?;
            let options = LabOptions {
                state_dir,
                net,
                bulkhead: std::env::current_exe()?,
                kafka: agent_kafka,
                topic_prefix: settings.kafka.topic_prefix.clone(),
                policy_keys,
                evict_interval,
                heartbeat_secs,
                traffic_for,
            };
            eprintln!("lab: building 10 hosts on 10.250.{net}.0/24 …");
            let state = demo_lab::up(&options)?;
            print_status(&state);
            if let Some(key) = &state.policy_signing_key {
                println!(
                    "\nThe agents trust the key pair made for this lab; sign policy with {}",
                    key.display()
                );
            }
            if traffic_for.is_zero() {
                println!("Traffic is off: `bulkhead lab traffic --for 10m` switches it on.");
            }
            Ok(())
        }
        LabCommand::Traffic { duration, stop } => {
            anyhow::ensure!(
                demo_lab::status(&state_dir)?.is_some(),
                "no lab is up (no state in {}); `bulkhead lab up` first",
                state_dir.display()
            );
            let duration = if stop {
                Duration::ZERO
            } else {
                parse_duration("--for", &duration)?
            };
            demo_lab::set_traffic(&state_dir, duration)?;
            if duration.is_zero() {
                println!("lab traffic: off");
            } else {
                println!("lab traffic: on for {} s", duration.as_secs());
            }
            Ok(())
        }
        LabCommand::Status { json } => match demo_lab::status(&state_dir)? {
            Some(state) if json => {
                println!("{}", serde_json::to_string_pretty(&state)?);
                Ok(())
            }
            Some(state) => {
                print_status(&state);
                Ok(())
            }
            None => anyhow::bail!("no lab is up (no state in {})", state_dir.display()),
        },
        LabCommand::Down { net } => {
            let report = demo_lab::down(&state_dir, net)?;
            println!(
                "lab down: {} namespaces and {} processes removed",
                report.namespaces.len(),
                report.processes
            );
            Ok(())
        }
        LabCommand::Host { plan } => {
            let plan: demo_lab::host::HostPlan = serde_json::from_str(&plan)
                .map_err(|e| anyhow::anyhow!("lab host: the plan is not valid JSON: {e}"))?;
            demo_lab::host::run(plan)?;
            Ok(())
        }
    }
}

fn print_status(state: &demo_lab::LabState) {
    println!(
        "{:<12} {:<20} {:<16} {:<30} {:<28} processes",
        "host", "namespace", "address", "labels", "listening"
    );
    for h in &state.hosts {
        let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let listens: Vec<String> = h.listens.iter().map(|(p, c)| format!("{p}/{c}")).collect();
        let procs: Vec<String> = h
            .pids
            .iter()
            .map(|(what, &pid)| {
                let up = if demo_lab::alive(pid) { "" } else { " (dead)" };
                format!("{what} {pid}{up}")
            })
            .collect();
        println!(
            "{:<12} {:<20} {:<16} {:<30} {:<28} {}",
            h.name,
            h.ns,
            h.ip.to_string(),
            if labels.is_empty() {
                "(unlabeled)".to_string()
            } else {
                labels.join(",")
            },
            listens.join(" "),
            procs.join(", ")
        );
    }
}
