//! Backup and restore of an embedded node (`chatd backup`, `chatd restore`, scheduled
//! backups, `GET /v1/admin/backup`).
//!
//! A backup is one `tar.gz` archive:
//!
//! 1. `header.json`: archive format, chatd version, store schema version, creation time (first,
//!    so a restore refuses a mismatched archive before it writes anything);
//! 2. `store.kv`: every pair of every keyspace of the embedded database as of one fjall
//!    snapshot (consistent across keyspaces, taken while the node keeps appending), as records
//!    `[u16 name length][name][u32 key length][key][u32 value length][value]`, big-endian;
//! 3. `files/<ab>/<cd>/<sha256>`: the attachment contents (content-addressed, never rewritten:
//!    those referenced by the snapshot are all there; later uploads may be too);
//! 4. `manifest.json`: the header again, pairs per keyspace, and the size and SHA-256 of every
//!    other entry (last, as it is known only once they are written).
//!
//! A restore checks the header, stages everything aside while checking each entry against the
//! manifest, loads the pairs into a fresh database, and only then moves the result into the data
//! directory. Secrets (`jwt.secret`) are not in the archive.

pub use crate::archive::ArchiveError as BackupError;
use crate::archive::{
    check_entries, header_time, io_err, write_record, Hashing, HashingReader, Records,
};
pub use crate::archive::{with_suffix, FileEntry};
use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use store::embedded::dump::{MIN_SCHEMA_VERSION, SCHEMA_VERSION};
use store::embedded::EmbeddedStore;

/// Version of the archive layout described in the module documentation.
pub const FORMAT: u32 = 1;

/// File name prefix of archives in `backup.dir`.
const PREFIX: &str = "chatd-backup-";

/// The refusal of a restore into `dir`, which holds data.
fn not_empty(dir: &Path) -> BackupError {
    BackupError::NotEmpty(format!(
        "{} is not empty (use --force to replace its store and attachments)",
        dir.display()
    ))
}

/// The first entry of an archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// [`FORMAT`].
    pub format: u32,
    /// The chatd version that wrote it.
    pub chatd_version: String,
    /// The store's [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// When the snapshot was taken, ms since the epoch.
    pub created_at_ms: u64,
}

/// The last entry of an archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// The header, repeated.
    #[serde(flatten)]
    pub header: Header,
    /// Pairs per keyspace in `store.kv`.
    pub keyspaces: BTreeMap<String, u64>,
    /// Every entry but the header and the manifest.
    pub files: Vec<FileEntry>,
}

/// The one-line summary `chatd backup` and `chatd restore` print.
impl std::fmt::Display for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: u64 = self.keyspaces.values().sum();
        write!(
            f,
            "schema {}, {pairs} store pairs, {} files, taken at {} ms",
            self.header.schema_version,
            self.files.len(),
            self.header.created_at_ms
        )
    }
}

/// Where attachments live (`files.dir`, or `files/` in the data directory).
pub fn files_dir(config: &Config) -> PathBuf {
    if config.files.dir.as_os_str().is_empty() {
        config.server.data_dir.join("files")
    } else {
        config.files.dir.clone()
    }
}

/// Where scheduled and on-demand backups are written (`backup.dir`, or `backups/` in the data
/// directory).
pub fn backup_dir(config: &Config) -> PathBuf {
    if config.backup.dir.as_os_str().is_empty() {
        config.server.data_dir.join("backups")
    } else {
        config.backup.dir.clone()
    }
}

fn now_ms() -> u64 {
    crate::state::now_ms()
}

/// Writes a backup of `store` and the attachments in `files` to `out` (through a
/// `.partial` file renamed at the end, so `out` is whole or absent). Blocking: run it on a
/// blocking thread.
pub fn create(store: &EmbeddedStore, files: &Path, out: &Path) -> Result<Manifest, BackupError> {
    let header = Header {
        format: FORMAT,
        chatd_version: env!("CARGO_PKG_VERSION").to_owned(),
        schema_version: SCHEMA_VERSION,
        created_at_ms: now_ms(),
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    let partial = with_suffix(out, ".partial");
    let kv_path = with_suffix(out, ".store.kv.partial");
    let result = (|| {
        // 1. The snapshot, to a side file (its size must be known before it enters the tar).
        let (keyspaces, kv_entry) = {
            let file = File::create(&kv_path).map_err(io_err("creating the store dump"))?;
            let mut w = Hashing::new(BufWriter::new(file));
            let counts = store.dump(|ks, k, v| write_record(&mut w, ks, k, v))?;
            let (mut inner, entry) = w.finish("store.kv");
            inner.flush().map_err(io_err("writing the store dump"))?;
            (counts, entry)
        };
        // 2. The archive.
        let file =
            File::create(&partial).map_err(io_err(format!("creating {}", partial.display())))?;
        let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        append_bytes(&mut tar, "header.json", &json(&header)?)?;
        let mut entries = vec![kv_entry];
        tar.append_path_with_name(&kv_path, "store.kv")
            .map_err(io_err("archiving the store dump"))?;
        for rel in attachment_paths(files)? {
            let path = files.join(&rel);
            let name = format!("files/{}", rel_string(&rel));
            let Ok(f) = File::open(&path) else {
                tracing::warn!(path = %path.display(), "attachment vanished during the backup");
                continue;
            };
            let len = f
                .metadata()
                .map_err(io_err(format!("reading {}", path.display())))?
                .len();
            let mut header = tar::Header::new_gnu();
            header.set_size(len);
            header.set_mode(0o644);
            header.set_mtime(header_time());
            let mut reader = HashingReader::new(BufReader::new(f).take(len));
            tar.append_data(&mut header, &name, &mut reader)
                .map_err(io_err(format!("archiving {}", path.display())))?;
            entries.push(reader.finish(&name));
        }
        let manifest = Manifest {
            header,
            keyspaces,
            files: entries,
        };
        append_bytes(&mut tar, "manifest.json", &json(&manifest)?)?;
        let gz = tar.into_inner().map_err(io_err("finishing the archive"))?;
        let mut file = gz.finish().map_err(io_err("finishing the archive"))?;
        file.flush().map_err(io_err("finishing the archive"))?;
        file.get_ref()
            .sync_all()
            .map_err(io_err("syncing the archive"))?;
        std::fs::rename(&partial, out).map_err(io_err(format!("renaming to {}", out.display())))?;
        Ok(manifest)
    })();
    let _ = std::fs::remove_file(&kv_path);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, BackupError> {
    serde_json::to_vec_pretty(v).map_err(|e| BackupError::Invalid(e.to_string()))
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> Result<(), BackupError> {
    crate::archive::append_bytes(tar, name, data).map_err(io_err(format!("archiving {name}")))
}

fn rel_string(rel: &Path) -> String {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Attachment files under `root`, relative, sorted; dot-files (uploads in progress) skipped.
fn attachment_paths(root: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(io_err(format!("listing {}", dir.display())))?;
            if kind.is_dir() {
                stack.push(rel.join(&name));
            } else if kind.is_file() {
                out.push(rel.join(&name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A relative archive path without `..`, root or prefix parts, else `None`.
fn safe_rel(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    let ok = path.components().all(|c| matches!(c, Component::Normal(_)));
    (ok && !p.is_empty()).then(|| path.to_path_buf())
}

/// Whether a directory holds anything but `jwt.secret` (a missing one is empty).
fn has_content(dir: &Path, ignore: &[&str]) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.map_err(io_err(format!("listing {}", dir.display())))?;
                if !ignore.iter().any(|i| e.file_name() == **i) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("listing {}", dir.display()))(e)),
    }
}

/// Restores the archive at `from` into `data_dir` (store) and `files` (attachments). Refuses
/// another format or schema version, and a data directory with anything in it but
/// `jwt.secret` (or a non-empty attachments directory) unless `force`, which replaces the
/// store and the attachments. Blocking. The node must not be running on `data_dir`.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    files: &Path,
    force: bool,
) -> Result<Manifest, BackupError> {
    let file = File::open(from).map_err(io_err(format!("opening {}", from.display())))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut entries = archive
        .entries()
        .map_err(io_err(format!("reading {}", from.display())))?;
    // 1. The header decides whether we go on at all.
    let header: Header = {
        let mut first = entries
            .next()
            .ok_or_else(|| BackupError::Invalid("empty archive".into()))?
            .map_err(io_err("reading the header"))?;
        let path = first.path().map_err(io_err("reading the header"))?;
        if path != Path::new("header.json") {
            return Err(BackupError::Invalid(
                "header.json is not the first entry".into(),
            ));
        }
        let mut buf = Vec::new();
        first
            .by_ref()
            .take(1 << 20)
            .read_to_end(&mut buf)
            .map_err(io_err("reading the header"))?;
        serde_json::from_slice(&buf)
            .map_err(|e| BackupError::Invalid(format!("header.json: {e}")))?
    };
    if header.format != FORMAT
        || !(MIN_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&header.schema_version)
    {
        return Err(BackupError::Mismatch(format!(
            "the archive has format {} and schema version {}; this chatd reads format \
             {FORMAT}, schema {MIN_SCHEMA_VERSION} to {SCHEMA_VERSION}",
            header.format, header.schema_version
        )));
    }
    // 2. The target.
    if !force {
        if has_content(data_dir, &["jwt.secret"])? {
            return Err(not_empty(data_dir));
        }
        if has_content(files, &[])? {
            return Err(not_empty(files));
        }
    }
    // 3. Stage every entry, hashing it.
    let staging = data_dir.join(".restore");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err(format!("creating {}", staging.display())))?;
    let result = (|| {
        let mut seen: BTreeMap<String, FileEntry> = BTreeMap::new();
        let mut manifest: Option<Manifest> = None;
        for entry in entries {
            let mut entry = entry.map_err(io_err("reading the archive"))?;
            let name = entry
                .path()
                .map_err(io_err("reading the archive"))?
                .to_string_lossy()
                .into_owned();
            if name == "manifest.json" {
                let mut buf = Vec::new();
                entry
                    .by_ref()
                    .take(256 << 20)
                    .read_to_end(&mut buf)
                    .map_err(io_err("reading the manifest"))?;
                manifest = Some(
                    serde_json::from_slice(&buf)
                        .map_err(|e| BackupError::Invalid(format!("manifest.json: {e}")))?,
                );
                continue;
            }
            let rel = safe_rel(&name)
                .filter(|r| name == "store.kv" || r.starts_with("files"))
                .ok_or_else(|| BackupError::Invalid(format!("unexpected entry {name}")))?;
            let dest = staging.join(&rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io_err(format!("creating {}", parent.display())))?;
            }
            let out =
                File::create(&dest).map_err(io_err(format!("creating {}", dest.display())))?;
            let mut w = Hashing::new(BufWriter::new(out));
            io::copy(&mut entry, &mut w).map_err(io_err(format!("extracting {name}")))?;
            let (mut inner, fe) = w.finish(&name);
            inner
                .flush()
                .map_err(io_err(format!("extracting {name}")))?;
            seen.insert(name, fe);
        }
        let manifest = manifest.ok_or_else(|| BackupError::Invalid("no manifest.json".into()))?;
        if manifest.header != header {
            return Err(BackupError::Invalid(
                "the manifest does not match the header".into(),
            ));
        }
        check_entries(&manifest.files, seen).map_err(BackupError::Invalid)?;
        // 4. Load the pairs into a fresh database in the staging directory.
        let kv = File::open(staging.join("store.kv")).map_err(io_err("opening the store dump"))?;
        let counts = store::embedded::dump::load(&staging, Records(BufReader::new(kv)))?;
        let expected: BTreeMap<_, _> = manifest
            .keyspaces
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        if counts != expected {
            return Err(BackupError::Invalid(format!(
                "pairs per keyspace {counts:?} differ from the manifest {expected:?}"
            )));
        }
        // 5. Move the result into place.
        let chat = data_dir.join("chat");
        if chat.exists() {
            std::fs::remove_dir_all(&chat)
                .map_err(io_err(format!("removing {}", chat.display())))?;
        }
        std::fs::rename(staging.join("chat"), &chat)
            .map_err(io_err(format!("moving into {}", chat.display())))?;
        let staged_files = staging.join("files");
        if files.exists() {
            std::fs::remove_dir_all(files)
                .map_err(io_err(format!("removing {}", files.display())))?;
        }
        if staged_files.exists() {
            if let Some(parent) = files.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io_err(format!("creating {}", parent.display())))?;
            }
            if std::fs::rename(&staged_files, files).is_err() {
                // Another filesystem (files.dir elsewhere): copy.
                for rel in attachment_paths(&staged_files)? {
                    let dest = files.join(&rel);
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(io_err(format!("creating {}", parent.display())))?;
                    }
                    std::fs::copy(staged_files.join(&rel), &dest)
                        .map_err(io_err(format!("copying to {}", dest.display())))?;
                }
            }
        }
        Ok(manifest)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Takes a backup into `backup.dir` and deletes the oldest beyond `backup.keep`; returns the
/// archive's path and manifest.
pub async fn run_once(state: &AppState) -> Result<(PathBuf, Manifest), ApiError> {
    let Some(store) = state.embedded.clone() else {
        return Err(ApiError::bad_request(
            "backups are for embedded mode; see docs/OPERATIONS.md for cluster mode",
        ));
    };
    // One backup at a time per process: a second request (or the schedule) is refused rather
    // than doubling the disk and CPU a backup takes.
    static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let Ok(_running) = RUNNING.try_lock() else {
        crate::metrics::budget_refused("backup");
        return Err(ApiError::new(
            protocol::ErrorCode::Unavailable,
            "a backup is already running; retry when it is done",
        ));
    };
    let dir = backup_dir(&state.config);
    let files = files_dir(&state.config);
    let keep = state.config.backup.keep.max(1);
    let out = dir.join(format!("{PREFIX}{:013}.tar.gz", now_ms()));
    let path = out.clone();
    let started = std::time::Instant::now();
    let manifest = tokio::task::spawn_blocking(move || {
        let m = create(&store, &files, &out)?;
        prune(&dir, keep);
        Ok::<_, BackupError>(m)
    })
    .await
    .map_err(|e| ApiError::new(protocol::ErrorCode::Internal, e.to_string()))?
    .map_err(|e| {
        tracing::error!(error = %e, "backup failed");
        ApiError::new(protocol::ErrorCode::Internal, format!("backup failed: {e}"))
    })?;
    crate::metrics::backup_succeeded();
    tracing::info!(
        path = %path.display(),
        files = manifest.files.len(),
        ms = started.elapsed().as_millis() as u64,
        "backup written"
    );
    Ok((path, manifest))
}

/// Deletes the oldest archives in `dir` beyond the newest `keep`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".tar.gz"))
        })
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for old in names.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "could not delete an old backup");
        }
    }
}

/// Starts the scheduled backup (embedded mode, `backup.interval_secs` > 0): one every
/// interval, the first one interval after start.
pub fn spawn_scheduler(state: AppState) {
    let every = state.config.backup.interval_secs;
    if every == 0 || state.embedded.is_none() {
        return;
    }
    tokio::spawn(async move {
        let period = Duration::from_secs(every);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Errors are logged by run_once and show in the metrics' backup age.
                    let _ = run_once(&state).await;
                }
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn archive_paths_are_checked() {
        assert!(safe_rel("files/ab/cd/abcd").is_some());
        assert!(safe_rel("../etc/passwd").is_none());
        assert!(safe_rel("/etc/passwd").is_none());
        assert!(safe_rel("files/../../x").is_none());
    }

    /// Restores an archive holding nothing but a header of `schema_version`.
    fn restore_header_only(schema_version: u32) -> (BackupError, bool) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("old.tar.gz");
        let header = Header {
            format: FORMAT,
            chatd_version: "0.0.1".into(),
            schema_version,
            created_at_ms: 1,
        };
        let file = File::create(&archive).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        append_bytes(&mut tar, "header.json", &json(&header).unwrap()).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let target = dir.path().join("data");
        let err = restore(&archive, &target, &target.join("files"), true).unwrap_err();
        (err, target.exists())
    }

    #[test]
    fn another_schema_version_is_refused_before_anything_is_written() {
        let (err, written) = restore_header_only(SCHEMA_VERSION + 1);
        assert!(matches!(err, BackupError::Mismatch(_)), "{err}");
        assert!(err.to_string().contains("schema version"), "{err}");
        assert!(!written, "nothing may be written");
    }

    /// Version 1 archives (idempotency keys written out) are still read; a version below
    /// the oldest readable one is refused like a newer one.
    #[test]
    fn older_schema_versions_this_chatd_reads_pass_the_version_check() {
        for version in MIN_SCHEMA_VERSION..=SCHEMA_VERSION {
            let (err, _) = restore_header_only(version);
            // Past the header, this archive has no manifest: that is what stops it.
            assert!(matches!(err, BackupError::Invalid(_)), "{version}: {err}");
            assert!(err.to_string().contains("manifest"), "{version}: {err}");
        }
        let (err, written) = restore_header_only(MIN_SCHEMA_VERSION - 1);
        assert!(matches!(err, BackupError::Mismatch(_)), "{err}");
        assert!(!written, "nothing may be written");
    }

    #[test]
    fn backup_then_restore_into_an_empty_directory() {
        let src = tempfile::tempdir().unwrap();
        let files = src.path().join("files");
        std::fs::create_dir_all(files.join("ab/cd")).unwrap();
        std::fs::write(files.join("ab/cd/abcd"), b"content").unwrap();
        std::fs::write(files.join(".upload-in-progress"), b"x").unwrap();
        let out = src.path().join("b/backup.tar.gz");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = EmbeddedStore::open(src.path(), Default::default()).unwrap();
        rt.block_on(store::Store::touch_user(
            &store,
            &protocol::UserId::new("ann"),
            1,
        ))
        .unwrap();
        let m = create(&store, &files, &out).unwrap();
        assert_eq!(m.keyspaces["users"], 1);
        assert_eq!(m.files.len(), 2, "{m:?}");
        rt.block_on(store::Store::close(&store)).unwrap();

        let dst = tempfile::tempdir().unwrap();
        let dst_files = dst.path().join("files");
        let r = restore(&out, dst.path(), &dst_files, false).unwrap();
        assert_eq!(r, m);
        assert_eq!(
            std::fs::read(dst_files.join("ab/cd/abcd")).unwrap(),
            b"content"
        );
        let restored = EmbeddedStore::open(dst.path(), Default::default()).unwrap();
        assert!(rt
            .block_on(store::Store::user_exists(
                &restored,
                &protocol::UserId::new("ann")
            ))
            .unwrap());
        rt.block_on(store::Store::close(&restored)).unwrap();
        // Not again into a directory that now has a store, unless forced.
        assert!(matches!(
            restore(&out, dst.path(), &dst_files, false),
            Err(BackupError::NotEmpty(_))
        ));
        restore(&out, dst.path(), &dst_files, true).unwrap();
    }
}
