//! Firmware files: streamed storage with server-computed digests, and signed, expiring
//! download tokens (SPEC P1, V3).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("firmware storage: {0}")]
    Io(#[from] std::io::Error),
}

/// File storage and URL signing for package files.
pub struct Firmware {
    #[allow(dead_code)]
    dir: PathBuf,
    #[allow(dead_code)]
    key: Vec<u8>,
    #[allow(dead_code)]
    ttl_secs: u64,
    #[allow(dead_code)]
    max_file_bytes: u64,
}

impl Firmware {
    /// Opens (creating if needed) the file directory; `key` signs download tokens.
    pub fn open(
        dir: PathBuf,
        key: Vec<u8>,
        ttl_secs: u64,
        max_file_bytes: u64,
    ) -> Result<Self, FirmwareError> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            key,
            ttl_secs,
            max_file_bytes,
        })
    }
}
