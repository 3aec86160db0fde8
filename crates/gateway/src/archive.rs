//! The pieces every chatd archive is built from (the embedded backup in `backup.rs`, the
//! metadata export in `meta_archive.rs`): tar entries with their size and SHA-256, the
//! check of a staged archive against its manifest, and the binary key-value record format.
//!
//! A key-value record is `[u16 name length][name][u32 key length][key][u32 value length]
//! [value]`, big-endian: `name` is a keyspace (backup) or a `MetaStore` namespace (export).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// What went wrong with an archive: one shape for the backup (`backup.rs`) and the metadata
/// export (`meta_archive.rs`), whose callers print it (the CLI) or log it (the schedule).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing a file.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// Not an archive of a kind, format or schema version this chatd reads (the message says
    /// which, and what this chatd reads).
    #[error("{0}")]
    Mismatch(String),
    /// The target already holds data and `--force` was not given (the message says where).
    #[error("{0}")]
    NotEmpty(String),
    /// The archive is damaged or not a chatd archive.
    #[error("invalid archive: {0}")]
    Invalid(String),
}

/// Maps an I/O error to [`ArchiveError::Io`], saying what was being done.
pub fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

/// One entry of an archive with its size and checksum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Path inside the archive.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A writer that hashes and counts what passes through.
pub struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer and the entry for what was written, named `path`.
    pub fn finish(self, path: &str) -> (W, FileEntry) {
        let entry = FileEntry {
            path: path.to_owned(),
            bytes: self.bytes,
            sha256: hex::encode(self.hash.finalize()),
        };
        (self.inner, entry)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through.
pub struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    /// The entry for what was read, named `path`.
    pub fn finish(self, path: &str) -> FileEntry {
        FileEntry {
            path: path.to_owned(),
            bytes: self.bytes,
            sha256: hex::encode(self.hash.finalize()),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// `path` with `suffix` appended to its file name (`a.tar.gz` -> `a.tar.gz.partial`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The modification time written into tar headers (seconds since the epoch).
pub fn header_time() -> u64 {
    crate::clock::now_ms() / 1000
}

/// Appends a regular file entry `name` holding `data`.
pub fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(header_time());
    tar.append_data(&mut header, name, data)
}

/// Checks the entries read from an archive (`seen`, each hashed while read) against its
/// manifest's list: the same paths, sizes and checksums, nothing missing and nothing extra.
/// The error names the first entry that differs.
pub fn check_entries(
    manifest: &[FileEntry],
    mut seen: BTreeMap<String, FileEntry>,
) -> Result<(), String> {
    for f in manifest {
        match seen.remove(&f.path) {
            Some(got) if got == *f => {}
            Some(_) => return Err(format!("{}: checksum mismatch", f.path)),
            None => return Err(format!("{}: missing", f.path)),
        }
    }
    match seen.keys().next() {
        Some(extra) => Err(format!("{extra}: not in the manifest")),
        None => Ok(()),
    }
}

/// Writes one key-value record.
pub fn write_record(w: &mut impl Write, name: &str, key: &[u8], value: &[u8]) -> io::Result<()> {
    let name_len = u16::try_from(name.len()).map_err(io::Error::other)?;
    let k_len = u32::try_from(key.len()).map_err(io::Error::other)?;
    let v_len = u32::try_from(value.len()).map_err(io::Error::other)?;
    w.write_all(&name_len.to_be_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&k_len.to_be_bytes())?;
    w.write_all(key)?;
    w.write_all(&v_len.to_be_bytes())?;
    w.write_all(value)
}

/// One key-value record: name, key, value.
pub type Record = (String, Vec<u8>, Vec<u8>);

/// Reads key-value records until the end of the input (a truncated record is an error).
pub struct Records<R>(pub R);

impl<R: Read> Records<R> {
    fn read_record(&mut self) -> io::Result<Option<Record>> {
        let mut len2 = [0u8; 2];
        match self.0.read_exact(&mut len2) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut name = vec![0u8; usize::from(u16::from_be_bytes(len2))];
        self.0.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(io::Error::other)?;
        let key = self.chunk()?;
        let value = self.chunk()?;
        Ok(Some((name, key, value)))
    }

    fn chunk(&mut self) -> io::Result<Vec<u8>> {
        let mut len4 = [0u8; 4];
        self.0.read_exact(&mut len4)?;
        let len = u32::from_be_bytes(len4) as usize;
        let mut buf = Vec::new();
        (&mut self.0).take(len as u64).read_to_end(&mut buf)?;
        if buf.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated record",
            ));
        }
        Ok(buf)
    }
}

impl<R: Read> Iterator for Records<R> {
    type Item = io::Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        self.read_record().transpose()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        write_record(&mut buf, "messages", b"k1", b"v1").unwrap();
        write_record(&mut buf, "users", b"", b"x").unwrap();
        let got: Vec<_> = Records(buf.as_slice()).map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], ("users".into(), vec![], b"x".to_vec()));
        // Truncated: an error, not a short read.
        let cut = &buf[..buf.len() - 1];
        assert!(Records(cut).any(|r| r.is_err()));
    }

    #[test]
    fn entries_are_checked_against_the_manifest() {
        let mut w = Hashing::new(Vec::new());
        w.write_all(b"data").unwrap();
        let (_, entry) = w.finish("a");
        let mut r = HashingReader::new(&b"data"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish("a"), entry);
        let seen = |e: &FileEntry| BTreeMap::from([(e.path.clone(), e.clone())]);
        assert!(check_entries(std::slice::from_ref(&entry), seen(&entry)).is_ok());
        let mut bad = entry.clone();
        bad.sha256 = "0".repeat(64);
        assert!(check_entries(&[bad], seen(&entry))
            .unwrap_err()
            .contains("checksum"));
        assert!(check_entries(&[], seen(&entry))
            .unwrap_err()
            .contains("not in the manifest"));
        assert!(check_entries(std::slice::from_ref(&entry), BTreeMap::new())
            .unwrap_err()
            .contains("missing"));
    }
}
