//! Secrets, kept out of logs by their types: [`Secret`], a credential's secret as sources
//! hand it on, and [`MirrorSecret`], the per-install value hosts.toml sends in
//! `X-Credgate-Secret`, the endpoint's access boundary (read from `listen.mirror_secret_file`,
//! generated there at first start).

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use crate::atomic_file::{create_atomically, Creation};
use crate::hex::lower_hex;

/// A secret value. `Debug` never shows it and there is no `Display`: reading it takes an
/// explicit [`Secret::expose`], so it can't slip into a log line or an error by formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Random bytes in a generated mirror secret (written as 64 hex characters).
const GENERATED_BYTES: usize = 32;
/// The mirror secret file is credgate's alone.
const SECRET_FILE_MODE: u32 = 0o600;

/// Why the mirror secret could not be read or made; no variant holds the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the mirror secret {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the mirror secret {path} is empty")]
    Empty { path: PathBuf },
    #[error("the mirror secret {path} is not one line of visible ASCII (a header value)")]
    NotAHeaderValue { path: PathBuf },
    #[error("cannot write a new mirror secret to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no system randomness for a new mirror secret")]
    Random,
}

/// The mirror secret's value. Its `Debug` never shows it.
#[derive(Clone)]
pub struct MirrorSecret(Vec<u8>);

impl fmt::Debug for MirrorSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MirrorSecret(..)")
    }
}

/// Where a loaded secret came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretOrigin {
    Read,
    Generated,
}

impl MirrorSecret {
    /// A secret with this value (tests, and callers that manage the file themselves).
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must write it out: `credgate install`
    /// putting it into hosts.toml's `[header]`.
    pub fn reveal(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time comparison with a header value; only the length may leak, and every
    /// generated secret has the same length.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_slice().ct_eq(presented).into()
    }

    /// Reads the secret at `path`, trimming one trailing newline. A file that group or
    /// others can read is used with a warning (as for every other secret file credgate
    /// reads), because refusing to start would send every pull around credgate.
    pub fn read(path: &Path) -> Result<Self, SecretError> {
        let read_err = |source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read(path).map_err(read_err)?;
        warn_if_readable_by_others(path);
        Self::from_file_text(path, text)
    }

    /// Reads the secret at `path`, or, if there is no file, generates one and creates it there
    /// (mode 0600, never visible half-written). Of several processes doing this at once
    /// (`serve` and `install`) one creates the file and the others read its secret back, so
    /// they all agree.
    pub fn read_or_generate(path: &Path) -> Result<(Self, SecretOrigin), SecretError> {
        match Self::read(path) {
            Ok(secret) => Ok((secret, SecretOrigin::Read)),
            Err(SecretError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Self::generate(path)
            }
            Err(e) => Err(e),
        }
    }

    /// The secret in a secret file's content, as [`MirrorSecret::read`] takes it: one
    /// trailing newline trimmed, then one non-empty line of visible ASCII. `path` only names
    /// the file in errors (doctor reads the file its own way).
    pub fn from_file_text(path: &Path, mut text: Vec<u8>) -> Result<Self, SecretError> {
        if text.last() == Some(&b'\n') {
            text.pop();
        }
        if text.is_empty() {
            return Err(SecretError::Empty {
                path: path.to_path_buf(),
            });
        }
        if !text.iter().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::NotAHeaderValue {
                path: path.to_path_buf(),
            });
        }
        Ok(Self(text))
    }

    /// A new secret created at `path`, or the one another process created there first.
    fn generate(path: &Path) -> Result<(Self, SecretOrigin), SecretError> {
        let mut bytes = [0u8; GENERATED_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        let hex = lower_hex(&bytes);
        let write_err = |source| SecretError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        match create_atomically(path, format!("{hex}\n").as_bytes(), SECRET_FILE_MODE) {
            Ok(Creation::Created) => Ok((Self(hex.into_bytes()), SecretOrigin::Generated)),
            Ok(Creation::AlreadyThere) => Ok((Self::read(path)?, SecretOrigin::Read)),
            Err(e) => Err(write_err(e)),
        }
    }
}

fn warn_if_readable_by_others(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            fix = format!("chmod 600 {}", path.display()),
            "the mirror secret is readable by group or others: any local user who reads it \
             can pull through credgate with the node's credentials"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The secret file is mode 0600 and, the write being atomic, alone in its directory.
    fn assert_alone_and_0600(path: &Path) {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("mirror-secret")]);
    }

    #[test]
    fn a_secret_debugs_redacted() {
        let shown = format!("{:?}", Secret::new("hunter2-secret"));
        assert_eq!(shown, "Secret(<redacted>)");
    }

    #[test]
    fn a_missing_secret_is_generated_0600_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/credgate/mirror-secret");
        let (generated, origin) = MirrorSecret::read_or_generate(&path).unwrap();
        assert_eq!(origin, SecretOrigin::Generated);
        let text = std::fs::read_to_string(&path).unwrap();
        let value = text.strip_suffix('\n').unwrap();
        assert_eq!(value.len(), 2 * GENERATED_BYTES);
        assert!(value.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(generated.matches(value.as_bytes()));
        assert_alone_and_0600(&path);

        let (again, origin) = MirrorSecret::read_or_generate(&path).unwrap();
        assert_eq!(origin, SecretOrigin::Read);
        assert!(again.matches(value.as_bytes()));
    }

    #[test]
    fn racing_generators_all_get_the_one_secret_that_was_written_complete_and_0600() {
        const GENERATORS: usize = 24;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/credgate/mirror-secret");
        let start = std::sync::Barrier::new(GENERATORS + 1);
        let done = std::sync::atomic::AtomicBool::new(false);
        let (secrets, generated) = std::thread::scope(|scope| {
            // A reader polling the path the whole time: it sees no file or the whole secret.
            let reader = scope.spawn(|| {
                start.wait();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(text) = std::fs::read(&path) {
                        assert_eq!(text.len(), 2 * GENERATED_BYTES + 1, "a partial secret");
                    }
                }
            });
            let generators: Vec<_> = (0..GENERATORS)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        MirrorSecret::read_or_generate(&path).unwrap()
                    })
                })
                .collect();
            let results: Vec<_> = generators.into_iter().map(|g| g.join().unwrap()).collect();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            reader.join().unwrap();
            let generated = results
                .iter()
                .filter(|(_, origin)| *origin == SecretOrigin::Generated)
                .count();
            let secrets: Vec<Vec<u8>> = results.into_iter().map(|(s, _)| s.0).collect();
            (secrets, generated)
        });
        assert_eq!(generated, 1, "exactly one generator wins");
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len(), 2 * GENERATED_BYTES + 1);
        assert!(secrets
            .iter()
            .all(|s| [s.as_slice(), b"\n"].concat() == text));
        assert_alone_and_0600(&path);
    }

    #[test]
    fn two_generated_secrets_differ() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = MirrorSecret::read_or_generate(&dir.path().join("a")).unwrap();
        let (_, _) = MirrorSecret::read_or_generate(&dir.path().join("b")).unwrap();
        let a = std::fs::read(dir.path().join("a")).unwrap();
        let b = std::fs::read(dir.path().join("b")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn an_existing_secret_is_read_with_one_newline_trimmed_and_compared_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirror-secret");
        std::fs::write(&path, "s3cret-value\n").unwrap();
        let secret = MirrorSecret::read(&path).unwrap();
        assert!(secret.matches(b"s3cret-value"));
        assert!(!secret.matches(b"s3cret-valu"));
        assert!(!secret.matches(b"s3cret-value\n"));
        assert!(!secret.matches(b""));
        assert_eq!(format!("{secret:?}"), "MirrorSecret(..)");
    }

    #[test]
    fn empty_or_multi_line_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirror-secret");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            MirrorSecret::read(&path),
            Err(SecretError::Empty { .. })
        ));
        std::fs::write(&path, "a b\n").unwrap();
        assert!(matches!(
            MirrorSecret::read(&path),
            Err(SecretError::NotAHeaderValue { .. })
        ));
    }

    #[test]
    fn an_unreadable_path_is_an_error_not_a_new_secret() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the path: reading fails with something other than NotFound.
        assert!(matches!(
            MirrorSecret::read_or_generate(dir.path()),
            Err(SecretError::Read { .. })
        ));
    }
}
