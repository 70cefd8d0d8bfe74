//! The composition root: builds the store, firmware storage and HTTP server from a config.

use crate::api::{self, AppState};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::firmware::Firmware;
use crate::store::Store;
use rand::RngCore;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("firmware storage: {0}")]
    Firmware(#[from] crate::firmware::FirmwareError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Setting under which the generated download-URL key is kept, shared by every process.
const URL_SECRET_SETTING: &str = "download_url_secret";

pub async fn open_store(config: &Config) -> Result<Store, AppError> {
    if config.database.url.is_empty() {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    Ok(Store::connect(&config.database_url(), config.database.max_connections).await?)
}

/// Builds the state every handler shares, from an open store.
pub async fn build_state(
    config: Config,
    store: Store,
    clock: SharedClock,
    public_url: String,
) -> Result<AppState, AppError> {
    let key = if config.firmware.url_secret.is_empty() {
        store
            .setting_or_init(URL_SECRET_SETTING, || {
                let mut b = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut b);
                hex::encode(b)
            })
            .await?
    } else {
        config.firmware.url_secret.clone()
    };
    let firmware = Firmware::open(
        config.data_dir.join("firmware"),
        key.into_bytes(),
        config.firmware.url_ttl_secs,
        config.firmware.max_file_bytes,
    )?;
    Ok(AppState {
        store,
        clock,
        config: Arc::new(config),
        firmware,
        public_url,
    })
}

/// Runs the server until it is stopped.
pub async fn serve(config: Config) -> Result<(), AppError> {
    let store = open_store(&config).await?;
    let listener = std::net::TcpListener::bind((config.http.bind.as_str(), config.http.port))?;
    let port = listener.local_addr()?.port();
    let public_url = config.public_url(port);
    tracing::info!(
        address = %listener.local_addr()?,
        %public_url,
        database = %config.redacted().database_url(),
        "ota-server listening"
    );
    let state = build_state(config, store, Arc::new(SystemClock), public_url).await?;
    api::run(state, listener).await?;
    Ok(())
}
