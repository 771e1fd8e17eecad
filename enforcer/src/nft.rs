//! The calls that touch the kernel: `nft -j -f -` with a whole batch (atomic), listing the
//! `bulkhead` table, and reading its counters. Nothing else on the host is read or
//! changed.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use nftables::helper::{self, NftablesError};
use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::stmt::{Counter, Statement};

use crate::render::TABLE;

/// Why nft failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "cannot run {program:?}: {reason} (is nftables installed? apt-get install nftables; and are we root?)"
    )]
    Exec { program: String, reason: String },
    #[error("nft refused the {what}: {stderr}")]
    Refused { what: &'static str, stderr: String },
    #[error("nft {what}: unexpected output: {reason}")]
    Output { what: &'static str, reason: String },
}

fn convert(program: &str, what: &'static str, error: NftablesError) -> NftError {
    match error {
        NftablesError::NftExecution { inner, .. } => NftError::Exec {
            program: program.to_string(),
            reason: inner.to_string(),
        },
        NftablesError::NftFailed { stderr, stdout, .. } => {
            let message = if stderr.trim().is_empty() {
                stdout
            } else {
                stderr
            };
            NftError::Refused {
                what,
                stderr: message.trim().to_string(),
            }
        }
        other => NftError::Output {
            what,
            reason: other.to_string(),
        },
    }
}

/// Counter totals of the bulkhead table's rules, by rule comment.
pub type Counters = BTreeMap<String, (u64, u64)>;

/// The `nft` executable Bulkhead drives.
#[derive(Clone, Debug)]
pub struct Nft {
    program: String,
}

impl Default for Nft {
    fn default() -> Self {
        Self {
            program: "nft".into(),
        }
    }
}

impl Nft {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// Applies `batch` in one transaction: all of it or, on error, none of it.
    pub fn apply(&self, batch: &Nftables) -> Result<(), NftError> {
        self.feed(&[], batch, "ruleset")
    }

    /// Asks nft whether it would accept `batch` (`nft --check`), changing nothing.
    pub fn check(&self, batch: &Nftables) -> Result<(), NftError> {
        self.feed(&["--check"], batch, "ruleset (check)")
    }

    /// `nft [args] -j -f -` with `batch` on stdin. (nftables' own helper lets nft's stderr
    /// through to ours, losing the reason of a refusal; here it is captured.)
    fn feed(&self, args: &[&str], batch: &Nftables, what: &'static str) -> Result<(), NftError> {
        let payload = serde_json::to_vec(batch).expect("an nftables batch serializes");
        let exec = |e: std::io::Error| NftError::Exec {
            program: self.program.clone(),
            reason: e.to_string(),
        };
        let mut child = Command::new(&self.program)
            .args(args)
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec)?;
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(&payload);
        let output = child.wait_with_output().map_err(exec)?;
        if output.status.success() && written.is_ok() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let stderr = if stderr.is_empty() {
            format!(
                "{} (exit {})",
                String::from_utf8_lossy(&output.stdout).trim(),
                output.status
            )
        } else {
            stderr
        };
        Err(NftError::Refused { what, stderr })
    }

    /// The bulkhead table as nft lists it, or `None` when there is none.
    pub fn table(&self) -> Result<Option<Nftables<'static>>, NftError> {
        match helper::get_current_ruleset_with_args(
            Some(&self.program),
            &["list", "table", "inet", TABLE],
        ) {
            Ok(ruleset) => Ok(Some(ruleset)),
            Err(NftablesError::NftFailed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(convert(&self.program, "listing", e)),
        }
    }

    /// Packets and bytes counted by the table's commented rules (empty without a table).
    pub fn counters(&self) -> Result<Counters, NftError> {
        let mut out = Counters::new();
        let Some(table) = self.table()? else {
            return Ok(out);
        };
        for object in table.objects.iter() {
            let NfObject::ListObject(NfListObject::Rule(rule)) = object else {
                continue;
            };
            let Some(comment) = &rule.comment else {
                continue;
            };
            for statement in rule.expr.iter() {
                if let Statement::Counter(Counter::Anonymous(Some(c))) = statement {
                    let entry = out.entry(comment.to_string()).or_default();
                    entry.0 += c.packets.unwrap_or(0) as u64;
                    entry.1 += c.bytes.unwrap_or(0) as u64;
                }
            }
        }
        Ok(out)
    }
}
