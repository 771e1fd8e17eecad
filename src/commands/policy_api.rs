//! Thin clients of the policy engine's HTTP API (`bulkhead serve` runs the engine).

use anyhow::Context as _;
use bulkhead_schemas::policy::Label;
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The Bulkhead API (bulkhead serve).
    #[arg(
        long,
        env = "BULKHEAD_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// Bearer token, when the server requires one.
    #[arg(
        long,
        env = "BULKHEAD_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Who makes the change (recorded in history) [default: $USER].
    #[arg(long, env = "BULKHEAD_ACTOR", global = true)]
    pub actor: Option<String>,
    /// Why (recorded in history).
    #[arg(long, default_value = "", global = true)]
    pub reason: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum ApiCommand {
    /// List recommendations with their evidence and confidence.
    List {
        /// pending, accepted or rejected.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one recommendation (JSON).
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Rules added, removed and changed in the draft relative to the active policy.
    Diff {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Accept recommendations into the draft.
    Accept {
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Accept every pending rule recommendation (suspicious findings stay pending).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Reject recommendations.
    Reject {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Sign the draft as a new policy version and publish it to the enforcers.
    Provision {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Replay the last days of flows against the draft: what changes, per app.
    Simulate {
        #[arg(long, default_value_t = 1.0)]
        days: f64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Provision the content of an earlier version as a new version.
    Rollback {
        #[arg(value_name = "VERSION")]
        to_version: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The provisioned versions.
    Versions {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the active (or draft) policy: yaml, json, or Kubernetes NetworkPolicy (k8s).
    Export {
        #[arg(long, default_value = "yaml")]
        format: String,
        /// active or draft.
        #[arg(long, default_value = "active")]
        which: String,
        /// Namespace of exported NetworkPolicies.
        #[arg(long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Attributed history of every change.
    History {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum LabelsCommand {
    /// Set labels (key=value …) on a workload and/or remove label keys.
    Set {
        workload: String,
        labels: Vec<Label>,
        #[arg(long)]
        remove: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set the enforcement mode (idle, visibility_only, selective, full) of workloads.
    Mode {
        mode: String,
        #[arg(required = true)]
        workloads: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The label rules.
    Rules {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set a label rule (conditions all hold → labels assigned) and apply it to the
    /// inventory at once; a label a person set stays.
    RuleSet {
        id: String,
        /// Glob on the hostname, e.g. 'web-*'.
        #[arg(long, default_value = "")]
        hostname_glob: String,
        /// A label the host provides, key=value.
        #[arg(long, default_value = "")]
        host_label: String,
        /// A CIDR one of the workload's addresses is in.
        #[arg(long, default_value = "")]
        address_cidr: String,
        /// Labels to assign, key=value (repeatable).
        #[arg(long = "assign", required = true)]
        assign: Vec<Label>,
        /// Rules apply in ascending priority; a later one wins per key.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a label rule (labels it assigned stay until changed).
    RuleDelete {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Quarantine a workload at once (a provisioned change), or lift it with --lift.
    Quarantine {
        workload: String,
        #[arg(long)]
        lift: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// Only changes need one (reads are anonymous).
    actor: Option<String>,
    reason: String,
}

impl Client {
    fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let actor = args
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|a| !a.trim().is_empty());
        Ok(Self {
            http: reqwest::Client::new(),
            base: args.api.trim_end_matches('/').to_string(),
            token: args.token.clone(),
            actor,
            reason: args.reason.clone(),
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(Value, String)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the Bulkhead API at {} (is bulkhead serve running? --api)",
                self.base
            )
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"].as_str().map(str::to_string).unwrap_or(text);
            anyhow::bail!("{method} {path}: {status}: {message}");
        }
        Ok((value, text))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(reqwest::Method::GET, path, None).await?.0)
    }

    /// A change: attributed to the actor, with the reason.
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.change(reqwest::Method::POST, path, body).await
    }

    async fn change(
        &self,
        method: reqwest::Method,
        path: &str,
        mut body: Value,
    ) -> anyhow::Result<Value> {
        let actor = self
            .actor
            .as_deref()
            .context("who is making this change? give --actor (or set BULKHEAD_ACTOR)")?;
        body["actor"] = json!(actor);
        body["reason"] = json!(self.reason);
        Ok(self.send(method, path, Some(body)).await?.0)
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values print")
}

pub async fn run(command: ApiCommand) -> anyhow::Result<()> {
    match command {
        ApiCommand::List { status, api } => {
            let client = Client::new(&api)?;
            let path = match status {
                Some(s) => format!("/api/v1/recommendations?status={s}"),
                None => "/api/v1/recommendations".into(),
            };
            let items = client.get(&path).await?;
            println!(
                "{:<16} {:<9} {:<14} {:<20} {:>8} {:>5}  rule",
                "id", "status", "kind", "ruleset", "flows", "conf"
            );
            for r in items.as_array().into_iter().flatten() {
                let actors = |v: &Value| {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                println!(
                    "{:<16} {:<9} {:<14} {:<20} {:>8} {:>5.2}  {} -> {} on {}",
                    r["id"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["kind"].as_str().unwrap_or(""),
                    r["ruleset"].as_str().unwrap_or(""),
                    r["evidence"]["flows"],
                    r["confidence"].as_f64().unwrap_or(0.0),
                    actors(&r["rule"]["consumers"]),
                    actors(&r["rule"]["providers"]),
                    actors(&r["rule"]["services"]),
                );
            }
        }
        ApiCommand::Show { id, api } => println!(
            "{}",
            pretty(
                &Client::new(&api)?
                    .get(&format!("/api/v1/recommendations/{id}"))
                    .await?
            )
        ),
        ApiCommand::Diff { api } => println!(
            "{}",
            pretty(&Client::new(&api)?.get("/api/v1/policy/diff").await?)
        ),
        ApiCommand::Accept { mut ids, all, api } => {
            let client = Client::new(&api)?;
            if all {
                let pending = client.get("/api/v1/recommendations?status=pending").await?;
                ids = pending
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["kind"].as_str() != Some("suspicious"))
                    .filter_map(|r| r["id"].as_str().map(str::to_string))
                    .collect();
                anyhow::ensure!(!ids.is_empty(), "no pending rule recommendations to accept");
            }
            for id in ids {
                client
                    .post(&format!("/api/v1/recommendations/{id}/accept"), json!({}))
                    .await?;
                println!("accepted {id}");
            }
        }
        ApiCommand::Reject { ids, api } => {
            let client = Client::new(&api)?;
            for id in ids {
                client
                    .post(&format!("/api/v1/recommendations/{id}/reject"), json!({}))
                    .await?;
                println!("rejected {id}");
            }
        }
        ApiCommand::Provision { api } => {
            let v = Client::new(&api)?
                .post("/api/v1/policy/provision", json!({}))
                .await?;
            println!(
                "provisioned version {} (sha256 {})",
                v["version"],
                v["content_sha256"].as_str().unwrap_or("")
            );
        }
        ApiCommand::Simulate { days, api } => {
            let v = Client::new(&api)?
                .send(
                    reqwest::Method::POST,
                    "/api/v1/policy/simulate",
                    Some(json!({"days": days})),
                )
                .await?
                .0;
            println!(
                "{:<24} {:>10} {:>14} {:>14}",
                "app", "flows", "newly blocked", "newly allowed"
            );
            for a in v["per_app"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>10} {:>14} {:>14}",
                    a["app"].as_str().unwrap_or(""),
                    a["flows"],
                    a["newly_blocked"],
                    a["newly_allowed"]
                );
            }
            let t = &v["totals"];
            println!(
                "{:<24} {:>10} {:>14} {:>14}",
                "total", t["flows"], t["newly_blocked"], t["newly_allowed"]
            );
        }
        ApiCommand::Rollback { to_version, api } => {
            let v = Client::new(&api)?
                .post("/api/v1/policy/rollback", json!({"version": to_version}))
                .await?;
            println!(
                "provisioned version {} with the content of version {to_version}",
                v["version"]
            );
        }
        ApiCommand::Versions { api } => println!(
            "{}",
            pretty(&Client::new(&api)?.get("/api/v1/policy/versions").await?)
        ),
        ApiCommand::History { api } => println!(
            "{}",
            pretty(&Client::new(&api)?.get("/api/v1/history").await?)
        ),
        ApiCommand::Export {
            format,
            which,
            namespace,
            api,
        } => {
            let client = Client::new(&api)?;
            let path = format!(
                "/api/v1/policy/export?format={format}&which={which}&namespace={namespace}"
            );
            print!(
                "{}",
                client.send(reqwest::Method::GET, &path, None).await?.1
            );
        }
    }
    Ok(())
}

pub async fn labels(command: LabelsCommand) -> anyhow::Result<()> {
    match command {
        LabelsCommand::Set {
            workload,
            labels,
            remove,
            api,
        } => {
            let set: serde_json::Map<String, Value> = labels
                .iter()
                .map(|l| (l.key.clone(), json!(l.value)))
                .collect();
            let v = Client::new(&api)?
                .post(
                    &format!("/api/v1/workloads/{workload}/labels"),
                    json!({"set": set, "remove": remove}),
                )
                .await?;
            println!("{workload}: {}", v["labels"]);
        }
        LabelsCommand::Mode {
            mode,
            workloads,
            api,
        } => {
            let client = Client::new(&api)?;
            for workload in workloads {
                client
                    .post(
                        &format!("/api/v1/workloads/{workload}/mode"),
                        json!({"mode": mode}),
                    )
                    .await?;
                println!("{workload}: mode {mode} (takes effect when the draft is provisioned)");
            }
        }
        LabelsCommand::Rules { api } => {
            let rules = Client::new(&api)?.get("/api/v1/labels/rules").await?;
            println!("{}", pretty(&rules));
        }
        LabelsCommand::RuleSet {
            id,
            hostname_glob,
            host_label,
            address_cidr,
            assign,
            priority,
            api,
        } => {
            let assign: serde_json::Map<String, Value> = assign
                .iter()
                .map(|l| (l.key.clone(), json!(l.value)))
                .collect();
            let v = Client::new(&api)?
                .post(
                    "/api/v1/labels/rules",
                    json!({"id": id, "hostname_glob": hostname_glob, "host_label": host_label,
                           "address_cidr": address_cidr, "assign": assign, "priority": priority}),
                )
                .await?;
            println!(
                "label rule {id} set; {} labels changed",
                v["labels_changed"]
            );
        }
        LabelsCommand::RuleDelete { id, api } => {
            let client = Client::new(&api)?;
            client
                .change(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/labels/rules/{id}"),
                    json!({}),
                )
                .await?;
            println!("label rule {id} deleted");
        }
        LabelsCommand::Quarantine {
            workload,
            lift,
            api,
        } => {
            let v = Client::new(&api)?
                .post(
                    &format!("/api/v1/workloads/{workload}/quarantine"),
                    json!({"on": !lift}),
                )
                .await?;
            println!(
                "{workload}: quarantine {} in version {}",
                if lift { "lifted" } else { "set" },
                v["version"]
            );
        }
    }
    Ok(())
}
