//! The device side of the server: MQTT gateways (the embedded broker, an external one),
//! the uplink router, and the protocol layer — topics, payload codecs and CONNECT
//! authentication of Alibaba Link Kit ("alink") and EnOS devices. The protocol layer is pure
//! (no I/O, no MQTT library), so the broker glue can be swapped without touching what
//! devices see. The only module that touches MQTT.

pub mod alink;
pub mod auth;
pub mod device_auth;
pub mod directory;
pub mod embedded;
pub mod enos;
pub mod events;
pub mod external;
pub mod gateway;
pub mod presence;
pub mod router;
pub mod throttle;
pub mod topics;
mod wire;

pub use auth::{parse_identity, verify, AuthError, AuthSignMethod, Identity};
pub use events::{DeviceMessage, FirmwarePush, RequestId, Uplink};
pub use topics::{
    parse_uplink_topic, subscriptions_on_connect, topic_belongs_to, AlinkTopic, EnosTopic,
    TopicKind, UplinkTopic,
};
pub use wire::MAX_UPLINK_BYTES;

/// Why an uplink could not be understood or a downlink could not be built. Messages say
/// what is wrong in terms a device developer can act on (SPEC V4: rejected and counted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("topic {topic:?} is not an OTA uplink: {reason}")]
    UnknownTopic { topic: String, reason: String },
    #[error("payload of {size} bytes exceeds the {max}-byte limit for OTA uplinks")]
    TooLarge { size: usize, max: usize },
    #[error("payload is not a JSON object of the expected shape: {0}")]
    NotJson(String),
    #[error("request id: {0}")]
    BadId(String),
    #[error("{0} is missing")]
    MissingField(&'static str),
    #[error("{field}: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("firmware cannot be offered to a device: {field} {reason}")]
    UnusableFirmware { field: &'static str, reason: String },
    #[error("{0} has no reply of this kind")]
    NoReply(&'static str),
    #[error("encoding failed: {0}")]
    Encoding(String),
}

/// A gateway failure (broker start-up or publishing).
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("MQTT broker: {0}")]
    Broker(String),
}

/// A message to publish to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downlink {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Decodes one uplink: the topic says who sent what, the payload the details.
pub fn decode_uplink(topic: &str, payload: &[u8]) -> Result<DeviceMessage, CodecError> {
    let t = parse_uplink_topic(topic)?;
    let (kind, request_id) = match t.kind {
        TopicKind::Alink(k) => alink::decode(k, payload)?,
        TopicKind::Enos(k) => enos::decode(k, payload)?,
    };
    Ok(DeviceMessage {
        product_key: t.product_key.to_owned(),
        device: t.device.to_owned(),
        kind,
        request_id,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its message
mod tests {
    use super::*;
    use crate::domain::{ModuleName, Protocol, Version};

    /// xorshift64*: deterministic, so a failing input can be reproduced from the seed.
    struct Prng(u64);
    impl Prng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let n = self.below(max_len + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    const ALL_TOPICS: [&str; 8] = [
        "/ota/device/inform/a1PK/lk3",
        "/ota/device/progress/a1PK/lk3",
        "/sys/a1PK/lk3/thing/ota/firmware/get",
        "/sys/pkE/en3/ota/device/inform",
        "/sys/pkE/en3/ota/device/progress",
        "/sys/pkE/en3/ota/device/getversion",
        "/sys/pkE/en3/ota/device/request",
        "/sys/pkE/en3/ota/device/upgrade_reply",
    ];

    fn m(s: &str) -> ModuleName {
        ModuleName::parse("m", s).unwrap()
    }
    fn v(s: &str) -> Version {
        Version::parse("v", s).unwrap()
    }

    // SPEC V1
    // SPEC V2
    #[test]
    fn every_wire_capture_of_the_protocol_doc_decodes() {
        let text = |s: &str| Some(RequestId::Text(s.into()));
        let cases: Vec<(&str, &str, Uplink, Option<RequestId>)> = vec![
            // Link Kit pull, §5
            (
                "/ota/device/inform/a1PK/lk3",
                r#"{"id": 1, "params": {"version": "1.0.0"}}"#,
                Uplink::Inform {
                    module: m("default"),
                    version: v("1.0.0"),
                },
                Some(RequestId::Number(1)),
            ),
            (
                "/sys/a1PK/lk3/thing/ota/firmware/get",
                r#"{"id": 1, "params": {}}"#,
                Uplink::Pull { module: None },
                Some(RequestId::Number(1)),
            ),
            (
                "/ota/device/progress/a1PK/lk3",
                r#"{"id": "101", "params": {"step": "10", "desc": "downloading"}}"#,
                Uplink::Progress {
                    module: None,
                    step: 10,
                    desc: "downloading".into(),
                },
                text("101"),
            ),
            (
                "/ota/device/progress/a1PK/lk3",
                r#"{"id": "102", "params": {"step": "50", "desc": "downloaded and verified"}}"#,
                Uplink::Progress {
                    module: None,
                    step: 50,
                    desc: "downloaded and verified".into(),
                },
                text("102"),
            ),
            (
                "/ota/device/progress/a1PK/lk3",
                r#"{"id": "103", "params": {"step": "100", "desc": "upgrade finished"}}"#,
                Uplink::Progress {
                    module: None,
                    step: 100,
                    desc: "upgrade finished".into(),
                },
                text("103"),
            ),
            (
                "/ota/device/inform/a1PK/lk3",
                r#"{"id": 1, "params": {"version": "2.0.0"}}"#,
                Uplink::Inform {
                    module: m("default"),
                    version: v("2.0.0"),
                },
                Some(RequestId::Number(1)),
            ),
            // Link Kit, §1.4
            (
                "/ota/device/inform/a1PK/lk3",
                r#"{"id": 1, "params": {"version": "1.0.0", "module": "MCU"}}"#,
                Uplink::Inform {
                    module: m("MCU"),
                    version: v("1.0.0"),
                },
                Some(RequestId::Number(1)),
            ),
            (
                "/ota/device/progress/a1PK/lk3",
                r#"{"id": "123", "params": {"step": "50", "desc": "downloading", "module": "MCU"}}"#,
                Uplink::Progress {
                    module: Some(m("MCU")),
                    step: 50,
                    desc: "downloading".into(),
                },
                text("123"),
            ),
            (
                "/sys/a1PK/lk3/thing/ota/firmware/get",
                r#"{"id": 2, "params": {"module": "MCU"}}"#,
                Uplink::Pull {
                    module: Some(m("MCU")),
                },
                Some(RequestId::Number(2)),
            ),
            (
                "/sys/a1PK/lk3/thing/ota/firmware/get",
                r#"{"id": "123", "version": "1.0", "params": {"module": "MCU"}, "method": "thing.ota.firmware.get"}"#,
                Uplink::Pull {
                    module: Some(m("MCU")),
                },
                text("123"),
            ),
            // EnOS pull (request), §5
            (
                "/sys/pkE/en3/ota/device/inform",
                r#"{"id": "1", "version": "1.0", "method": "ota.inform", "params": {"version": "1.0.0"}}"#,
                Uplink::Inform {
                    module: m("default"),
                    version: v("1.0.0"),
                },
                text("1"),
            ),
            (
                "/sys/pkE/en3/ota/device/request",
                r#"{"id": "2", "version": "1.0", "method": "ota.request", "params": {}}"#,
                Uplink::Pull { module: None },
                text("2"),
            ),
            (
                "/sys/pkE/en3/ota/device/upgrade_reply",
                r#"{"id": "62575", "code": 200, "data": "", "message": "accepted"}"#,
                Uplink::UpgradeReply {
                    code: "200".into(),
                    message: "accepted".into(),
                },
                text("62575"),
            ),
            (
                "/sys/pkE/en3/ota/device/progress",
                r#"{"id": "3", "version": "1.0", "method": "ota.progress", "params": {"step": "10", "desc": "downloading"}}"#,
                Uplink::Progress {
                    module: None,
                    step: 10,
                    desc: "downloading".into(),
                },
                text("3"),
            ),
            (
                "/sys/pkE/en3/ota/device/inform",
                r#"{"id": "6", "version": "1.0", "method": "ota.inform", "params": {"version": "2.0.0"}}"#,
                Uplink::Inform {
                    module: m("default"),
                    version: v("2.0.0"),
                },
                text("6"),
            ),
            // EnOS, §2.5
            (
                "/sys/pkE/en3/ota/device/inform",
                r#"{"id":"1","version":"1.0","method":"ota.inform","params":{"version":1.0}}"#,
                Uplink::Inform {
                    module: m("default"),
                    version: v("1.0"),
                },
                text("1"),
            ),
            (
                "/sys/pkE/en3/ota/device/getversion",
                r#"{"id":"3","version":"1.0","method":"Ota.device.getversion","params":{}}"#,
                Uplink::GetVersion,
                text("3"),
            ),
            (
                "/sys/pkE/en3/ota/device/request",
                r#"{"id":"4","version":"1.0","method":"ota.request","params":{}}"#,
                Uplink::Pull { module: None },
                text("4"),
            ),
            (
                "/sys/pkE/en3/ota/device/upgrade_reply",
                r#"{"id":"123","code":"1101","data":{},"message":"downstream command handler not registered"}"#,
                Uplink::UpgradeReply {
                    code: "1101".into(),
                    message: "downstream command handler not registered".into(),
                },
                text("123"),
            ),
            (
                "/sys/pkE/en3/ota/device/upgrade_reply",
                r#"{"id":"123","code":"500","data":{},"message":"command handler execution failedboom"}"#,
                Uplink::UpgradeReply {
                    code: "500".into(),
                    message: "command handler execution failedboom".into(),
                },
                text("123"),
            ),
        ];
        for (topic, payload, kind, id) in cases {
            let msg = decode_uplink(topic, payload.as_bytes())
                .unwrap_or_else(|e| panic!("{topic} {payload}: {e}"));
            let (pk, dn) = if topic.contains("pkE") {
                ("pkE", "en3")
            } else {
                ("a1PK", "lk3")
            };
            assert_eq!(
                msg,
                DeviceMessage {
                    product_key: pk.into(),
                    device: dn.into(),
                    kind,
                    request_id: id
                },
                "{topic} {payload}"
            );
        }
    }

    // SPEC V4
    #[test]
    fn random_bytes_never_panic_and_are_refused() {
        let mut rng = Prng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..400 {
            let payload = rng.bytes(96);
            for topic in ALL_TOPICS {
                // Random bytes can, rarely, be valid JSON such as `1`; none is a valid uplink.
                assert!(
                    decode_uplink(topic, &payload).is_err(),
                    "{topic} {payload:?}"
                );
            }
            let topic = String::from_utf8_lossy(&rng.bytes(64)).into_owned();
            assert!(parse_uplink_topic(&topic).is_err(), "{topic:?}");
        }
    }

    // SPEC V4
    #[test]
    fn mutated_captures_never_panic() {
        let seeds: [(&str, &str); 5] = [
            (
                ALL_TOPICS[0],
                r#"{"id": 1, "params": {"version": "1.0.0", "module": "MCU"}}"#,
            ),
            (
                ALL_TOPICS[1],
                r#"{"id": "123", "params": {"step": "50", "desc": "downloading"}}"#,
            ),
            (
                ALL_TOPICS[3],
                r#"{"id":"1","version":"1.0","method":"ota.inform","params":{"version":1.0}}"#,
            ),
            (
                ALL_TOPICS[4],
                r#"{"id":"3","method":"ota.progress","params":{"step":"10","desc":"d"}}"#,
            ),
            (
                ALL_TOPICS[7],
                r#"{"id":"62575","code":200,"data":"","message":"accepted"}"#,
            ),
        ];
        let mut rng = Prng(42);
        let mut accepted = 0;
        for _ in 0..300 {
            for (topic, seed) in seeds {
                let mut p = seed.as_bytes().to_vec();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(p.len());
                    match rng.below(3) {
                        0 => p[i] = rng.next() as u8,
                        1 => {
                            p.remove(i);
                        }
                        _ => p.insert(i, b"{}[]\":,0-.e\\"[rng.below(12)]),
                    }
                }
                if decode_uplink(topic, &p).is_ok() {
                    accepted += 1;
                }
            }
        }
        // Both paths are exercised: mutations inside a value's text stay valid (175 of 1500
        // with this seed), the rest are refused.
        assert!((1..750).contains(&accepted), "{accepted}");
    }

    // SPEC V4
    #[test]
    fn ids_of_the_wrong_shape_are_refused() {
        for topic in ALL_TOPICS {
            for id in [
                "1.5",
                "true",
                "[1]",
                "{\"a\":1}",
                "18446744073709551615",
                "1e3",
            ] {
                let p =
                    format!(r#"{{"id":{id},"code":200,"params":{{"version":"1","step":"1"}}}}"#);
                let e = decode_uplink(topic, p.as_bytes()).unwrap_err();
                assert!(matches!(e, CodecError::BadId(_)), "{topic} {id}: {e}");
            }
            let long = format!(
                r#"{{"id":"{}","code":200,"params":{{"version":"1","step":"1"}}}}"#,
                "1".repeat(129)
            );
            assert!(matches!(
                decode_uplink(topic, long.as_bytes()),
                Err(CodecError::BadId(_))
            ));
        }
    }

    // SPEC V4
    #[test]
    fn garbage_payloads_say_what_is_wrong() {
        let cases: [(&str, &str, &str); 12] = [
            (ALL_TOPICS[0], "", "not a JSON object"),
            (ALL_TOPICS[0], "[1,2]", "not a JSON object"),
            (ALL_TOPICS[0], r#"{"id":1}"#, "params.version is missing"),
            (
                ALL_TOPICS[0],
                r#"{"id":1,"params":{"version":""}}"#,
                "params.version",
            ),
            (
                ALL_TOPICS[0],
                r#"{"id":1,"params":{"version":"1 0"}}"#,
                "params.version",
            ),
            (
                ALL_TOPICS[0],
                r#"{"id":1,"params":{"version":"1","module":"a/b"}}"#,
                "params.module",
            ),
            (
                ALL_TOPICS[0],
                r#"{"id":1,"params":"x"}"#,
                "params: must be an object",
            ),
            (
                ALL_TOPICS[1],
                r#"{"id":"1","params":{"desc":"x"}}"#,
                "params.step is missing",
            ),
            (
                ALL_TOPICS[1],
                r#"{"id":"1","params":{"step":"ten"}}"#,
                "params.step: must be an integer",
            ),
            (
                ALL_TOPICS[4],
                r#"{"id":"1","params":{"step":""}}"#,
                "params.step: must be an integer",
            ),
            (
                ALL_TOPICS[4],
                r#"{"id":"1","params":{"step":"9999999999"}}"#,
                "params.step",
            ),
            (
                ALL_TOPICS[7],
                r#"{"id":"1","message":"x"}"#,
                "code is missing",
            ),
        ];
        for (topic, payload, want) in cases {
            let e = decode_uplink(topic, payload.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{topic} {payload}: {e}");
        }
        let big = vec![b' '; MAX_UPLINK_BYTES + 1];
        assert!(matches!(
            decode_uplink(ALL_TOPICS[0], &big),
            Err(CodecError::TooLarge { .. })
        ));
        let deep = "[".repeat(10_000);
        assert!(decode_uplink(ALL_TOPICS[3], deep.as_bytes()).is_err());
    }

    // SPEC V4
    #[test]
    fn decoding_knows_the_protocol_from_the_topic() {
        let msg = decode_uplink(ALL_TOPICS[3], br#"{"id":"9","params":{"version":"3"}}"#).unwrap();
        let t = parse_uplink_topic(ALL_TOPICS[3]).unwrap();
        assert_eq!(t.protocol(), Protocol::Enos);
        assert_eq!(msg.request_id, Some(RequestId::Text("9".into())));
    }

    // SPEC V1
    // SPEC V2
    #[test]
    fn downlink_captures_of_the_protocol_doc_are_reproduced() {
        use crate::domain::SignMethod;
        use serde_json::{json, Value};
        let sign = "048e8b6b4c2b2e8b7a0e2b1c3d4e5f60";
        let fw = FirmwarePush {
            module: ModuleName::default_module(),
            version: v("2.0.0"),
            url: "http://127.0.0.1:8000/fw-2.0.0.bin".into(),
            size: 262144,
            sign_method: SignMethod::Md5,
            sign: sign.into(),
            is_diff: false,
            ext_data: vec![("key1".into(), "value1".into())],
        };
        let parse = |d: &Downlink| -> Value { serde_json::from_slice(&d.payload).unwrap() };
        let text = |s: &str| RequestId::Text(s.into());

        // The request came with `"id": 1`; the capture's server sent "1", we echo the form.
        let d = alink::encode_get_reply("a1PK", "lk3", Some(&text("1")), Some(&fw)).unwrap();
        assert_eq!(d.topic, "/sys/a1PK/lk3/thing/ota/firmware/get_reply");
        assert_eq!(
            parse(&d),
            json!({"id": "1", "code": 200, "data": {"size": 262144, "version": "2.0.0",
                   "url": "http://127.0.0.1:8000/fw-2.0.0.bin", "signMethod": "Md5", "sign": sign,
                   "md5": sign, "extData": {"key1": "value1"}}, "message": "success"})
        );
        for (request, id, topic) in [
            (
                EnosTopic::Inform,
                "1",
                "/sys/pkE/en3/ota/device/inform_reply",
            ),
            (
                EnosTopic::Request,
                "2",
                "/sys/pkE/en3/ota/device/request_reply",
            ),
            (
                EnosTopic::Progress,
                "3",
                "/sys/pkE/en3/ota/device/progress_reply",
            ),
        ] {
            let d = enos::encode_ack("pkE", "en3", request, &text(id)).unwrap();
            assert_eq!(d.topic, topic);
            assert_eq!(
                parse(&d),
                json!({"id": id, "code": 200, "data": {}, "message": "success"})
            );
        }
        let d = enos::encode_push("pkE", "en3", &fw, 62575).unwrap();
        assert_eq!(d.topic, "/sys/pkE/en3/ota/device/upgrade");
        assert_eq!(
            parse(&d),
            json!({"id": "62575", "version": "1.0", "method": "ota.device.upgrade",
                   "params": {"version": "2.0.0", "sign": sign, "signMethod": "md5",
                              "fileUrl": "http://127.0.0.1:8000/fw-2.0.0.bin", "fileSize": 262144}})
        );
        // Downlinks are ours to send; a device publishing one is refused.
        for topic in [
            "/sys/a1PK/lk3/thing/ota/firmware/get_reply",
            "/ota/device/upgrade/a1PK/lk3",
            "/sys/pkE/en3/ota/device/inform_reply",
            "/sys/pkE/en3/ota/device/upgrade",
        ] {
            assert!(
                decode_uplink(topic, br#"{"id":"1","params":{}}"#).is_err(),
                "{topic}"
            );
        }
    }
}
