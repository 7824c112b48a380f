//! docker credential helpers: `docker-credential-NAME get|list`, run with a timeout and a
//! controlled environment.
//!
//! A helper runs as root, so a name from a docker config must be a plain name
//! (`[A-Za-z0-9._-]`, found on the helper path), never a path. Runs are bounded: [`HelperRuns`]
//! reuses answers for [`ANSWER_REUSE`], lets identical calls in flight share one run, and
//! runs at most [`MAX_RUNNING`] helpers at once.
//!
//! The protocol is spoken as docker's own client (docker/docker-credential-helpers `client`)
//! speaks it: the server URL on stdin with no newline, JSON on stdout, and on failure a
//! non-zero exit with a one-line message on stdout. Stdout may hold a secret whatever the
//! exit code (a helper may print its credential and still fail), so it is never echoed into
//! an error or a log: only its size and whether it is JSON are told, and the protocol's
//! fixed replies are recognised by comparison.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::answer_cache::AnswerCache;
use super::{Credential, Fetch, SourceError};
use crate::system::{Clock, ProcessError, ProcessOutput, ProcessSpec, System, OUTPUT_LIMIT};

/// How long a helper's answer (a credential, a miss, a listing) is reused.
pub const ANSWER_REUSE: Duration = Duration::from_secs(30);
/// How long a helper's failure is reused, so a broken helper is not started per request.
pub const FAILURE_REUSE: Duration = Duration::from_secs(5);
/// Most answers kept per action (`get`, `list`).
pub const MAX_ANSWERS: usize = 256;
/// Most helper processes running at once; more callers wait, up to the helper timeout.
pub const MAX_RUNNING: usize = 4;

/// What a helper prints when it has nothing for the server URL (`credentials` package).
const NOT_FOUND_REPLY: &str = "credentials not found in native keychain";
/// Replies to a request without a server URL or username; docker turns them into errors.
const MISSING_SERVER_URL_REPLY: &str = "no credentials server URL";
const MISSING_USERNAME_REPLY: &str = "no credentials username";
/// The username docker/cli stores when the secret is an identity token.
const IDENTITY_TOKEN_USERNAME: &str = "<token>";
/// docker's client sends this to `list`, which reads no input.
const LIST_STDIN: &[u8] = b"unused";

/// Why a helper gave no answer. Every variant names the helper; none carries a secret.
/// Clone, because one run's answer is shared by every identical call waiting for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HelperError {
    #[error("{helper} not found on PATH ({path})")]
    NotOnPath { helper: String, path: String },
    #[error("{helper} not found")]
    NotFound { helper: String },
    #[error("{helper} could not be started: {source}")]
    Spawn {
        helper: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{helper} was not started: {MAX_RUNNING} credential helpers were still running after {}", show_duration(*waited))]
    Busy { helper: String, waited: Duration },
    #[error("{helper} did not answer within {} and was killed", show_duration(*timeout))]
    TimedOut { helper: String, timeout: Duration },
    #[error("{helper} {action} printed more than {OUTPUT_LIMIT} bytes")]
    OutputTooLarge {
        helper: String,
        action: &'static str,
    },
    #[error("{helper} {action}: {source}")]
    Io {
        helper: String,
        action: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The helper refused the request itself (`no credentials server URL`).
    #[error("{helper} {action} refused the request: {reply}")]
    Refused {
        helper: String,
        action: &'static str,
        reply: &'static str,
    },
    #[error("{helper} {action} failed with {} and printed {stdout}", show_exit(*code))]
    Failed {
        helper: String,
        action: &'static str,
        /// `None` when a signal ended the helper.
        code: Option<i32>,
        /// What stdout held, by size and shape only.
        stdout: StdoutShape,
    },
    #[error("{helper} {action} printed {bytes} bytes that are not credential JSON")]
    NotCredentialJson {
        helper: String,
        action: &'static str,
        bytes: usize,
    },
}

impl HelperError {
    /// How long this failure may answer identical calls: not at all when no helper ran.
    fn reuse(&self) -> Duration {
        match self {
            Self::Busy { .. } => Duration::ZERO,
            _ => FAILURE_REUSE,
        }
    }
}

/// Refuses a helper name that is not docker's plain form: `docker-credential-NAME` is looked
/// up on the helper path, and a name with a `/` would make it a path to run as root.
pub fn check_helper_name(name: &str) -> Result<(), &'static str> {
    match name {
        "" => Err("is empty"),
        "." | ".." => Err("is '.' or '..'"),
        _ if name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            Ok(())
        }
        _ => Err("is not a helper name (only A-Z a-z 0-9 . _ -; never a path)"),
    }
}

/// Every helper run of one keychain goes through here: answers are reused, identical calls
/// in flight share a run, and at most [`MAX_RUNNING`] helpers run at once.
pub struct HelperRuns {
    timeout: Duration,
    slots: Semaphore,
    /// Runs killed at the timeout, for metrics.
    timeouts: AtomicU64,
    gets: AnswerCache<(PathBuf, String), Result<Option<Credential>, HelperError>>,
    lists: AnswerCache<PathBuf, Result<BTreeMap<String, String>, HelperError>>,
}

/// How busy the helpers are, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HelperStats {
    /// Answers held (live, in flight or expired but not yet dropped).
    pub cached_answers: usize,
    /// Helper processes running now.
    pub running: usize,
    /// Runs killed at the timeout so far.
    pub timeouts: u64,
}

impl HelperRuns {
    /// `timeout` bounds each run, and each wait for a free slot.
    pub fn new(clock: Arc<dyn Clock>, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            slots: Semaphore::new(MAX_RUNNING),
            timeouts: AtomicU64::new(0),
            gets: AnswerCache::new(clock.clone(), MAX_ANSWERS),
            lists: AnswerCache::new(clock, MAX_ANSWERS),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn stats(&self) -> HelperStats {
        HelperStats {
            cached_answers: self.gets.len() + self.lists.len(),
            running: MAX_RUNNING.saturating_sub(self.slots.available_permits()),
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }

    /// A slot to run `helper` in, waiting no longer than the helper timeout.
    async fn slot(&self, helper: &str) -> Result<SemaphorePermit<'_>, HelperError> {
        let busy = || HelperError::Busy {
            helper: helper.to_string(),
            waited: self.timeout,
        };
        match tokio::time::timeout(self.timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one would be as good as a full one.
            Ok(Err(_)) | Err(_) => Err(busy()),
        }
    }
}

/// How long a result may be reused.
fn reuse<T>(result: &Result<T, HelperError>) -> Duration {
    match result {
        Ok(_) => ANSWER_REUSE,
        Err(error) => error.reuse(),
    }
}

/// One docker credential helper program.
pub struct CredentialHelper {
    name: String,
    program: PathBuf,
    system: System,
    runs: Arc<HelperRuns>,
}

impl CredentialHelper {
    /// A helper from credgate's own config: a name (`pass` runs `docker-credential-pass`,
    /// found on the helper path) or a path containing `/`, run as is.
    pub fn new(name: &str, system: &System, runs: &Arc<HelperRuns>) -> Self {
        let program_name = if name.contains('/') {
            name.to_string()
        } else {
            format!("docker-credential-{name}")
        };
        Self {
            name: program_name.clone(),
            program: system.find_program(&program_name),
            system: system.clone(),
            runs: Arc::clone(runs),
        }
    }

    /// A helper named by a docker config: a plain name only (see [`check_helper_name`]).
    pub fn named(
        name: &str,
        system: &System,
        runs: &Arc<HelperRuns>,
    ) -> Result<Self, &'static str> {
        check_helper_name(name)?;
        Ok(Self::new(name, system, runs))
    }

    /// The program name, e.g. `docker-credential-pass`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `get`: the credential stored for `server_url`, `None` on "credentials not found".
    ///
    /// A reply with an empty secret is a miss too: docker turns it into an empty (anonymous)
    /// login, and `docker-credential-pass` 0.6 answers unknown hosts that way, exit 0.
    /// A recent answer for the same program and URL is reused without running anything.
    pub async fn get(&self, server_url: &str) -> Result<Option<Credential>, HelperError> {
        let key = (self.program.clone(), server_url.to_string());
        let run = async {
            let started = self.system.clock.now();
            let result = self.run_get(server_url).await;
            let outcome = match &result {
                Ok(Some(_)) => "hit",
                Ok(None) => "miss",
                Err(_) => "error",
            };
            self.log_call("get", server_url, outcome, started, result.as_ref().err());
            let reuse = reuse(&result);
            (result, reuse)
        };
        self.runs.gets.answer(key, run).await
    }

    /// `list`: server URL → username of everything the helper stores; a recent listing of
    /// the same program is reused.
    pub async fn list(&self) -> Result<BTreeMap<String, String>, HelperError> {
        let run = async {
            let started = self.system.clock.now();
            let result = self.run_list().await;
            let outcome = match &result {
                Ok(stored) if stored.is_empty() => "empty",
                Ok(_) => "listed",
                Err(_) => "error",
            };
            self.log_call("list", "", outcome, started, result.as_ref().err());
            let reuse = reuse(&result);
            (result, reuse)
        };
        self.runs.lists.answer(self.program.clone(), run).await
    }

    /// An offer's fetch that asks this helper for `server_url`.
    pub fn fetch_for(self: &Arc<Self>, server_url: impl Into<String>) -> Arc<dyn Fetch> {
        Arc::new(HelperFetch {
            helper: self.clone(),
            server_url: server_url.into(),
        })
    }

    async fn run_get(&self, server_url: &str) -> Result<Option<Credential>, HelperError> {
        const ACTION: &str = "get";
        let output = self.run(ACTION, server_url.as_bytes().to_vec()).await?;
        if !output.success() {
            return match reply(&output).as_str() {
                NOT_FOUND_REPLY => Ok(None),
                _ => Err(self.failure(ACTION, &output)),
            };
        }
        let reply =
            parse_get_reply(&output.stdout).ok_or_else(|| self.not_json(ACTION, &output))?;
        Ok(reply.into_credential())
    }

    async fn run_list(&self) -> Result<BTreeMap<String, String>, HelperError> {
        const ACTION: &str = "list";
        let output = self.run(ACTION, LIST_STDIN.to_vec()).await?;
        if !output.success() {
            return Err(self.failure(ACTION, &output));
        }
        parse_list_reply(&output.stdout).ok_or_else(|| self.not_json(ACTION, &output))
    }

    async fn run(
        &self,
        action: &'static str,
        stdin: Vec<u8>,
    ) -> Result<ProcessOutput, HelperError> {
        let spec = ProcessSpec {
            program: self.program.clone(),
            args: vec![action.to_string()],
            env: self.system.helper_env.clone(),
            stdin,
            timeout: self.runs.timeout,
        };
        let _slot = self.runs.slot(&self.name).await?;
        self.system
            .processes
            .run(spec)
            .await
            .map_err(|e| self.process_error(action, e))
    }

    /// A non-zero exit, read as docker's client reads it.
    fn failure(&self, action: &'static str, output: &ProcessOutput) -> HelperError {
        let helper = self.name.clone();
        match reply(output).as_str() {
            MISSING_SERVER_URL_REPLY => HelperError::Refused {
                helper,
                action,
                reply: MISSING_SERVER_URL_REPLY,
            },
            MISSING_USERNAME_REPLY => HelperError::Refused {
                helper,
                action,
                reply: MISSING_USERNAME_REPLY,
            },
            _ => HelperError::Failed {
                helper,
                action,
                code: output.code,
                stdout: StdoutShape::of(&output.stdout),
            },
        }
    }

    /// Only the size is told: a successful run's stdout may be a secret in a wrong shape.
    fn not_json(&self, action: &'static str, output: &ProcessOutput) -> HelperError {
        HelperError::NotCredentialJson {
            helper: self.name.clone(),
            action,
            bytes: output.stdout.len(),
        }
    }

    fn process_error(&self, action: &'static str, error: ProcessError) -> HelperError {
        let helper = self.name.clone();
        match error {
            ProcessError::NotFound { .. } if self.name.contains('/') => {
                HelperError::NotFound { helper }
            }
            ProcessError::NotFound { .. } => HelperError::NotOnPath {
                helper,
                path: self.search_path(),
            },
            ProcessError::Spawn { source, .. } => HelperError::Spawn {
                helper,
                source: Arc::new(source),
            },
            ProcessError::TimedOut { timeout, .. } => {
                self.runs.timeouts.fetch_add(1, Ordering::Relaxed);
                HelperError::TimedOut { helper, timeout }
            }
            ProcessError::OutputTooLarge { .. } => HelperError::OutputTooLarge { helper, action },
            ProcessError::Io { source, .. } => HelperError::Io {
                helper,
                action,
                source: Arc::new(source),
            },
        }
    }

    fn search_path(&self) -> String {
        let dirs: Vec<String> = self
            .system
            .helper_path
            .iter()
            .map(|dir| dir.display().to_string())
            .collect();
        dirs.join(":")
    }

    fn log_call(
        &self,
        action: &'static str,
        server_url: &str,
        outcome: &'static str,
        started: Instant,
        error: Option<&HelperError>,
    ) {
        let elapsed_ms = self
            .system
            .clock
            .now()
            .saturating_duration_since(started)
            .as_millis();
        let error = error.map(tracing::field::display);
        tracing::debug!(
            helper = %self.name,
            action,
            server_url,
            outcome,
            elapsed_ms,
            error,
            "credential helper call"
        );
    }
}

/// Stdout trimmed, as docker compares it with the protocol's fixed replies.
fn reply(output: &ProcessOutput) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Why a failed helper's stdout is described rather than quoted.
const NOT_SHOWN: &str = "not shown: it may hold a secret";

/// A helper's stdout told without its contents: how many bytes, and whether they are JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdoutShape {
    pub bytes: usize,
    pub json: bool,
}

impl StdoutShape {
    fn of(stdout: &[u8]) -> Self {
        Self {
            bytes: stdout.len(),
            json: first_json_value(stdout).is_some(),
        }
    }
}

impl std::fmt::Display for StdoutShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.bytes, self.json) {
            (0, _) => f.write_str("nothing on stdout"),
            (bytes, true) => write!(f, "{bytes} bytes of JSON on stdout ({NOT_SHOWN})"),
            (bytes, false) => write!(f, "{bytes} bytes on stdout, not JSON ({NOT_SHOWN})"),
        }
    }
}

/// What `get` printed: `{"ServerURL", "Username", "Secret"}`.
struct GetReply {
    username: String,
    secret: String,
}

impl GetReply {
    /// As docker/cli's native store: the `<token>` username marks an identity token and
    /// leaves the username empty.
    fn into_credential(self) -> Option<Credential> {
        if self.secret.is_empty() {
            return None;
        }
        if self.username == IDENTITY_TOKEN_USERNAME {
            return Some(Credential::identity_token("", self.secret));
        }
        Some(Credential::password(self.username, self.secret))
    }
}

/// The first JSON value on stdout; like Go's `json.Decoder`, anything after it is ignored.
fn first_json_value(stdout: &[u8]) -> Option<Value> {
    serde_json::Deserializer::from_slice(stdout)
        .into_iter::<Value>()
        .next()?
        .ok()
}

fn parse_get_reply(stdout: &[u8]) -> Option<GetReply> {
    let fields = match first_json_value(stdout)? {
        // Go decodes `null` into an untouched struct: an empty reply.
        Value::Null => Map::new(),
        Value::Object(map) => map,
        _ => return None,
    };
    Some(GetReply {
        username: string_field(&fields, "Username")?,
        secret: string_field(&fields, "Secret")?,
    })
}

fn parse_list_reply(stdout: &[u8]) -> Option<BTreeMap<String, String>> {
    match first_json_value(stdout)? {
        Value::Null => Some(BTreeMap::new()),
        Value::Object(map) => map
            .into_iter()
            .map(|(url, username)| Some((url, json_string(&username)?)))
            .collect(),
        _ => None,
    }
}

/// Go's `encoding/json` matches field names case-insensitively, preferring an exact match.
fn string_field(fields: &Map<String, Value>, name: &str) -> Option<String> {
    let value = fields.get(name).or_else(|| {
        fields
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    });
    value.map_or(Some(String::new()), json_string)
}

/// A JSON string, with `null` as the empty string as Go decodes it; other types are wrong.
fn json_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn show_exit(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit code {code}"),
        None => "a signal".to_string(),
    }
}

/// `10s`, `1500ms`: how a helper timeout is written in credgate's config.
fn show_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

struct HelperFetch {
    helper: Arc<CredentialHelper>,
    server_url: String,
}

#[async_trait]
impl Fetch for HelperFetch {
    async fn fetch(&self) -> Result<Option<Credential>, SourceError> {
        Ok(self.helper.get(&self.server_url).await?)
    }
}

/// Captures this thread's tracing output, for tests that check what is logged.
#[cfg(test)]
pub(crate) mod log_capture {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

    impl LogBuffer {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl std::io::Write for LogBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Debug and up, until the guard drops; a current-thread test runtime stays on this thread.
    pub fn start() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::SecretKind;
    use crate::system::fake::{ManualClock, MemoryFiles, ScriptedProcesses};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn helper_with(processes: &Arc<ScriptedProcesses>) -> CredentialHelper {
        let system = System::fake(
            Arc::new(ManualClock::new()),
            processes.clone(),
            Arc::new(MemoryFiles::new()),
        );
        let runs = HelperRuns::new(system.clock.clone(), TIMEOUT);
        CredentialHelper::new("pass", &system, &runs)
    }

    fn answering(
        reply: impl Fn(&ProcessSpec) -> Result<ProcessOutput, ProcessError> + Send + Sync + 'static,
    ) -> (Arc<ScriptedProcesses>, CredentialHelper) {
        let processes = Arc::new(ScriptedProcesses::new(reply));
        let helper = helper_with(&processes);
        (processes, helper)
    }

    async fn get_error(
        reply: impl Fn(&ProcessSpec) -> Result<ProcessOutput, ProcessError> + Send + Sync + 'static,
    ) -> String {
        let (_, helper) = answering(reply);
        helper.get("git.example.com").await.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn get_sends_the_server_url_as_docker_does() {
        let (processes, helper) = answering(|_| {
            ScriptedProcesses::ok(
                r#"{"ServerURL":"git.example.com:443","Username":"deploy","Secret":"s3cret"}"#,
            )
        });
        let credential = helper.get("git.example.com:443").await.unwrap().unwrap();
        assert_eq!(credential.username, "deploy");
        assert_eq!(credential.secret.expose(), "s3cret");
        assert_eq!(credential.kind, SecretKind::Password);
        let runs = processes.runs();
        assert_eq!(runs.len(), 1);
        let run = &runs[0];
        assert_eq!(run.program, PathBuf::from("docker-credential-pass"));
        assert_eq!(run.args, ["get"]);
        assert_eq!(run.stdin, b"git.example.com:443");
        assert_eq!(run.timeout, TIMEOUT);
        assert_eq!(run.env, helper.system.helper_env);
    }

    #[tokio::test]
    async fn token_username_means_an_identity_token() {
        let (_, helper) = answering(|_| {
            ScriptedProcesses::ok(r#"{"ServerURL":"r.test","Username":"<token>","Secret":"rt"}"#)
        });
        let credential = helper.get("r.test").await.unwrap().unwrap();
        assert_eq!(credential.kind, SecretKind::IdentityToken);
        assert_eq!(credential.username, "");
        assert_eq!(credential.secret.expose(), "rt");
    }

    #[tokio::test]
    async fn field_names_match_case_insensitively_as_in_go() {
        let (_, helper) =
            answering(|_| ScriptedProcesses::ok(r#"{"username":"u","secret":"p"} trailing"#));
        let credential = helper.get("r.test").await.unwrap().unwrap();
        assert_eq!(
            (credential.username.as_str(), credential.secret.expose()),
            ("u", "p")
        );
    }

    #[tokio::test]
    async fn not_found_reply_is_a_miss() {
        let (_, helper) =
            answering(|_| ScriptedProcesses::exit(1, "credentials not found in native keychain\n"));
        assert!(helper.get("r.test").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn empty_secret_is_a_miss() {
        // docker-credential-pass 0.6 answers an unknown host like this, with exit 0.
        let (_, helper) = answering(|_| {
            ScriptedProcesses::ok(r#"{"ServerURL":"nope","Username":"","Secret":""}"#)
        });
        assert!(helper.get("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn garbage_is_reported_by_size_only() {
        let garbage = r#"{"Username":"u","Secret":"hunter2-leaky-secret""#;
        let err = get_error(move |_| ScriptedProcesses::ok(garbage)).await;
        assert_eq!(
            err,
            format!(
                "docker-credential-pass get printed {} bytes that are not credential JSON",
                garbage.len()
            )
        );
        assert!(!err.contains("hunter2"), "{err}");
        let err = get_error(|_| ScriptedProcesses::ok(r#"{"Secret":42}"#)).await;
        assert!(err.contains("not credential JSON"), "{err}");
        assert!(!err.contains("42"), "{err}");
    }

    #[tokio::test]
    async fn failures_tell_stdout_by_size_and_shape_only() {
        let err =
            get_error(|_| ScriptedProcesses::exit(3, "  gpg: decryption failed\nmore\n")).await;
        assert_eq!(
            err,
            "docker-credential-pass get failed with exit code 3 and printed 30 bytes on stdout, \
             not JSON (not shown: it may hold a secret)"
        );
        assert!(!err.contains("gpg"), "{err}");
        let err = get_error(|_| ScriptedProcesses::exit(1, "")).await;
        assert!(
            err.ends_with("exit code 1 and printed nothing on stdout"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failing_helper_that_prints_its_credential_does_not_leak_it() {
        let (logs, _guard) = log_capture::start();
        let leaked = r#"{"ServerURL":"r.test","Username":"u","Secret":"s3cret"}"#;
        let err = get_error(move |_| ScriptedProcesses::exit(1, leaked)).await;
        assert_eq!(
            err,
            format!(
                "docker-credential-pass get failed with exit code 1 and printed {} bytes of \
                 JSON on stdout (not shown: it may hold a secret)",
                leaked.len()
            )
        );
        let logs = logs.text();
        assert!(logs.contains("credential helper call"), "{logs}");
        for text in [&err, &logs] {
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[tokio::test]
    async fn protocol_refusals_name_the_helper() {
        let err = get_error(|_| ScriptedProcesses::exit(1, "no credentials server URL\n")).await;
        assert_eq!(
            err,
            "docker-credential-pass get refused the request: no credentials server URL"
        );
    }

    #[tokio::test]
    async fn timeouts_say_the_helper_was_killed() {
        let err = get_error(|spec| {
            Err(ProcessError::TimedOut {
                program: spec.program.clone(),
                timeout: spec.timeout,
            })
        })
        .await;
        assert_eq!(
            err,
            "docker-credential-pass did not answer within 10s and was killed"
        );
    }

    #[tokio::test]
    async fn a_missing_helper_names_the_path_searched() {
        let processes = Arc::new(ScriptedProcesses::new(|spec| {
            Err(ProcessError::NotFound {
                program: spec.program.clone(),
            })
        }));
        let mut system = System::fake(
            Arc::new(ManualClock::new()),
            processes,
            Arc::new(MemoryFiles::new()),
        );
        system.helper_path = vec!["/nonexistent/a".into(), "/nonexistent/b".into()];
        let runs = HelperRuns::new(system.clock.clone(), TIMEOUT);
        let helper = CredentialHelper::new("nosuch", &system, &runs);
        let err = helper.get("r.test").await.unwrap_err().to_string();
        assert_eq!(
            err,
            "docker-credential-nosuch not found on PATH (/nonexistent/a:/nonexistent/b)"
        );
    }

    #[tokio::test]
    async fn list_reads_the_stored_urls() {
        let (processes, helper) = answering(|_| {
            ScriptedProcesses::ok(r#"{"https://git.example.com":"deploy","r.test:5000":"ci"}"#)
        });
        let stored = helper.list().await.unwrap();
        assert_eq!(stored.get("https://git.example.com").unwrap(), "deploy");
        assert_eq!(stored.len(), 2);
        let run = &processes.runs()[0];
        assert_eq!(run.args, ["list"]);
        assert_eq!(run.stdin, b"unused");
        assert_eq!(run.env, helper.system.helper_env);
    }

    #[tokio::test]
    async fn list_errors_follow_the_same_rules() {
        let (_, helper) = answering(|_| ScriptedProcesses::ok(r#"["hunter2"]"#));
        let err = helper.list().await.unwrap_err().to_string();
        assert_eq!(
            err,
            "docker-credential-pass list printed 11 bytes that are not credential JSON"
        );
        let (_, helper) = answering(|_| ScriptedProcesses::exit(2, "store locked"));
        let err = helper.list().await.unwrap_err().to_string();
        assert_eq!(
            err,
            "docker-credential-pass list failed with exit code 2 and printed 12 bytes on \
             stdout, not JSON (not shown: it may hold a secret)"
        );
    }

    #[tokio::test]
    async fn fetch_asks_for_the_url_it_was_made_for() {
        let processes = Arc::new(ScriptedProcesses::new(|_| {
            ScriptedProcesses::ok(r#"{"Username":"u","Secret":"p"}"#)
        }));
        let helper = Arc::new(helper_with(&processes));
        let fetch = helper.fetch_for("git.example.com:443");
        assert!(fetch.fetch().await.unwrap().is_some());
        assert_eq!(processes.runs()[0].stdin, b"git.example.com:443");
    }

    #[tokio::test]
    async fn each_call_is_logged_without_the_secret() {
        let (logs, _guard) = log_capture::start();
        let (_, helper) = answering(|spec| match spec.stdin.as_slice() {
            b"r.test" => ScriptedProcesses::ok(r#"{"Username":"u","Secret":"hunter2-secret"}"#),
            _ => ScriptedProcesses::ok(r#"{"Secret":"hunter2-secret""#),
        });
        helper.get("r.test").await.unwrap();
        helper.get("other.test").await.unwrap_err();
        let text = logs.text();
        assert!(!text.contains("hunter2"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for (line, outcome) in lines.iter().zip(["hit", "error"]) {
            for part in [
                "helper=docker-credential-pass",
                "action=\"get\"",
                &format!("outcome=\"{outcome}\""),
                "elapsed_ms=",
            ] {
                assert!(line.contains(part), "{part} in {line}");
            }
        }
        assert!(lines[0].contains("server_url=\"r.test\""), "{text}");
    }

    struct Pool {
        clock: Arc<ManualClock>,
        processes: Arc<ScriptedProcesses>,
        runs: Arc<HelperRuns>,
        helper: Arc<CredentialHelper>,
    }

    /// A helper that stores `hit.test` and fails with exit 2 for `broken.test`.
    fn pool(delay: Duration, timeout: Duration) -> Pool {
        let processes = Arc::new(
            ScriptedProcesses::new(
                |spec| match (spec.args[0].as_str(), spec.stdin.as_slice()) {
                    ("list", _) => ScriptedProcesses::ok(r#"{"hit.test":"u"}"#),
                    (_, b"broken.test") => ScriptedProcesses::exit(2, "store locked"),
                    (_, b"miss.test") => ScriptedProcesses::exit(1, NOT_FOUND_REPLY),
                    _ => ScriptedProcesses::ok(r#"{"Username":"u","Secret":"hunter2-secret"}"#),
                },
            )
            .with_delay(delay),
        );
        let clock = Arc::new(ManualClock::new());
        let system = System::fake(
            clock.clone(),
            processes.clone(),
            Arc::new(MemoryFiles::new()),
        );
        let runs = HelperRuns::new(system.clock.clone(), timeout);
        let helper = Arc::new(CredentialHelper::new("pass", &system, &runs));
        Pool {
            clock,
            processes,
            runs,
            helper,
        }
    }

    #[tokio::test]
    async fn hits_and_misses_are_reused_so_a_creds_store_is_not_spawned_per_request() {
        let p = pool(Duration::ZERO, TIMEOUT);
        for _ in 0..3 {
            assert!(p.helper.get("hit.test").await.unwrap().is_some());
            assert!(p.helper.get("miss.test").await.unwrap().is_none());
            assert_eq!(p.helper.list().await.unwrap().len(), 1);
        }
        assert_eq!(p.processes.runs().len(), 3);
        assert_eq!(p.runs.stats().cached_answers, 3);
        p.clock.advance(ANSWER_REUSE);
        assert!(p.helper.get("hit.test").await.unwrap().is_some());
        assert_eq!(p.processes.runs().len(), 4);
    }

    #[tokio::test]
    async fn failures_are_reused_only_briefly() {
        let p = pool(Duration::ZERO, TIMEOUT);
        for _ in 0..3 {
            assert!(p.helper.get("broken.test").await.is_err());
        }
        assert_eq!(p.processes.runs().len(), 1);
        p.clock.advance(FAILURE_REUSE);
        assert!(p.helper.get("broken.test").await.is_err());
        assert_eq!(p.processes.runs().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_identical_calls_share_one_helper_run() {
        let p = pool(Duration::from_millis(50), TIMEOUT);
        let calls = (0..10).map(|_| p.helper.get("hit.test"));
        let answers = futures::future::join_all(calls).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Some(_)))));
        assert_eq!(p.processes.runs().len(), 1);
    }

    /// Waits (a little) until `n` runs have started.
    async fn started(p: &Pool, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while p.processes.runs().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn no_more_than_four_helpers_run_at_once() {
        let delay = Duration::from_millis(300);
        let p = pool(delay, TIMEOUT);
        let begun = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let helper = Arc::clone(&p.helper);
                tokio::spawn(async move { helper.get(&format!("r{i}.test")).await })
            })
            .collect();
        started(&p, MAX_RUNNING).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(p.processes.runs().len(), MAX_RUNNING);
        assert_eq!(p.runs.stats().running, MAX_RUNNING);
        for task in tasks {
            assert!(task.await.unwrap().unwrap().is_some());
        }
        // Ten runs, four at a time: three rounds.
        assert!(begun.elapsed() >= delay * 3, "{:?}", begun.elapsed());
        assert_eq!(p.processes.runs().len(), 10);
        assert_eq!(
            p.runs.stats(),
            HelperStats {
                cached_answers: 10,
                running: 0,
                timeouts: 0
            }
        );
    }

    #[tokio::test]
    async fn a_caller_waits_for_a_slot_no_longer_than_the_helper_timeout() {
        let timeout = Duration::from_millis(100);
        let p = pool(Duration::from_millis(600), timeout);
        let busy: Vec<_> = (0..MAX_RUNNING)
            .map(|i| {
                let helper = Arc::clone(&p.helper);
                tokio::spawn(async move { helper.get(&format!("r{i}.test")).await })
            })
            .collect();
        started(&p, MAX_RUNNING).await;
        let begun = tokio::time::Instant::now();
        let err = p.helper.get("late.test").await.unwrap_err().to_string();
        let waited = begun.elapsed();
        assert!(waited >= timeout, "{waited:?}");
        assert_eq!(
            err,
            "docker-credential-pass was not started: 4 credential helpers were still running after 100ms"
        );
        assert_eq!(p.processes.runs().len(), MAX_RUNNING);
        for task in busy {
            task.await.unwrap().unwrap();
        }
        // Nothing ran for the refused call, so nothing of it is reused.
        assert!(p.helper.get("late.test").await.unwrap().is_some());
        assert_eq!(p.processes.runs().len(), MAX_RUNNING + 1);
    }

    #[test]
    fn helper_names_outside_dockers_form_are_refused() {
        for good in [
            "pass",
            "ecr-login",
            "desktop.exe",
            "osxkeychain",
            "a_b",
            "gcloud",
        ] {
            assert_eq!(check_helper_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/usr/bin/evil",
            "x/y",
            "a b",
            "x;y",
            "é",
            "a\0",
            "$(id)",
        ] {
            assert!(check_helper_name(bad).is_err(), "{bad:?}");
        }
        let processes = Arc::new(ScriptedProcesses::new(|spec| panic!("ran {spec:?}")));
        let system = System::fake(
            Arc::new(ManualClock::new()),
            processes,
            Arc::new(MemoryFiles::new()),
        );
        let runs = HelperRuns::new(system.clock.clone(), TIMEOUT);
        assert!(CredentialHelper::named("../../tmp/evil", &system, &runs).is_err());
        assert!(CredentialHelper::named("pass", &system, &runs).is_ok());
    }
}
