//! `[[registry]]` entries from credgate's own config.
#[derive(Debug, thiserror::Error)]
#[error("todo")]
pub struct StaticError;
