//! What the device protocols mean, free of wire detail: decoded uplinks for the scheduler and
//! the firmware push the scheduler hands back to be encoded.

use crate::domain::{ModuleName, SignMethod, Version};

/// One decoded message from a device, addressed by the product key and device name (EnOS:
/// device key) taken from its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMessage {
    pub product_key: String,
    pub device: String,
    pub kind: Uplink,
    /// Absent when the device sent none (or `null`); replies then carry no id.
    pub request_id: Option<RequestId>,
}

/// What a device told or asked the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uplink {
    /// The device runs `version` of `module` (SPEC V1/V2); reporting the target version is
    /// the only success signal (protocol doc, checklist #9).
    Inform {
        module: ModuleName,
        version: Version,
    },
    /// Upgrade progress: 0..100 percent, negative = a failure kind (-5 = device declined).
    Progress {
        module: Option<ModuleName>,
        step: i32,
        desc: String,
    },
    /// The device asks for its upgrade (alink `firmware/get`, EnOS `ota.request`); `None`
    /// when it named no module, which both clouds read as the `default` module.
    Pull { module: Option<ModuleName> },
    /// EnOS `getversion`: the device wants the list of firmware it may upgrade to.
    GetVersion,
    /// EnOS answer to an upgrade command; optional, since the stock samples never send it.
    UpgradeReply { code: String, message: String },
}

/// A request id exactly as the device sent it. EnOS devices match replies on the identical
/// JSON string (`"1"`, never `1`), so the form must survive the round trip.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    Text(String),
    Number(i64),
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Text(s) => f.write_str(s),
            RequestId::Number(n) => n.fmt(f),
        }
    }
}

/// One firmware image to offer a device: the push, the pull reply and the EnOS version list
/// are all built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwarePush {
    pub module: ModuleName,
    pub version: Version,
    /// Absolute download URL; Link Kit drops a push whose url is empty.
    pub url: String,
    pub size: u64,
    pub sign_method: SignMethod,
    /// Hex digest of the whole file; encoders emit it lowercase because Link Kit compares
    /// with `==` against its own lowercase digest.
    pub sign: String,
    pub is_diff: bool,
    /// Batch tags (SPEC R15); alink carries them as `extData`, EnOS has no place for them.
    pub ext_data: Vec<(String, String)>,
}
