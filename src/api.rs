//! The ttrpc Credentials API generated from `protos/credgate/v1/credentials.proto`.

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_imports,
    unused_results,
    unused_mut
)]
pub mod credentials {
    include!(concat!(env!("OUT_DIR"), "/credentials.rs"));
}

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unused_mut
)]
pub mod credentials_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/credentials_ttrpc.rs"));
}

pub use credentials::*;
pub use credentials_ttrpc::{create_credentials, Credentials, CredentialsClient};
