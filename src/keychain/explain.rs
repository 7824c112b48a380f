//! `explain`: every candidate from every source, fetched, with the winner and the reason.

use std::fmt;

use futures::future::join_all;

use super::{fetch_logged, Attempt, Keychain, Ranking};
use crate::identity::Target;
use crate::sources::AuthType;

#[derive(Debug, Clone)]
pub struct ExplainedCandidate {
    pub attempt: Attempt,
    /// Username and auth type of a hit; never the secret.
    pub username: Option<String>,
    pub auth_type: Option<AuthType>,
}

/// Why the winner won, in terms of the candidate it beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WinReason {
    /// No other candidate had a credential.
    Only,
    /// Its scope is more specific than the runner-up's.
    MoreSpecific { runner_up: String },
    /// Same specificity as the runner-up; its source is listed first.
    ListedFirst { runner_up: String },
}

#[derive(Debug, Clone)]
pub struct Explanation {
    pub ranking: Ranking,
    /// Parallel to `ranking.candidates`.
    pub candidates: Vec<ExplainedCandidate>,
    /// Rank of the winner.
    pub winner: Option<usize>,
    pub reason: Option<WinReason>,
    /// Higher-ranked candidates that missed or failed before the winner.
    pub passed_over: usize,
}

impl Keychain {
    /// Like [`Keychain::lookup`], but fetches every candidate so all can be shown.
    pub async fn explain(&self, target: &Target) -> Explanation {
        let ranking = self.rank_all(target).await;
        let fetched = join_all(ranking.candidates.iter().map(|c| fetch_logged(target, c))).await;
        let candidates: Vec<ExplainedCandidate> = fetched
            .into_iter()
            .map(|result| match result {
                Ok(Some(c)) => ExplainedCandidate {
                    attempt: Attempt::Hit,
                    username: Some(c.username.clone()),
                    auth_type: Some(c.auth_type()),
                },
                Ok(None) => ExplainedCandidate {
                    attempt: Attempt::Miss,
                    username: None,
                    auth_type: None,
                },
                Err(message) => ExplainedCandidate {
                    attempt: Attempt::Failed(message),
                    username: None,
                    auth_type: None,
                },
            })
            .collect();
        let hits: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].attempt == Attempt::Hit)
            .collect();
        let winner = hits.first().copied();
        let reason = winner.map(|w| reason(&ranking, w, hits.get(1).copied()));
        Explanation {
            passed_over: winner.unwrap_or(candidates.len()),
            ranking,
            candidates,
            winner,
            reason,
        }
    }
}

fn reason(ranking: &Ranking, winner: usize, runner_up: Option<usize>) -> WinReason {
    let Some(runner_up) = runner_up else {
        return WinReason::Only;
    };
    let (w, r) = (&ranking.candidates[winner], &ranking.candidates[runner_up]);
    if w.specificity() > r.specificity() {
        WinReason::MoreSpecific {
            runner_up: format!("{} from {}", r.offer.scope, r.source),
        }
    } else {
        WinReason::ListedFirst {
            runner_up: format!("{} from {}", r.offer.scope, r.source),
        }
    }
}

impl fmt::Display for WinReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Only => f.write_str("the only candidate with a credential"),
            Self::MoreSpecific { runner_up } => {
                write!(f, "its scope is more specific than {runner_up}")
            }
            Self::ListedFirst { runner_up } => {
                write!(
                    f,
                    "same specificity as {runner_up}, and its source is listed first"
                )
            }
        }
    }
}
