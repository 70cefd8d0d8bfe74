//! Field readers shared by both codecs: they accept the loose JSON types real SDKs send
//! (numeric or string ids, steps and versions) and turn them into domain values, and they
//! check a firmware offer before any encoder puts it on the wire.

use super::events::{FirmwarePush, RequestId};
use super::CodecError;
use crate::domain::{limits, ModuleName, SignMethod, Version};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// OTA uplinks are a few hundred bytes; anything far larger is not one of ours, and parsing
/// it would only cost memory.
pub const MAX_UPLINK_BYTES: usize = 64 * 1024;

/// Ids are echoed back verbatim, so a device must not make us echo a huge one.
const MAX_ID_CHARS: usize = 128;

/// The envelope every request of both protocols shares; `version` and `method` are ignored on
/// purpose, since the SDKs' values do not match their own docs (checklist #8).
#[derive(Deserialize)]
pub struct WireRequest {
    pub id: Option<Value>,
    pub params: Option<Value>,
}

/// Parses the payload into a wire struct after the size check. The object check comes
/// first because a derived struct would also accept a JSON array positionally.
pub fn parse_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    if payload.len() > MAX_UPLINK_BYTES {
        return Err(CodecError::TooLarge {
            size: payload.len(),
            max: MAX_UPLINK_BYTES,
        });
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| CodecError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(CodecError::NotJson(format!(
            "expected an object, got {}",
            json_type(&value)
        )));
    }
    serde_json::from_value(value).map_err(|e| CodecError::NotJson(e.to_string()))
}

fn bad(field: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError::BadField {
        field,
        reason: reason.into(),
    }
}

/// Link Kit sends `"id": 1`, EnOS `"id": "1"`; both are kept as sent.
pub fn request_id(v: Option<Value>) -> Result<Option<RequestId>, CodecError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > MAX_ID_CHARS {
                return Err(CodecError::BadId(format!(
                    "a string id may be at most {MAX_ID_CHARS} characters"
                )));
            }
            Ok(Some(RequestId::Text(s)))
        }
        Some(Value::Number(n)) => n
            .as_i64()
            .map(|n| Some(RequestId::Number(n)))
            .ok_or_else(|| {
                CodecError::BadId(format!(
                    "a numeric id must be an integer within 64-bit signed range, got {n}"
                ))
            }),
        Some(other) => Err(CodecError::BadId(format!(
            "id must be a string or an integer, got {}",
            json_type(&other)
        ))),
    }
}

/// `params` must be an object when present; absent or `null` reads as `{}`.
pub fn params(v: Option<Value>) -> Result<serde_json::Map<String, Value>, CodecError> {
    match v {
        None | Some(Value::Null) => Ok(serde_json::Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(bad(
            "params",
            format!("must be an object, got {}", json_type(&other)),
        )),
    }
}

/// A version as a string, or as a number: EnOS's own sample reports `1.0`, which must read
/// as "1.0" (serde_json prints floats that way).
pub fn version(
    params: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Version, CodecError> {
    let text = match params.get("version") {
        None | Some(Value::Null) => return Err(CodecError::MissingField(field)),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(bad(
                field,
                format!("must be a string or a number, got {}", json_type(other)),
            ))
        }
    };
    Version::parse(field, text).map_err(|e| bad(field, e.message))
}

/// An optional module name; absent, `null` or `""` means the device named none.
pub fn module(
    params: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<ModuleName>, CodecError> {
    match params.get("module") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => ModuleName::parse(field, s.as_str())
            .map(Some)
            .map_err(|e| bad(field, e.message)),
        Some(other) => Err(bad(
            field,
            format!("must be a string, got {}", json_type(other)),
        )),
    }
}

/// A progress step: the docs and SDKs send `"10"`, some apps send `10` (or `10.0`).
pub fn step(
    params: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<i32, CodecError> {
    let from_float = |f: f64| -> Option<i32> {
        let ok = f.is_finite() && f.fract() == 0.0 && f >= i32::MIN as f64 && f <= i32::MAX as f64;
        // Checked just above: integral and in range, so the cast is exact.
        ok.then_some(f as i32)
    };
    match params.get("step") {
        None | Some(Value::Null) => Err(CodecError::MissingField(field)),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .or_else(|| n.as_f64().and_then(from_float))
            .ok_or_else(|| bad(field, format!("must be a 32-bit integer, got {n}"))),
        Some(Value::String(s)) => {
            let t = s.trim();
            t.parse::<i32>()
                .ok()
                .or_else(|| t.parse::<f64>().ok().and_then(from_float))
                .ok_or_else(|| {
                    bad(
                        field,
                        format!("must be an integer, got {:?}", shorten(s, 40)),
                    )
                })
        }
        Some(other) => Err(bad(
            field,
            format!("must be a string or a number, got {}", json_type(other)),
        )),
    }
}

/// Free text (progress `desc`, reply `message`); scalars are kept as text, and the length is
/// bounded because it ends up in task events.
pub fn text(v: Option<&Value>, field: &'static str) -> Result<String, CodecError> {
    let s = match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => {
            return Err(bad(
                field,
                format!("must be text, got {}", json_type(other)),
            ))
        }
    };
    Ok(shorten(&s, limits::MAX_DESCRIPTION_LEN))
}

/// A reply code as an int or a string: the EnOS SDK sends `200` from a handler's reply but
/// `"1101"` / `"500"` from its own error paths.
pub fn code(v: Option<&Value>, field: &'static str) -> Result<String, CodecError> {
    match v {
        None | Some(Value::Null) => Err(CodecError::MissingField(field)),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(shorten(s, 32)),
        Some(other) => Err(bad(
            field,
            format!(
                "must be an integer or a non-empty string, got {}",
                json_type(other)
            ),
        )),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shorten(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// The checked wire form of a firmware offer, shared by both encoders.
pub struct CheckedFirmware<'a> {
    pub push: &'a FirmwarePush,
    /// Lowercase hex.
    pub sign: String,
}

/// Refuses an offer a device could not use: Link Kit silently drops a push with an empty
/// url or sign, and compares the sign with `==` against a lowercase digest, so a sign of the
/// wrong length or alphabet would fail every device.
pub fn check_firmware(push: &FirmwarePush) -> Result<CheckedFirmware<'_>, CodecError> {
    let refuse =
        |field: &'static str, reason: String| CodecError::UnusableFirmware { field, reason };
    if push.url.trim().is_empty() {
        return Err(refuse("url", "must not be empty".into()));
    }
    if push.url.chars().any(char::is_control) {
        return Err(refuse("url", "must not contain control characters".into()));
    }
    let want = match push.sign_method {
        SignMethod::Md5 => 32,
        SignMethod::Sha256 => 64,
    };
    if push.sign.len() != want || !push.sign.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(
            "sign",
            format!(
                "must be {want} hex digits for {}, got {:?}",
                push.sign_method.as_str(),
                shorten(&push.sign, 80)
            ),
        ));
    }
    Ok(CheckedFirmware {
        push,
        sign: push.sign.to_ascii_lowercase(),
    })
}

/// Serialises a wire struct; our structs have string keys only, so failure means a bug.
pub fn to_bytes<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    serde_json::to_vec(v).map_err(|e| CodecError::Encoding(e.to_string()))
}

/// How the id of a reply is written: exactly as the request carried it.
pub fn id_value(id: &RequestId) -> Value {
    match id {
        RequestId::Text(s) => Value::String(s.clone()),
        RequestId::Number(n) => Value::from(*n),
    }
}
