//! `credgate lookup` and `credgate explain`: the keychain's decision, for people and scripts.
//! With `--via MIRROR` (a host key of the hosts.toml containerd uses for the REF's registry, or
//! a bare `host[:port]` naming one host there) they show the decision for what that mirror is
//! sent: its own host and the repository it serves, or the upstream's with
//! `[[mirror]] credentials = "upstream"`; a mirror not named there is bad input (exit 2).

use std::sync::Arc;

use serde::Serialize;

use super::CliError;
use crate::config::Config;
use crate::identity::Target;
use crate::keychain::{Attempt, Decision, Explanation, Keychain, SourceOutcome};
use crate::mirrors::{HostRole, MirrorError, Mirrors, NamedMirror};
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
    /// With `--via`: the mirror (its hosts.toml key, without user info or query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// With `--via`: where the mirror is dialled, path prefix included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_url: Option<String>,
    /// With `--via`: the registry and repository as the mirror serves them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_target: Option<String>,
    /// With `--via`: `own` or `upstream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
}

/// A REF's mirror, and what the keychain is asked for it.
struct Via {
    mirror: Arc<NamedMirror>,
    /// The mirror's host and repository (what it serves the REF as).
    mirror_target: Target,
    /// Whose credential it gets.
    credential_target: Target,
}

impl Via {
    fn find(config: &Config, target: &Target, name: &str) -> Result<Self, CliError> {
        let mirrors = Mirrors::from_config(config);
        let ns = target.registry.to_string();
        let mirror = mirrors.find_by_name(&ns, name).map_err(mirror_error)?;
        let (credential_target, mirror_repository) = mirror
            .credential_target(&target.registry, target.repository.as_ref())
            .map_err(mirror_error)?;
        Ok(Self {
            mirror_target: Target::new(mirror.registry.clone(), mirror_repository),
            credential_target,
            mirror,
        })
    }

    fn fill(&self, out: &mut LookupOutput) {
        out.via = Some(self.mirror.shown());
        out.mirror_url = Some(self.mirror.base_url());
        out.mirror_target = Some(self.mirror_target.to_string());
        out.credentials = Some(self.mirror.credentials.to_string());
    }
}

/// A mirror that can't be used is the user's input to fix (exit 2), unless a file could not
/// be read at all.
fn mirror_error(error: MirrorError) -> CliError {
    match &error {
        MirrorError::File(file) if !file.is_bad_input() => CliError::Failed(error.to_string()),
        _ => CliError::BadInput(error.to_string()),
    }
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
            via: None,
            mirror_url: None,
            mirror_target: None,
            credentials: None,
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
        let none = String::new();
        let rows = [
            ("via", self.via.as_ref().unwrap_or(&none).as_str()),
            (
                "mirror_url",
                self.mirror_url.as_ref().unwrap_or(&none).as_str(),
            ),
            (
                "mirror_target",
                self.mirror_target.as_ref().unwrap_or(&none).as_str(),
            ),
            (
                "credentials",
                self.credentials.as_ref().unwrap_or(&none).as_str(),
            ),
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
            .map(|(k, v)| format!("{k:<13} {v}\n"))
            .collect()
    }
}

pub async fn lookup(
    config: &Config,
    system: &System,
    reference: &str,
    via: Option<&str>,
    json: bool,
    show_secret: bool,
) -> Result<(), CliError> {
    let requested = Target::parse(reference)?;
    let via = via
        .map(|name| Via::find(config, &requested, name))
        .transpose()?;
    let target = via
        .as_ref()
        .map_or(requested, |via| via.credential_target.clone());
    let keychain = Keychain::from_config(config, system);
    let decision = keychain.lookup(&target).await;
    let mut out = LookupOutput::from_decision(&decision, show_secret);
    if let Some(via) = &via {
        via.fill(&mut out);
    }
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

pub async fn explain(
    config: &Config,
    system: &System,
    reference: &str,
    via: Option<&str>,
) -> Result<(), CliError> {
    let requested = Target::parse(reference)?;
    let mut out = String::new();
    let target = match via {
        None => requested,
        Some(name) => {
            let via = Via::find(config, &requested, name)?;
            out += &render_via(config, &requested, &via);
            via.credential_target
        }
    };
    let keychain = Keychain::from_config(config, system);
    let explanation = keychain.explain(&target).await;
    out += &render_explanation(config, &explanation);
    print!("{out}");
    Ok(())
}

/// Which mirror, how it is dialled, whose credential it gets, and where it stands in the
/// chain containerd tries for the registry.
fn render_via(config: &Config, requested: &Target, via: &Via) -> String {
    let mirror = &via.mirror;
    let settings = mirror.settings();
    let mut out = format!(
        "via mirror {} ({})\n",
        mirror.shown(),
        mirror.file.display()
    );
    let mut dial = vec![
        format!("dialled at {}", mirror.base_url()),
        format!("for {}", settings.capabilities.names().join(", ")),
    ];
    if !settings.ca.is_empty() {
        dial.push(format!("{} CA file(s)", settings.ca.len()));
    }
    if !settings.client.is_empty() {
        dial.push(format!("{} client certificate(s)", settings.client.len()));
    }
    if settings.skip_verify == Some(true) {
        dial.push("skip_verify".to_string());
    }
    out += &format!("  {}\n", dial.join(", "));
    out += &format!("  serves {requested} as {}\n", via.mirror_target);
    let whose = match mirror.credentials {
        crate::config::MirrorCredentials::Own => "its own (the default)",
        crate::config::MirrorCredentials::Upstream => {
            "the upstream's ([[mirror]] credentials = \"upstream\")"
        }
    };
    out += &format!(
        "  credentials: {whose}, so the keychain is asked for {}\n",
        via.credential_target
    );
    let mirrors = Mirrors::from_config(config);
    if let Ok(chain) = mirrors.chain(&requested.registry.to_string()) {
        let from = chain
            .file
            .as_ref()
            .map_or(String::new(), |file| format!(" ({})", file.display()));
        out += &format!(
            "\nhosts containerd tries for {}{from}, in order:\n",
            requested.registry
        );
        for (i, host) in chain.hosts.iter().enumerate() {
            let role = match &host.role {
                HostRole::Fronted { stands_for } => {
                    format!("credgate, for {}", stands_for.join(", "))
                }
                HostRole::CredgateUpstream => "credgate, for the upstream".to_string(),
                HostRole::Mirror(named) if named.key() == mirror.key() => {
                    "this mirror; reached directly when credgate is down".to_string()
                }
                HostRole::Mirror(_) => {
                    "a mirror (reached directly when credgate is down)".to_string()
                }
                HostRole::Operator => "not used for pulls through credgate".to_string(),
                HostRole::Server => "the registry itself, last".to_string(),
            };
            out += &format!("  {}. {}  ({role})\n", i + 1, host.settings.shown());
        }
    }
    out += "\n";
    out
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
