//! Reading `schema.yaml` into a [`Config`].

use std::path::Path;

use super::{Config, ConfigError};

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    load_str(path, &text)
}

pub fn load_str(path: &Path, _text: &str) -> Result<Config, ConfigError> {
    Err(ConfigError(format!(
        "{}: loader not written yet",
        path.display()
    )))
}
