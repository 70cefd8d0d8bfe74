//! Prometheus metrics (SPEC M5) through the `prometheus-client` crate: typed counters and
//! gauges registered once in a registry and rendered as OpenMetrics text at `/metrics`.
//!
//! Every family is registered when [`Metrics`] is built, and label sets with a known, closed
//! set of values are touched then too, so a fresh server already shows each series at zero
//! (a rate over a series that appears late loses its first increments). Updating a metric is
//! an atomic add: no lock shared between metrics, no allocation per increment.
//!
//! To add metrics (HTTP requests, ...), add a pub field and register it in [`Metrics::new`].

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Declares a closed set of label values with its text form and the list of all of them.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

label_values! {
    /// Why a device message was dropped (SPEC V4).
    Rejection {
        Unparsable => "unparsable",
        UnknownTopic => "unknown_topic",
        UnknownDevice => "unknown_device",
        NotAllowed => "not_allowed",
        WrongProtocol => "wrong_protocol",
        RateLimited => "rate_limited",
    }
}

label_values! {
    /// What an accepted device message was.
    MessageKind {
        Inform => "inform",
        Progress => "progress",
        Pull => "pull",
        GetVersion => "getversion",
        UpgradeReply => "upgrade_reply",
    }
}

label_values! {
    /// Why a device's MQTT CONNECT was refused.
    LoginRefusal {
        /// Client id or username not in any vendor's format.
        BadCredentials => "bad_credentials",
        /// Well-formed, but no such device (or product) is registered.
        UnknownDevice => "unknown_device",
        /// The signature does not match the device's secret.
        WrongSecret => "wrong_secret",
        /// The registry could not be asked.
        StoreError => "store_error",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: Rejection,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: MessageKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LoginLabels {
    pub reason: LoginRefusal,
}

/// An HTTP request by route pattern (never the path: ids and download tokens stay out of
/// label values, so the number of series is bounded by the routes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// Request durations in seconds, from 1 ms to about 16 s.
fn http_duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// Every metric the server exports. Fields are handles: cloning one shares the value.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `ota_device_messages_total{kind}`
    pub device_messages: Family<KindLabels, Counter>,
    /// `ota_device_messages_rejected_total{reason}`
    pub device_messages_rejected: Family<ReasonLabels, Counter>,
    /// `ota_device_logins_refused_total{reason}`
    pub device_logins_refused: Family<LoginLabels, Counter>,
    /// `ota_devices_online`
    pub devices_online: Gauge,
    /// `ota_pushes_total`
    pub pushes: Counter,
    /// `ota_http_requests_total{method,route,status}`
    pub http_requests: Family<HttpLabels, Counter>,
    /// `ota_http_request_duration_seconds{method,route,status}`
    pub http_duration: Family<HttpLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let device_messages = Family::<KindLabels, Counter>::default();
        let device_messages_rejected = Family::<ReasonLabels, Counter>::default();
        let device_logins_refused = Family::<LoginLabels, Counter>::default();
        let devices_online = Gauge::default();
        let pushes = Counter::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(http_duration_buckets())) as fn() -> Histogram,
        );
        for kind in MessageKind::ALL {
            drop(device_messages.get_or_create(&KindLabels { kind: *kind }));
        }
        for reason in Rejection::ALL {
            drop(device_messages_rejected.get_or_create(&ReasonLabels { reason: *reason }));
        }
        for reason in LoginRefusal::ALL {
            drop(device_logins_refused.get_or_create(&LoginLabels { reason: *reason }));
        }
        // Counter names go in without `_total`: the OpenMetrics encoder appends it.
        registry.register(
            "ota_device_messages",
            "Device messages accepted, by kind",
            device_messages.clone(),
        );
        registry.register(
            "ota_device_messages_rejected",
            "Device messages dropped: unparsable, unknown device, not allowed or over the device's rate (SPEC V4)",
            device_messages_rejected.clone(),
        );
        registry.register(
            "ota_device_logins_refused",
            "MQTT CONNECTs refused, by reason; SDKs do not report a refusal, so a misprovisioned fleet shows here",
            device_logins_refused.clone(),
        );
        registry.register(
            "ota_devices_online",
            "Devices connected to this process's gateway",
            devices_online.clone(),
        );
        registry.register(
            "ota_pushes",
            "Firmware pushes published to devices",
            pushes.clone(),
        );
        registry.register(
            "ota_http_requests",
            "HTTP API requests, by method, route pattern and status",
            http_requests.clone(),
        );
        registry.register(
            "ota_http_request_duration_seconds",
            "HTTP API request durations, by method, route pattern and status",
            http_duration.clone(),
        );
        Self {
            registry,
            device_messages,
            device_messages_rejected,
            device_logins_refused,
            devices_online,
            pushes,
            http_requests,
            http_duration,
        }
    }

    /// Counts one dropped device message.
    pub fn rejected(&self, reason: Rejection) {
        self.device_messages_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// How many device messages were dropped for `reason`.
    pub fn rejected_count(&self, reason: Rejection) -> u64 {
        self.device_messages_rejected
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    /// Counts one accepted device message.
    pub fn message(&self, kind: MessageKind) {
        self.device_messages
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// How many device messages of `kind` were accepted.
    pub fn message_count(&self, kind: MessageKind) -> u64 {
        self.device_messages
            .get_or_create(&KindLabels { kind })
            .get()
    }

    /// Counts one refused CONNECT.
    pub fn login_refused(&self, reason: LoginRefusal) {
        self.device_logins_refused
            .get_or_create(&LoginLabels { reason })
            .inc();
    }

    /// How many CONNECTs were refused for `reason`.
    pub fn logins_refused_count(&self, reason: LoginRefusal) -> u64 {
        self.device_logins_refused
            .get_or_create(&LoginLabels { reason })
            .get()
    }

    /// Counts one answered HTTP request and its duration.
    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = HttpLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.http_duration.get_or_create(&labels).observe(seconds);
        self.http_requests.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text exposition of every metric ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a label encoder could, and half a scrape
            // would be misread as counters that went down.
            tracing::error!(error = %e, "encoding the metrics failed");
            out.clear();
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // A fresh server shows every family, with its known label values at zero.
    #[test]
    fn a_fresh_registry_shows_every_series_at_zero() {
        let text = Metrics::new().render();
        for line in [
            "# TYPE ota_device_messages counter",
            "ota_device_messages_total{kind=\"inform\"} 0",
            "ota_device_messages_rejected_total{reason=\"rate_limited\"} 0",
            "ota_device_logins_refused_total{reason=\"wrong_secret\"} 0",
            "# TYPE ota_devices_online gauge",
            "ota_devices_online 0",
            "ota_pushes_total 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn counts_render_and_read_back() {
        let m = Metrics::new();
        m.rejected(Rejection::Unparsable);
        m.rejected(Rejection::Unparsable);
        m.message(MessageKind::Progress);
        m.login_refused(LoginRefusal::UnknownDevice);
        m.devices_online.inc_by(5);
        m.devices_online.dec_by(2);
        m.pushes.inc();
        assert_eq!(m.rejected_count(Rejection::Unparsable), 2);
        assert_eq!(m.rejected_count(Rejection::NotAllowed), 0);
        assert_eq!(m.message_count(MessageKind::Progress), 1);
        assert_eq!(m.logins_refused_count(LoginRefusal::UnknownDevice), 1);
        let text = m.render();
        for line in [
            "ota_device_messages_rejected_total{reason=\"unparsable\"} 2",
            "ota_device_messages_total{kind=\"progress\"} 1",
            "ota_device_logins_refused_total{reason=\"unknown_device\"} 1",
            "ota_devices_online 3",
            "ota_pushes_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
