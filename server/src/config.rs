//! The server's one typed configuration: defaults < `ota.toml` < `OTA_*` env < flags.
//! Unknown keys are errors; secrets are redacted whenever the config is shown.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub firmware: FirmwareConfig,
    pub devices: DevicesConfig,
    pub mqtt: MqttConfig,
    pub scheduler: SchedulerConfig,
    pub policy: PolicyConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub bind: String,
    pub port: u16,
    /// Base URL devices use to download firmware; empty means derived from bind and port.
    pub public_url: String,
    /// Largest JSON request body, in bytes.
    pub max_json_bytes: usize,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; HTTPS is on when both `cert` and `key` are set.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Empty means SQLite at `<data_dir>/ota.db`; `postgres://...` selects PostgreSQL.
    pub url: String,
    pub max_connections: u32,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirmwareConfig {
    /// Largest package file, in bytes (SPEC P1).
    pub max_file_bytes: u64,
    /// How long a signed download URL stays valid, in seconds (SPEC V3).
    pub url_ttl_secs: u64,
    /// HMAC key for download URLs; empty means one is generated and kept in the data dir.
    pub url_secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Largest device-import body, in bytes (1,000,000 rows fit in the default).
    pub import_max_bytes: u64,
    /// Most rows one device import may hold (SPEC D1: 1,000,000, the most allowed).
    pub import_max_rows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How often the rollout engine works out what may happen now, in milliseconds.
    pub tick_ms: u64,
    /// Most tasks one rollout releases in one tick (bounds one transaction).
    pub max_release_per_tick: u64,
    /// Most device reports applied in one transaction.
    pub event_batch: usize,
}

/// Limits of tenants' rollout policies (WebAssembly components, SPEC W1–W3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Largest component a tenant may upload, in bytes.
    pub max_upload_bytes: usize,
    /// Linear memory one policy call may use, in MiB.
    pub memory_mib: usize,
    /// Instructions (fuel) one call may run.
    pub fuel: u64,
    /// Wall-clock time one call may take, in milliseconds.
    pub deadline_ms: u64,
    /// Policy calls that may run at once.
    pub instances: u32,
    /// Failed calls in a row after which the rollout pauses.
    pub max_failures: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 16 << 20,
            memory_mib: 32,
            fuel: 1_000_000_000,
            deadline_ms: 1_000,
            instances: 64,
            max_failures: 3,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            tick_ms: 1000,
            max_release_per_tick: 20_000,
            event_batch: 2_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `embedded`: the broker devices connect to runs inside the server; `external`: devices
    /// connect to another broker (`[mqtt.external]`); `off`: no device gateway (API only).
    pub mode: String,
    pub bind: String,
    /// Plain MQTT port; 1884 because a system Mosquitto often holds 1883.
    pub port: u16,
    /// Messages queued per device session before the broker drops (pushes are paced).
    pub max_mqueue_len: usize,
    /// Largest MQTT packet the embedded broker takes, in bytes; a device that sends a larger
    /// one is disconnected. The default is the OTA uplink limit plus room for the topic.
    pub max_packet_size: u32,
    /// Uplinks a device may send per second, on average; more are dropped at the broker and
    /// counted (`ota_device_messages_rejected_total{reason="rate_limited"}`).
    pub uplinks_per_sec: f64,
    /// Uplinks a device may send at once above its rate (a reconnect's report, a burst of
    /// progress messages).
    pub uplink_burst: u32,
    /// Uplink payload bytes held in memory between the broker and the router, all devices
    /// together; a device whose uplink finds it full waits (TCP backpressure).
    pub uplink_buffer_bytes: usize,
    /// Pending TCP connections the listeners queue (a fleet reconnecting at once after a
    /// restart); the kernel caps it at net.core.somaxconn.
    pub listen_backlog: i32,
    pub tls: MqttTlsConfig,
    pub external: ExternalMqttConfig,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalMqttConfig {
    /// `mqtt://host:port` of the broker devices connect to.
    pub url: String,
    /// Client id of this server process; empty means `ota-server-<random>`.
    pub client_id: String,
    pub username: String,
    pub password: String,
    /// Uplinks are taken through `$share/<group>/...` so server processes split them; empty
    /// subscribes plainly (for brokers without shared subscriptions, one process only).
    pub shared_group: String,
}

impl Default for ExternalMqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            shared_group: "ota".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttTlsConfig {
    /// MQTT over TLS port, served when `cert` and `key` are set.
    pub port: u16,
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            mode: "embedded".into(),
            bind: "127.0.0.1".into(),
            port: 1884,
            max_mqueue_len: 1000,
            max_packet_size: 66_560,
            uplinks_per_sec: 10.0,
            uplink_burst: 50,
            uplink_buffer_bytes: 16 * 1024 * 1024,
            listen_backlog: 4096,
            tls: MqttTlsConfig::default(),
            external: ExternalMqttConfig::default(),
        }
    }
}

impl Default for MqttTlsConfig {
    fn default() -> Self {
        Self {
            port: 8884,
            cert: String::new(),
            key: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `ota_server=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http: HttpConfig::default(),
            database: DatabaseConfig::default(),
            firmware: FirmwareConfig::default(),
            devices: DevicesConfig::default(),
            mqtt: MqttConfig::default(),
            scheduler: SchedulerConfig::default(),
            policy: PolicyConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".into(),
            port: 8080,
            public_url: String::new(),
            max_json_bytes: 4 * 1024 * 1024,
            tls: TlsConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 8,
        }
    }
}

impl Default for FirmwareConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 1024 * 1024 * 1024,
            url_ttl_secs: 24 * 3600,
            url_secret: String::new(),
        }
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            import_max_bytes: 512 * 1024 * 1024,
            import_max_rows: crate::domain::limits::MAX_IMPORT_ROWS as u64,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Flags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_port: Option<u16>,
}

impl Config {
    /// Builds the layered config. `file` is read when given or when `ota.toml` exists in
    /// the working directory; `OTA_*` variables come from the process environment.
    pub fn load(file: Option<&Path>, flags: &Flags) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let default_file = Path::new("ota.toml");
        match file {
            Some(path) => {
                // A file named on the command line must exist (figment skips missing files).
                std::fs::metadata(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                fig = fig.merge(Toml::file_exact(path));
            }
            None if default_file.exists() => fig = fig.merge(Toml::file_exact(default_file)),
            None => {}
        }
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__"));
        let mut overrides = serde_json::Map::new();
        let mut http = serde_json::Map::new();
        if let Some(d) = &flags.data_dir {
            overrides.insert("data_dir".into(), serde_json::json!(d));
        }
        if let Some(b) = &flags.bind {
            http.insert("bind".into(), serde_json::json!(b));
        }
        if let Some(p) = flags.port {
            http.insert("port".into(), serde_json::json!(p));
        }
        if !http.is_empty() {
            overrides.insert("http".into(), serde_json::Value::Object(http));
        }
        if let Some(p) = flags.mqtt_port {
            overrides.insert("mqtt".into(), serde_json::json!({ "port": p }));
        }
        if let Some(u) = &flags.database_url {
            overrides.insert("database".into(), serde_json::json!({ "url": u }));
        }
        fig = fig.merge(Serialized::defaults(serde_json::Value::Object(overrides)));
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_errors(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.http.tls.cert.is_empty() != self.http.tls.key.is_empty() {
            return bad("http.tls.cert and http.tls.key must be set together");
        }
        if !matches!(self.mqtt.mode.as_str(), "embedded" | "external" | "off") {
            return bad("mqtt.mode must be \"embedded\", \"external\" or \"off\"");
        }
        if self.mqtt.tls.cert.is_empty() != self.mqtt.tls.key.is_empty() {
            return bad("mqtt.tls.cert and mqtt.tls.key must be set together");
        }
        if self.mqtt.max_mqueue_len == 0 {
            return bad("mqtt.max_mqueue_len must be at least 1");
        }
        if self.mqtt.max_packet_size < 1024 {
            return bad("mqtt.max_packet_size must be at least 1024");
        }
        if !(self.mqtt.uplinks_per_sec.is_finite() && self.mqtt.uplinks_per_sec > 0.0) {
            return bad("mqtt.uplinks_per_sec must be a positive number");
        }
        if self.mqtt.uplink_burst == 0 {
            return bad("mqtt.uplink_burst must be at least 1");
        }
        if self.mqtt.uplink_buffer_bytes < self.mqtt.max_packet_size as usize {
            return bad(
                "mqtt.uplink_buffer_bytes must hold at least one packet (mqtt.max_packet_size)",
            );
        }
        let p = &self.policy;
        if !(1024..=256 << 20).contains(&p.max_upload_bytes) {
            return bad("policy.max_upload_bytes must be from 1024 to 268435456");
        }
        if !(1..=4096).contains(&p.memory_mib) {
            return bad("policy.memory_mib must be from 1 to 4096");
        }
        if !(1_000..=100_000_000_000).contains(&p.fuel) {
            return bad("policy.fuel must be from 1000 to 100000000000");
        }
        if !(10..=60_000).contains(&p.deadline_ms) {
            return bad("policy.deadline_ms must be from 10 to 60000");
        }
        if !(1..=1000).contains(&p.instances) {
            return bad("policy.instances must be from 1 to 1000");
        }
        if !(1..=100).contains(&p.max_failures) {
            return bad("policy.max_failures must be from 1 to 100");
        }
        if !(10..=60_000).contains(&self.scheduler.tick_ms) {
            return bad("scheduler.tick_ms must be from 10 to 60000");
        }
        if !(1..=1_000_000).contains(&self.scheduler.max_release_per_tick) {
            return bad("scheduler.max_release_per_tick must be from 1 to 1000000");
        }
        if !(1..=100_000).contains(&self.scheduler.event_batch) {
            return bad("scheduler.event_batch must be from 1 to 100000");
        }
        if self.mqtt.listen_backlog < 1 {
            return bad("mqtt.listen_backlog must be at least 1");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format must be \"text\" or \"json\"");
        }
        if self.firmware.url_ttl_secs == 0 {
            return bad("firmware.url_ttl_secs must be at least 1");
        }
        if self.firmware.max_file_bytes == 0 {
            return bad("firmware.max_file_bytes must be at least 1");
        }
        if !(1..=crate::domain::limits::MAX_IMPORT_ROWS as u64)
            .contains(&self.devices.import_max_rows)
        {
            return bad("devices.import_max_rows must be 1 to 1000000");
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections must be at least 1");
        }
        if !self.database.url.is_empty()
            && !self.database.url.starts_with("sqlite:")
            && !self.database.url.starts_with("postgres://")
            && !self.database.url.starts_with("postgresql://")
        {
            return bad("database.url must start with sqlite: or postgres://");
        }
        Ok(())
    }

    pub fn tls_enabled(&self) -> bool {
        !self.http.tls.cert.is_empty()
    }

    /// The database URL in force: the configured one, or SQLite in the data dir.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("ota.db").display()
            )
        } else {
            self.database.url.clone()
        }
    }

    /// The base of URLs handed to devices.
    pub fn public_url(&self, bound_port: u16) -> String {
        if !self.http.public_url.is_empty() {
            return self.http.public_url.trim_end_matches('/').to_owned();
        }
        let scheme = if self.tls_enabled() { "https" } else { "http" };
        let host = match self.http.bind.as_str() {
            "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
            h => h,
        };
        format!("{scheme}://{host}:{bound_port}")
    }

    /// The config as TOML with secrets replaced, safe to log or print.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if !c.firmware.url_secret.is_empty() {
            c.firmware.url_secret = "<redacted>".into();
        }
        c.database.url = redact_url_password(&c.database.url);
        if !c.mqtt.external.password.is_empty() {
            c.mqtt.external.password = "<redacted>".into();
        }
        c
    }
}

const ENV_PREFIX: &str = "OTA_";

/// Says where each error came from in the user's words: the file and key, or the
/// environment variable, never figment's internals (code locations, type names).
fn describe_errors(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            // figment puts an unknown key into the path for some sources and not others.
            if let figment::error::Kind::UnknownField(field, _) = &e.kind {
                if path.last() != Some(field) {
                    path.push(field.clone());
                }
            }
            let key = path.join(".");
            let source = e.metadata.as_ref().and_then(|m| m.source.as_ref());
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"));
            let whence = match source {
                _ if from_env => format!(
                    "environment variable {ENV_PREFIX}{}",
                    path.iter()
                        .map(|p| p.to_ascii_uppercase())
                        .collect::<Vec<_>>()
                        .join("__")
                ),
                Some(figment::Source::File(f)) => format!("{}: key {key}", f.display()),
                _ => format!("key {key}"),
            };
            format!("{whence}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

// Secrets never reach `Debug` output (a config logged at start or in a panic message).
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url_password(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl std::fmt::Debug for FirmwareConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareConfig")
            .field("max_file_bytes", &self.max_file_bytes)
            .field("url_ttl_secs", &self.url_ttl_secs)
            .field("url_secret", &redacted_text(&self.url_secret))
            .finish()
    }
}

impl std::fmt::Debug for ExternalMqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalMqttConfig")
            .field("url", &redact_url_password(&self.url))
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &redacted_text(&self.password))
            .field("shared_group", &self.shared_group)
            .finish()
    }
}

fn redacted_text(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

fn redact_url_password(url: &str) -> String {
    // scheme://user:password@host -> scheme://user:<redacted>@host
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    // The userinfo ends at the last `@` of the authority (a password may hold an `@`).
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let creds = &rest[..at];
    match creds.find(':') {
        Some(colon) => format!(
            "{}://{}:<redacted>{}",
            &url[..scheme_end],
            &creds[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// The commented default configuration file printed by `ota-server config print-default`.
pub const DEFAULT_TOML: &str = r#"# ota-server configuration. Every key is optional; these are the defaults.
# Layers, later wins: these defaults < this file (ota.toml or --config) < OTA_* environment
# variables (OTA_HTTP__PORT=9000, OTA_DATABASE__URL=postgres://...) < command-line flags.
# Unknown keys are errors.

# Where the SQLite database, firmware files and the generated URL secret live.
data_dir = "./data"

[http]
# Address and port of the HTTP API and firmware downloads.
bind = "127.0.0.1"
port = 8080
# Base URL devices download firmware from; empty means http(s)://<bind>:<port>.
public_url = ""
# Largest JSON request body, in bytes.
max_json_bytes = 4194304

[http.tls]
# PEM certificate chain and private key; HTTPS is served when both are set.
cert = ""
key = ""

[database]
# Empty means SQLite at <data_dir>/ota.db (WAL mode); postgres://user@host/db selects PostgreSQL.
url = ""
max_connections = 8

[firmware]
# Largest package file, in bytes.
max_file_bytes = 1073741824
# Lifetime of a signed download URL, in seconds.
url_ttl_secs = 86400
# HMAC key for download URLs; empty means one is generated once and kept in the data dir.
url_secret = ""

[devices]
# Largest body of a device import (CSV or JSON), in bytes.
import_max_bytes = 536870912
# Most rows one device import may hold (1 to 1000000).
import_max_rows = 1000000

[mqtt]
# "embedded": devices connect to the MQTT broker inside the server (Alibaba Link Kit and EnOS
# SDK devices work unchanged); "external": devices connect to another broker ([mqtt.external]),
# which must authenticate them, and they must subscribe to their downlink topics themselves;
# "off": no device gateway.
mode = "embedded"
bind = "127.0.0.1"
# 1884 because a system Mosquitto often holds 1883.
port = 1884
# Messages queued per device session before the broker drops.
max_mqueue_len = 1000
# Largest MQTT packet taken from a device, in bytes (a larger one ends its session); the
# default is the 64 KiB OTA uplink limit plus room for the topic.
max_packet_size = 66560
# Uplinks per second a device may send on average, and at once above that; more are dropped
# and counted as ota_device_messages_rejected_total{reason="rate_limited"}.
uplinks_per_sec = 10.0
uplink_burst = 50
# Uplink bytes held between the broker and the router, all devices together; when full,
# devices wait (TCP backpressure) instead of the server growing.
uplink_buffer_bytes = 16777216
# Pending TCP connections queued when a fleet reconnects at once (capped by the kernel's
# net.core.somaxconn).
listen_backlog = 4096

[mqtt.tls]
# MQTT over TLS, served when cert and key (PEM files) are set.
port = 8884
cert = ""
key = ""

[mqtt.external]
# The broker devices connect to, when mode = "external".
url = "mqtt://127.0.0.1:1883"
# Client id of this server process; empty means ota-server-<random>.
client_id = ""
username = ""
password = ""
# Uplinks come through $share/<group>/... so several server processes split them; empty
# subscribes plainly (one process only).
shared_group = "ota"

[scheduler]
# How often the rollout engine works out what may happen now (schedule, rate, concurrency,
# timers), in milliseconds (10 to 60000).
tick_ms = 1000
# Most tasks one rollout releases in one tick (1 to 1000000).
max_release_per_tick = 20000
# Most device reports applied in one transaction (1 to 100000).
event_batch = 2000

[policy]
# Tenants' rollout policies (WebAssembly components). Largest upload, in bytes.
max_upload_bytes = 16777216
# Linear memory (MiB), instructions (fuel) and wall-clock time (ms) one policy call may use.
memory_mib = 32
fuel = 1000000000
deadline_ms = 1000
# Policy calls that may run at once.
instances = 64
# Failed calls in a row after which the rollout pauses, with the reason recorded.
max_failures = 3

[log]
# tracing filter, e.g. "info" or "ota_server=debug,info".
level = "info"
# "text" or "json".
format = "text"
"#;

#[cfg(test)]
// figment::Jail's closures return figment's (large) error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn printed_default_file_is_exactly_the_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
    }

    // figment's Jail gives each test a private environment and working directory, one
    // test at a time; the variables of whoever runs the tests are cleared first.
    fn jail(f: impl FnOnce(&mut figment::Jail) -> figment::error::Result<()>) {
        figment::Jail::expect_with(|j| {
            j.clear_env();
            f(j)
        });
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        jail(|j| {
            j.create_file(
                "custom.toml",
                "[http]\nport = 9000\nbind = \"0.0.0.0\"\n[log]\nlevel = \"debug\"\n",
            )?;
            j.set_env("OTA_HTTP__PORT", "9100");
            j.set_env("OTA_DATABASE__URL", "postgres://u:pw@h/db");
            j.set_env("HOME", "/x");
            let cfg = Config::load(
                Some(Path::new("custom.toml")),
                &Flags {
                    port: Some(9200),
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(cfg.http.port, 9200, "flag beats env beats file");
            assert_eq!(cfg.http.bind, "0.0.0.0", "file beats default");
            assert_eq!(cfg.log.level, "debug");
            assert_eq!(cfg.database_url(), "postgres://u:pw@h/db");
            assert_eq!(cfg.redacted().database.url, "postgres://u:<redacted>@h/db");
            // without flags, the environment beats the file
            let cfg = Config::load(Some(Path::new("custom.toml")), &Flags::default()).unwrap();
            assert_eq!(cfg.http.port, 9100);
            Ok(())
        });
    }

    #[test]
    fn ota_toml_in_the_working_directory_is_read() {
        jail(|j| {
            j.create_file("ota.toml", "[mqtt]\nport = 1999\n")?;
            assert_eq!(
                Config::load(None, &Flags::default()).unwrap().mqtt.port,
                1999
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_in_file_and_env_and_name_where() {
        jail(|j| {
            j.create_file("ota.toml", "[http]\nprot = 9000\n")?;
            let e = Config::load(Some(Path::new("ota.toml")), &Flags::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("ota.toml: key http.prot"), "{e}");
            j.clear_env();
            std::fs::remove_file("ota.toml").unwrap();
            j.set_env("OTA_HTTP__PROT", "1");
            let e = Config::load(None, &Flags::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("environment variable OTA_HTTP__PROT"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn config_errors_name_the_variable_or_file_key_never_internals() {
        jail(|j| {
            j.set_env("OTA_HTTP__PORT", "not-a-port");
            let e = Config::load(None, &Flags::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("environment variable OTA_HTTP__PORT"), "{e}");
            for internal in ["config.rs", "serde_json", "Value", "src/"] {
                assert!(!e.contains(internal), "{internal} in {e}");
            }
            j.clear_env();
            j.create_file("bad.toml", "[mqtt]\nport = \"x\"\n")?;
            let e = Config::load(Some(Path::new("bad.toml")), &Flags::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("bad.toml: key mqtt.port"), "{e}");
            assert!(!e.contains("config.rs"), "{e}");
            let e = Config::load(Some(Path::new("missing.toml")), &Flags::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("missing.toml"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn tls_needs_cert_and_key_together() {
        jail(|j| {
            j.set_env("OTA_HTTP__TLS__CERT", "/c.pem");
            let e = Config::load(None, &Flags::default()).unwrap_err();
            assert!(e.to_string().contains("together"));
            Ok(())
        });
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let mut c = Config::default();
        c.firmware.url_secret = "s3cr3t-url".into();
        c.database.url = "postgres://u:pw@db-9@h/db?x=a@b".into();
        c.mqtt.external.password = "pw-mqtt-7".into();
        c.mqtt.external.url = "mqtt://u:pw-url-5@h:1883".into();
        let shown = format!("{c:?} {c:#?}");
        for secret in ["s3cr3t-url", "pw@db-9", "db-9", "pw-mqtt-7", "pw-url-5"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = Config::default();
        c.firmware.url_secret = "s3cr3t".into();
        let shown = toml::to_string(&c.redacted()).unwrap();
        assert!(!shown.contains("s3cr3t"));
    }
}
