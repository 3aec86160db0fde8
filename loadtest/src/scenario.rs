//! What a run does: a [`Scenario`] is a flat set of parameters (kind, sizes, rates, timing,
//! seed, codec, targets) that comes from a built-in preset (`loadtest fanout`), a TOML file in
//! `loadtest/scenarios/`, or both, with command-line flags applied last.
//!
//! The same scenario with the same seed always produces the same users, groups, contacts,
//! send schedules and churn schedules (see [`crate::plan`]).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Errors reading a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The name is neither a preset nor a readable file.
    #[error("unknown scenario {0:?}: use one of connect-storm, dm, fanout, churn, mixed, or a .toml file")]
    Unknown(String),
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A parameter is out of range.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// The shape of the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// N users connect during the ramp-up, hold for `duration_secs`, disconnect. No messages.
    ConnectStorm,
    /// Direct messages at `rate` msgs/s in total, between random pairs of contacts.
    Direct,
    /// `groups` groups of `group_size` members, `rate` msgs/s per group.
    #[default]
    Fanout,
    /// Group fan-out while a share of the clients drops and comes back with `sync`.
    Churn,
    /// A realistic day: Zipf group sizes, several devices per user, large company groups,
    /// group traffic and direct messages together.
    Mixed,
}

/// The wire encoding the simulated clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CodecName {
    /// JSON text frames.
    #[default]
    Json,
    /// MessagePack binary frames.
    Msgpack,
}

impl CodecName {
    /// The protocol codec.
    pub fn codec(self) -> protocol::Codec {
        match self {
            CodecName::Json => protocol::Codec::Json,
            CodecName::Msgpack => protocol::Codec::MsgPack,
        }
    }

    /// The `?codec=` value.
    pub fn query(self) -> &'static str {
        match self {
            CodecName::Json => "json",
            CodecName::Msgpack => "msgpack",
        }
    }
}

/// Whether the targets are one embedded node or cluster nodes sharing Redis and ScyllaDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One process with its own store (the default).
    #[default]
    Embedded,
    /// Several gateway nodes; clients are spread over `targets` round-robin.
    Cluster,
}

/// Every parameter of a run. Fields a kind does not use are ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports and output directories.
    pub name: String,
    /// The traffic shape.
    pub kind: Kind,
    /// Seed of every random choice; the same seed gives the same run.
    pub seed: u64,
    /// Users (connect-storm, dm, mixed). Fan-out and churn use `groups * group_size`.
    pub users: usize,
    /// Share of users with a second device (mixed); a tenth of those get a third.
    pub multi_device_share: f64,
    /// Seconds over which clients connect, evenly spread.
    pub ramp_up_secs: f64,
    /// Seconds of traffic (connect-storm: seconds of holding the connections).
    pub duration_secs: f64,
    /// Most seconds to wait after the traffic for the last deliveries.
    pub drain_secs: f64,
    /// Messages per second: in total (dm), per group (fanout, churn), or over all groups (mixed).
    pub rate: f64,
    /// Direct messages per second in total (mixed).
    pub dm_rate: f64,
    /// Number of groups (fanout, churn, mixed).
    pub groups: usize,
    /// Members per group (fanout, churn); the largest regular group (mixed).
    pub group_size: usize,
    /// Members of each group that send its traffic.
    pub senders_per_group: usize,
    /// Average contacts per user for direct messages.
    pub contacts: usize,
    /// Share of the sessions that drop and reconnect during the traffic.
    pub churn_share: f64,
    /// Reconnects per second over all churning sessions.
    pub churn_rate: f64,
    /// How long a churning session stays offline, ms.
    pub churn_offline_ms: u64,
    /// Exponent of the Zipf distribution of group sizes (mixed).
    pub zipf_s: f64,
    /// Number of large company-wide groups (mixed).
    pub large_groups: usize,
    /// Members of each large group (mixed; capped at the number of users).
    pub large_group_size: usize,
    /// Bytes of each message body (a send timestamp plus padding).
    pub body_bytes: usize,
    /// The clients' codec.
    pub codec: CodecName,
    /// Embedded (one node) or cluster (several nodes).
    pub mode: Mode,
    /// Node addresses (`127.0.0.1:8080`); clients are spread over them round-robin.
    pub targets: Vec<String>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "fanout".into(),
            kind: Kind::Fanout,
            seed: 1,
            users: 1000,
            multi_device_share: 0.3,
            ramp_up_secs: 3.0,
            duration_secs: 10.0,
            drain_secs: 10.0,
            rate: 20.0,
            dm_rate: 0.0,
            groups: 10,
            group_size: 100,
            senders_per_group: 5,
            contacts: 8,
            churn_share: 0.0,
            churn_rate: 0.0,
            churn_offline_ms: 100,
            zipf_s: 1.1,
            large_groups: 2,
            large_group_size: 1000,
            body_bytes: 48,
            codec: CodecName::Json,
            mode: Mode::Embedded,
            targets: vec!["127.0.0.1:8080".into()],
        }
    }
}

/// The names of the built-in presets.
pub const PRESETS: &[&str] = &["connect-storm", "dm", "fanout", "churn", "mixed"];

impl Scenario {
    /// A built-in preset by name.
    pub fn preset(name: &str) -> Option<Self> {
        let base = Scenario::default();
        let s = match name {
            "connect-storm" | "connect_storm" => Scenario {
                name: "connect-storm".into(),
                kind: Kind::ConnectStorm,
                users: 1000,
                ramp_up_secs: 5.0,
                duration_secs: 10.0,
                ..base
            },
            "dm" | "direct" => Scenario {
                name: "dm".into(),
                kind: Kind::Direct,
                users: 1000,
                rate: 2000.0,
                ..base
            },
            "fanout" => Scenario {
                name: "fanout".into(),
                kind: Kind::Fanout,
                ..base
            },
            "churn" => Scenario {
                name: "churn".into(),
                kind: Kind::Churn,
                churn_share: 0.3,
                churn_rate: 100.0,
                ..base
            },
            "mixed" => Scenario {
                name: "mixed".into(),
                kind: Kind::Mixed,
                users: 2000,
                groups: 200,
                group_size: 200,
                rate: 500.0,
                dm_rate: 500.0,
                large_groups: 2,
                large_group_size: 1000,
                ..base
            },
            _ => return None,
        };
        Some(s)
    }

    /// A preset name, or the path of a TOML file (whose `kind`, if it names a preset, is
    /// the base the file's keys override).
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some(s) = Self::preset(name_or_path) {
            return Ok(s);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(ScenarioError::Unknown(name_or_path.to_owned()));
        }
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: name_or_path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ScenarioError::Parse {
            path: name_or_path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses a scenario file: the preset of its `kind` first, then the file's keys.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        let value: toml::Table = toml::from_str(text)?;
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .map(|k| k.replace('_', "-"))
            .unwrap_or_else(|| "fanout".into());
        let preset_name = if kind == "direct" {
            "dm".to_owned()
        } else {
            kind
        };
        let base = Self::preset(&preset_name).unwrap_or_default();
        let mut merged = toml::Table::try_from(&base)
            .map_err(|e| <toml::de::Error as serde::de::Error>::custom(e.to_string()))?;
        for (k, v) in value {
            merged.insert(k, v);
        }
        toml::Value::Table(merged).try_into()
    }

    /// Number of users the scenario simulates.
    pub fn user_count(&self) -> usize {
        match self.kind {
            Kind::Fanout | Kind::Churn => self.groups * self.group_size,
            _ => self.users,
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: &str| Err(ScenarioError::Invalid(m.to_owned()));
        if self.user_count() == 0 {
            return bad("no users");
        }
        if self.targets.is_empty() {
            return bad("no targets");
        }
        if !(self.duration_secs > 0.0 && self.duration_secs <= 24.0 * 3600.0) {
            return bad("duration_secs must be in (0, 86400]");
        }
        if !(0.0..=3600.0).contains(&self.ramp_up_secs)
            || !(0.0..=3600.0).contains(&self.drain_secs)
        {
            return bad("ramp_up_secs and drain_secs must be in [0, 3600]");
        }
        if self.rate < 0.0 || self.dm_rate < 0.0 || self.churn_rate < 0.0 {
            return bad("rates must not be negative");
        }
        if !(0.0..=1.0).contains(&self.churn_share)
            || !(0.0..=1.0).contains(&self.multi_device_share)
        {
            return bad("shares must be in [0, 1]");
        }
        if matches!(self.kind, Kind::Fanout | Kind::Churn | Kind::Mixed) && self.groups == 0 {
            return bad("group scenarios need groups > 0");
        }
        if matches!(self.kind, Kind::Fanout | Kind::Churn) && self.group_size < 2 {
            return bad("group_size must be at least 2");
        }
        if self.body_bytes < 16 || self.body_bytes > 8000 {
            return bad("body_bytes must be in [16, 8000]");
        }
        if self.kind == Kind::Churn && (self.churn_share <= 0.0 || self.churn_rate <= 0.0) {
            return bad("churn needs churn_share > 0 and churn_rate > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for p in PRESETS {
            let s = Scenario::preset(p).unwrap();
            s.validate().unwrap();
        }
    }

    #[test]
    fn files_override_their_kinds_preset() {
        let s = Scenario::from_toml("kind = \"churn\"\ngroups = 3\nseed = 9\n").unwrap();
        assert_eq!(s.kind, Kind::Churn);
        assert_eq!(s.groups, 3);
        assert_eq!(s.seed, 9);
        assert_eq!(s.churn_share, 0.3);
        assert!(Scenario::from_toml("nope = 1\n").is_err());
    }

    #[test]
    fn shipped_scenario_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let s = Scenario::load(p.to_str().unwrap()).unwrap();
                s.validate().unwrap();
                n += 1;
            }
        }
        assert!(n >= 5);
    }
}
