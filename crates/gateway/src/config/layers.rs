//! The configuration's layers, read by one serde pass: the defaults, then a TOML file, then
//! `CHATD_<SECTION>__<KEY>` environment variables (`docs/CONFIG.md`, "Precedence").
//!
//! * **Defaults.** Every table of [`Config`](super::Config) is `#[serde(default)]`, so a key
//!   that neither the file nor the environment sets takes its `Default` value, table by
//!   table: the deep merge of the defaults is serde's own.
//! * **File and environment.** The file is parsed into a [`toml::Table`]; the environment
//!   into a tree of strings by key path (`CHATD_AUTH__JWT_SECRET` is `auth.jwt_secret`: the
//!   part after the prefix, split at `__`, lower-cased). [`TableDe`] walks both trees at once,
//!   key by key, the environment winning, so tables merge deeply and `deny_unknown_fields`
//!   sees every key of both layers.
//! * **Typing environment values.** An environment value stays a string until serde asks
//!   for a type: [`EnvDe`] parses it then, as what the key's type wants (`deserialize_u64`:
//!   an integer; `deserialize_bool`: `true` or `false`; `deserialize_str`/`_string`: the
//!   text unchanged; `deserialize_option`: `Some` of the value; sequences and maps: a TOML
//!   value such as `["a", "b"]`; enums: the variant's name). Nothing is guessed from the
//!   text itself, so `CHATD_AUTH__JWT_SECRET=123456` is the string `"123456"`, and keys whose
//!   default is `None` (absent from any serialized defaults) are typed like the others.
//!
//! Errors name the key path and where its value came from: the file's path or the
//! variables' names ([`ConfigError`]).

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variables whose names start with this (in any case) and contain `__` are
/// configuration; `CHATD_LOG` and `CHATD_CONFIG` are read by the binary itself.
const PREFIX: &str = "CHATD_";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file given.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not TOML; the message names the line and column.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The file given.
        path: PathBuf,
        /// The parser's message, with the line and column.
        message: String,
    },
    /// A configuration variable whose value is not UTF-8.
    #[error("{var}: the value is not UTF-8")]
    NotUnicode {
        /// The variable's name.
        var: String,
    },
    /// Two variables set the same key, or one sets a key and another a key below it
    /// (`CHATD_A__B` and `chatd_a__b`, or `CHATD_A__B` and `CHATD_A__B__C`).
    #[error("{key} is set by both {first} and {second}")]
    Conflict {
        /// The key path, e.g. `server.listen`.
        key: String,
        /// One variable.
        first: String,
        /// The other.
        second: String,
    },
    /// A key that does not exist, or a value that does not fit the key's type.
    #[error("{key} (from {origin}): {message}")]
    Invalid {
        /// The key path, e.g. `auth.jwt_secret`.
        key: String,
        /// Where the value came from: the file's path or the variables' names.
        origin: String,
        /// What is wrong (serde's message; environment values are not echoed).
        message: String,
    },
}

/// Reads `T` from the defaults, then `file` (if any), then the configuration variables
/// among `vars` (the process environment in production, a list in tests).
pub(super) fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<T, ConfigError> {
    let table = match file {
        Some(path) => Some(read_file(path)?),
        None => None,
    };
    let env = env_overrides(vars)?;
    let file_name = file.map(|p| p.display().to_string()).unwrap_or_default();
    let root = TableDe {
        path: String::new(),
        file: table.as_ref(),
        env: Some(&env),
        file_name: &file_name,
    };
    T::deserialize(root).map_err(|e| ConfigError::Invalid {
        key: e.key.unwrap_or_else(|| "(the whole configuration)".into()),
        origin: e.origin.unwrap_or_else(|| "the defaults".into()),
        message: e.message,
    })
}

/// The file as a TOML table.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
}

/// `name` without [`PREFIX`], compared ignoring ASCII case.
fn strip_prefix(name: &str) -> Option<&str> {
    let head = name.get(..PREFIX.len())?;
    if head.eq_ignore_ascii_case(PREFIX) {
        name.get(PREFIX.len()..)
    } else {
        None
    }
}

/// The configuration variables among `vars`, as a tree by key path.
fn env_overrides(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<EnvTable, ConfigError> {
    let mut root = EnvTable::default();
    for (name, value) in vars {
        // A name that is not UTF-8 cannot be one of ours.
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = strip_prefix(name) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| ConfigError::NotUnicode { var: name.into() })?;
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        root.insert(&path, 0, name, value)?;
    }
    Ok(root)
}

/// Environment values below one key path.
#[derive(Debug, Default)]
struct EnvTable {
    /// The keys set below this path.
    keys: BTreeMap<String, EnvNode>,
    /// The variables that set them (the origin of an error about this table itself).
    vars: Vec<String>,
}

/// One key of an [`EnvTable`].
#[derive(Debug)]
enum EnvNode {
    /// The key's value, as the variable gave it.
    Value {
        /// The variable's name.
        var: String,
        /// Its value.
        value: String,
    },
    /// Keys below this one.
    Table(EnvTable),
}

impl EnvTable {
    /// Sets `path[depth..]` to `value`, from variable `var`.
    fn insert(
        &mut self,
        path: &[String],
        depth: usize,
        var: &str,
        value: String,
    ) -> Result<(), ConfigError> {
        self.vars.push(var.to_owned());
        let Some(key) = path.get(depth) else {
            return Ok(());
        };
        let conflict = |other: &str| ConfigError::Conflict {
            key: path[..=depth].join("."),
            first: other.to_owned(),
            second: var.to_owned(),
        };
        let last = depth + 1 == path.len();
        match self.keys.get_mut(key) {
            None if last => {
                let var = var.to_owned();
                self.keys.insert(key.clone(), EnvNode::Value { var, value });
                Ok(())
            }
            None => {
                let mut table = EnvTable::default();
                table.insert(path, depth + 1, var, value)?;
                self.keys.insert(key.clone(), EnvNode::Table(table));
                Ok(())
            }
            Some(EnvNode::Table(table)) if !last => table.insert(path, depth + 1, var, value),
            Some(EnvNode::Table(table)) => Err(conflict(&table.vars.join(", "))),
            Some(EnvNode::Value { var: other, .. }) => Err(conflict(other)),
        }
    }
}

/// The error of the layered deserializer: serde's message, and the innermost key it came
/// from with that value's origin (set once, where the error first crosses a table).
#[derive(Debug)]
struct DeError {
    /// What is wrong.
    message: String,
    /// The key path.
    key: Option<String>,
    /// The file's path or the variables' names.
    origin: Option<String>,
}

impl DeError {
    /// Records the key and origin unless an inner table already did.
    fn at(mut self, key: String, origin: impl FnOnce() -> String) -> Self {
        if self.key.is_none() {
            self.key = Some(key);
            self.origin = Some(origin());
        }
        self
    }

    /// An error of the `toml` crate's value deserializer, without its echo of the input.
    fn from_toml(e: toml::de::Error) -> Self {
        de::Error::custom(e.message())
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            key: None,
            origin: None,
        }
    }
}

/// One table of the merged layers: the file's keys at this path and the environment's.
struct TableDe<'a> {
    /// The key path, `""` at the top, else `section` or `section.key`.
    path: String,
    /// The file's table here, if the file has one.
    file: Option<&'a toml::Table>,
    /// The environment's keys here, if any variable sets one.
    env: Option<&'a EnvTable>,
    /// The file's path, for errors.
    file_name: &'a str,
}

impl<'de> de::Deserializer<'de> for TableDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let mut keys: Vec<&str> = Vec::new();
        if let Some(file) = self.file {
            keys.extend(file.keys().map(String::as_str));
        }
        if let Some(env) = self.env {
            let file = self.file;
            keys.extend(
                env.keys
                    .keys()
                    .map(String::as_str)
                    .filter(|k| !file.is_some_and(|f| f.contains_key(*k))),
            );
        }
        visitor.visit_map(TableAccess {
            table: self,
            keys: keys.into_iter(),
            current: None,
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// The keys of a [`TableDe`], file's first, then those only the environment sets.
struct TableAccess<'a> {
    /// The table.
    table: TableDe<'a>,
    /// Keys still to hand out.
    keys: std::vec::IntoIter<&'a str>,
    /// The key whose value is next.
    current: Option<&'a str>,
}

impl<'a> TableAccess<'a> {
    /// `key`'s full path.
    fn path(&self, key: &str) -> String {
        if self.table.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.table.path)
        }
    }

    /// Where `key`'s value comes from: the variable that sets it, else the file, else the
    /// variables that set keys below it.
    fn origin(&self, key: &str) -> String {
        match self.table.env.and_then(|e| e.keys.get(key)) {
            Some(EnvNode::Value { var, .. }) => var.clone(),
            Some(EnvNode::Table(_)) | None
                if self.table.file.is_some_and(|f| f.contains_key(key)) =>
            {
                self.table.file_name.to_owned()
            }
            Some(EnvNode::Table(t)) => t.vars.join(", "),
            None => "the defaults".to_owned(),
        }
    }

    /// `key`'s value, the environment's winning over the file's. A key the file gives a
    /// value that is not a table while variables set keys below it is an error, not a
    /// silent choice of one of the two.
    fn node(&self, key: &str) -> Result<Node<'a>, DeError> {
        let file = self.table.file.and_then(|f| f.get(key));
        let table = |file, env| {
            Node::Table(TableDe {
                path: self.path(key),
                file,
                env,
                file_name: self.table.file_name,
            })
        };
        match (self.table.env.and_then(|e| e.keys.get(key)), file) {
            (Some(EnvNode::Value { value, .. }), _) => Ok(Node::Env(EnvDe { value })),
            (Some(EnvNode::Table(env)), None) => Ok(table(None, Some(env))),
            (Some(EnvNode::Table(env)), Some(toml::Value::Table(t))) => {
                Ok(table(Some(t), Some(env)))
            }
            (Some(EnvNode::Table(env)), Some(_)) => Err(de::Error::custom(format_args!(
                "a value that is not a table, while {} set keys below it",
                env.vars.join(", ")
            ))),
            (None, Some(toml::Value::Table(t))) => Ok(table(Some(t), None)),
            (None, Some(value)) => Ok(Node::File(value)),
            (None, None) => Err(de::Error::custom("a key without a value")),
        }
    }
}

impl<'de> MapAccess<'de> for TableAccess<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(key) = self.keys.next() else {
            return Ok(None);
        };
        self.current = Some(key);
        let de: de::value::StrDeserializer<'_, DeError> = key.into_deserializer();
        seed.deserialize(de)
            .map(Some)
            .map_err(|e| e.at(self.path(key), || self.origin(key)))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let key = self
            .current
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("a value asked for before its key"))?;
        self.node(key)
            .and_then(|node| seed.deserialize(node))
            .map_err(|e| e.at(self.path(key), || self.origin(key)))
    }
}

/// One value of the merged layers.
enum Node<'a> {
    /// A table (of the file, the environment or both).
    Table(TableDe<'a>),
    /// A value of the file that is not a table.
    File(&'a toml::Value),
    /// A value of the environment.
    Env(EnvDe<'a>),
}

/// Each method goes to the deserializer of the node's layer.
macro_rules! dispatch {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, DeError> {
            match self {
                Node::Table(t) => t.$method($($arg,)* visitor),
                Node::File(v) => v.clone().$method($($arg,)* visitor).map_err(DeError::from_toml),
                Node::Env(e) => e.$method($($arg,)* visitor),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Node<'_> {
    type Error = DeError;

    dispatch! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf(); deserialize_option();
        deserialize_unit(); deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str); deserialize_seq();
        deserialize_tuple(len: usize); deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier(); deserialize_ignored_any();
    }
}

/// An environment value, parsed as the type serde asks for (the module's doc).
struct EnvDe<'a> {
    /// The variable's value.
    value: &'a str,
}

/// Integer and float methods: the value parsed by `str::parse` (the parser's message on
/// failure, which does not repeat the value).
macro_rules! parse_number {
    ($($method:ident $visit:ident $ty:ty;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.value.parse::<$ty>() {
                Ok(n) => visitor.$visit(n),
                Err(e) => Err(de::Error::custom(format_args!(
                    "expected {} ({}): {e}",
                    if stringify!($ty).starts_with('f') { "a number" } else { "an integer" },
                    stringify!($ty),
                ))),
            }
        }
    )*};
}

/// Sequence, tuple, map and struct methods: the value read as a TOML value
/// ([`EnvDe::toml`]), then that value's own deserializer.
macro_rules! via_toml {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, DeError> {
            self.toml()?.$method($($arg,)* visitor).map_err(DeError::from_toml)
        }
    )*};
}

impl EnvDe<'_> {
    /// The value as a TOML value (`["a", "b"]`, `{ k = 1 }`), for sequences and maps.
    fn toml(&self) -> Result<toml::Value, DeError> {
        self.value.parse::<toml::Value>().map_err(|e| {
            de::Error::custom(format_args!(
                "expected a TOML value such as [\"a\", \"b\"]: {}",
                e.message()
            ))
        })
    }
}

impl<'de> de::Deserializer<'de> for EnvDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.value)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            _ => Err(de::Error::custom("expected `true` or `false`")),
        }
    }

    parse_number! {
        deserialize_i8 visit_i8 i8; deserialize_i16 visit_i16 i16; deserialize_i32 visit_i32 i32;
        deserialize_i64 visit_i64 i64; deserialize_i128 visit_i128 i128;
        deserialize_u8 visit_u8 u8; deserialize_u16 visit_u16 u16; deserialize_u32 visit_u32 u32;
        deserialize_u64 visit_u64 u64; deserialize_u128 visit_u128 u128;
        deserialize_f32 visit_f32 f32; deserialize_f64 visit_f64 f64;
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    via_toml! {
        deserialize_seq(); deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize); deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let de: de::value::StrDeserializer<'_, DeError> = self.value.into_deserializer();
        de.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct identifier
    }
}
