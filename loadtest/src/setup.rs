//! Getting a target ready: optionally spawn a `chatd` (temp data dir, generated secret,
//! benchmark limits), mint tokens, make users known and create the plan's groups over the
//! `/v1` HTTP API.

use crate::plan::{Plan, MAX_INITIAL_MEMBERS};
use futures_util::StreamExt;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Setup failures.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server could not be started.
    #[error("starting {bin}: {reason}")]
    Spawn {
        /// The binary.
        bin: String,
        /// Why.
        reason: String,
    },
    /// An HTTP call failed.
    #[error("{what}: {reason}")]
    Http {
        /// The call.
        what: String,
        /// Why.
        reason: String,
    },
    /// A token could not be signed.
    #[error("signing a token: {0}")]
    Token(String),
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HS256 token for `user`, valid for `ttl`.
pub fn token(secret: &str, user: &str, ttl: Duration) -> Result<String, SetupError> {
    let now = now_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub: user,
            exp: now + ttl.as_secs(),
            iat: now,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| SetupError::Token(e.to_string()))
}

/// Tokens for every user of the plan.
pub fn tokens(plan: &Plan, secret: &str, ttl: Duration) -> Result<Vec<String>, SetupError> {
    plan.users.iter().map(|u| token(secret, u, ttl)).collect()
}

/// A random hex secret.
pub fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// A server process the harness started; killed when dropped.
pub struct Spawned {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its signing secret.
    pub secret: String,
    /// Its log file.
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Spawned {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `bin` with `args`, waits for its `listening addr=` line, and writes its log to
    /// `log`.
    pub fn start(
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
        data_dir: bool,
    ) -> Result<Spawned, SetupError> {
        let err = |reason: String| SetupError::Spawn {
            bin: bin.display().to_string(),
            reason,
        };
        let dir = if data_dir {
            Some(tempfile::tempdir().map_err(|e| err(format!("temp dir: {e}")))?)
        } else {
            None
        };
        let secret = random_secret();
        let mut cmd = Command::new(bin);
        cmd.args(args);
        if let Some(d) = &dir {
            cmd.arg("--data-dir").arg(d.path());
        }
        cmd.env("CHATD_AUTH__JWT_SECRET", &secret)
            .env("CHATD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| err(e.to_string()))?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let mut file =
            std::fs::File::create(&log).map_err(|e| err(format!("{}: {e}", log.display())))?;
        let mut file2 = file.try_clone().map_err(|e| err(e.to_string()))?;
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{line}");
                    let _ = tx.send(line);
                }
            });
        }
        if let Some(errs) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(errs).lines().map_while(Result::ok) {
                    let _ = writeln!(file2, "{line}");
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err(format!(
                        "no `listening addr=` line within 30 s (log: {})",
                        log.display()
                    )));
                }
            };
            if line.contains("listening") {
                if let Some(a) = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
                {
                    break a;
                }
            }
        };
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        Ok(Spawned {
            child,
            addr,
            secret,
            log,
            _dir: dir,
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes every user who is in a group known to the server, then creates the groups; returns
/// their ids in plan order.
pub async fn create_groups(
    base: &str,
    plan: &Plan,
    tokens: &[String],
) -> Result<Vec<String>, SetupError> {
    if plan.groups.is_empty() {
        return Ok(Vec::new());
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| SetupError::Http {
            what: "http client".into(),
            reason: e.to_string(),
        })?;
    let mut in_group = vec![false; plan.users.len()];
    for g in &plan.groups {
        for &m in &g.members {
            in_group[m as usize] = true;
        }
    }
    let touch = in_group
        .iter()
        .enumerate()
        .filter(|(_, b)| **b)
        .map(|(u, _)| u);
    let mut results = futures_util::stream::iter(touch.map(|u| {
        let http = http.clone();
        let url = format!("{base}/v1/groups");
        let tok = tokens[u].clone();
        async move {
            let r = http.get(url).bearer_auth(tok).send().await;
            match r {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        }
    }))
    .buffer_unordered(32);
    while let Some(r) = results.next().await {
        r.map_err(|reason| SetupError::Http {
            what: "making users known (GET /v1/groups)".into(),
            reason,
        })?;
    }
    let mut ids = Vec::with_capacity(plan.groups.len());
    for (g, group) in plan.groups.iter().enumerate() {
        let owner = group.members[0] as usize;
        let first: Vec<&str> = group.members[1..]
            .iter()
            .take(MAX_INITIAL_MEMBERS)
            .map(|&m| plan.users[m as usize].as_str())
            .collect();
        let body = serde_json::json!({
            // Names are unique in the company: the run's tag keeps a second run against the
            // same server or cluster from failing with 409.
            "name": format!("loadtest {} group {g}", plan.tag),
            // Every group is a project group, large ones too: the scenario models traffic
            // where every member posts, and a `company` group lets only its admins post (and
            // only a company administrator creates one).
            "kind": "project",
            "members": first,
        });
        let resp = http
            .post(format!("{base}/v1/groups"))
            .bearer_auth(&tokens[owner])
            .json(&body)
            .send()
            .await
            .map_err(|e| SetupError::Http {
                what: "POST /v1/groups".into(),
                reason: e.to_string(),
            })?;
        let status = resp.status();
        let value: serde_json::Value = resp.json().await.unwrap_or_default();
        let Some(id) = value.get("id").and_then(|v| v.as_str()) else {
            return Err(SetupError::Http {
                what: "POST /v1/groups".into(),
                reason: format!("status {status}: {value}"),
            });
        };
        for &m in group.members[1..].iter().skip(MAX_INITIAL_MEMBERS) {
            let r = http
                .post(format!("{base}/v1/groups/{id}/members"))
                .bearer_auth(&tokens[owner])
                .json(&serde_json::json!({"user": plan.users[m as usize]}))
                .send()
                .await
                .map_err(|e| SetupError::Http {
                    what: "POST /v1/groups/{id}/members".into(),
                    reason: e.to_string(),
                })?;
            if !r.status().is_success() {
                return Err(SetupError::Http {
                    what: "POST /v1/groups/{id}/members".into(),
                    reason: format!("status {}", r.status()),
                });
            }
        }
        ids.push(id.to_owned());
    }
    Ok(ids)
}
