//! End-to-end harness: runs the real `ota-server` binary as a child process on a temp data
//! directory (SQLite) or a fresh PostgreSQL database, and talks to it over HTTP(S).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod sim;

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The server binary: `E2E_SERVER_BIN`, or the workspace target dir's debug/release build.
pub fn server_bin(release: bool) -> PathBuf {
    if let Ok(p) = std::env::var("E2E_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target
        .join(if release { "release" } else { "debug" })
        .join("ota-server")
}

/// Runs a one-shot CLI command (`tenant create`, `config print-default`, ...).
pub async fn cli(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .await
        .with_context(|| format!("running {}", bin.display()))
}

/// A running server process; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// `host:port` of the embedded MQTT broker, when it runs.
    pub mqtt: Option<String>,
    pub data_dir: PathBuf,
    pub bin: PathBuf,
    pub env: Vec<(String, String)>,
    pub serve_args: Vec<String>,
    _dir: Option<tempfile::TempDir>,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Default)]
pub struct ServerOptions {
    pub release: bool,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// The embedded broker's port; 0 (any free one) unless given.
    pub mqtt_port: Option<u16>,
    /// Arguments after `serve` (`--clock manual`).
    pub serve_args: Vec<String>,
}

impl Server {
    /// Starts `ota-server serve --port 0` on a temp data dir and waits until it listens.
    pub async fn start(opts: ServerOptions) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().to_owned();
        let mut srv = Self::start_in(opts, data_dir).await?;
        srv._dir = Some(dir);
        Ok(srv)
    }

    /// Stops the process at once (SIGKILL: nothing is recorded on the way out, as in a
    /// crash) and starts it again on the same data and the same MQTT port.
    pub async fn restart(mut self) -> Result<Self> {
        let port = self
            .mqtt
            .as_deref()
            .and_then(|a| a.rsplit(':').next())
            .map(str::parse::<u16>)
            .transpose()?;
        // it may be dead already (the test killed it to order what happens around it)
        let _ = self.child.kill().await;
        let dir = self._dir.take();
        let mut srv = Self::start_in(
            ServerOptions {
                env: self.env.clone(),
                mqtt_port: port,
                serve_args: self.serve_args.clone(),
                ..Default::default()
            },
            self.data_dir.clone(),
        )
        .await?;
        srv._dir = dir;
        Ok(srv)
    }

    async fn start_in(opts: ServerOptions, data_dir: PathBuf) -> Result<Self> {
        let bin = server_bin(opts.release);
        if !bin.exists() {
            bail!(
                "{} is missing: build it first (cargo build -p ota-server)",
                bin.display()
            );
        }
        let mut cmd = Command::new(&bin);
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .arg("--port")
            .arg("0")
            .arg("--mqtt-port")
            .arg(opts.mqtt_port.unwrap_or(0).to_string())
            .args(&opts.args)
            .arg("serve")
            .args(&opts.serve_args)
            .env_remove("RUST_LOG")
            .env("OTA_LOG__FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
        let log2 = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("ota-server listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone()).await;
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let line = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "server did not start in 60 s; log: {:?}",
                    log.lock().unwrap()
                )
            })?
            .ok_or_else(|| anyhow!("server exited; log: {:?}", log.lock().unwrap()))?;
        let line = strip_ansi(&line);
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .ok_or_else(|| anyhow!("no address in {line:?}"))?
            .to_owned();
        let scheme = if line.contains("public_url=https") {
            "https"
        } else {
            "http"
        };
        let mqtt = log.lock().unwrap().iter().find_map(|l| {
            let l = strip_ansi(l);
            if !l.contains("mqtt listening") {
                return None;
            }
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
                .map(str::to_owned)
        });
        Ok(Self {
            child,
            base: format!("{scheme}://{addr}"),
            mqtt,
            data_dir,
            bin,
            env: opts.env,
            serve_args: opts.serve_args,
            _dir: None,
            log,
        })
    }

    /// Creates a tenant through the CLI against this server's data and returns its key.
    pub async fn create_tenant(&self, name: &str) -> Result<String> {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let out = cli(
            &self.bin,
            &[
                "--data-dir",
                self.data_dir.to_str().unwrap(),
                "tenant",
                "create",
                name,
            ],
            &env,
        )
        .await?;
        if !out.status.success() {
            bail!(
                "tenant create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c2 in chars.by_ref() {
                if c2.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A fresh, empty PostgreSQL schema for one test, in the run's database
/// (`TEST_PG_URL`); returns a URL whose connections use it as their search path.
pub async fn fresh_pg_database() -> Result<String> {
    use sqlx::Connection;
    let base = std::env::var("TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut conn = sqlx::PgConnection::connect(&base).await?;
    let name = format!(
        "e2e_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
        .execute(&mut conn)
        .await?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{sep}options=-c%20search_path%3D{name}"))
}

/// Peak resident set size of a process in bytes (VmHWM), Linux only.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// An HTTP client with a bearer key.
pub fn client(extra_root_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(600));
    if let Some(pem) = extra_root_pem {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
    }
    Ok(b.build()?)
}

/// The server's `ota_devices_online` gauge.
pub async fn online(http: &reqwest::Client, base: &str) -> Result<i64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("ota_devices_online "))
        .ok_or_else(|| anyhow!("no ota_devices_online in /metrics"))?
        .trim()
        .parse()
        .context("ota_devices_online")
}

/// Waits, polling the gauge, until it reads `want` (the broker registers sessions after the
/// CONNACK and forgets them after the socket closes).
pub async fn wait_online(http: &reqwest::Client, base: &str, want: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = online(http, base).await?;
        if n == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ota_devices_online is {n}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The soft and hard open-file limits of this process.
pub fn fd_limits() -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| anyhow!("no open-file limit in /proc/self/limits"))?;
    let mut v = line.split_whitespace().skip(3).map(|v| v.parse::<u64>());
    match (v.next(), v.next()) {
        (Some(Ok(soft)), Some(Ok(hard))) => Ok((soft, hard)),
        _ => bail!("unreadable open-file limit: {line}"),
    }
}

/// Each device and the server hold a socket: lifts the soft open-file limit to the hard one
/// (the server, started after, inherits it). The crate forbids `unsafe`, so util-linux's
/// `prlimit` does the `setrlimit` on this process.
pub fn raise_fd_limit() -> Result<u64> {
    let (soft, hard) = fd_limits()?;
    if soft < hard {
        let status = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!("--nofile={hard}:{hard}"),
            ])
            .status()
            .context("running prlimit")?;
        if !status.success() {
            bail!("prlimit could not raise the open-file limit to {hard}");
        }
    }
    Ok(fd_limits()?.0)
}

/// One row of the benchmark table `scripts/bench` ends with: the figure, its target (or
/// "-"), and what was measured. Printed as a tab-separated line it picks out.
pub fn table_row(figure: &str, target: &str, measured: &str) {
    println!("TABLE\t{figure}\t{target}\t{measured}");
}
