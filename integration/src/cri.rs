//! A CRI client (the `k8s-cri` v1 API kubelet speaks) on containerd's socket: the pulls a
//! kubelet would ask for, without a kubelet. Calls block the test thread on a runtime of
//! their own and return the gRPC status on failure, for the test to assert on.

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, Image, ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PullImageRequest, RemoveImageRequest, RunPodSandboxRequest, StatusRequest,
    StatusResponse,
};
use tonic::transport::Channel;

/// How long one pull (or sandbox start, which pulls) may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the CRI on one containerd socket.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl CriClient {
    /// Connects to `socket` (containerd's gRPC socket, which serves the CRI too).
    pub fn connect(socket: &Path) -> CriClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("CRI client runtime");
        let containerd = runtime
            .block_on(credgate::containerd::Containerd::connect(socket))
            .unwrap_or_else(|e| panic!("{e}"));
        CriClient {
            runtime,
            channel: containerd.channel(),
        }
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    fn pods(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// `PullImage(image, auth)`, as kubelet sends it (no auth when the pod has no pull
    /// secret); the image reference containerd stored.
    pub fn pull_image(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let request = PullImageRequest {
            image: Some(image_spec(image)),
            auth,
            sandbox_config: None,
        };
        let reply = self.call(
            PULL_TIMEOUT,
            self.images().pull_image(timed(request, PULL_TIMEOUT)),
        )?;
        Ok(reply.image_ref)
    }

    /// `ImageStatus(image)`: the image when containerd has it.
    pub fn image_status(&self, image: &str) -> Result<Option<Image>, tonic::Status> {
        let request = ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        let reply = self.call(
            CALL_TIMEOUT,
            self.images().image_status(timed(request, CALL_TIMEOUT)),
        )?;
        Ok(reply.image)
    }

    /// `RemoveImage(image)`; removing an image containerd does not have is no error.
    pub fn remove_image(&self, image: &str) -> Result<(), tonic::Status> {
        let request = RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.call(
            CALL_TIMEOUT,
            self.images().remove_image(timed(request, CALL_TIMEOUT)),
        )?;
        Ok(())
    }

    /// `RunPodSandbox` of a pod named `name` on the host network (no CNI needed), which pulls
    /// the sandbox (pause) image with no credentials first. The pod sandbox id.
    pub fn run_pod_sandbox(&self, name: &str) -> Result<String, tonic::Status> {
        let request = RunPodSandboxRequest {
            config: Some(host_network_pod(name)),
            runtime_handler: String::new(),
        };
        let reply = self.call(
            PULL_TIMEOUT,
            self.pods().run_pod_sandbox(timed(request, PULL_TIMEOUT)),
        )?;
        Ok(reply.pod_sandbox_id)
    }

    /// `Status(verbose)`: runtime conditions, and with `verbose` the CRI's config as JSON.
    pub fn status(&self, verbose: bool) -> Result<StatusResponse, tonic::Status> {
        let request = StatusRequest { verbose };
        self.call(
            CALL_TIMEOUT,
            self.pods().status(timed(request, CALL_TIMEOUT)),
        )
    }

    fn call<T>(
        &self,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        // The request deadline is containerd's; this one covers a containerd that never answers.
        let bounded = async { tokio::time::timeout(timeout + Duration::from_secs(5), call).await };
        match self.runtime.block_on(bounded) {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no CRI answer within {timeout:?}"
            ))),
        }
    }
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A pod with host networking (`NamespaceMode::Node`), as kube-proxy's pods run.
fn host_network_pod(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("{name}-uid"),
            namespace: "credgate-test".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Basic credentials for [`CriClient::pull_image`], as kubelet fills them from a pull secret.
pub fn basic_auth(username: &str, password: &str) -> AuthConfig {
    AuthConfig {
        username: username.to_string(),
        password: password.to_string(),
        ..Default::default()
    }
}
