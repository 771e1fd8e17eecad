//! `bulkhead policy validate|keygen`: offline work on policy files and signing keys;
//! `bulkhead policy list|show|diff|accept|reject|provision|simulate|rollback|versions|
//! export|history`: thin clients of the policy engine's HTTP API (`--api`) that
//! `bulkhead serve` runs.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use anyhow::Context as _;
use bulkhead_schemas::policy::{PolicyDocument, PolicySigner};

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Check policy files (YAML or JSON): syntax, references, label keys, ports, scopes.
    /// Prints every problem with its path; exits non-zero if any file is invalid.
    Validate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Create an Ed25519 policy-signing key pair: `<name>.pem` (private, mode 0600, for
    /// the control plane) and `<name>.pub.pem` (for every enforcer's --policy-key).
    Keygen {
        /// Directory to write the keys into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value = "policy-signing")]
        name: String,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    #[command(flatten)]
    Api(super::policy_api::ApiCommand),
}

pub async fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Validate { files } => validate(&files),
        PolicyCommand::Keygen { out, name, force } => keygen(&out, &name, force),
        PolicyCommand::Api(command) => super::policy_api::run(command).await,
    }
}

fn validate(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut invalid = 0;
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {name}"))?;
        match PolicyDocument::load(&text, &name) {
            Ok(doc) => println!(
                "{name}: valid ({} rulesets, {} rules, {} deny rules, {} workloads)",
                doc.rulesets.len(),
                doc.rules().count(),
                doc.deny_rules.len(),
                doc.workloads.len()
            ),
            Err(e) => {
                invalid += 1;
                println!("{name}: {e}");
            }
        }
    }
    anyhow::ensure!(
        invalid == 0,
        "{invalid} of {} policy files are invalid",
        files.len()
    );
    Ok(())
}

fn keygen(out: &std::path::Path, name: &str, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let signer = PolicySigner::generate();
    let private = out.join(format!("{name}.pem"));
    let public = out.join(format!("{name}.pub.pem"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true)
    } else {
        options.create_new(true)
    };
    let write =
        |path: &PathBuf, text: String, options: &std::fs::OpenOptions| -> anyhow::Result<()> {
            use std::io::Write as _;
            let mut file = options.open(path).with_context(|| {
                format!(
                    "cannot create {} (it exists? use --force to replace)",
                    path.display()
                )
            })?;
            file.write_all(text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))
        };
    write(&private, signer.to_pkcs8_pem(), &options)?;
    options.mode(0o644);
    write(&public, signer.public_key_pem(), &options)?;
    println!(
        "private key: {} (keep it on the control plane only)",
        private.display()
    );
    println!("public key:  {}", public.display());
    println!("key id:      {}", signer.key_id());
    println!(
        "public hex:  {}",
        hex::encode(signer.verifying_key().as_bytes())
    );
    Ok(())
}
