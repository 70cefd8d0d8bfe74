//! The HTTP API (actix-web): routes, DTOs, auth, errors and the OpenAPI document. The only
//! module that touches actix.

mod assets;
pub mod auth;
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
mod products;
mod search;
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
            .wrap(tracing_mw::Trace)
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

/// Request logging through `tracing`: one line per request with status and duration.
mod tracing_mw {
    use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
    use std::future::{ready, Future, Ready};
    use std::pin::Pin;
    use std::time::Instant;

    pub struct Trace;

    impl<S, B> Transform<S, ServiceRequest> for Trace
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>
            + 'static,
    {
        type Response = ServiceResponse<B>;
        type Error = actix_web::Error;
        type Transform = TraceService<S>;
        type InitError = ();
        type Future = Ready<Result<Self::Transform, Self::InitError>>;

        fn new_transform(&self, service: S) -> Self::Future {
            ready(Ok(TraceService { service }))
        }
    }

    pub struct TraceService<S> {
        service: S,
    }

    type BoxFut<T> = Pin<Box<dyn Future<Output = T>>>;

    impl<S, B> Service<ServiceRequest> for TraceService<S>
    where
        S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>
            + 'static,
    {
        type Response = ServiceResponse<B>;
        type Error = actix_web::Error;
        type Future = BoxFut<Result<Self::Response, Self::Error>>;

        forward_ready!(service);

        fn call(&self, req: ServiceRequest) -> Self::Future {
            let method = req.method().to_string();
            // Download tokens are credentials: log the route, not the token.
            let path = if req.path().starts_with("/dl/") {
                "/dl/…".to_owned()
            } else {
                req.path().to_owned()
            };
            let start = Instant::now();
            let fut = self.service.call(req);
            Box::pin(async move {
                let res = fut.await;
                let status = match &res {
                    Ok(r) => r.status().as_u16(),
                    Err(e) => e.as_response_error().status_code().as_u16(),
                };
                tracing::info!(
                    target: "ota_server::http",
                    %method, %path, status, ms = start.elapsed().as_millis() as u64,
                    "request"
                );
                res
            })
        }
    }
}
