//! `credgate pull`: pulling an image through containerd's transfer service, answering its
//! auth stream from the keychain.
//!
//! This is what `ctr image pull` does without `--local` (cmd/ctr/commands/images/pull.go,
//! core/transfer/proxy): a `Transfer` call from an `OCIRegistry` source to an `ImageStore`
//! destination that unpacks for one platform, with two streams opened beforehand through
//! the Streaming service, each started by a `StreamInit{id}` and acknowledged by containerd:
//! one on which containerd asks for credentials ([`auth`]), one on which it reports
//! progress ([`progress`]).
//!
//! Type URLs: containerd resolves the transfer objects by `typeurl.TypeURL` of the proto
//! message, which for these unregistered messages is the bare proto full name
//! (`containerd.types.transfer.OCIRegistry`, no `types.googleapis.com/` prefix); that is
//! what `containerd_client::to_any` writes, and what containerd 1.7 and 2.1 accept.
//!
//! The lease: like ctr (whose `client.Transfer` wraps every transfer in `WithLease`), the
//! pull holds a containerd lease from before its streams open until the transfer ended
//! ([`PullLease`]), sent as `containerd-lease` on every call. Without one, containerd's
//! garbage collector removes the auth stream when it runs before the pull's namespace has
//! any record (a namespace's first pull): it marks unleased streams live only in namespaces
//! its database holds (core/metadata/gc.go), so the transfer then finds no stream ("not
//! found") or a closed one ("failed to resolve image: context canceled"). The soak met this
//! while `ctr image rm --sync` ran in other namespaces.
//!
//! Cancel-safety: nothing here is spawned. The transfer call and both stream loops run in
//! one `select!`, so Ctrl-C or SIGTERM drops them all, which resets the HTTP/2 streams and
//! cancels the pull inside containerd. Setting up each stream has a deadline; the transfer
//! itself has none (an image can be large), only cancellation.

pub mod auth;
pub mod progress;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::streaming_client::StreamingClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::services::v1::{
    CreateRequest as CreateLease, DeleteRequest as DeleteLease, StreamInit, TransferOptions,
    TransferRequest,
};
use containerd_client::to_any;
use containerd_client::types::transfer::{
    AuthRequest, ImageStore, OciRegistry, Progress, RegistryResolver, UnpackConfiguration,
};
use containerd_client::types::Platform;
use containerd_client::with_namespace;
use futures::{FutureExt, SinkExt};
use prost::{Message, Name};
use prost_types::Any;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tonic::{Code, Request};

use crate::containerd::{Containerd, ContainerdError, ContainerdVersion, CALL_TIMEOUT};
use crate::identity::{IdentityError, ImageReference};

use self::auth::AuthAnswerer;
use self::progress::{ProgressView, PullProgress};

/// How long progress events that arrive after the transfer returned are still shown.
const PROGRESS_DRAIN: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Reference(#[from] IdentityError),
    #[error("invalid platform {input:?}: {reason}")]
    Platform { input: String, reason: &'static str },
    #[error("invalid namespace {input:?}: letters, digits and . _ - only")]
    Namespace { input: String },
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("containerd {version} at {} has no transfer service (added in containerd 1.7); upgrade to containerd >= 1.7 or use `ctr image pull`", socket.display())]
    Unsupported { socket: PathBuf, version: String },
    #[error("containerd at {}: opening the {stream} stream failed: {reason}", socket.display())]
    Stream {
        socket: PathBuf,
        stream: &'static str,
        reason: String,
    },
    #[error("containerd at {}: creating the pull's lease failed: {reason}", socket.display())]
    Lease { socket: PathBuf, reason: String },
    #[error("pulling {image} through containerd at {} failed: {reason}", socket.display())]
    Pull {
        image: String,
        socket: PathBuf,
        reason: String,
    },
    #[error("pulling {image} was cancelled")]
    Cancelled { image: String },
}

impl TransferError {
    /// Bad input from the user (exit 2), as opposed to a pull that failed (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Reference(_) | Self::Platform { .. } | Self::Namespace { .. }
        )
    }
}

/// One pull, validated.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// The fully qualified name the image is stored under (`docker.io/library/busybox:latest`).
    pub image: String,
    pub namespace: String,
    /// containerd's hosts directory for this pull, absolute (containerd reads it, not us).
    pub hosts_dir: Option<PathBuf>,
    pub platform: Platform,
    /// Talk plain HTTP to registries without a hosts.toml entry (ctr's `--plain-http`).
    pub plain_http: bool,
}

impl PullRequest {
    pub fn new(
        reference: &str,
        namespace: &str,
        hosts_dir: Option<&Path>,
        platform: Option<&str>,
        plain_http: bool,
    ) -> Result<Self, TransferError> {
        if !valid_namespace(namespace) {
            return Err(TransferError::Namespace {
                input: namespace.to_string(),
            });
        }
        let platform = match platform {
            Some(text) => parse_platform(text)?,
            None => default_platform(),
        };
        Ok(Self {
            image: qualified_name(&ImageReference::parse(reference.trim())?),
            namespace: namespace.to_string(),
            hosts_dir: hosts_dir.map(absolute),
            platform,
            plain_http,
        })
    }

    fn source(&self, auth_stream: &str) -> OciRegistry {
        OciRegistry {
            reference: self.image.clone(),
            resolver: Some(RegistryResolver {
                auth_stream: auth_stream.to_string(),
                host_dir: self
                    .hosts_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                default_scheme: if self.plain_http { "http" } else { "" }.to_string(),
                ..Default::default()
            }),
        }
    }

    /// ctr's destination: the image and all metadata, content for one platform, unpacked
    /// for it into the platform's default snapshotter.
    fn destination(&self) -> ImageStore {
        ImageStore {
            name: self.image.clone(),
            platforms: vec![self.platform.clone()],
            all_metadata: true,
            unpacks: vec![UnpackConfiguration {
                platform: Some(self.platform.clone()),
                snapshotter: String::new(),
            }],
            ..Default::default()
        }
    }
}

/// Pulls `request.image` through containerd's transfer service.
pub async fn pull(
    containerd: &Containerd,
    request: &PullRequest,
    answerer: &mut AuthAnswerer,
    view: &ProgressView,
) -> Result<(), TransferError> {
    let version = containerd.version().await?;
    if !has_transfer_service(&version) {
        return Err(unsupported(containerd, &version));
    }
    if let Some(warning) = ignored_resolver_options(&version, request) {
        eprintln!("credgate: warning: {warning}");
    }
    // From here a signal no longer kills the process: it cancels the pull, and the lease is
    // still deleted on the way out (a second signal skips that; the lease then expires).
    let mut stop = StopSignals::install();
    let cancelled = || TransferError::Cancelled {
        image: request.image.clone(),
    };
    let lease = PullLease::new();
    let pulled = tokio::select! {
        created = lease.create(containerd, &request.namespace) => match created {
            Ok(()) => pull_leased(containerd, request, &version, &lease, answerer, view, &mut stop).await,
            Err(e) => return Err(e),
        },
        // containerd may have made the lease already: the delete below takes it (or finds
        // nothing).
        () = stop.received() => Err(cancelled()),
    };
    // A signal that came after the pull ended, or with the one that cancelled it, is spent
    // here; a signal while the lease is being deleted skips that (the lease then expires).
    let _ = stop.received().now_or_never();
    tokio::select! {
        () = lease.delete(containerd, &request.namespace) => {}
        () = stop.received() => {}
    }
    pulled
}

/// The pull, its streams and transfer under `lease`.
async fn pull_leased(
    containerd: &Containerd,
    request: &PullRequest,
    version: &ContainerdVersion,
    lease: &PullLease,
    answerer: &mut AuthAnswerer,
    view: &ProgressView,
    stop: &mut StopSignals,
) -> Result<(), TransferError> {
    let cancelled = || TransferError::Cancelled {
        image: request.image.clone(),
    };
    let mut auth = tokio::select! {
        auth = ContainerdStream::open(containerd, request, version, lease, "creds") => auth?,
        () = stop.received() => return Err(cancelled()),
    };
    let mut events = match view.is_off() {
        true => None,
        false => tokio::select! {
            events = ContainerdStream::open(containerd, request, version, lease, "progress") => Some(events?),
            () = stop.received() => return Err(cancelled()),
        },
    };
    let transfer = TransferRequest {
        source: Some(to_any(&request.source(&auth.id))),
        destination: Some(to_any(&request.destination())),
        options: Some(TransferOptions {
            progress_stream: events.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
        }),
    };
    let mut client = TransferClient::new(containerd.channel());
    let call = client.transfer(lease.attach(with_namespace!(transfer, request.namespace.as_str())));
    let mut state = PullProgress::default();
    let outcome = {
        tokio::pin!(call);
        let answering = answer_auth(&mut auth, answerer);
        tokio::pin!(answering);
        let following = follow_progress(events.as_mut(), &mut state, view);
        tokio::pin!(following);
        // One future for the whole loop, so no signal falls between two loop passes.
        let cancel = stop.received();
        tokio::pin!(cancel);
        let (mut answering_done, mut following_done) = (false, false);
        loop {
            tokio::select! {
                result = &mut call => break Some(result),
                () = &mut answering, if !answering_done => answering_done = true,
                () = &mut following, if !following_done => following_done = true,
                () = &mut cancel => break None,
            }
        }
    };
    if let Some(stream) = events.as_mut() {
        let _ = tokio::time::timeout(
            PROGRESS_DRAIN,
            follow_progress(Some(stream), &mut state, view),
        )
        .await;
    }
    view.finish();
    match outcome {
        None => Err(TransferError::Cancelled {
            image: request.image.clone(),
        }),
        Some(Ok(_)) => Ok(()),
        Some(Err(status)) if status.code() == Code::Unimplemented => {
            Err(unsupported(containerd, version))
        }
        Some(Err(status)) => Err(TransferError::Pull {
            image: request.image.clone(),
            socket: containerd.socket().to_path_buf(),
            reason: failure_reason(&status, answerer.warnings()),
        }),
    }
}

/// One stream through containerd's Streaming service, registered under `id`.
struct ContainerdStream {
    id: String,
    outbound: futures::channel::mpsc::Sender<Any>,
    inbound: tonic::Streaming<Any>,
}

impl ContainerdStream {
    /// Opens the stream, sends `StreamInit{id}` and waits for containerd's acknowledgement
    /// (core/streaming/proxy): only then may the id appear in a transfer request.
    async fn open(
        containerd: &Containerd,
        request: &PullRequest,
        version: &ContainerdVersion,
        lease: &PullLease,
        purpose: &'static str,
    ) -> Result<Self, TransferError> {
        let id = stream_id(purpose);
        let (mut outbound, messages) = futures::channel::mpsc::channel(8);
        outbound
            .try_send(to_any(&StreamInit { id: id.clone() }))
            .expect("a new channel has room");
        let mut client = StreamingClient::new(containerd.channel());
        let opening = async {
            let mut inbound = client
                .stream(lease.attach(with_namespace!(messages, request.namespace.as_str())))
                .await?
                .into_inner();
            inbound.message().await?;
            Ok::<_, tonic::Status>(inbound)
        };
        let failed = |reason: String| TransferError::Stream {
            socket: containerd.socket().to_path_buf(),
            stream: purpose,
            reason,
        };
        match tokio::time::timeout(CALL_TIMEOUT, opening).await {
            Ok(Ok(inbound)) => Ok(Self {
                id,
                outbound,
                inbound,
            }),
            Ok(Err(status)) if status.code() == Code::Unimplemented => {
                Err(unsupported(containerd, version))
            }
            Ok(Err(status)) => Err(failed(crate::containerd::status_text(&status))),
            Err(_) => Err(failed(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    /// The next message of type `M`; `None` when the stream ends. Other types are skipped.
    async fn next<M: Message + Name + Default>(&mut self) -> Option<M> {
        loop {
            let any = self.inbound.message().await.ok()??;
            match decode::<M>(&any) {
                Some(message) => return Some(message),
                None => tracing::debug!(type_url = %any.type_url, "skipped an unexpected message"),
            }
        }
    }
}

/// A containerd lease held for one pull (see the module's doc): created before the streams,
/// deleted once the transfer ended, the way ctr's `client.WithLease` does. When credgate is
/// killed before deleting it, it expires after [`LEASE_EXPIRY`] (ctr's default too); a pull
/// that outlasts it loses nothing it already stored as an image.
struct PullLease {
    id: String,
}

/// The lease label containerd's garbage collector reads the expiry from.
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// How long an undeleted lease lives: ctr's `WithLease` default.
const LEASE_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);
/// The gRPC metadata key containerd reads a call's lease from (core/leases/grpc.go).
const LEASE_HEADER: &str = "containerd-lease";

impl PullLease {
    /// A lease with a new id, not yet made in containerd ([`PullLease::create`]).
    fn new() -> Self {
        Self {
            id: stream_id("pull"),
        }
    }

    async fn create(&self, containerd: &Containerd, namespace: &str) -> Result<(), TransferError> {
        let id = self.id.clone();
        let expires = std::time::SystemTime::now() + LEASE_EXPIRY;
        let create = CreateLease {
            id: id.clone(),
            labels: [(
                LEASE_EXPIRE_LABEL.to_string(),
                humantime::format_rfc3339_seconds(expires).to_string(),
            )]
            .into(),
        };
        let mut client = LeasesClient::new(containerd.channel());
        let failed = |reason: String| TransferError::Lease {
            socket: containerd.socket().to_path_buf(),
            reason,
        };
        match tokio::time::timeout(
            CALL_TIMEOUT,
            client.create(with_namespace!(create, namespace)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(failed(crate::containerd::status_text(&status))),
            Err(_) => Err(failed(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    /// `request`, sent under this lease.
    fn attach<T>(&self, mut request: Request<T>) -> Request<T> {
        // The id is ours: ASCII letters, digits and dashes, always a valid header value.
        if let Ok(value) = self.id.parse() {
            request.metadata_mut().insert(LEASE_HEADER, value);
        }
        request
    }

    /// Deletes the lease (without waiting for a collection, as ctr does). A failure only
    /// leaves it to expire, so it is logged and the pull's outcome stands.
    async fn delete(&self, containerd: &Containerd, namespace: &str) {
        let delete = DeleteLease {
            id: self.id.clone(),
            sync: false,
        };
        let mut client = LeasesClient::new(containerd.channel());
        let deleted = tokio::time::timeout(
            CALL_TIMEOUT,
            client.delete(with_namespace!(delete, namespace)),
        )
        .await;
        match deleted {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => tracing::warn!(
                lease = %self.id,
                status = %crate::containerd::status_text(&status),
                "could not delete the pull's lease; it expires in 24 h"
            ),
            Err(_) => tracing::warn!(
                lease = %self.id,
                "containerd did not answer deleting the pull's lease; it expires in 24 h"
            ),
        }
    }
}

/// Answers every auth request until containerd closes the stream.
async fn answer_auth(stream: &mut ContainerdStream, answerer: &mut AuthAnswerer) {
    while let Some(request) = stream.next::<AuthRequest>().await {
        let response = answerer.answer(&request).await;
        if stream.outbound.send(to_any(&response)).await.is_err() {
            return;
        }
    }
}

/// Folds and shows progress events until the stream ends (never, without a stream).
async fn follow_progress(
    stream: Option<&mut ContainerdStream>,
    state: &mut PullProgress,
    view: &ProgressView,
) {
    let Some(stream) = stream else {
        return std::future::pending().await;
    };
    while let Some(event) = stream.next::<Progress>().await {
        let change = state.apply(&event);
        view.show(state, &change);
    }
}

/// Decodes an `Any` holding `M`, whether its type URL has a `…/` prefix or not.
fn decode<M: Message + Name + Default>(any: &Any) -> Option<M> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name != M::full_name() {
        return None;
    }
    M::decode(any.value.as_slice()).ok()
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP, listened for from their installation on: from then on they
/// no longer kill the process, each one is a request to stop ([`StopSignals::received`]).
struct StopSignals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
    /// The terminal closed.
    hangup: Option<Signal>,
}

impl StopSignals {
    fn install() -> Self {
        Self {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
            hangup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Resolves at the next SIGINT, SIGTERM or SIGHUP.
    async fn received(&mut self) {
        let Self {
            interrupt,
            terminate,
            hangup,
        } = self;
        tokio::select! {
            () = next(interrupt) => {}
            () = next(terminate) => {}
            () = next(hangup) => {}
        }
    }
}

/// The next signal `listener` receives; never, without a listener.
async fn next(listener: &mut Option<Signal>) {
    match listener {
        Some(listener) => {
            listener.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn unsupported(containerd: &Containerd, version: &ContainerdVersion) -> TransferError {
    TransferError::Unsupported {
        socket: containerd.socket().to_path_buf(),
        version: version.version.clone(),
    }
}

/// containerd 1.7 added the transfer and streaming services; a version that doesn't parse
/// is tried (an `Unimplemented` answer then tells).
pub fn has_transfer_service(version: &ContainerdVersion) -> bool {
    let mut numbers = version
        .version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (1, 7),
        _ => true,
    }
}

/// containerd 1.7's transfer service builds its resolver from defaults only (HTTPS, no
/// hosts.toml): it drops `host_dir` and `default_scheme`, which 2.0 added. Said once, so a
/// pull that then fails over HTTPS is not a mystery.
pub fn ignored_resolver_options(
    version: &ContainerdVersion,
    request: &PullRequest,
) -> Option<String> {
    if version.major() != Some(1) {
        return None;
    }
    let options: Vec<&str> = [
        (request.hosts_dir.is_some(), "--hosts-dir"),
        (request.plain_http, "--plain-http"),
    ]
    .iter()
    .filter_map(|(given, flag)| given.then_some(*flag))
    .collect();
    (!options.is_empty()).then(|| {
        format!(
            "containerd {} ignores {} for transfer-service pulls (hosts.toml and plain HTTP need containerd >= 2.0)",
            version.version,
            options.join(" and ")
        )
    })
}

/// containerd's message, with what went wrong answering its auth requests when that is
/// likely the cause.
fn failure_reason(status: &tonic::Status, warnings: &[String]) -> String {
    let mut reason = status.message().to_string();
    if reason.is_empty() {
        reason = format!("{:?}", status.code());
    }
    for warning in warnings {
        reason.push_str("; ");
        reason.push_str(warning);
    }
    reason
}

/// A stream id unique to this process and moment, like containerd's `GenerateID`.
fn stream_id(purpose: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("credgate-{purpose}-{}-{nanos}", std::process::id())
}

/// The name containerd stores the image under: fully qualified, `:latest` when neither a
/// tag nor a digest was given (containerd's resolver needs a qualified reference).
fn qualified_name(image: &ImageReference) -> String {
    let mut name = image.to_string();
    if image.tag.is_none() && image.digest.is_none() {
        name.push_str(":latest");
    }
    name
}

/// containerd's namespace grammar (pkg/namespaces: labels of letters and digits joined by
/// `.`, `_` or `-`), loosely: it is also what may go into gRPC metadata.
fn valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `os/arch[/variant]`, as `ctr --platform` takes it.
pub fn parse_platform(input: &str) -> Result<Platform, TransferError> {
    let bad = |reason| TransferError::Platform {
        input: input.to_string(),
        reason,
    };
    let parts: Vec<&str> = input.trim().split('/').collect();
    let (os, architecture, variant) = match parts.as_slice() {
        [os, arch] => (*os, *arch, ""),
        [os, arch, variant] => (*os, *arch, *variant),
        _ => return Err(bad("expected os/arch or os/arch/variant, e.g. linux/amd64")),
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !valid(os) || !valid(architecture) || !(variant.is_empty() || valid(variant)) {
        return Err(bad("each part must be letters, digits, '_' or '-'"));
    }
    Ok(Platform {
        os: os.to_ascii_lowercase(),
        architecture: architecture.to_ascii_lowercase(),
        variant: variant.to_ascii_lowercase(),
        os_version: String::new(),
    })
}

/// This host's platform as containerd's `platforms.DefaultSpec` names it (linux even off
/// linux, as ctr does on darwin).
pub fn default_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", ""),
        "aarch64" => ("arm64", "v8"),
        "arm" => ("arm", "v7"),
        "x86" => ("386", ""),
        "powerpc64" => ("ppc64le", ""),
        other => (other, ""),
    };
    Platform {
        os: "linux".to_string(),
        architecture: architecture.to_string(),
        variant: variant.to_string(),
        os_version: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str) -> ContainerdVersion {
        ContainerdVersion {
            version: v.into(),
            revision: String::new(),
        }
    }

    #[test]
    fn containerd_1_6_has_no_transfer_service() {
        assert!(!has_transfer_service(&version("v1.6.38")));
        assert!(!has_transfer_service(&version("1.5.0")));
        assert!(has_transfer_service(&version("v1.7.24")));
        assert!(has_transfer_service(&version("2.1.4+unknown")));
        assert!(has_transfer_service(&version("v2.0.0-rc.1")));
        // Unknown versions are tried; Unimplemented then tells.
        assert!(has_transfer_service(&version("devel")));
    }

    #[test]
    fn containerd_1_7_is_said_to_ignore_hosts_dir_and_plain_http() {
        let request = PullRequest::new(
            "busybox",
            "default",
            Some(Path::new("/etc/containerd/certs.d")),
            None,
            true,
        )
        .unwrap();
        let warning = ignored_resolver_options(&version("v1.7.24"), &request).unwrap();
        assert!(
            warning.contains("--hosts-dir and --plain-http"),
            "{warning}"
        );
        assert_eq!(ignored_resolver_options(&version("v2.1.4"), &request), None);
        let plain = PullRequest::new("busybox", "default", None, None, false).unwrap();
        assert_eq!(ignored_resolver_options(&version("v1.7.24"), &plain), None);
    }

    #[test]
    fn the_unsupported_error_names_version_socket_and_the_way_out() {
        let text = TransferError::Unsupported {
            socket: "/run/containerd/containerd.sock".into(),
            version: "v1.6.38".into(),
        }
        .to_string();
        for part in [
            "v1.6.38",
            "/run/containerd/containerd.sock",
            ">= 1.7",
            "ctr image pull",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(!text.contains('\n'));
    }

    #[test]
    fn references_are_stored_fully_qualified() {
        let request = |r: &str| PullRequest::new(r, "default", None, None, false).unwrap();
        assert_eq!(request("busybox").image, "docker.io/library/busybox:latest");
        assert_eq!(
            request("127.0.0.1:5000/group/app:v1").image,
            "127.0.0.1:5000/group/app:v1"
        );
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            request(&format!("registry.test/app@{digest}")).image,
            format!("registry.test/app@{digest}")
        );
    }

    #[test]
    fn bad_input_is_named_and_classified() {
        let err = PullRequest::new("Bad Ref!", "default", None, None, false).unwrap_err();
        assert!(err.is_bad_input());
        assert!(err.to_string().contains("Bad Ref!"), "{err}");
        let err = PullRequest::new("busybox", "default", None, Some("linux"), false).unwrap_err();
        assert!(err.is_bad_input());
        let err = PullRequest::new("busybox", "a b", None, None, false).unwrap_err();
        assert!(err.is_bad_input());
    }

    #[test]
    fn platforms_parse_like_ctr() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_str()),
            ("linux", "arm64", "v8")
        );
        assert!(parse_platform("linux/").is_err());
        assert_eq!(default_platform().os, "linux");
    }

    #[test]
    fn the_request_matches_ctr() {
        let request = PullRequest::new(
            "127.0.0.1:5000/app:v1",
            "default",
            Some(Path::new("/etc/containerd/certs.d")),
            Some("linux/amd64"),
            true,
        )
        .unwrap();
        let source = request.source("creds-1");
        let resolver = source.resolver.unwrap();
        assert_eq!(source.reference, "127.0.0.1:5000/app:v1");
        assert_eq!(resolver.auth_stream, "creds-1");
        assert_eq!(resolver.host_dir, "/etc/containerd/certs.d");
        assert_eq!(resolver.default_scheme, "http");
        let destination = request.destination();
        assert_eq!(destination.unpacks.len(), 1);
        assert_eq!(destination.unpacks[0].snapshotter, "");
        assert!(destination.all_metadata);
        // The type URLs containerd resolves: bare proto full names.
        assert_eq!(
            to_any(&request.source("x")).type_url,
            "containerd.types.transfer.OCIRegistry"
        );
        assert_eq!(
            to_any(&destination).type_url,
            "containerd.types.transfer.ImageStore"
        );
        assert_eq!(
            to_any(&StreamInit { id: "x".into() }).type_url,
            "containerd.services.streaming.v1.StreamInit"
        );
    }

    #[test]
    fn any_decoding_accepts_prefixed_and_bare_type_urls() {
        let request = AuthRequest {
            host: "registry.test".into(),
            ..Default::default()
        };
        let mut any = to_any(&request);
        assert_eq!(decode::<AuthRequest>(&any), Some(request.clone()));
        any.type_url = format!("types.googleapis.com/{}", any.type_url);
        assert_eq!(decode::<AuthRequest>(&any), Some(request));
        assert_eq!(decode::<Progress>(&any), None);
    }
}
