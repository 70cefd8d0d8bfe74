//! Package files on disk: streamed in through a temp file in the same directory with size,
//! MD5 and SHA-256 computed on the fly, fsynced, then renamed to a random storage key. A
//! file is never held whole in memory, and a failed or abandoned upload leaves nothing.

use super::FirmwareError;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use md5::{Digest, Md5};
use rand::RngCore;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

const TEMP_PREFIX: &str = ".tmp-";
/// Temp files older than this are left over from a crashed process and removed on open.
const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// A file that was stored, with what the server computed about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Random, 32 lowercase hex characters; the file's name in the storage directory.
    pub key: String,
    pub size: u64,
    /// Lowercase hex.
    pub md5: String,
    /// Lowercase hex.
    pub sha256: String,
}

/// The firmware directory.
#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
    max_file_bytes: u64,
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn is_storage_key(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Storage {
    /// Opens (creating if needed) `dir` and removes temp files of long-dead uploads.
    pub fn open(dir: PathBuf, max_file_bytes: u64) -> Result<Self, FirmwareError> {
        std::fs::create_dir_all(&dir)?;
        remove_stale_temps(&dir);
        Ok(Self {
            dir,
            max_file_bytes,
        })
    }

    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// Starts an upload into a new temp file.
    pub async fn begin(&self) -> Result<Upload, FirmwareError> {
        let tmp = self.dir.join(format!("{TEMP_PREFIX}{}", random_hex()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await?;
        Ok(Upload {
            file,
            tmp: Some(tmp),
            dir: self.dir.clone(),
            max_file_bytes: self.max_file_bytes,
            size: 0,
            md5: Md5::new(),
            sha256: Sha256::new(),
        })
    }

    /// Stores the chunks of `body`. On any error, of the stream or of the storage, nothing
    /// is left behind; the stream's own errors come back unchanged.
    pub async fn store_stream<S, E>(&self, body: S) -> Result<StoredFile, E>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: From<FirmwareError>,
    {
        let mut upload = self.begin().await?;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            upload.write(&chunk?).await?;
        }
        Ok(upload.finish().await?)
    }

    /// The path of a stored file; refuses anything that is not a storage key.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, FirmwareError> {
        if !is_storage_key(key) {
            return Err(FirmwareError::BadStorageKey(key.to_owned()));
        }
        Ok(self.dir.join(key))
    }

    /// Deletes a stored file; one that is gone already is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), FirmwareError> {
        match tokio::fs::remove_file(self.path_of(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        // Another process sharing the directory may be writing a fresh one: keep those.
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if stale {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a stale upload temp file");
            }
        }
    }
}

/// An upload in progress. Dropping it before [`Upload::finish`] removes its temp file.
pub struct Upload {
    file: tokio::fs::File,
    /// `None` once the file has been renamed to its key.
    tmp: Option<PathBuf>,
    dir: PathBuf,
    max_file_bytes: u64,
    size: u64,
    md5: Md5,
    sha256: Sha256,
}

impl Upload {
    /// Appends a chunk; refuses it, writing nothing, when the file would pass the limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), FirmwareError> {
        let size = self.size.saturating_add(chunk.len() as u64);
        if size > self.max_file_bytes {
            return Err(FirmwareError::TooLarge {
                limit: self.max_file_bytes,
            });
        }
        self.md5.update(chunk);
        self.sha256.update(chunk);
        self.file.write_all(chunk).await?;
        self.size = size;
        Ok(())
    }

    /// Bytes taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the file durable and gives it its storage key.
    pub async fn finish(mut self) -> Result<StoredFile, FirmwareError> {
        if self.size == 0 {
            return Err(FirmwareError::Empty);
        }
        self.file.flush().await?;
        self.file.sync_all().await?;
        let key = random_hex();
        let dest = self.dir.join(&key);
        let Some(tmp) = self.tmp.clone() else {
            return Err(FirmwareError::Io(std::io::Error::other(
                "upload finished twice",
            )));
        };
        tokio::fs::rename(&tmp, &dest).await?;
        self.tmp = None;
        if let Err(e) = sync_dir(&self.dir).await {
            // Without a durable directory entry the caller must not record the file.
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(e.into());
        }
        let md5 = std::mem::replace(&mut self.md5, Md5::new());
        let sha256 = std::mem::replace(&mut self.sha256, Sha256::new());
        Ok(StoredFile {
            key,
            size: self.size,
            md5: hex::encode(md5.finalize()),
            sha256: hex::encode(sha256.finalize()),
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            if let Err(e) = std::fs::remove_file(&tmp) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %tmp.display(), error = %e, "could not remove an upload temp file");
                }
            }
        }
    }
}

#[cfg(unix)]
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

#[cfg(not(unix))]
async fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, FirmwareError>> {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    // SPEC P1
    #[tokio::test]
    async fn digests_and_size_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path().join("fw"), 1024).unwrap();
        // "abc" in three chunks: the RFC 1321 and FIPS 180-2 test vectors
        let f = s.store_stream(chunks(&[b"a", b"", b"bc"])).await.unwrap();
        assert_eq!(f.size, 3);
        assert_eq!(f.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            f.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_storage_key(&f.key), "{}", f.key);
        let path = s.path_of(&f.key).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        // only the stored file remains: no temp file
        assert_eq!(files_in(&dir.path().join("fw")), vec![f.key.clone()]);
        s.delete(&f.key).await.unwrap();
        assert!(!path.exists());
        s.delete(&f.key).await.unwrap(); // gone already: fine
    }

    // SPEC P1
    #[tokio::test]
    async fn the_size_limit_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path().to_owned(), 4).unwrap();
        assert!(s.store_stream(chunks(&[b"ab", b"cd"])).await.is_ok());
        let before = files_in(dir.path());
        let e = s
            .store_stream(chunks(&[b"ab", b"cd", b"e"]))
            .await
            .unwrap_err();
        assert!(matches!(e, FirmwareError::TooLarge { limit: 4 }), "{e}");
        assert!(e.to_string().contains("4 bytes"), "{e}");
        assert_eq!(files_in(dir.path()), before);
        // an empty file is refused, and leaves nothing either
        let e = s.store_stream(chunks(&[])).await.unwrap_err();
        assert!(matches!(e, FirmwareError::Empty), "{e}");
        assert_eq!(files_in(dir.path()), before);
    }

    #[tokio::test]
    async fn an_abandoned_upload_or_a_failing_stream_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path().to_owned(), 1024).unwrap();
        let mut up = s.begin().await.unwrap();
        up.write(b"partial").await.unwrap();
        assert_eq!(files_in(dir.path()).len(), 1);
        drop(up);
        assert!(files_in(dir.path()).is_empty());
        let failing = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"x")),
            Err(FirmwareError::Io(std::io::Error::other("client went away"))),
        ]);
        assert!(s.store_stream(failing).await.is_err());
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn keys_cannot_leave_the_directory_and_stale_temps_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path().to_owned(), 1024).unwrap();
        for bad in [
            "../etc/passwd",
            "",
            "ABCDEF0123456789abcdef0123456789",
            ".tmp-x",
        ] {
            assert!(s.path_of(bad).is_err(), "{bad}");
        }
        let old = dir.path().join(".tmp-old");
        let fresh = dir.path().join(".tmp-fresh");
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&fresh, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(60))
            .unwrap();
        Storage::open(dir.path().to_owned(), 1024).unwrap();
        assert!(!old.exists());
        assert!(fresh.exists());
    }
}
