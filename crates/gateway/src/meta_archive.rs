//! `chatd export` and `chatd import`: the administrative metadata of a store (every
//! `MetaStore` namespace: accounts, departments, credentials, group settings, group name
//! reservations, revocations, file records, posts, leavers, ...; the audit log; the review
//! queue) as one archive, for moving or restoring a cluster's metadata. Messages, groups and
//! members stay in the database and are backed up with its snapshots (docs/OPERATIONS.md).
//!
//! The archive is a `tar.gz` built from the same pieces as a backup (`archive.rs`):
//!
//! 1. `header.json`: kind `chatd-metadata`, format, chatd version, time, source backend;
//! 2. `meta.kv`: every `MetaStore` record as a key-value record (name = namespace);
//! 3. `audit.jsonl`: one audit entry per line;
//! 4. `held.jsonl`: one held message per line;
//! 5. `manifest.json`: the header again, records per namespace, audit entries, held messages,
//!    and the size and SHA-256 of every other entry.
//!
//! Export streams: the store pages its reads into a bounded channel that a blocking thread
//! writes to side files, so memory does not grow with the data. Import first reads the whole
//! archive once checking every entry against the manifest, refuses a target that already
//! holds metadata (unless forced), then reads it again and loads it: records in small
//! batches, audit entries and held messages a few at a time concurrently.

pub use crate::archive::ArchiveError as ExportError;
use crate::archive::{
    append_bytes, check_entries, io_err, with_suffix, write_record, FileEntry, Hashing,
    HashingReader, Records,
};
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;
use store::{AdminExport, AdminRecord, AuditEntry, HeldMessage, MetaOp, MetaStore, ReviewStore};
use tokio::sync::mpsc;

/// Version of the archive layout described in the module documentation.
pub const FORMAT: u32 = 1;

/// The `kind` of a metadata export (a backup archive has none).
pub const KIND: &str = "chatd-metadata";

/// Records in flight between the store and the file writer (or the archive reader and the
/// store).
const CHANNEL: usize = 1024;

/// `MetaStore` records per atomic write at most while loading, and their bytes (far below
/// the CQL batch size limits).
const LOAD_BATCH: usize = 64;
const LOAD_BATCH_BYTES: usize = 16 * 1024;

/// Audit entries or held messages written concurrently while loading.
const LOAD_CONCURRENCY: usize = 32;

fn join_err(e: tokio::task::JoinError) -> ExportError {
    ExportError::Io {
        context: "background task".into(),
        source: io::Error::other(e),
    }
}

/// The first entry of an export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// [`KIND`].
    pub kind: String,
    /// [`FORMAT`].
    pub format: u32,
    /// The chatd version that wrote it.
    pub chatd_version: String,
    /// When the export started, ms since the epoch.
    pub created_at_ms: u64,
    /// The backend it was read from (`scylla`, `embedded`).
    pub source: String,
}

/// The last entry of an export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// The header, repeated.
    #[serde(flatten)]
    pub header: Header,
    /// `MetaStore` records per namespace.
    pub namespaces: BTreeMap<String, u64>,
    /// Audit entries.
    pub audit: u64,
    /// Held messages.
    pub held: u64,
    /// Every entry but the header and the manifest.
    pub files: Vec<FileEntry>,
}

/// The one-line summary `chatd export` and `chatd import` print.
impl std::fmt::Display for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let records: u64 = self.namespaces.values().sum();
        write!(
            f,
            "{records} records in {} namespaces, {} audit entries, {} held messages, \
             exported at {} ms",
            self.namespaces.len(),
            self.audit,
            self.held,
            self.header.created_at_ms
        )
    }
}

/// What was counted while writing or loading.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    namespaces: BTreeMap<String, u64>,
    audit: u64,
    held: u64,
}

const META_KV: &str = "meta.kv";
const AUDIT: &str = "audit.jsonl";
const HELD: &str = "held.jsonl";

/// Writes every administrative record of `source` to the archive `out` (through a
/// `.partial` file renamed at the end, so `out` is whole or absent).
pub async fn export(
    source: Arc<dyn AdminExport>,
    source_name: &str,
    out: &Path,
) -> Result<Manifest, ExportError> {
    let header = Header {
        kind: KIND.into(),
        format: FORMAT,
        chatd_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at_ms: crate::clock::now_ms(),
        source: source_name.to_owned(),
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    let side = with_suffix(out, ".parts");
    std::fs::create_dir_all(&side).map_err(io_err(format!("creating {}", side.display())))?;
    let result = async {
        // 1. The records, streamed into side files (sizes must be known before the tar).
        let (tx, rx) = mpsc::channel(CHANNEL);
        let dir = side.clone();
        let writer = tokio::task::spawn_blocking(move || write_side_files(rx, &dir));
        let read = source.export_admin(tx).await;
        let written = writer.await.map_err(join_err)?;
        read?;
        let (counts, files) = written?;
        // 2. The archive.
        let manifest = Manifest {
            header,
            namespaces: counts.namespaces,
            audit: counts.audit,
            held: counts.held,
            files,
        };
        let (dir, out) = (side.clone(), out.to_path_buf());
        let manifest = tokio::task::spawn_blocking(move || assemble(&dir, &out, manifest))
            .await
            .map_err(join_err)??;
        Ok::<Manifest, ExportError>(manifest)
    }
    .await;
    let _ = std::fs::remove_dir_all(&side);
    result
}

/// Writes the records arriving on `rx` into the three side files in `dir`.
fn write_side_files(
    mut rx: mpsc::Receiver<AdminRecord>,
    dir: &Path,
) -> Result<(Counts, Vec<FileEntry>), ExportError> {
    let open = |name: &str| -> Result<Hashing<BufWriter<File>>, ExportError> {
        let path = dir.join(name);
        let f = File::create(&path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(Hashing::new(BufWriter::new(f)))
    };
    let (mut meta, mut audit, mut held) = (open(META_KV)?, open(AUDIT)?, open(HELD)?);
    let mut counts = Counts::default();
    while let Some(record) = rx.blocking_recv() {
        match record {
            AdminRecord::Meta { ns, key, value } => {
                write_record(&mut meta, &ns, key.as_bytes(), &value)
                    .map_err(io_err("writing meta.kv"))?;
                *counts.namespaces.entry(ns).or_insert(0) += 1;
            }
            AdminRecord::Audit(e) => {
                jsonl(&mut audit, &e).map_err(io_err("writing audit.jsonl"))?;
                counts.audit += 1;
            }
            AdminRecord::Held(h) => {
                jsonl(&mut held, &h).map_err(io_err("writing held.jsonl"))?;
                counts.held += 1;
            }
        }
    }
    let mut files = Vec::new();
    for (w, name) in [(meta, META_KV), (audit, AUDIT), (held, HELD)] {
        let (mut inner, entry) = w.finish(name);
        inner.flush().map_err(io_err(format!("writing {name}")))?;
        files.push(entry);
    }
    Ok((counts, files))
}

/// Writes `v` as one line of JSON.
fn jsonl<T: Serialize>(w: &mut impl Write, v: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *w, v).map_err(io::Error::other)?;
    w.write_all(b"\n")
}

/// Builds the archive at `out` from the side files in `dir`.
fn assemble(dir: &Path, out: &Path, manifest: Manifest) -> Result<Manifest, ExportError> {
    let partial = with_suffix(out, ".partial");
    let result = (|| {
        let file =
            File::create(&partial).map_err(io_err(format!("creating {}", partial.display())))?;
        let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        append_bytes(&mut tar, "header.json", &json(&manifest.header)?)
            .map_err(io_err("archiving header.json"))?;
        for name in [META_KV, AUDIT, HELD] {
            tar.append_path_with_name(dir.join(name), name)
                .map_err(io_err(format!("archiving {name}")))?;
        }
        append_bytes(&mut tar, "manifest.json", &json(&manifest)?)
            .map_err(io_err("archiving manifest.json"))?;
        let gz = tar.into_inner().map_err(io_err("finishing the archive"))?;
        let mut file = gz.finish().map_err(io_err("finishing the archive"))?;
        file.flush().map_err(io_err("finishing the archive"))?;
        file.get_ref()
            .sync_all()
            .map_err(io_err("syncing the archive"))?;
        std::fs::rename(&partial, out).map_err(io_err(format!("renaming to {}", out.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map(|()| manifest)
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, ExportError> {
    serde_json::to_vec_pretty(v).map_err(|e| ExportError::Invalid(e.to_string()))
}

/// Opens the archive for reading its entries in order.
fn open(from: &Path) -> Result<tar::Archive<impl Read>, ExportError> {
    let file = File::open(from).map_err(io_err(format!("opening {}", from.display())))?;
    Ok(tar::Archive::new(flate2::read::GzDecoder::new(
        BufReader::new(file),
    )))
}

fn read_small(entry: &mut impl Read, what: &str) -> Result<Vec<u8>, ExportError> {
    let mut buf = Vec::new();
    entry
        .take(256 << 20)
        .read_to_end(&mut buf)
        .map_err(io_err(format!("reading {what}")))?;
    Ok(buf)
}

fn check_header(bytes: &[u8]) -> Result<Header, ExportError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ExportError::Invalid(format!("header.json: {e}")))?;
    if value.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
        return Err(ExportError::Mismatch(
            "not a metadata export (a backup archive? `chatd restore` reads those)".into(),
        ));
    }
    let header: Header = serde_json::from_value(value)
        .map_err(|e| ExportError::Invalid(format!("header.json: {e}")))?;
    if header.format != FORMAT {
        return Err(ExportError::Mismatch(format!(
            "the export has format {}; this chatd reads format {FORMAT}",
            header.format
        )));
    }
    Ok(header)
}

/// Reads the archive once: header first, every entry hashed, then compared with the
/// manifest. Blocking.
pub fn verify(from: &Path) -> Result<Manifest, ExportError> {
    let mut archive = open(from)?;
    let mut entries = archive
        .entries()
        .map_err(io_err(format!("reading {}", from.display())))?;
    let header = {
        let mut first = entries
            .next()
            .ok_or_else(|| ExportError::Invalid("empty archive".into()))?
            .map_err(io_err("reading the header"))?;
        let path = first.path().map_err(io_err("reading the header"))?;
        if path != Path::new("header.json") {
            return Err(ExportError::Invalid(
                "header.json is not the first entry".into(),
            ));
        }
        check_header(&read_small(&mut first, "header.json")?)?
    };
    let mut seen = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading the archive"))?;
        let name = entry
            .path()
            .map_err(io_err("reading the archive"))?
            .to_string_lossy()
            .into_owned();
        if name == "manifest.json" {
            let bytes = read_small(&mut entry, "manifest.json")?;
            manifest = Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| ExportError::Invalid(format!("manifest.json: {e}")))?,
            );
            continue;
        }
        if ![META_KV, AUDIT, HELD].contains(&name.as_str()) {
            return Err(ExportError::Invalid(format!("unexpected entry {name}")));
        }
        let mut r = HashingReader::new(&mut entry);
        io::copy(&mut r, &mut io::sink()).map_err(io_err(format!("reading {name}")))?;
        seen.insert(name.clone(), r.finish(&name));
    }
    let manifest = manifest.ok_or_else(|| ExportError::Invalid("no manifest.json".into()))?;
    if manifest.header != header {
        return Err(ExportError::Invalid(
            "the manifest does not match the header".into(),
        ));
    }
    check_entries(&manifest.files, seen).map_err(ExportError::Invalid)?;
    Ok(manifest)
}

/// Reads the records of a verified archive into `tx`. Blocking.
fn read_records(from: &Path, tx: mpsc::Sender<AdminRecord>) -> Result<(), ExportError> {
    let mut archive = open(from)?;
    let entries = archive
        .entries()
        .map_err(io_err(format!("reading {}", from.display())))?;
    // `Err(())`: the loader stopped (it failed); its error is the one reported.
    let send = |r: AdminRecord| tx.blocking_send(r).map_err(|_| ());
    for entry in entries {
        let entry = entry.map_err(io_err("reading the archive"))?;
        let name = entry
            .path()
            .map_err(io_err("reading the archive"))?
            .to_string_lossy()
            .into_owned();
        match name.as_str() {
            META_KV => {
                for record in Records(BufReader::new(entry)) {
                    let (ns, key, value) = record.map_err(io_err("reading meta.kv"))?;
                    let key = String::from_utf8(key)
                        .map_err(|_| ExportError::Invalid("meta.kv: a key is not UTF-8".into()))?;
                    if send(AdminRecord::Meta { ns, key, value }).is_err() {
                        return Ok(());
                    }
                }
            }
            AUDIT | HELD => {
                for line in BufReader::new(entry).lines() {
                    let line = line.map_err(io_err(format!("reading {name}")))?;
                    if line.is_empty() {
                        continue;
                    }
                    let bad = |e: serde_json::Error| ExportError::Invalid(format!("{name}: {e}"));
                    let record = if name == AUDIT {
                        AdminRecord::Audit(serde_json::from_str::<AuditEntry>(&line).map_err(bad)?)
                    } else {
                        AdminRecord::Held(serde_json::from_str::<HeldMessage>(&line).map_err(bad)?)
                    };
                    if send(record).is_err() {
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The stores an import writes to, and how it checks that they are empty.
pub struct Target {
    /// The `MetaStore` records go here.
    pub meta: Arc<dyn MetaStore>,
    /// Audit entries and held messages go here.
    pub review: Arc<dyn ReviewStore>,
    /// Read to check that the target holds nothing yet.
    pub admin: Arc<dyn AdminExport>,
}

/// Loads the export at `from` into `target`. Checks the whole archive against its manifest
/// first (a damaged archive writes nothing), then refuses a target that already holds
/// metadata unless `force` (which merges: records with the same namespace and key are
/// replaced, other records kept, audit entries added).
pub async fn import(from: &Path, target: &Target, force: bool) -> Result<Manifest, ExportError> {
    let path = from.to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || verify(&path))
        .await
        .map_err(join_err)??;
    if !force && !store::admin_export::is_empty(&*target.admin).await? {
        return Err(ExportError::NotEmpty(
            "the target store already holds metadata (accounts, records or audit entries); \
             import into an empty keyspace, or use --force to merge into it"
                .into(),
        ));
    }
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let path = from.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || read_records(&path, tx));
    let loaded = async {
        let mut counts = Counts::default();
        let mut ops: Vec<MetaOp> = Vec::new();
        let mut op_bytes = 0usize;
        let mut review: Vec<AdminRecord> = Vec::new();
        while let Some(record) = rx.recv().await {
            match record {
                AdminRecord::Meta { ns, key, value } => {
                    if ops.len() >= LOAD_BATCH || op_bytes + value.len() > LOAD_BATCH_BYTES {
                        target.meta.apply(std::mem::take(&mut ops)).await?;
                        op_bytes = 0;
                    }
                    *counts.namespaces.entry(ns.clone()).or_insert(0) += 1;
                    op_bytes += ns.len() + key.len() + value.len();
                    ops.push(MetaOp::put(&ns, &key, value));
                }
                other => {
                    review.push(other);
                    if review.len() >= LOAD_CONCURRENCY {
                        load_review(target, std::mem::take(&mut review), &mut counts).await?;
                    }
                }
            }
        }
        if !ops.is_empty() {
            target.meta.apply(ops).await?;
        }
        load_review(target, review, &mut counts).await?;
        Ok::<_, ExportError>(counts)
    }
    .await;
    // On a loader error the reader may still be sending: without a receiver it stops.
    drop(rx);
    let read = reader.await.map_err(join_err)?;
    let counts = loaded?;
    read?;
    let expected = Counts {
        namespaces: manifest.namespaces.clone(),
        audit: manifest.audit,
        held: manifest.held,
    };
    if counts != expected {
        return Err(ExportError::Invalid(format!(
            "loaded {counts:?}, the manifest says {expected:?}"
        )));
    }
    Ok(manifest)
}

/// Writes audit entries and held messages concurrently.
async fn load_review(
    target: &Target,
    records: Vec<AdminRecord>,
    counts: &mut Counts,
) -> Result<(), ExportError> {
    let mut writes = Vec::with_capacity(records.len());
    for r in records {
        match r {
            AdminRecord::Audit(e) => {
                counts.audit += 1;
                writes.push(target.review.audit(e));
            }
            AdminRecord::Held(h) => {
                counts.held += 1;
                writes.push(target.review.hold(h));
            }
            AdminRecord::Meta { .. } => {}
        }
    }
    try_join_all(writes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use store::embedded::EmbeddedStore;

    fn target(s: &EmbeddedStore) -> Target {
        Target {
            meta: Arc::new(s.clone()),
            review: Arc::new(s.clone()),
            admin: Arc::new(s.clone()),
        }
    }

    #[tokio::test]
    async fn export_then_import_into_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let src = EmbeddedStore::open(&dir.path().join("a"), Default::default()).unwrap();
        src.apply(vec![
            MetaOp::put("user", "ann", br#"{"id":"ann"}"#.to_vec()),
            MetaOp::put("dept", "rd", b"x".to_vec()),
        ])
        .await
        .unwrap();
        let boss = protocol::UserId::new("boss");
        src.audit(AuditEntry::action(5, &boss, "user.create"))
            .await
            .unwrap();
        let out = dir.path().join("x/meta.tar.gz");
        let m = export(Arc::new(src.clone()), "embedded", &out)
            .await
            .unwrap();
        assert_eq!(m.namespaces["user"], 1);
        assert_eq!((m.audit, m.held), (1, 0));
        assert!(!with_suffix(&out, ".partial").exists());
        assert!(!with_suffix(&out, ".parts").exists());

        let dst = EmbeddedStore::open(&dir.path().join("b"), Default::default()).unwrap();
        let back = import(&out, &target(&dst), false).await.unwrap();
        assert_eq!(back, m);
        assert_eq!(
            dst.get("user", "ann").await.unwrap(),
            Some(br#"{"id":"ann"}"#.to_vec())
        );
        assert_eq!(
            dst.audit_query(&Default::default()).await.unwrap(),
            vec![AuditEntry::action(5, &boss, "user.create")]
        );
        // Not again into a store that now holds metadata, unless forced.
        assert!(matches!(
            import(&out, &target(&dst), false).await,
            Err(ExportError::NotEmpty(_))
        ));
        import(&out, &target(&dst), true).await.unwrap();
    }

    #[tokio::test]
    async fn a_damaged_archive_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let src = EmbeddedStore::open(&dir.path().join("a"), Default::default()).unwrap();
        src.apply(vec![MetaOp::put("user", "ann", b"1".to_vec())])
            .await
            .unwrap();
        let out = dir.path().join("meta.tar.gz");
        export(Arc::new(src), "embedded", &out).await.unwrap();
        // Cut short, as an interrupted copy would be.
        let mut bytes = std::fs::read(&out).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&out, bytes).unwrap();
        let dst = EmbeddedStore::open(&dir.path().join("b"), Default::default()).unwrap();
        assert!(import(&out, &target(&dst), false).await.is_err());
        assert!(store::admin_export::is_empty(&dst).await.unwrap());
    }
}
