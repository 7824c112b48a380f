//! Rendering the transfer service's `Progress` events.
//!
//! containerd sends two kinds of event on the progress stream (core/transfer/local/pull.go and
//! progress.go): status lines with no `name` ("Resolving from …", "Pulling from …",
//! "Completed pull from …"), and per-blob events named by the blob (`waiting`, `downloading`,
//! `complete`, `already exists`, then `extracting`/`extracted` while unpacking) with byte
//! counts. [`PullProgress`] folds them into one state; [`ProgressView`] shows it: a bar on a
//! terminal, one line per change otherwise, or nothing.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use containerd_client::types::transfer::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Events that count a blob's download; unpacking reuses the names with other events.
const DOWNLOAD_EVENTS: &[&str] = &["waiting", "downloading", "complete", "already exists"];

/// One blob's download as far as the events tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobProgress {
    pub event: String,
    pub done: u64,
    pub total: u64,
}

/// The whole pull, folded from its events.
#[derive(Debug, Default)]
pub struct PullProgress {
    /// The latest status line.
    pub status: String,
    blobs: BTreeMap<String, BlobProgress>,
}

/// What changed with one event, for line output.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// A new status line.
    Status(String),
    /// A blob reached an event worth a line (`complete`, `already exists`, `extracted`).
    Blob { name: String, event: String },
    /// Byte counts moved; not worth a line of its own.
    Bytes,
}

impl PullProgress {
    pub fn apply(&mut self, event: &Progress) -> Change {
        if event.name.is_empty() {
            self.status = event.event.clone();
            return Change::Status(event.event.clone());
        }
        if event.event == "extracted" {
            return Change::Blob {
                name: event.name.clone(),
                event: event.event.clone(),
            };
        }
        if !DOWNLOAD_EVENTS.contains(&event.event.as_str()) {
            return Change::Bytes;
        }
        let blob = self.blobs.entry(event.name.clone()).or_default();
        let was = std::mem::replace(&mut blob.event, event.event.clone());
        blob.done = u64::try_from(event.progress).unwrap_or(0);
        blob.total = u64::try_from(event.total).unwrap_or(0).max(blob.total);
        if matches!(event.event.as_str(), "complete" | "already exists") && was != event.event {
            // A finished blob counts whole even when the last event carried no bytes.
            blob.done = blob.total.max(blob.done);
            return Change::Blob {
                name: event.name.clone(),
                event: event.event.clone(),
            };
        }
        Change::Bytes
    }

    /// Bytes downloaded and bytes known to be needed, over every blob seen.
    pub fn bytes(&self) -> (u64, u64) {
        self.blobs
            .values()
            .fold((0, 0), |(d, t), b| (d + b.done.min(b.total), t + b.total))
    }
}

/// How progress is shown, chosen once per pull.
pub enum ProgressView {
    /// `--no-progress`, or no progress stream: nothing.
    Off,
    /// stderr is not a terminal: one line per status or finished blob.
    Lines,
    /// stderr is a terminal: one bar of bytes with the status as its message.
    Bar(ProgressBar),
}

impl ProgressView {
    /// A bar when stderr is a terminal, lines otherwise; `Off` when `enabled` is false.
    pub fn for_stderr(enabled: bool) -> Self {
        if !enabled {
            return Self::Off;
        }
        if !std::io::stderr().is_terminal() {
            return Self::Lines;
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {wide_msg} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("progress template is valid")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Self::Bar(bar)
    }

    pub fn is_off(&self) -> bool {
        matches!(self, Self::Off)
    }

    pub fn show(&self, state: &PullProgress, change: &Change) {
        match (self, change) {
            (Self::Off, _) | (Self::Lines, Change::Bytes) => {}
            (Self::Lines, Change::Status(status)) => eprintln!("{status}"),
            (Self::Lines, Change::Blob { name, event }) => eprintln!("{}: {event}", short(name)),
            (Self::Bar(bar), _) => {
                let (done, total) = state.bytes();
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(state.status.clone());
            }
        }
    }

    /// Clears the bar; lines stay as printed.
    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// A blob's name as events carry it (`layer-sha256:…`, `index-sha256:…`), shortened.
fn short(name: &str) -> &str {
    match name.find("sha256:") {
        Some(at) => &name[..(at + "sha256:".len() + 12).min(name.len())],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, event: &str, progress: i64, total: i64) -> Progress {
        Progress {
            event: event.into(),
            name: name.into(),
            progress,
            total,
            ..Default::default()
        }
    }

    #[test]
    fn status_events_replace_the_status() {
        let mut state = PullProgress::default();
        let change = state.apply(&event("", "Pulling from registry.test/app:v1", 0, 0));
        assert_eq!(
            change,
            Change::Status("Pulling from registry.test/app:v1".into())
        );
        assert_eq!(state.status, "Pulling from registry.test/app:v1");
    }

    #[test]
    fn download_events_fold_into_bytes_and_finished_blobs() {
        let mut state = PullProgress::default();
        state.apply(&event("layer-sha256:aa", "waiting", 0, 100));
        assert_eq!(
            state.apply(&event("layer-sha256:aa", "downloading", 40, 100)),
            Change::Bytes
        );
        state.apply(&event("layer-sha256:bb", "downloading", 10, 50));
        assert_eq!(state.bytes(), (50, 150));
        assert_eq!(
            state.apply(&event("layer-sha256:aa", "complete", 0, 100)),
            Change::Blob {
                name: "layer-sha256:aa".into(),
                event: "complete".into()
            }
        );
        // A repeated "complete" is not a new line.
        assert_eq!(
            state.apply(&event("layer-sha256:aa", "complete", 100, 100)),
            Change::Bytes
        );
        state.apply(&event("config-sha256:cc", "already exists", 0, 7));
        assert_eq!(state.bytes(), (117, 157));
    }

    #[test]
    fn unpacking_does_not_disturb_download_counts() {
        let mut state = PullProgress::default();
        state.apply(&event("layer-sha256:aa", "complete", 100, 100));
        assert_eq!(
            state.apply(&event("layer-sha256:aa", "extracting", 3, 100)),
            Change::Bytes
        );
        assert!(matches!(
            state.apply(&event("layer-sha256:aa", "extracted", 100, 100)),
            Change::Blob { .. }
        ));
        assert_eq!(state.bytes(), (100, 100));
    }

    #[test]
    fn names_are_shortened_to_a_digest_prefix() {
        assert_eq!(
            short("layer-sha256:0123456789abcdef0123"),
            "layer-sha256:0123456789ab"
        );
        assert_eq!(short("manifest"), "manifest");
    }
}
