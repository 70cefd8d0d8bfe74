//! EnOS payloads: decoding the OTA uplinks and encoding the upgrade command and the replies
//! enos-mqtt-sdk-python 0.1.1 waits for (it blocks up to 30 s on each request).

use super::events::{FirmwarePush, RequestId, Uplink};
use super::topics::{enos_reply_topic, enos_upgrade_topic, EnosTopic};
use super::wire::{self, CheckedFirmware, WireRequest};
use super::{CodecError, Downlink};
use crate::domain::ModuleName;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Decodes an EnOS uplink into what it means and the id to echo.
pub fn decode(kind: EnosTopic, payload: &[u8]) -> Result<(Uplink, Option<RequestId>), CodecError> {
    if kind == EnosTopic::UpgradeReply {
        let w: WireReply = wire::parse_payload(payload)?;
        let id = wire::request_id(w.id)?;
        // `data` varies ("", {}, absent) with how the device's handler answered; unused.
        let uplink = Uplink::UpgradeReply {
            code: wire::code(w.code.as_ref(), "code")?,
            message: wire::text(w.message.as_ref(), "message")?,
        };
        return Ok((uplink, id));
    }
    let w: WireRequest = wire::parse_payload(payload)?;
    let id = wire::request_id(w.id)?;
    let params = wire::params(w.params)?;
    // EnOS has no modules; one named anyway is honoured so a multi-module app can use it.
    let uplink = match kind {
        EnosTopic::Inform => Uplink::Inform {
            module: wire::module(&params, "params.module")?
                .unwrap_or_else(ModuleName::default_module),
            version: wire::version(&params, "params.version")?,
        },
        EnosTopic::Progress => Uplink::Progress {
            module: wire::module(&params, "params.module")?,
            step: wire::step(&params, "params.step")?,
            desc: wire::text(params.get("desc"), "params.desc")?,
        },
        EnosTopic::GetVersion => Uplink::GetVersion,
        EnosTopic::Request | EnosTopic::UpgradeReply => Uplink::Pull {
            module: wire::module(&params, "params.module")?,
        },
    };
    Ok((uplink, id))
}

/// The upgrade command on `/sys/{pk}/{dk}/ota/device/upgrade`. The id is a string because
/// the SDK copies it into its `upgrade_reply`, where we match it.
pub fn encode_push(
    pk: &str,
    dk: &str,
    push: &FirmwarePush,
    id: u64,
) -> Result<Downlink, CodecError> {
    let checked = wire::check_firmware(push)?;
    let msg = WireCommand {
        id: id.to_string(),
        version: "1.0",
        method: "ota.device.upgrade",
        params: WireFirmware::from(&checked),
    };
    Ok(Downlink {
        topic: enos_upgrade_topic(pk, dk),
        payload: wire::to_bytes(&msg)?,
    })
}

/// `code 200, data {}` on `<request topic>_reply` for inform, progress and request. The id
/// must be the identical JSON value: a number where the SDK sent a string makes its decoder
/// throw and the device wait out its 30 s timeout (checklist #2).
pub fn encode_ack(
    pk: &str,
    dk: &str,
    request: EnosTopic,
    id: &RequestId,
) -> Result<Downlink, CodecError> {
    match request {
        EnosTopic::Inform | EnosTopic::Progress | EnosTopic::Request => {}
        EnosTopic::GetVersion => {
            return Err(CodecError::NoReply(
                "an EnOS getversion ack (it answers with a firmware list)",
            ))
        }
        EnosTopic::UpgradeReply => return Err(CodecError::NoReply("an EnOS upgrade_reply")),
    }
    reply(
        pk,
        dk,
        request,
        id,
        200,
        ReplyData::Empty(Empty {}),
        "success",
    )
}

/// The answer to `getversion`: every firmware the device may upgrade to, as a list the
/// device picks from; an empty list when there is none.
pub fn encode_getversion_reply(
    pk: &str,
    dk: &str,
    id: &RequestId,
    firmware: &[FirmwarePush],
) -> Result<Downlink, CodecError> {
    let checked = firmware
        .iter()
        .map(wire::check_firmware)
        .collect::<Result<Vec<_>, _>>()?;
    let list = checked.iter().map(WireFirmware::from).collect();
    reply(
        pk,
        dk,
        EnosTopic::GetVersion,
        id,
        200,
        ReplyData::List(list),
        "success",
    )
}

/// A refusal (e.g. 429 too many requests, 460 parameter error) so the device is told at once
/// instead of blocking until its timeout.
pub fn encode_error_reply(
    pk: &str,
    dk: &str,
    request: EnosTopic,
    id: &RequestId,
    code: u32,
    message: &str,
) -> Result<Downlink, CodecError> {
    if request == EnosTopic::UpgradeReply {
        return Err(CodecError::NoReply("an EnOS upgrade_reply"));
    }
    reply(
        pk,
        dk,
        request,
        id,
        code,
        ReplyData::Empty(Empty {}),
        message,
    )
}

fn reply(
    pk: &str,
    dk: &str,
    request: EnosTopic,
    id: &RequestId,
    code: u32,
    data: ReplyData<'_>,
    message: &str,
) -> Result<Downlink, CodecError> {
    let msg = WireResponse {
        id: wire::id_value(id),
        code,
        data,
        message,
    };
    Ok(Downlink {
        topic: enos_reply_topic(pk, dk, request),
        payload: wire::to_bytes(&msg)?,
    })
}

#[derive(Deserialize)]
struct WireReply {
    id: Option<Value>,
    code: Option<Value>,
    message: Option<Value>,
}

#[derive(Serialize)]
struct WireCommand<'a> {
    id: String,
    version: &'static str,
    method: &'static str,
    params: WireFirmware<'a>,
}

#[derive(Serialize)]
struct WireResponse<'a> {
    id: Value,
    code: u32,
    data: ReplyData<'a>,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ReplyData<'a> {
    Empty(Empty),
    List(Vec<WireFirmware<'a>>),
}

#[derive(Serialize)]
struct Empty {}

/// What `get_firmware_info()` exposes to the application.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireFirmware<'a> {
    version: &'a str,
    sign: &'a str,
    sign_method: &'static str,
    file_url: &'a str,
    file_size: u64,
}

impl<'a> From<&'a CheckedFirmware<'a>> for WireFirmware<'a> {
    fn from(c: &'a CheckedFirmware<'a>) -> Self {
        WireFirmware {
            version: c.push.version.as_str(),
            sign: &c.sign,
            // EnOS material spells it both ways; the device app compares, so use the plain
            // lowercase names (`md5`, `sha256`).
            sign_method: c.push.sign_method.as_str(),
            file_url: &c.push.url,
            file_size: c.push.size,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its message
mod tests {
    use super::*;
    use crate::domain::{SignMethod, Version};
    use serde_json::json;

    fn push(version: &str, method: SignMethod, sign: &str) -> FirmwarePush {
        FirmwarePush {
            module: ModuleName::default_module(),
            version: Version::parse("v", version).unwrap(),
            url: "http://127.0.0.1:8000/fw-2.0.0.bin".into(),
            size: 262144,
            sign_method: method,
            sign: sign.into(),
            is_diff: false,
            ext_data: vec![("k".into(), "v".into())],
        }
    }
    const MD5: &str = "048E8B6B4C2B2E8B7A0E2B1C3D4E5F60";
    const SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(d: &Downlink) -> Value {
        serde_json::from_slice(&d.payload).unwrap()
    }

    // SPEC V2
    #[test]
    fn upgrade_command_has_the_documented_shape() {
        let d = encode_push("pkE", "en3", &push("2.0.0", SignMethod::Md5, MD5), 62575).unwrap();
        assert_eq!(d.topic, "/sys/pkE/en3/ota/device/upgrade");
        let v = parse(&d);
        assert_eq!(
            v,
            json!({"id": "62575", "version": "1.0", "method": "ota.device.upgrade",
                   "params": {"version": "2.0.0", "sign": MD5.to_ascii_lowercase(), "signMethod": "md5",
                              "fileUrl": "http://127.0.0.1:8000/fw-2.0.0.bin", "fileSize": 262144}})
        );
        assert!(v["id"].is_string());
        let v = parse(
            &encode_push("pkE", "en3", &push("2.0.0", SignMethod::Sha256, SHA256), 1).unwrap(),
        );
        assert_eq!(v["params"]["signMethod"], json!("sha256"));
        assert_eq!(v["id"], json!("1"));
    }

    // SPEC V2
    #[test]
    fn acks_echo_the_identical_id_on_the_reply_topic() {
        for (req, topic) in [
            (EnosTopic::Inform, "/sys/pkE/en3/ota/device/inform_reply"),
            (
                EnosTopic::Progress,
                "/sys/pkE/en3/ota/device/progress_reply",
            ),
            (EnosTopic::Request, "/sys/pkE/en3/ota/device/request_reply"),
        ] {
            let d = encode_ack("pkE", "en3", req, &RequestId::Text("1".into())).unwrap();
            assert_eq!(d.topic, topic);
            let v = parse(&d);
            assert_eq!(
                v,
                json!({"id": "1", "code": 200, "data": {}, "message": "success"})
            );
            // "1" must stay a string, byte for byte.
            assert!(std::str::from_utf8(&d.payload)
                .unwrap()
                .contains(r#""id":"1""#));
            let v = parse(&encode_ack("pkE", "en3", req, &RequestId::Number(7)).unwrap());
            assert_eq!(v["id"], json!(7));
        }
        assert!(encode_ack(
            "pkE",
            "en3",
            EnosTopic::UpgradeReply,
            &RequestId::Text("1".into())
        )
        .is_err());
        assert!(encode_ack(
            "pkE",
            "en3",
            EnosTopic::GetVersion,
            &RequestId::Text("1".into())
        )
        .is_err());
    }

    // SPEC V2
    #[test]
    fn an_id_decoded_from_a_request_comes_back_identical() {
        for raw in [r#""1""#, r#""0065535""#, r#""abc-7""#, "42", "-1"] {
            let p = format!(
                r#"{{"id":{raw},"version":"1.0","method":"ota.inform","params":{{"version":"1.0.0"}}}}"#
            );
            let (_, id) = decode(EnosTopic::Inform, p.as_bytes()).unwrap();
            let d = encode_ack("pkE", "en3", EnosTopic::Inform, &id.unwrap()).unwrap();
            let text = String::from_utf8(d.payload).unwrap();
            assert!(text.starts_with(&format!(r#"{{"id":{raw},"#)), "{text}");
        }
    }

    // SPEC V2
    #[test]
    fn getversion_reply_is_a_list_of_firmware() {
        let fw = [
            push("2.0.0", SignMethod::Sha256, SHA256),
            push("2.1.0", SignMethod::Md5, MD5),
        ];
        let d = encode_getversion_reply("pkE", "en3", &RequestId::Text("3".into()), &fw).unwrap();
        assert_eq!(d.topic, "/sys/pkE/en3/ota/device/getversion_reply");
        assert_eq!(
            parse(&d),
            json!({"id": "3", "code": 200, "message": "success", "data": [
                {"version": "2.0.0", "sign": SHA256, "signMethod": "sha256",
                 "fileUrl": "http://127.0.0.1:8000/fw-2.0.0.bin", "fileSize": 262144},
                {"version": "2.1.0", "sign": MD5.to_ascii_lowercase(), "signMethod": "md5",
                 "fileUrl": "http://127.0.0.1:8000/fw-2.0.0.bin", "fileSize": 262144}]})
        );
        let empty =
            encode_getversion_reply("pkE", "en3", &RequestId::Text("4".into()), &[]).unwrap();
        assert_eq!(parse(&empty)["data"], json!([]));
        let bad = [push("2.0.0", SignMethod::Sha256, MD5)];
        assert!(encode_getversion_reply("pkE", "en3", &RequestId::Text("5".into()), &bad).is_err());
    }

    // SPEC V2
    #[test]
    fn error_replies_keep_the_envelope() {
        let d = encode_error_reply(
            "pkE",
            "en3",
            EnosTopic::Request,
            &RequestId::Text("9".into()),
            429,
            "too many requests",
        )
        .unwrap();
        assert_eq!(d.topic, "/sys/pkE/en3/ota/device/request_reply");
        assert_eq!(
            parse(&d),
            json!({"id": "9", "code": 429, "data": {}, "message": "too many requests"})
        );
        assert!(encode_error_reply(
            "pkE",
            "en3",
            EnosTopic::UpgradeReply,
            &RequestId::Text("9".into()),
            500,
            "x"
        )
        .is_err());
    }

    // SPEC V2
    #[test]
    fn upgrade_reply_code_is_an_int_or_a_string_and_data_is_ignored() {
        for (payload, code, message) in [
            (
                r#"{"id":"1","code":200,"data":"","message":"accepted"}"#,
                "200",
                "accepted",
            ),
            (r#"{"id":"1","code":"1101","data":{}}"#, "1101", ""),
            (
                r#"{"id":"1","code":"500","data":null,"message":"failed"}"#,
                "500",
                "failed",
            ),
        ] {
            let (u, id) = decode(EnosTopic::UpgradeReply, payload.as_bytes()).unwrap();
            assert_eq!(
                u,
                Uplink::UpgradeReply {
                    code: code.into(),
                    message: message.into()
                }
            );
            assert_eq!(id, Some(RequestId::Text("1".into())));
        }
        for bad in [
            r#"{"id":"1","code":""}"#,
            r#"{"id":"1","code":[200]}"#,
            r#"{"id":"1"}"#,
        ] {
            assert!(
                decode(EnosTopic::UpgradeReply, bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    // SPEC V2
    #[test]
    fn method_and_envelope_version_are_not_validated() {
        for payload in [
            r#"{"id":"2","version":"1.1","method":"ota.device.progress","params":{"step":"-2","desc":"download"}}"#,
            r#"{"id":"2","method":"whatever","params":{"step":-2,"desc":"download"}}"#,
            r#"{"id":"2","params":{"step":"-2","desc":"download"}}"#,
        ] {
            let (u, _) = decode(EnosTopic::Progress, payload.as_bytes()).unwrap();
            assert_eq!(
                u,
                Uplink::Progress {
                    module: None,
                    step: -2,
                    desc: "download".into()
                }
            );
        }
        // The SDK builder's default step is ''; it carries no progress, so it is refused.
        assert!(decode(
            EnosTopic::Progress,
            br#"{"id":"2","params":{"step":"","desc":""}}"#
        )
        .is_err());
        let (u, _) = decode(EnosTopic::Inform, br#"{"id":"1","params":{"version":2}}"#).unwrap();
        assert!(matches!(u, Uplink::Inform { version, .. } if version.as_str() == "2"));
    }
}
