//! credgate: one registry credential lookup for every image pull on a containerd node.
//!
//! The modules follow a credential's path: [`identity`] says which registry and repository a
//! pull is for, [`sources`] say where credentials come from, the [`keychain`] decides which
//! one wins, and the [`cli`] shows the decision.
#![forbid(unsafe_code)]

/// The credgate version, as `Status` and `docker-credential-credgate version` report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod activation;
pub mod api;
pub mod atomic_file;
pub mod cli;
pub mod clients;
pub mod config;
pub mod containerd;
pub mod daemon;
pub mod doctor;
pub mod duration;
pub mod endpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod hex;
pub mod identity;
pub mod install;
pub mod keychain;
pub mod metrics;
pub mod mirrors;
pub mod parser_message;
pub mod secret;
pub mod service;
pub mod sources;
pub mod system;
pub mod text_position;
pub mod transfer;
pub mod upstream;
