//! [`HostOptions`]: every per-host option, the one bag `host.start`'s params
//! and the config's `[[host]]` tables carry and the supervisor builds a
//! host's spec from.
//!
//! On the wire the options sit beside `extensionId` and `waitReady` in one
//! object, camelCase; a `[[host]]` table spells them in snake_case beside
//! `extension_id` and `autostart`. Both are read by [`read_options`], not by
//! `#[serde(flatten)]`: flattening would lose the path of an error (it would
//! name `.` instead of `restart.backoffMs`) and cannot refuse unknown keys.
//! Every key is read through the map it came in, so an error carries the
//! path (JSON) or the line and column (TOML) of the offending key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Restart-policy overrides (`restart`; `[host.restart]` in the config).
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestartOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_after_ms: Option<u64>,
}

/// Every option of one host, all optional: what is absent comes from the
/// host's previous spec (a start without `entry`) or the daemon's defaults.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// This host's cgroup memory limit in MiB (overrides
    /// `sandbox.memory_max_mb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_max_mb: Option<u64>,
    /// This host's CPU limit, percent of one CPU (overrides
    /// `sandbox.cpu_max_percent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_max_percent: Option<u32>,
    /// The daemon answers the host's `get-extensions-dir` with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions_dir: Option<PathBuf>,
    /// Root of the directories `get-extension-storage` answers with
    /// (default: the host's private storage directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_dir: Option<PathBuf>,
    /// Directories this host may write besides its own (sandbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writable_paths: Option<Vec<PathBuf>>,
    /// Variables of the daemon's environment passed through by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_env: Option<Vec<String>>,
    /// Payloads the daemon answers host requests with, by message type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_answers: Option<BTreeMap<String, serde_json::Value>>,
    /// This host's output limit, lines a second (0: none), overriding
    /// `log_rate_lines`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_rate_lines: Option<u64>,
    /// The same in bytes a second, overriding `log_rate_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_rate_bytes: Option<u64>,
}

/// How the keys of a map that holds [`HostOptions`] are spelt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// As on the wire: `stopTimeoutMs`.
    Camel,
    /// As in the config: `stop_timeout_ms` (and in its `restart` table).
    Snake,
}

/// A host's id, one flag beside it, and its options: what `host.start`
/// (`extensionId`, `waitReady`) and a `[[host]]` table (`extension_id`,
/// `autostart`) both hold. `names` are the two keys as spelt in `map`; the
/// id is required, the flag defaults to false.
pub fn read_id_flag_options<'de, A: MapAccess<'de>>(
    map: A,
    keys: Keys,
    names: &'static [&'static str; 2],
) -> Result<(String, bool, HostOptions), A::Error> {
    use serde::de::Error;
    let mut id = None;
    let mut flag = None;
    let options = read_options(map, keys, names, |i, map: &mut A| {
        if i == 0 {
            if id.is_some() {
                return Err(A::Error::duplicate_field(names[0]));
            }
            id = Some(map.next_value()?);
        } else {
            if flag.is_some() {
                return Err(A::Error::duplicate_field(names[1]));
            }
            flag = Some(map.next_value()?);
        }
        Ok(())
    })?;
    let id = id.ok_or_else(|| A::Error::missing_field(names[0]))?;
    Ok((id, flag.unwrap_or(false), options))
}

/// Read the entries of `map` into [`HostOptions`], except the keys in
/// `extras` (spelt as `keys` says), each of which is handed to `take` with
/// its index, to read its value from `map`. An unknown key is an error that
/// names it and every key the map may hold.
pub fn read_options<'de, A, F>(
    map: A,
    keys: Keys,
    extras: &'static [&'static str],
    take: F,
) -> Result<HostOptions, A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(usize, &mut A) -> Result<(), A::Error>,
{
    HostOptions::deserialize(Entries {
        map,
        keys,
        fields: &[],
        extras,
        take,
        in_restart: false,
    })
}

/// The map's entries, as a map (to the derived visitor) and as a
/// deserializer that hands it over (to `HostOptions::deserialize`).
struct Entries<A, F> {
    map: A,
    keys: Keys,
    /// The derived struct's field names (camelCase).
    fields: &'static [&'static str],
    extras: &'static [&'static str],
    take: F,
    /// The value about to be read is `restart` (its keys are renamed too).
    in_restart: bool,
}

enum Key {
    Extra(usize),
    Field(&'static str),
}

impl<'de, A, F> de::Deserializer<'de> for Entries<A, F>
where
    A: MapAccess<'de>,
    F: FnMut(usize, &mut A) -> Result<(), A::Error>,
{
    type Error = A::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.fields = fields;
        visitor.visit_map(self)
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

impl<'de, A, F> MapAccess<'de> for Entries<A, F>
where
    A: MapAccess<'de>,
    F: FnMut(usize, &mut A) -> Result<(), A::Error>,
{
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let key = self.map.next_key_seed(KeySeed {
                keys: self.keys,
                fields: self.fields,
                extras: self.extras,
            })?;
            match key {
                None => return Ok(None),
                Some(Key::Extra(i)) => (self.take)(i, &mut self.map)?,
                Some(Key::Field(name)) => {
                    self.in_restart = name == "restart";
                    let name: de::value::StrDeserializer<'_, A::Error> = name.into_deserializer();
                    return seed.deserialize(name).map(Some);
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        if self.keys == Keys::Snake && self.in_restart {
            self.map.next_value_seed(SnakeSeed(seed))
        } else {
            self.map.next_value_seed(seed)
        }
    }
}

/// Reads one key and judges it: an extra, a field (by its camelCase name),
/// or an error, raised while the key is read so that it carries its place.
struct KeySeed {
    keys: Keys,
    fields: &'static [&'static str],
    extras: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        if let Some(i) = self.extras.iter().position(|e| *e == key) {
            return Ok(Key::Extra(i));
        }
        let camel = match self.keys {
            Keys::Camel => Some(key.to_string()),
            Keys::Snake if key.bytes().any(|b| b.is_ascii_uppercase()) => None,
            Keys::Snake => Some(snake_to_camel(key)).filter(|c| camel_to_snake(c) == key),
        };
        if let Some(field) = camel.and_then(|c| self.fields.iter().find(|f| **f == c)) {
            return Ok(Key::Field(field));
        }
        let mut expected: Vec<String> = self.extras.iter().map(|e| format!("`{e}`")).collect();
        expected.extend(self.fields.iter().map(|f| match self.keys {
            Keys::Camel => format!("`{f}`"),
            Keys::Snake => format!("`{}`", camel_to_snake(f)),
        }));
        Err(E::custom(format_args!(
            "unknown field `{key}`, expected one of {}",
            expected.join(", ")
        )))
    }
}

/// A value whose maps' keys are snake_case (the config's `[host.restart]`).
struct SnakeSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for SnakeSeed<S> {
    type Value = S::Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(SnakeDe(d))
    }
}

struct SnakeDe<D>(D);

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for SnakeDe<D> {
    type Error = D::Error;

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_option(SnakeVisitor {
            inner: visitor,
            fields: &[],
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(
            name,
            fields,
            SnakeVisitor {
                inner: visitor,
                fields,
            },
        )
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Passes a map on with its keys renamed, and an option's value on to
/// [`SnakeDe`]; anything else is refused as the inner visitor would.
struct SnakeVisitor<V> {
    inner: V,
    fields: &'static [&'static str],
}

impl<'de, V: Visitor<'de>> Visitor<'de> for SnakeVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(SnakeDe(d))
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<V::Value, M::Error> {
        self.inner.visit_map(Entries {
            map,
            keys: Keys::Snake,
            fields: self.fields,
            extras: &[],
            take: |_: usize, _: &mut M| Ok(()),
            in_restart: false,
        })
    }
}

/// `stop_timeout_ms` → `stopTimeoutMs`.
fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `stopTimeoutMs` → `stop_timeout_ms`.
fn camel_to_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_spellings_round_trip() {
        for (snake, camel) in [
            ("stop_timeout_ms", "stopTimeoutMs"),
            ("entry", "entry"),
            ("max_attempts", "maxAttempts"),
        ] {
            assert_eq!(snake_to_camel(snake), camel);
            assert_eq!(camel_to_snake(camel), snake);
        }
    }
}
