//! `credgate lookup` and `credgate explain`: the keychain's decision, for people and scripts.

use serde::Serialize;

use super::CliError;
use crate::config::Config;
use crate::identity::Target;
use crate::keychain::{Attempt, Decision, Explanation, Keychain, SourceOutcome};
use crate::sources::AuthType;
use crate::system::System;

/// The `--json` shape of a lookup (the contract in docs/design.md).
#[derive(Debug, Serialize)]
pub struct LookupOutput {
    pub registry: String,
    pub repository: String,
    pub auth_type: AuthType,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub source: String,
    pub matched: String,
}

impl LookupOutput {
    pub fn from_decision(decision: &Decision, show_secret: bool) -> Self {
        let target = &decision.requested;
        let mut out = Self {
            registry: target.registry.to_string(),
            repository: target
                .repository
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default(),
            auth_type: AuthType::None,
            username: String::new(),
            secret: None,
            source: String::new(),
            matched: String::new(),
        };
        if let (Some(winner), Some(candidate)) = (&decision.winner, decision.winner_candidate()) {
            out.auth_type = winner.credential.auth_type();
            out.username = winner.credential.username.clone();
            out.secret =
                show_secret.then(|| winner.credential.transfer_secret().expose().to_string());
            out.source = candidate.describe();
            out.matched = candidate.offer.scope.to_string();
        }
        out
    }

    fn render_text(&self) -> String {
        let secret = match (&self.secret, self.auth_type) {
            (Some(s), _) => s.clone(),
            (None, AuthType::None) => String::new(),
            (None, _) => "(hidden; --show-secret prints it)".to_string(),
        };
        let rows = [
            ("registry", self.registry.as_str()),
            ("repository", self.repository.as_str()),
            ("auth_type", &self.auth_type.to_string()),
            ("username", self.username.as_str()),
            ("secret", secret.as_str()),
            ("source", self.source.as_str()),
            ("matched", self.matched.as_str()),
        ];
        rows.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k:<11} {v}\n"))
            .collect()
    }
}

pub async fn lookup(
    config: &Config,
    system: &System,
    reference: &str,
    json: bool,
    show_secret: bool,
) -> Result<(), CliError> {
    let target = Target::parse(reference)?;
    let keychain = Keychain::from_config(config, system);
    let decision = keychain.lookup(&target).await;
    let out = LookupOutput::from_decision(&decision, show_secret);
    if json {
        println!(
            "{}",
            serde_json::to_string(&out).expect("lookup output serializes")
        );
    } else {
        print!("{}", out.render_text());
    }
    if decision.winner.is_none() && decision.had_failures() {
        return Err(CliError::Failed(format!(
            "no credential for {target}, and some sources failed (see warnings above; `credgate explain {reference}` shows them)"
        )));
    }
    Ok(())
}

pub async fn explain(config: &Config, system: &System, reference: &str) -> Result<(), CliError> {
    let target = Target::parse(reference)?;
    let keychain = Keychain::from_config(config, system);
    let explanation = keychain.explain(&target).await;
    print!("{}", render_explanation(config, &explanation));
    Ok(())
}

fn render_explanation(config: &Config, e: &Explanation) -> String {
    let mut out = String::new();
    let config_name = config
        .path
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string());
    out += &format!("target: {} (config: {config_name})\n", e.ranking.target);
    out += "\nsources, in config order:\n";
    for (i, report) in e.ranking.sources.iter().enumerate() {
        let said = match &report.outcome {
            SourceOutcome::Offered(n) => format!("{n} candidate(s)"),
            SourceOutcome::NothingMatched => "nothing for this target".to_string(),
            SourceOutcome::Failed(message) => format!("FAILED: {message}"),
        };
        out += &format!("  {}. {}: {said}\n", i + 1, report.source);
    }
    out += "\ncandidates, best first (most path segments, then exact host over glob, then source order):\n";
    if e.ranking.candidates.is_empty() {
        out += "  (none)\n";
    }
    for (rank, (candidate, explained)) in e.ranking.candidates.iter().zip(&e.candidates).enumerate()
    {
        let s = candidate.specificity();
        let host = if s.exact_host {
            "exact host"
        } else {
            "glob host"
        };
        let result = match &explained.attempt {
            Attempt::Hit => format!(
                "credential: {} for {:?}",
                explained.auth_type.unwrap_or(AuthType::None),
                explained.username.as_deref().unwrap_or_default()
            ),
            Attempt::Miss => "no credential".to_string(),
            Attempt::Failed(message) => format!("FAILED: {message}"),
        };
        let mark = if e.winner == Some(rank) { "*" } else { " " };
        out += &format!(
            "{mark} {}. {} [{} path segment(s), {host}] from {} ({})\n      {result}\n",
            rank + 1,
            candidate.offer.scope,
            s.path_segments,
            candidate.source,
            candidate.offer.origin
        );
    }
    out += "\n";
    out += &match (e.winner, &e.reason) {
        (Some(rank), Some(reason)) => {
            let skipped = match e.passed_over {
                0 => String::new(),
                n => format!("; {n} higher-ranked candidate(s) had no credential"),
            };
            format!("winner: #{} because {reason}{skipped}\n", rank + 1)
        }
        _ => "winner: none; the pull goes anonymous\n".to_string(),
    };
    out
}
