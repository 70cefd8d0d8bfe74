//! Benchmark of a reconnect storm: N simulated Link Kit devices (raw MQTT 3.1.1 CONNECTs on
//! loopback, signed with their device secrets) all connect at once, first to the embedded
//! broker of a fresh release-built server on SQLite, then to the machine's Mosquitto
//! (127.0.0.1:1883, anonymous), and it prints connects per second, the median and slowest
//! wait for CONNACK, the server's memory per connected device, and its memory once they have
//! gone. Arguments: devices (default 10,000), Mosquitto's address (default 127.0.0.1:1883).

use anyhow::{anyhow, bail, Result};
use e2e::*;
use hmac::{Hmac, Mac};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PK: &str = "a1Storm";
const SECRET: &str = "storm-secret-0001";

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn mqtt_string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A CONNECT as the Link Kit SDK sends it (securemode 3, HMAC-SHA1 over the device secret).
fn connect_packet(dn: &str, ts: &str) -> Result<Vec<u8>> {
    let client_id = format!("{PK}&{dn}|securemode=3,signmethod=hmacsha1,timestamp={ts}|");
    let username = format!("{dn}&{PK}");
    let content = format!("clientId{PK}&{dn}deviceName{dn}productKey{PK}timestamp{ts}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes())?;
    mac.update(content.as_bytes());
    let password = hex::encode(mac.finalize().into_bytes());
    let mut body = Vec::with_capacity(256);
    mqtt_string("MQTT", &mut body);
    body.push(4); // protocol level 3.1.1
    body.push(0b1100_0010); // username, password, clean session
    body.extend_from_slice(&300u16.to_be_bytes()); // keep alive, seconds
    mqtt_string(&client_id, &mut body);
    mqtt_string(&username, &mut body);
    mqtt_string(&password, &mut body);
    let mut packet = vec![0x10];
    remaining_length(body.len(), &mut packet);
    packet.extend_from_slice(&body);
    Ok(packet)
}

/// Connects, sends the CONNECT and waits for an accepting CONNACK; returns the open socket.
async fn connect(addr: &str, packet: &[u8]) -> Result<(TcpStream, Duration)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(packet).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[3] != 0 {
        bail!("CONNECT refused: {ack:?}");
    }
    Ok((s, start.elapsed()))
}

struct Storm {
    connects_per_sec: f64,
    median: Duration,
    slowest: Duration,
    sockets: Vec<TcpStream>,
}

/// All devices connect at once; each has its own task.
async fn storm(addr: &str, packets: &[Vec<u8>]) -> Result<Storm> {
    let start = Instant::now();
    let tasks: Vec<_> = packets
        .iter()
        .map(|p| {
            let addr = addr.to_owned();
            let p = p.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(120), connect(&addr, &p))
                    .await
                    .map_err(|_| anyhow!("no CONNACK in 120 s"))?
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(tasks.len());
    let mut waits = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (s, w) = t.await??;
        sockets.push(s);
        waits.push(w);
    }
    let elapsed = start.elapsed();
    waits.sort();
    Ok(Storm {
        connects_per_sec: packets.len() as f64 / elapsed.as_secs_f64(),
        median: waits[waits.len() / 2],
        slowest: waits[waits.len() - 1],
        sockets,
    })
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::main]
async fn main() -> Result<()> {
    let devices: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let mosquitto = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1:1883".to_owned());
    let fds = raise_fd_limit()?;
    if (fds as usize) < devices + 1000 {
        bail!("the open-file limit is {fds}; {devices} devices need more (raise `ulimit -n`)");
    }
    let srv = Server::start(ServerOptions {
        release: true,
        env: vec![("OTA_LOG__LEVEL".into(), "warn,ota_server=info".into())],
        ..Default::default()
    })
    .await?;
    let pid = srv.pid().ok_or_else(|| anyhow!("no server pid"))?;
    let mqtt = srv
        .mqtt
        .clone()
        .ok_or_else(|| anyhow!("the embedded broker's address was not logged"))?;
    let key = srv.create_tenant("storm").await?;
    let http = client(None)?;
    let p: serde_json::Value = http
        .post(format!("{}/v1/products", srv.base))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "storm", "protocol": "alink", "product_key": PK}))
        .send()
        .await?
        .json()
        .await?;
    let pid_product = p["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("no product id: {p}"))?;
    let mut csv = String::from("name,secret\n");
    for i in 0..devices {
        csv.push_str(&format!("storm-{i:06},{SECRET}\n"));
    }
    let r = http
        .post(format!(
            "{}/v1/products/{pid_product}/devices/import",
            srv.base
        ))
        .bearer_auth(&key)
        .header("Content-Type", "text/csv")
        .body(csv)
        .send()
        .await?;
    if r.status() != 201 {
        bail!("import failed: {}", r.text().await?);
    }
    let ts = "1795000000000";
    let packets: Vec<Vec<u8>> = (0..devices)
        .map(|i| connect_packet(&format!("storm-{i:06}"), ts))
        .collect::<Result<_>>()?;

    let rss_idle = rss_bytes(pid).unwrap_or(0);
    let embedded = storm(&mqtt, &packets).await?;
    wait_online(&http, &srv.base, devices as i64).await?;
    let rss_connected = rss_bytes(pid).unwrap_or(0);
    drop(embedded.sockets);
    wait_online(&http, &srv.base, 0).await?;
    let rss_after = rss_bytes(pid).unwrap_or(0);

    let mosq = storm(&mosquitto, &packets).await;

    println!("bench-connect: {devices} Link Kit devices connecting at once, on loopback");
    println!(
        "bench-connect: embedded broker: {:.0} connects/s; CONNACK wait median {:.0} ms, slowest {:.0} ms",
        embedded.connects_per_sec,
        embedded.median.as_secs_f64() * 1e3,
        embedded.slowest.as_secs_f64() * 1e3
    );
    table_row(
        &format!("connect storm, {devices} devices: embedded broker"),
        "-",
        &format!("{:.0} connects/s", embedded.connects_per_sec),
    );
    if let Ok(m) = &mosq {
        table_row(
            &format!("connect storm, {devices} devices: Mosquitto"),
            "-",
            &format!("{:.0} connects/s", m.connects_per_sec),
        );
    }
    match mosq {
        Ok(m) => println!(
            "bench-connect: mosquitto at {mosquitto}: {:.0} connects/s; CONNACK wait median {:.0} ms, slowest {:.0} ms",
            m.connects_per_sec,
            m.median.as_secs_f64() * 1e3,
            m.slowest.as_secs_f64() * 1e3
        ),
        Err(e) => println!("bench-connect: mosquitto at {mosquitto}: not measured ({e})"),
    }
    println!(
        "bench-connect: server RSS {:.0} MB idle, {:.0} MB with {devices} connected ({:.1} KB per device), {:.0} MB after they left",
        rss_idle as f64 / 1048576.0,
        rss_connected as f64 / 1048576.0,
        rss_connected.saturating_sub(rss_idle) as f64 / devices as f64 / 1024.0,
        rss_after as f64 / 1048576.0
    );
    Ok(())
}
