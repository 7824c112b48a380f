//! Which credential wins. The keychain asks every source for offers, ranks them (most
//! specific scope first, ties to the source listed first), and fetches in that order until
//! one yields a credential. The rest of the ranking is kept for fallback: when an upstream
//! rejects the winner, the next candidate is tried before anonymous.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;

use crate::config::{Config, SourceEntry};
use crate::identity::{RegistryHost, Scope, Specificity, Target};
use crate::sources::docker_config::DockerConfigSource;
use crate::sources::exec_helper::{HelperRuns, HelperStats};
use crate::sources::kubelet_provider::KubeletProviderSource;
use crate::sources::static_registry::StaticRegistrySource;
use crate::sources::{Credential, Listed, Offer, Source};
use crate::system::System;

mod answer;
mod explain;
mod index;

use index::SourceIndex;

pub use explain::{ExplainedCandidate, Explanation, WinReason};

/// One offer, with the source it came from, in ranking order.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Position of the source in the config; lower wins ties.
    pub source_index: usize,
    pub source: Arc<str>,
    pub offer: Offer,
}

impl Candidate {
    pub fn specificity(&self) -> Specificity {
        self.offer.scope.specificity()
    }

    /// Where the credential comes from, as `lookup` and the API report it:
    /// `[[registry]] at /etc/credgate/config.toml:3 (secret file /etc/credgate/secrets/gitlab)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.source, self.offer.origin)
    }
}

/// What one source said about a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOutcome {
    Offered(usize),
    NothingMatched,
    /// The source could not be read; the message names the file or program, never a secret.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct SourceReport {
    pub source: Arc<str>,
    pub outcome: SourceOutcome,
}

/// Every candidate for a target, best first, and what each source said.
#[derive(Debug, Clone)]
pub struct Ranking {
    pub target: Target,
    pub candidates: Vec<Candidate>,
    pub sources: Vec<SourceReport>,
}

/// What fetching one candidate gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Hit,
    Miss,
    Failed(String),
}

/// The winning candidate and its credential.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Index into [`Ranking::candidates`].
    pub rank: usize,
    pub credential: Credential,
}

/// The outcome of a lookup. `winner` is `None` for anonymous.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What was asked; `ranking.target` differs when a bare registry was narrowed to a path.
    pub requested: Target,
    pub ranking: Ranking,
    pub winner: Option<Resolved>,
    /// Fetch attempts up to and including the winner, by rank.
    pub attempts: Vec<(usize, Attempt)>,
}

impl Decision {
    pub fn winner_candidate(&self) -> Option<&Candidate> {
        self.winner
            .as_ref()
            .map(|w| &self.ranking.candidates[w.rank])
    }

    /// True when some source or candidate failed, so "anonymous" may be the wrong answer.
    pub fn had_failures(&self) -> bool {
        self.ranking
            .sources
            .iter()
            .any(|s| matches!(s.outcome, SourceOutcome::Failed(_)))
            || self
                .attempts
                .iter()
                .any(|(_, a)| matches!(a, Attempt::Failed(_)))
    }
}

pub struct Keychain {
    sources: Vec<Arc<dyn Source>>,
    /// Each source's name, made once: a lookup is on the hot path.
    names: Vec<Arc<str>>,
    /// Which sources each registry's lookups ask.
    index: SourceIndex,
    /// Where every credential helper of these sources runs; `None` when built from sources.
    helper_runs: Option<Arc<HelperRuns>>,
}

impl Keychain {
    /// Sources in the order given; that order breaks ties.
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Self {
        let names = sources.iter().map(|s| Arc::from(s.name())).collect();
        Self {
            index: SourceIndex::new(&sources),
            sources,
            names,
            helper_runs: None,
        }
    }

    /// One source per config entry; all their credential helpers share one [`HelperRuns`],
    /// so answers are reused and the number of helpers running at once is bounded.
    pub fn from_config(config: &Config, system: &System) -> Self {
        let helper_runs = HelperRuns::new(system.clock.clone(), config.helpers.timeout);
        let sources = config
            .sources
            .iter()
            .map(|entry| source_for(entry, system, &helper_runs))
            .collect();
        Self {
            helper_runs: Some(helper_runs),
            ..Self::new(sources)
        }
    }

    /// Helper answers held and helpers running now, for metrics.
    pub fn helper_stats(&self) -> HelperStats {
        self.helper_runs
            .as_ref()
            .map(|runs| runs.stats())
            .unwrap_or_default()
    }

    pub fn source_names(&self) -> Vec<String> {
        self.names.iter().map(|n| n.to_string()).collect()
    }

    /// Asks the sources that may offer for the target's registry (concurrently) and ranks
    /// what they offer. Cheap: no helper runs. `[[registry]]` entries for other registries
    /// are not asked and not in [`Ranking::sources`].
    pub async fn rank(&self, target: &Target) -> Ranking {
        self.rank_among(target, self.index.for_registry(&target.registry))
            .await
    }

    /// [`Keychain::rank`] over every source, so `explain` can say what each one found.
    pub async fn rank_all(&self, target: &Target) -> Ranking {
        self.rank_among(target, (0..self.sources.len()).collect())
            .await
    }

    /// Ranks the offers of the sources at `positions`, which are in config order.
    async fn rank_among(&self, target: &Target, positions: Vec<usize>) -> Ranking {
        let answers = join_all(positions.iter().map(|&i| self.sources[i].offers(target))).await;
        let mut candidates = Vec::new();
        let mut sources = Vec::with_capacity(positions.len());
        for (index, answer) in positions.into_iter().zip(answers) {
            let name = &self.names[index];
            let outcome = match answer {
                Ok(offers) if offers.is_empty() => SourceOutcome::NothingMatched,
                Ok(offers) => {
                    let count = offers.len();
                    candidates.extend(offers.into_iter().map(|offer| Candidate {
                        source_index: index,
                        source: name.clone(),
                        offer,
                    }));
                    SourceOutcome::Offered(count)
                }
                Err(e) => {
                    tracing::warn!(source = %name, target = %target, error = %e, "credential source failed");
                    SourceOutcome::Failed(e.to_string())
                }
            };
            sources.push(SourceReport {
                source: name.clone(),
                outcome,
            });
        }
        // Stable: equal specificity keeps source order, and each source's own order.
        candidates.sort_by(|a, b| {
            b.specificity()
                .cmp(&a.specificity())
                .then(a.source_index.cmp(&b.source_index))
        });
        Ranking {
            target: target.clone(),
            candidates,
            sources,
        }
    }

    /// Every scope the sources can name without running a helper, with usernames where
    /// known, sorted by how the scope is written; on duplicates the source listed first wins.
    pub async fn list(&self) -> Vec<(Scope, String)> {
        self.listing()
            .await
            .into_iter()
            .map(|listed| (listed.scope, listed.username))
            .collect()
    }

    /// [`Keychain::list`] with the kind of secret each scope holds, where known.
    pub async fn listing(&self) -> Vec<Listed> {
        let mut listed = BTreeMap::new();
        for entry in self.list_in_order((0..self.sources.len()).collect()).await {
            listed.entry(entry.scope.to_string()).or_insert(entry);
        }
        listed.into_values().collect()
    }

    /// Ranks, then fetches in order until a candidate yields a credential.
    ///
    /// A lookup for a bare registry (what docker credential helpers are asked: crane, oras and
    /// skopeo name only the host) that finds no registry-wide credential is narrowed to the
    /// first path-scoped scope the sources list for that exact host. Without this, a GitLab
    /// deploy token scoped to `host/group/sub` would never reach those clients and they would
    /// pull anonymously, the very 403 credgate exists to remove.
    pub async fn lookup(&self, target: &Target) -> Decision {
        let decision = self.lookup_exact(target).await;
        if decision.winner.is_some() || target.repository.is_some() {
            return decision;
        }
        let Some(narrowed) = self.path_scope_for(&target.registry).await else {
            return decision;
        };
        tracing::info!(
            requested = %target,
            narrowed = %narrowed,
            "no registry-wide credential; the client named no repository, so the path-scoped one is used"
        );
        Decision {
            requested: target.clone(),
            ..self.lookup_exact(&narrowed).await
        }
    }

    async fn lookup_exact(&self, target: &Target) -> Decision {
        let ranking = self.rank(target).await;
        let (winner, attempts) = ranking.resolve_from(0).await;
        Decision {
            requested: target.clone(),
            ranking,
            winner,
            attempts,
        }
    }

    /// The first path-scoped scope listed for exactly `registry`, as a target.
    pub async fn path_scope_for(&self, registry: &RegistryHost) -> Option<Target> {
        let listed = self.list_in_order(self.index.for_registry(registry)).await;
        let mut paths = listed
            .iter()
            .filter(|listed| listed.scope.exact_registry() == Some(registry))
            .filter_map(|listed| listed.scope.path().map(|p| (p, &listed.username)));
        let (first, first_user) = paths.next()?;
        if let Some((other, _)) = paths.find(|(_, user)| user != &first_user) {
            tracing::warn!(
                %registry,
                chosen = %first,
                other = %other,
                "several path-scoped credentials with different users for a client that named only the host; using the first listed (add a registry-wide [[registry]] entry to choose)"
            );
        }
        Some(Target::new(registry.clone(), Some(first.clone())))
    }

    /// Every scope the sources at `positions` list, in config order.
    async fn list_in_order(&self, positions: Vec<usize>) -> Vec<Listed> {
        let answers = join_all(positions.iter().map(|&i| self.sources[i].listing())).await;
        let mut listed = Vec::new();
        for (index, answer) in positions.into_iter().zip(answers) {
            match answer {
                Ok(entries) => listed.extend(entries),
                Err(e) => {
                    tracing::warn!(source = %self.names[index], error = %e, "credential source failed to list")
                }
            }
        }
        listed
    }
}

impl Ranking {
    /// Fetches candidates from `start` on until one yields a credential; the endpoint calls
    /// this again past a candidate the upstream rejected.
    pub async fn resolve_from(&self, start: usize) -> (Option<Resolved>, Vec<(usize, Attempt)>) {
        let mut attempts = Vec::new();
        for (rank, candidate) in self.candidates.iter().enumerate().skip(start) {
            let attempt = fetch_logged(&self.target, candidate).await;
            match attempt {
                Ok(Some(credential)) => {
                    attempts.push((rank, Attempt::Hit));
                    return (Some(Resolved { rank, credential }), attempts);
                }
                Ok(None) => attempts.push((rank, Attempt::Miss)),
                Err(message) => attempts.push((rank, Attempt::Failed(message))),
            }
        }
        (None, attempts)
    }
}

async fn fetch_logged(
    target: &Target,
    candidate: &Candidate,
) -> Result<Option<Credential>, String> {
    let result = candidate.offer.fetch().await;
    let scope = candidate.offer.scope.to_string();
    match &result {
        Ok(Some(c)) => {
            tracing::debug!(%target, source = %candidate.source, %scope, origin = %candidate.offer.origin, auth_type = %c.auth_type(), username = %c.username, "candidate hit")
        }
        Ok(None) => {
            tracing::debug!(%target, source = %candidate.source, %scope, origin = %candidate.offer.origin, "candidate had no credential")
        }
        Err(e) => {
            tracing::warn!(%target, source = %candidate.source, %scope, origin = %candidate.offer.origin, error = %e, "candidate failed; trying the next")
        }
    }
    result.map_err(|e| e.to_string())
}

fn source_for(
    entry: &SourceEntry,
    system: &System,
    helper_runs: &Arc<HelperRuns>,
) -> Arc<dyn Source> {
    match entry {
        SourceEntry::Registry(e) => {
            Arc::new(StaticRegistrySource::new(e, system.clone(), helper_runs))
        }
        SourceEntry::DockerConfig(e) => {
            Arc::new(DockerConfigSource::new(e, system.clone(), helper_runs))
        }
        SourceEntry::KubeletProvider(e) => Arc::new(KubeletProviderSource::new(
            e,
            system.clone(),
            helper_runs.timeout(),
        )),
    }
}

#[cfg(test)]
mod tests;
