//! The GitLab stand-in most node tests pull from: a distribution registry on `registry.test`
//! whose tokens come from the GitLab-like [`TokenServer`] on `auth.test`, with one fixed set
//! of users. Tests share it so that "deploy owns `group/sub`" means the same everywhere.
//!
//! - `deploy` (password [`DEPLOY_PW`], identity token [`DEPLOY_IDENTITY_TOKEN`]) may pull and
//!   push under `group/sub` and `public`;
//! - `other` (password [`OTHER_PW`]) under `other`;
//! - `cache` (password [`CACHE_PW`]) may pull and push under `group/sub`: a second deploy
//!   token of that project, the one a pull-through cache logs in with
//!   ([`crate::pull_through`]), so the registry's logs tell the cache's requests from
//!   `deploy`'s;
//! - anyone may pull under `public`; an anonymous request for anything else gets 403.

use crate::registry::Registry;
use crate::token_server::{TokenServer, TokenServerBuilder, TokenUser};

/// The registry's host name in the node.
pub const REGISTRY_HOST: &str = "registry.test";
/// The token server's host name in the node: another domain than the registry's, so
/// credgate must be told to allow it (`[upstream] allow_realm_hosts`).
pub const AUTH_HOST: &str = "auth.test";
/// `deploy`'s password; distinctive, so tests can search logs for it.
pub const DEPLOY_PW: &str = "deploy-pw-4e1";
/// `deploy`'s identity (OAuth2 refresh) token.
pub const DEPLOY_IDENTITY_TOKEN: &str = "deploy-idt-0d3";
/// `other`'s password.
pub const OTHER_PW: &str = "other-pw-17b";
/// The user a pull-through cache of this registry logs in as.
pub const CACHE_USER: &str = "cache";
/// [`CACHE_USER`]'s password.
pub const CACHE_PW: &str = "cache-pw-5a2";

/// The token server alone, for tests that ask it directly.
pub fn token_server() -> TokenServer {
    token_server_builder().start()
}

/// The token server with GitLab's users, not started yet (for a test that changes more).
pub fn token_server_builder() -> TokenServerBuilder {
    TokenServer::builder(AUTH_HOST)
        .user(
            TokenUser::new("deploy", DEPLOY_PW, &["group/sub", "public"])
                .with_identity_token(DEPLOY_IDENTITY_TOKEN),
        )
        .user(TokenUser::new("other", OTHER_PW, &["other"]))
        .user(TokenUser::new(CACHE_USER, CACHE_PW, &["group/sub"]))
        .public("public")
}

/// The token server and the registry that trusts it; both stop when dropped.
pub fn start() -> (TokenServer, Registry) {
    let tokens = token_server();
    let registry = Registry::start(tokens.registry_auth(), REGISTRY_HOST);
    (tokens, registry)
}

/// [`start`] with the registry naming the user of every manifest and blob request
/// ([`Registry::content_requests`]): who fetched what.
pub fn start_logging_users() -> (TokenServer, Registry) {
    let tokens = token_server();
    let registry = Registry::builder(REGISTRY_HOST, tokens.registry_auth())
        .log_users()
        .start();
    (tokens, registry)
}
