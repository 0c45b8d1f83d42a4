//! Where the configuration comes from: the built-in defaults (`config/default.toml`, compiled
//! in), then `config/<RAMPART_ENV>.toml`, then `RAMPART__SECTION__KEY` variables.

use crate::settings::sections::Settings;
use crate::settings::validate::{invalid, SettingsError};
use config::{Config, Environment, File, FileFormat};
use std::path::{Path, PathBuf};

const DEFAULTS: &str = include_str!("../../config/default.toml");

impl Settings {
    /// Loads the layers for `RAMPART_ENV` (default `development`) from `RAMPART_CONFIG_DIR`
    /// (default `config`) and the process environment.
    pub fn load() -> Result<Self, SettingsError> {
        let env = std::env::var("RAMPART_ENV").unwrap_or_else(|_| "development".to_owned());
        let dir = std::env::var_os("RAMPART_CONFIG_DIR")
            .map_or_else(|| PathBuf::from("config"), PathBuf::from);
        Self::load_layers(&dir, &env, true)
    }

    /// The built-in defaults alone: what the operator's guide lists.
    pub fn defaults() -> Result<Self, SettingsError> {
        let settings: Settings = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        Ok(settings)
    }

    /// The built-in defaults and `config/test.toml`, without the process environment: what the
    /// integration tests start from before setting their own values.
    pub fn for_tests() -> Result<Self, SettingsError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        Self::load_layers(&dir, "test", false)
    }

    fn load_layers(dir: &Path, env: &str, with_environment: bool) -> Result<Self, SettingsError> {
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from(dir.join(format!("{env}.toml"))).required(false));
        if with_environment {
            builder = builder.add_source(
                Environment::with_prefix("RAMPART")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("server.trusted_proxies")
                    .with_list_parse_key("database.replica_urls"),
            );
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        if env == "production" && settings.server.cursor_secret.is_none() {
            return Err(invalid(
                "server.cursor_secret",
                "is required in production: every instance must sign cursors with the same key",
            ));
        }
        Ok(settings)
    }
}
