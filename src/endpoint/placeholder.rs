//! A stand-in for the real upstream client until it is wired in: every request fails as
//! unreachable (502), so containerd moves on to the upstream itself.

use async_trait::async_trait;

use crate::keychain::Keychain;
use crate::upstream::{SendUpstream, UpstreamBody, UpstreamError, UpstreamRequest};

/// Answers every request with `UpstreamError::Unreachable`. Replace with
/// `crate::upstream::Upstream` in `cli::serve`.
pub struct UpstreamNotBuilt;

#[async_trait]
impl SendUpstream for UpstreamNotBuilt {
    async fn send(
        &self,
        _keychain: &Keychain,
        request: UpstreamRequest,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        Err(UpstreamError::Unreachable {
            host: request.registry.to_string(),
            reason: "upstream client not built yet".to_string(),
        })
    }
}
