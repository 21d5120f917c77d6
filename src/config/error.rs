//! Configuration errors.

/// A configuration mistake, with where it is and what to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
