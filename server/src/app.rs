//! The composition root: builds the store, firmware storage and HTTP server from a config.

use crate::api::{self, AppState};
use crate::clock::{Clock, ManualClock, SharedClock, SystemClock};
use crate::config::Config;
use crate::dispatch::device_auth::StoreDeviceAuth;
use crate::dispatch::directory::DeviceDirectory;
use crate::dispatch::embedded::{EmbeddedBroker, EmbeddedOptions};
use crate::dispatch::external::{parse_broker_url, ExternalBroker, ExternalOptions};
use crate::dispatch::gateway::DeviceGateway;
use crate::dispatch::router::{DeviceEvent, Offers, Router};
use crate::firmware::Firmware;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::store::Store;
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("firmware storage: {0}")]
    Firmware(#[from] crate::firmware::FirmwareError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("device gateway: {0}")]
    Dispatch(#[from] crate::dispatch::DispatchError),
    #[error("{0}")]
    Config(String),
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
    let policies = Arc::new(crate::scheduler::Policies::new(
        store.clone(),
        config.policy.clone(),
    ));
    Ok(AppState {
        policies,
        store,
        clock,
        config: Arc::new(config),
        firmware,
        public_url,
        metrics: Arc::new(Metrics::new()),
        gateway: std::sync::OnceLock::new(),
        scheduler: std::sync::OnceLock::new(),
        manual_clock: std::sync::OnceLock::new(),
    })
}

/// The running device gateway: the broker side (embedded or external) and the router.
pub struct Gateway {
    /// The embedded broker, when it is the one in use (its listening addresses).
    pub embedded: Option<Arc<EmbeddedBroker>>,
    pub router: Arc<Router>,
}

/// Starts the embedded broker and the uplink router. `offers` answers what a device should
/// be offered; `None` leaves it to the rollout engine listening on `up`, which then answers
/// pulls too. `up` receives device events.
pub async fn start_gateway(
    state: &AppState,
    offers: Option<Arc<dyn Offers>>,
    up: Option<mpsc::Sender<DeviceEvent>>,
) -> Result<Gateway, AppError> {
    let cfg = &state.config.mqtt;
    let addr = |port: u16| -> Result<SocketAddr, AppError> {
        format!("{}:{port}", cfg.bind)
            .parse()
            .or_else(|_| format!("[{}]:{port}", cfg.bind).parse())
            .map_err(|_| AppError::Config(format!("mqtt.bind {:?} is not an IP address", cfg.bind)))
    };
    let tls = if cfg.tls.cert.is_empty() {
        None
    } else {
        Some((
            addr(cfg.tls.port)?,
            cfg.tls.cert.clone(),
            cfg.tls.key.clone(),
        ))
    };
    let (tx, rx) = mpsc::channel(4096);
    let directory = Arc::new(DeviceDirectory::new(state.store.clone()));
    let (gateway, embedded): (Arc<dyn DeviceGateway>, _) = if cfg.mode == "external" {
        let ext = &cfg.external;
        let (host, port) = parse_broker_url(&ext.url)?;
        let client_id = if ext.client_id.is_empty() {
            format!("ota-server-{:08x}", rand::random::<u32>())
        } else {
            ext.client_id.clone()
        };
        let broker = ExternalBroker::start(
            ExternalOptions {
                host,
                port,
                client_id,
                username: ext.username.clone(),
                password: ext.password.clone(),
                shared_group: ext.shared_group.clone(),
            },
            tx,
            state.clock.clone(),
        )?;
        // Uplinks published before the subscriptions exist would find no subscriber.
        if broker.wait_subscribed(Duration::from_secs(10)).await {
            tracing::info!(url = %ext.url, "mqtt: subscribed on the external broker");
        } else {
            tracing::warn!(url = %ext.url, "mqtt: the external broker is not reachable yet; retrying in the background");
        }
        (Arc::new(broker), None)
    } else {
        // One embedded broker owns the sessions of its devices (DESIGN §8), and none survives
        // the process that held it: whatever the registry says is online was left so by a
        // previous process that stopped before recording it. One statement settles them all
        // before the first device can connect.
        let settled = state.store.set_all_devices_offline().await?;
        if settled > 0 {
            tracing::info!(
                devices = settled,
                "marked devices of the previous run offline"
            );
        }
        let broker = Arc::new(
            EmbeddedBroker::start(
                EmbeddedOptions {
                    addr: addr(cfg.port)?,
                    tls,
                    max_mqueue_len: cfg.max_mqueue_len,
                    max_packet_size: cfg.max_packet_size,
                    uplinks_per_sec: cfg.uplinks_per_sec,
                    uplink_burst: cfg.uplink_burst,
                    uplink_buffer_bytes: cfg.uplink_buffer_bytes,
                    listen_backlog: cfg.listen_backlog,
                },
                Arc::new(StoreDeviceAuth::new(directory.clone())),
                tx,
                state.clock.clone(),
                state.metrics.clone(),
            )
            .await?,
        );
        tracing::info!(address = %broker.tcp_addr, tls_address = ?broker.tls_addr, "mqtt listening");
        (broker.clone() as Arc<dyn DeviceGateway>, Some(broker))
    };
    let _ = state.gateway.set(gateway.clone());
    let engine_answers = offers.is_none() && up.is_some();
    let offers = offers.unwrap_or_else(|| Arc::new(crate::dispatch::router::NoOffers));
    let router = Arc::new(Router::new(
        state.store.clone(),
        gateway,
        offers,
        engine_answers,
        state.metrics.clone(),
        state.clock.clone(),
        up,
        directory,
    ));
    tokio::spawn(router.clone().run(rx));
    Ok(Gateway { embedded, router })
}

/// Which clock the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockChoice {
    #[default]
    System,
    /// A clock that moves only through `POST /v1/clock/advance` (tests, evaluations).
    Manual,
}

/// Starts the rollout engine on a running gateway: device events go to it, and on the
/// system clock it ticks by itself (a manual clock ticks when advanced).
pub fn start_scheduler(
    state: &AppState,
    gateway: Arc<dyn DeviceGateway>,
    events: mpsc::Receiver<DeviceEvent>,
    tick_by_itself: bool,
) -> Arc<Scheduler> {
    let scheduler = Arc::new(Scheduler::new(
        state.store.clone(),
        state.clock.clone(),
        gateway,
        state.firmware.clone(),
        state.public_url.clone(),
        state.metrics.clone(),
        state.config.scheduler.clone(),
        state.policies.clone(),
    ));
    tokio::spawn(scheduler.clone().run_events(events));
    if tick_by_itself {
        tokio::spawn(scheduler.clone().run_ticks());
    }
    let _ = state.scheduler.set(scheduler.clone());
    scheduler
}

/// Runs the server until it is stopped.
pub async fn serve(config: Config, clock: ClockChoice) -> Result<(), AppError> {
    let store = open_store(&config).await?;
    let listener = std::net::TcpListener::bind((config.http.bind.as_str(), config.http.port))?;
    let port = listener.local_addr()?.port();
    let public_url = config.public_url(port);
    let database = config.redacted().database_url();
    let manual = (clock == ClockChoice::Manual).then(|| ManualClock::new(SystemClock.now_millis()));
    let shared: SharedClock = match &manual {
        Some(m) => Arc::new(m.clone()),
        None => Arc::new(SystemClock),
    };
    let state = build_state(config, store, shared, public_url.clone()).await?;
    if let Some(m) = manual {
        tracing::warn!(
            "RUNNING ON A MANUAL CLOCK: time stands still until POST /v1/clock/advance moves it; \
             never run a production server this way"
        );
        let _ = state.manual_clock.set(m);
    }
    let _gateway = if state.config.mqtt.mode != "off" {
        let (up, events) = mpsc::channel(16_384);
        let g = start_gateway(&state, None, Some(up)).await?;
        if let Some(gw) = state.gateway.get() {
            start_scheduler(&state, gw.clone(), events, clock == ClockChoice::System);
        }
        Some(g)
    } else {
        tracing::warn!("mqtt.mode is off: no device gateway, so rollouts push nothing");
        None
    };
    // Logged last: when this line shows, the API and the device gateway both take connections.
    tracing::info!(
        address = %listener.local_addr()?,
        %public_url,
        %database,
        "ota-server listening"
    );
    api::run(state, listener).await?;
    Ok(())
}
