//! The HTTP API (actix-web): routes, DTOs, auth, errors and the OpenAPI document. The only
//! module that touches actix.

mod assets;
pub mod auth;
mod clock;
mod devices;
mod downloads;
pub mod dto;
pub mod error;
mod extract;
mod groups;
mod health;
mod keys;
mod openapi;
mod packages;
mod policies;
mod products;
mod projection;
mod rollouts;
mod safety;
mod search;
mod spool;
pub(crate) mod stream;

pub use error::{ApiError, ApiResult};

use crate::clock::SharedClock;
use crate::config::Config;
use crate::firmware::Firmware;
use crate::store::Store;
use actix_web::{web, App, HttpServer};
use std::sync::Arc;

/// What every handler can reach.
pub struct AppState {
    pub store: Store,
    pub clock: SharedClock,
    pub config: Arc<Config>,
    pub firmware: Firmware,
    /// Base of the URLs handed to devices and clients (`http(s)://host:port`).
    pub public_url: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The device gateway, once it runs; the API ends a device's session through it when the
    /// device's credentials stop being valid.
    pub gateway: std::sync::OnceLock<Arc<dyn crate::dispatch::gateway::DeviceGateway>>,
    /// Tenants' policies (W1–W3): checked on upload, run by rollout creation and the
    /// engine.
    pub policies: Arc<crate::scheduler::Policies>,
    /// The rollout engine, once it runs.
    pub scheduler: std::sync::OnceLock<Arc<crate::scheduler::Scheduler>>,
    /// Set only when the server runs on a manual clock (`serve --clock manual`): the clock
    /// endpoints then exist and move it.
    pub manual_clock: std::sync::OnceLock<crate::clock::ManualClock>,
}

impl AppState {
    pub fn now(&self) -> crate::clock::Millis {
        self.clock.now_millis()
    }

    /// Ends the device's MQTT session, if any; a failure is logged, since the credentials
    /// change stands either way and the session cannot reconnect with the old ones.
    pub async fn disconnect_device(&self, product_key: &str, device: &str) {
        let Some(gw) = self.gateway.get() else {
            return;
        };
        let id = crate::dispatch::gateway::DeviceIdentity {
            product_key: product_key.to_owned(),
            device: device.to_owned(),
        };
        if let Err(e) = gw.disconnect(&id).await {
            tracing::warn!(error = %e, "ending a device session failed");
        }
    }
}

/// Registers every route; used by the server and by in-process tests alike.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let max_json = state.config.http.max_json_bytes;
        let manual = state.manual_clock.get().is_some();
        cfg.app_data(state)
            // Handlers read input through `extract`; these cover any actix extractor left.
            .app_data(
                web::JsonConfig::default()
                    .limit(max_json)
                    .error_handler(|err, _| extract::json_error(err).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|err, _| extract::query_error(err).into()),
            )
            .app_data(
                web::PathConfig::default()
                    .error_handler(|err, req| extract::path_error(err, req).into()),
            )
            .configure(health::configure)
            .configure(openapi::configure)
            .configure(downloads::configure)
            .configure(keys::configure)
            .configure(products::configure)
            .configure(devices::configure)
            .configure(search::configure)
            .configure(groups::configure)
            .configure(assets::configure)
            .configure(packages::configure)
            .configure(policies::configure)
            .configure(rollouts::configure)
            .configure(safety::configure)
            .configure(projection::configure)
            .configure(clock::configure(manual))
            .default_service(web::to(not_routed));
    }
}

/// A request no route took: 405 with `Allow` when its path is a route's for other methods,
/// 404 otherwise. The routes are read from the OpenAPI document, which utoipa builds from
/// the same route macros, so the two cannot disagree.
async fn not_routed(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    let path = req.path();
    let mut allowed: Vec<String> = Vec::new();
    for (def, methods) in openapi::route_table() {
        if def.is_match(path) {
            for m in methods {
                if !allowed.contains(m) {
                    allowed.push(m.clone());
                }
            }
        }
    }
    let method = req.method().as_str().to_owned();
    // A documented method that still reached here failed a route's own pattern (such as
    // `{id:\d+}`): the resource does not exist.
    Err(if allowed.is_empty() || allowed.contains(&method) {
        ApiError::NotFound("route".into())
    } else {
        ApiError::MethodNotAllowed { method, allowed }
    })
}

/// Runs the HTTP server until it is stopped (Ctrl-C / SIGTERM).
pub async fn run(state: AppState, listener: std::net::TcpListener) -> std::io::Result<()> {
    let tls = if state.config.tls_enabled() {
        Some(load_tls(&state.config)?)
    } else {
        None
    };
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::Compress::default())
            .wrap(tracing_actix_web::TracingLogger::<request_log::RequestSpan>::new())
            .configure(configure(state.clone()))
    });
    let server = match tls {
        Some(cfg) => server.listen_rustls_0_23(listener, cfg)?,
        None => server.listen(listener)?,
    };
    server.run().await
}

fn load_tls(config: &Config) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let io = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.http.tls.cert)
        .map_err(|e| io("http.tls.cert", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io("http.tls.cert", &e))?;
    let key =
        PrivateKeyDer::from_pem_file(&config.http.tls.key).map_err(|e| io("http.tls.key", &e))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| io("tls", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io("http.tls", &e))
}

/// Request logging and metrics through tracing-actix-web: a span per request and one line
/// when it ends, with the route pattern, status and duration, counted in
/// `ota_http_requests_total` and `ota_http_request_duration_seconds`. The pattern, never the
/// path, is logged and counted: download tokens in `/dl/{token}` are credentials, and ids
/// would make a series per object.
mod request_log {
    use super::AppState;
    use actix_web::body::MessageBody;
    use actix_web::dev::{ServiceRequest, ServiceResponse};
    use actix_web::{web, HttpMessage};
    use std::time::Instant;
    use tracing::Span;
    use tracing_actix_web::RootSpanBuilder;

    pub struct RequestSpan;

    /// When the request came in; kept in its extensions until the response is logged.
    struct Started(Instant);

    impl RootSpanBuilder for RequestSpan {
        fn on_request_start(req: &ServiceRequest) -> Span {
            req.extensions_mut().insert(Started(Instant::now()));
            tracing::info_span!("http", method = %req.method())
        }

        fn on_request_end<B: MessageBody>(
            span: Span,
            outcome: &Result<ServiceResponse<B>, actix_web::Error>,
        ) {
            let _in = span.enter();
            match outcome {
                Ok(res) => {
                    let req = res.request();
                    // Routing has happened by now, so the pattern is known; requests that
                    // matched no route share one label value.
                    let route = req
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".to_owned());
                    let status = res.status().as_u16();
                    let elapsed = req.extensions().get::<Started>().map(|s| s.0.elapsed());
                    let ms = elapsed.map(|e| e.as_millis() as u64);
                    tracing::info!(target: "ota_server::http", %route, status, ms, "request");
                    if let (Some(state), Some(e)) = (req.app_data::<web::Data<AppState>>(), elapsed)
                    {
                        state.metrics.http_request(
                            req.method().as_str(),
                            &route,
                            status,
                            e.as_secs_f64(),
                        );
                    }
                }
                Err(e) => tracing::info!(
                    target: "ota_server::http",
                    status = e.as_response_error().status_code().as_u16(), "request"
                ),
            }
        }
    }
}
