//! Devices built with the vendors' real SDKs, run unchanged as Python processes
//! (`tests/sdk/*.py`), for the tests that drive them: a process whose stdout events a test
//! follows. The SDKs live in the project's venv (`scripts/test` creates it; `SDK_PYTHON`
//! overrides the interpreter).

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// How long a test waits for any one thing a device does.
pub const WAIT: Duration = Duration::from_secs(40);

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn python() -> PathBuf {
    std::env::var("SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".venv/bin/python"))
}

/// A running SDK device process whose stdout events the test follows.
pub struct Device {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Device {
    pub fn spawn(script: &str, args: &[String]) -> Self {
        let py = python();
        assert!(
            py.exists(),
            "{} is missing: run scripts/test (it creates the SDK venv)",
            py.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut child = tokio::process::Command::new(py)
            .arg(root().join("tests/sdk").join(script))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        Self {
            child,
            lines: BufReader::new(out).lines(),
            seen: vec![],
            stderr,
            _dir: dir,
        }
    }

    /// Reads events until `event` comes; panics with everything seen on timeout or exit.
    pub async fn expect(&mut self, event: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line()).await;
            match line {
                Ok(Ok(Some(l))) => {
                    self.seen.push(l.clone());
                    let v: Value =
                        serde_json::from_str(&l).unwrap_or(json!({"event": "?", "raw": l}));
                    if v["event"] == event {
                        return v;
                    }
                }
                other => {
                    // the process may still be writing its traceback
                    let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                    let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                    let tail: String = err
                        .chars()
                        .rev()
                        .take(3000)
                        .collect::<String>()
                        .chars()
                        .rev()
                        .collect();
                    panic!(
                        "waiting for {event:?}: {other:?}; device said {:?}; stderr tail:\n{tail}",
                        self.seen
                    )
                }
            }
        }
    }

    /// The first of several events, whichever comes.
    pub async fn expect_any(&mut self, events: &[&str]) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(l))) => {
                    self.seen.push(l.clone());
                    let v: Value = serde_json::from_str(&l).unwrap_or(json!({"event": "?"}));
                    if events.iter().any(|e| v["event"] == *e) {
                        return v;
                    }
                }
                other => panic!(
                    "waiting for {events:?}: {other:?}; device said {:?}",
                    self.seen
                ),
            }
        }
    }

    pub async fn finish(mut self) -> i32 {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap()
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

/// A bare MQTT client signed in as a Link Kit device of product `pk` (HMAC-SHA1, as the
/// SDKs sign), connected to the embedded broker on `port`; what the broker sends it arrives
/// on the returned channel.
pub async fn raw_alink_client(
    pk: &str,
    port: u16,
    name: &str,
    secret: &str,
) -> (
    rumqttc::AsyncClient,
    mpsc::UnboundedReceiver<rumqttc::Publish>,
) {
    use hmac::{Hmac, Mac};
    use rumqttc::{Event, MqttOptions, Packet};
    let ts = rand::random::<u32>().to_string();
    let content = format!("clientId{pk}&{name}deviceName{name}productKey{pk}timestamp{ts}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(content.as_bytes());
    let mut o = MqttOptions::new(
        format!("{pk}&{name}|securemode=3,signmethod=hmacsha1,timestamp={ts}|"),
        "127.0.0.1",
        port,
    );
    o.set_credentials(
        format!("{name}&{pk}"),
        hex::encode(mac.finalize().into_bytes()),
    );
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut ev) = rumqttc::AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready, connected) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(WAIT, connected)
        .await
        .expect("connected in time")
        .expect("connected");
    (client, rx)
}
