//! Alibaba Link Kit payloads: decoding the OTA uplinks and encoding the upgrade push and the
//! `firmware/get` reply exactly as aliyun-iot-linkkit 1.2.13 accepts them.

use super::events::{FirmwarePush, RequestId, Uplink};
use super::topics::{alink_get_reply_topic, alink_upgrade_topic, AlinkTopic};
use super::wire::{self, CheckedFirmware, WireRequest};
use super::{CodecError, Downlink};
use crate::domain::{ModuleName, SignMethod};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Decodes an alink uplink into what it means and the id to echo.
pub fn decode(kind: AlinkTopic, payload: &[u8]) -> Result<(Uplink, Option<RequestId>), CodecError> {
    let w: WireRequest = wire::parse_payload(payload)?;
    let id = wire::request_id(w.id)?;
    let params = wire::params(w.params)?;
    let uplink = match kind {
        AlinkTopic::Inform => Uplink::Inform {
            // One module per message; none named means the device's main firmware.
            module: wire::module(&params, "params.module")?
                .unwrap_or_else(ModuleName::default_module),
            version: wire::version(&params, "params.version")?,
        },
        AlinkTopic::Progress => Uplink::Progress {
            module: wire::module(&params, "params.module")?,
            step: wire::step(&params, "params.step")?,
            desc: wire::text(params.get("desc"), "params.desc")?,
        },
        AlinkTopic::FirmwareGet => Uplink::Pull {
            module: wire::module(&params, "params.module")?,
        },
    };
    Ok((uplink, id))
}

/// The upgrade push on `/ota/device/upgrade/{pk}/{dn}`. Link Kit ignores `id`, but real
/// captures carry a number, so `id` is written as one.
pub fn encode_push(
    pk: &str,
    dn: &str,
    push: &FirmwarePush,
    id: u64,
) -> Result<Downlink, CodecError> {
    let checked = wire::check_firmware(push)?;
    let msg = WirePush {
        code: "1000",
        data: WireFirmware::from(&checked),
        id,
        message: "success",
    };
    Ok(Downlink {
        topic: alink_upgrade_topic(pk, dn),
        payload: wire::to_bytes(&msg)?,
    })
}

/// The answer to `firmware/get`: the offer, or `data: {}` when there is none (Link Kit then
/// stays silent, as it does on Alibaba's cloud). The id is echoed in the form it came in.
pub fn encode_get_reply(
    pk: &str,
    dn: &str,
    request_id: Option<&RequestId>,
    firmware: Option<&FirmwarePush>,
) -> Result<Downlink, CodecError> {
    let checked = firmware.map(wire::check_firmware).transpose()?;
    let msg = WireGetReply {
        id: request_id.map(wire::id_value),
        code: 200,
        data: match &checked {
            Some(c) => ReplyData::Firmware(WireFirmware::from(c)),
            None => ReplyData::Nothing(Empty {}),
        },
        message: "success",
    };
    Ok(Downlink {
        topic: alink_get_reply_topic(pk, dn),
        payload: wire::to_bytes(&msg)?,
    })
}

#[derive(Serialize)]
struct WirePush<'a> {
    code: &'static str,
    data: WireFirmware<'a>,
    id: u64,
    message: &'static str,
}

#[derive(Serialize)]
struct WireGetReply<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    code: u16,
    data: ReplyData<'a>,
    message: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ReplyData<'a> {
    Firmware(WireFirmware<'a>),
    Nothing(Empty),
}

#[derive(Serialize)]
struct Empty {}

/// `data` of push and reply. Link Kit drops the message unless url, version, size,
/// signMethod and sign are all present and non-empty (checklist #4).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireFirmware<'a> {
    size: u64,
    version: &'a str,
    url: &'a str,
    sign_method: &'static str,
    sign: &'a str,
    /// Older firmware reads `md5` rather than `sign`; Alibaba sets it for Md5 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    md5: Option<&'a str>,
    /// Absent means `default` to the SDK.
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_diff: Option<u8>,
    ext_data: BTreeMap<&'a str, &'a str>,
}

impl<'a> From<&'a CheckedFirmware<'a>> for WireFirmware<'a> {
    fn from(c: &'a CheckedFirmware<'a>) -> Self {
        let p = c.push;
        let module = p.module.as_str();
        WireFirmware {
            size: p.size,
            version: p.version.as_str(),
            url: &p.url,
            sign_method: sign_method(p.sign_method),
            sign: &c.sign,
            md5: (p.sign_method == SignMethod::Md5).then_some(c.sign.as_str()),
            module: (module != ModuleName::default_module().as_str()).then_some(module),
            is_diff: p.is_diff.then_some(1),
            ext_data: p
                .ext_data
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        }
    }
}

/// Link Kit maps exactly these spellings to hashlib; "MD5" or "md5" crash its download
/// (checklist #5).
fn sign_method(m: SignMethod) -> &'static str {
    match m {
        SignMethod::Md5 => "Md5",
        SignMethod::Sha256 => "SHA256",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its message
mod tests {
    use super::*;
    use crate::domain::Version;
    use serde_json::json;

    fn push(module: &str, method: SignMethod, sign: &str, is_diff: bool) -> FirmwarePush {
        FirmwarePush {
            module: ModuleName::parse("m", module).unwrap(),
            version: Version::parse("v", "2.0.0").unwrap(),
            url: "http://127.0.0.1:8000/fw-2.0.0.bin".into(),
            size: 262144,
            sign_method: method,
            sign: sign.into(),
            is_diff,
            ext_data: vec![
                ("key1".into(), "value1".into()),
                ("_package_udi".into(), "{\"ota_notice\":\"x\"}".into()),
            ],
        }
    }

    const MD5_UPPER: &str = "048E8B6B4C2B2E8B7A0E2B1C3D4E5F60";
    const SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(d: &Downlink) -> Value {
        serde_json::from_slice(&d.payload).unwrap()
    }

    // SPEC V1
    #[test]
    fn push_has_exactly_the_fields_link_kit_needs() {
        let d = encode_push(
            "a1PK",
            "lk3",
            &push("default", SignMethod::Md5, MD5_UPPER, false),
            1507707025,
        )
        .unwrap();
        assert_eq!(d.topic, "/ota/device/upgrade/a1PK/lk3");
        let v = parse(&d);
        assert_eq!(v["code"], json!("1000"));
        assert_eq!(v["id"], json!(1507707025u64));
        assert!(v["id"].is_number());
        assert_eq!(v["message"], json!("success"));
        assert_eq!(v.as_object().unwrap().len(), 4);
        let data = v["data"].as_object().unwrap();
        let lower = MD5_UPPER.to_ascii_lowercase();
        assert_eq!(data["size"], json!(262144));
        assert_eq!(data["version"], json!("2.0.0"));
        assert_eq!(data["url"], json!("http://127.0.0.1:8000/fw-2.0.0.bin"));
        assert_eq!(data["signMethod"], json!("Md5"));
        assert_eq!(data["sign"], json!(lower));
        assert_eq!(data["md5"], json!(lower));
        assert_eq!(
            data["extData"],
            json!({"key1": "value1", "_package_udi": "{\"ota_notice\":\"x\"}"})
        );
        // default module is omitted, a full package has no isDiff.
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "extData",
                "md5",
                "sign",
                "signMethod",
                "size",
                "url",
                "version"
            ]
        );
    }

    // SPEC V1
    #[test]
    fn push_of_a_sha256_diff_for_a_named_module() {
        let d = encode_push(
            "a1PK",
            "lk3",
            &push("MCU", SignMethod::Sha256, SHA256, true),
            7,
        )
        .unwrap();
        let data = parse(&d)["data"].clone();
        assert_eq!(data["signMethod"], json!("SHA256"));
        assert_eq!(data["sign"], json!(SHA256));
        assert!(data.get("md5").is_none());
        assert_eq!(data["module"], json!("MCU"));
        assert_eq!(data["isDiff"], json!(1));
    }

    // SPEC V1
    #[test]
    fn get_reply_echoes_the_id_and_carries_the_same_data() {
        let p = push("default", SignMethod::Md5, MD5_UPPER, false);
        let pushed = parse(&encode_push("a1PK", "lk3", &p, 1).unwrap());
        for id in [RequestId::Number(1), RequestId::Text("123".into())] {
            let d = encode_get_reply("a1PK", "lk3", Some(&id), Some(&p)).unwrap();
            assert_eq!(d.topic, "/sys/a1PK/lk3/thing/ota/firmware/get_reply");
            let v = parse(&d);
            assert_eq!(v["id"], wire::id_value(&id));
            assert_eq!(v["code"], json!(200));
            assert_eq!(v["message"], json!("success"));
            assert_eq!(v["data"], pushed["data"]);
        }
        let v = parse(&encode_get_reply("a1PK", "lk3", Some(&RequestId::Number(2)), None).unwrap());
        assert_eq!(
            v,
            json!({"id": 2, "code": 200, "data": {}, "message": "success"})
        );
        let v = parse(&encode_get_reply("a1PK", "lk3", None, None).unwrap());
        assert_eq!(v, json!({"code": 200, "data": {}, "message": "success"}));
    }

    // SPEC V1
    #[test]
    fn an_offer_link_kit_would_drop_is_refused() {
        let mut p = push("default", SignMethod::Md5, MD5_UPPER, false);
        p.url = " ".into();
        assert!(matches!(
            encode_push("a", "b", &p, 1),
            Err(CodecError::UnusableFirmware { field: "url", .. })
        ));
        for sign in [
            "",
            "xyz",
            SHA256,
            &MD5_UPPER[1..],
            "048e8b6b4c2b2e8b7a0e2b1c3d4e5f6g",
        ] {
            let p = push("default", SignMethod::Md5, sign, false);
            assert!(
                matches!(
                    encode_get_reply("a", "b", None, Some(&p)),
                    Err(CodecError::UnusableFirmware { field: "sign", .. })
                ),
                "{sign}"
            );
        }
        let p = push("default", SignMethod::Sha256, MD5_UPPER, false);
        assert!(encode_push("a", "b", &p, 1).is_err());
    }

    // SPEC V1
    #[test]
    fn loose_types_link_kit_and_apps_send_are_accepted() {
        let (u, id) = decode(
            AlinkTopic::Progress,
            br#"{"id":5,"params":{"step":-2,"desc":"download failed"}}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            Uplink::Progress {
                module: None,
                step: -2,
                desc: "download failed".into()
            }
        );
        assert_eq!(id, Some(RequestId::Number(5)));
        let (u, _) = decode(
            AlinkTopic::Progress,
            br#"{"id":"5","params":{"step":" 50 "}}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            Uplink::Progress {
                module: None,
                step: 50,
                desc: String::new()
            }
        );
        let (u, _) = decode(
            AlinkTopic::Progress,
            br#"{"params":{"step":"-3","module":"wifi"}}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            Uplink::Progress {
                module: Some(ModuleName::parse("m", "wifi").unwrap()),
                step: -3,
                desc: String::new()
            }
        );
        let (u, id) = decode(AlinkTopic::FirmwareGet, br#"{"id":3}"#).unwrap();
        assert_eq!(
            (u, id),
            (Uplink::Pull { module: None }, Some(RequestId::Number(3)))
        );
        let (u, _) = decode(
            AlinkTopic::Inform,
            br#"{"id":1,"params":{"version":"1.0.0","module":""}}"#,
        )
        .unwrap();
        assert!(matches!(u, Uplink::Inform { module, .. } if module.as_str() == "default"));
    }
}
