//! `[[host]]`: a host declared in the config, read key by key so that an
//! error names the snake_case key and its line (`protocol::options`).

use serde::Deserialize;

use crate::protocol::HostOptions;
use crate::protocol::options::{Keys, read_id_flag_options};

/// A host declared in the config (`[[host]]`), like a supervisord program:
/// its id, whether it starts with the daemon, and its options, spelt in
/// snake_case (`stop_timeout_ms`, `[host.restart]`); `entry` is required.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    pub extension_id: String,
    /// Start when the daemon starts (and when a reload first declares it).
    pub autostart: bool,
    pub options: HostOptions,
}

impl<'de> Deserialize<'de> for HostConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HostConfigVisitor)
    }
}

struct HostConfigVisitor;

impl<'de> serde::de::Visitor<'de> for HostConfigVisitor {
    type Value = HostConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a [[host]] table")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<HostConfig, A::Error> {
        use serde::de::Error;
        let (extension_id, autostart, options) =
            read_id_flag_options(map, Keys::Snake, &["extension_id", "autostart"])?;
        if options.entry.is_none() {
            return Err(A::Error::missing_field("entry"));
        }
        Ok(HostConfig {
            extension_id,
            autostart,
            options,
        })
    }
}
