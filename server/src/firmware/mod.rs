//! Firmware files: streamed storage with server-computed digests, and signed, expiring
//! download tokens (SPEC P1, V3).

mod storage;
mod token;

pub use storage::{StoredFile, Upload};

use crate::clock::Millis;
use crate::domain::PackageFileId;
use bytes::Bytes;
use futures_util::Stream;
use std::path::PathBuf;
use storage::Storage;
use token::Signer;

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("firmware storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("the file exceeds the limit of {limit} bytes (firmware.max_file_bytes)")]
    TooLarge { limit: u64 },
    #[error("the file is empty; a package file needs at least one byte")]
    Empty,
    #[error("{0:?} is not a storage key")]
    BadStorageKey(String),
    #[error("the download signing key must not be empty (firmware.url_secret)")]
    EmptyKey,
    #[error("the download link is malformed; use the download_url exactly as the server gave it")]
    TokenMalformed,
    #[error("the download link was not issued by this server or was altered")]
    TokenForged,
    #[error("the download link expired at {expired_at}; read the package again for a fresh download_url")]
    TokenExpired { expired_at: String },
}

/// File storage and URL signing for package files.
#[derive(Debug, Clone)]
pub struct Firmware {
    storage: Storage,
    signer: Signer,
    ttl_secs: u64,
}

impl Firmware {
    /// Opens (creating if needed) the file directory; `key` signs download tokens.
    pub fn open(
        dir: PathBuf,
        key: Vec<u8>,
        ttl_secs: u64,
        max_file_bytes: u64,
    ) -> Result<Self, FirmwareError> {
        Ok(Self {
            storage: Storage::open(dir, max_file_bytes)?,
            signer: Signer::new(&key)?,
            ttl_secs,
        })
    }

    /// Largest file [`Firmware::store_stream`] accepts, in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        self.storage.max_file_bytes()
    }

    /// How long a download URL stays valid, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Starts an upload to feed chunk by chunk.
    pub async fn begin_upload(&self) -> Result<Upload, FirmwareError> {
        self.storage.begin().await
    }

    /// Stores a streamed file; on any error nothing is left on disk.
    pub async fn store_stream<S, E>(&self, body: S) -> Result<StoredFile, E>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: From<FirmwareError>,
    {
        self.storage.store_stream(body).await
    }

    /// The path of a stored file, for serving it.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, FirmwareError> {
        self.storage.path_of(key)
    }

    /// Deletes a stored file (a missing one is not an error).
    pub async fn delete(&self, key: &str) -> Result<(), FirmwareError> {
        self.storage.delete(key).await
    }

    /// When a URL signed at `now` expires, in Unix seconds.
    pub fn expires_at(&self, now: Millis) -> i64 {
        let ttl = i64::try_from(self.ttl_secs).unwrap_or(i64::MAX);
        now.div_euclid(1000).saturating_add(ttl)
    }

    /// A download token for `file`, valid until `expires_at` (Unix seconds).
    pub fn sign(&self, file: PackageFileId, expires_at: i64) -> String {
        self.signer.sign(file, expires_at)
    }

    /// The file a token grants at `now`; malformed, forged and expired tokens are errors.
    pub fn verify(&self, token: &str, now: Millis) -> Result<PackageFileId, FirmwareError> {
        self.signer.verify(token, now)
    }

    /// `{public_url}/dl/{token}`, valid for the configured time from `now` (SPEC V3).
    pub fn url_for(&self, public_url: &str, file: PackageFileId, now: Millis) -> String {
        format!(
            "{}/dl/{}",
            public_url.trim_end_matches('/'),
            self.sign(file, self.expires_at(now))
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    // SPEC V3
    #[test]
    fn urls_carry_a_token_that_expires_after_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let fw = Firmware::open(dir.path().to_owned(), b"k".to_vec(), 600, 1024).unwrap();
        let now = 1_795_000_000_500;
        let url = fw.url_for("https://ota.example/", PackageFileId(9), now);
        let token = url.strip_prefix("https://ota.example/dl/").unwrap();
        assert_eq!(fw.verify(token, now).unwrap(), PackageFileId(9));
        assert_eq!(
            fw.verify(token, now + 599_000).unwrap(),
            PackageFileId(9),
            "valid until the ttl has passed"
        );
        assert!(matches!(
            fw.verify(token, now + 600_000),
            Err(FirmwareError::TokenExpired { .. })
        ));
    }
}
