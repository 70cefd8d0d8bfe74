//! Validated strings: each type can only hold a value that passed its rule, so code past the
//! API edge never re-checks. Errors name the field and say what is allowed.

use super::Invalid;
use serde::{Deserialize, Serialize};

/// Rule of a validated identifier-like string.
struct Rule {
    what: &'static str,
    min: usize,
    max: usize,
    allowed: fn(char) -> bool,
    allowed_text: &'static str,
}

impl Rule {
    fn check(&self, field: &str, v: &str) -> Result<(), Invalid> {
        let n = v.chars().count();
        if n < self.min || n > self.max {
            return Err(Invalid::new(
                field,
                format!(
                    "{} must be {} to {} characters long, got {}",
                    self.what, self.min, self.max, n
                ),
            ));
        }
        if let Some(c) = v.chars().find(|c| !(self.allowed)(*c)) {
            return Err(Invalid::new(
                field,
                format!(
                    "{} may contain only {}; found {:?}",
                    self.what, self.allowed_text, c
                ),
            ));
        }
        Ok(())
    }
}

macro_rules! validated {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        validated!($(#[$doc])* $name, $rule, redact = false);
    };
    ($(#[$doc:meta])* $name:ident, $rule:expr, redact = $redact:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if Self::REDACT {
                    write!(f, "{}(<redacted>)", stringify!($name))
                } else {
                    f.debug_tuple(stringify!($name)).field(&self.0).finish()
                }
            }
        }

        impl $name {
            const RULE: Rule = $rule;
            /// Whether `Debug` hides the value (secrets).
            const REDACT: bool = $redact;

            /// Checks `value` against the rule; `field` is named in the error.
            pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, Invalid> {
                let value = value.into();
                Self::RULE.check(field, &value)?;
                Ok(Self(value))
            }

            /// For values read back from the store, which were validated on the way in.
            pub fn from_trusted(value: String) -> Self {
                Self(value)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(stringify!($name), s).map_err(|e| serde::de::Error::custom(e.message))
            }
        }
    };
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn device_char(c: char) -> bool {
    // Alibaba DeviceName rules; `/`, `+`, `#`, `&` and `|` stay out because they break MQTT
    // topics and the SDKs' client-id and username formats.
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '@' | '.' | ':')
}

fn version_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '/' | '+' | '#' | '"' | '\\' | ',')
}

fn secret_char(c: char) -> bool {
    c.is_ascii_graphic()
}

fn text_char(c: char) -> bool {
    !c.is_control()
}

validated!(
    /// A device name (Alibaba DeviceName, EnOS deviceKey), unique within its product.
    DeviceName,
    Rule { what: "a device name", min: 1, max: 64, allowed: device_char,
           allowed_text: "letters, digits and _ - @ . :" }
);
validated!(
    /// A product key as devices carry it in their credentials and topics; globally unique.
    ProductKey,
    Rule { what: "a product key", min: 1, max: 64, allowed: ident_char,
           allowed_text: "letters, digits and _ - ." }
);
validated!(
    /// An OTA module name (`default`, `mcu`, `wifi`, ...).
    ModuleName,
    Rule { what: "a module name", min: 1, max: 64, allowed: ident_char,
           allowed_text: "letters, digits and _ - ." }
);
validated!(
    /// A firmware version as devices report it.
    Version,
    Rule { what: "a version", min: 1, max: 64, allowed: version_char,
           allowed_text: "printable ASCII except / + # \" \\ , and space" }
);
validated!(
    /// A device secret (shared key for MQTT authentication).
    DeviceSecret,
    Rule { what: "a device secret", min: 8, max: 128, allowed: secret_char,
           allowed_text: "printable ASCII without spaces" },
    redact = true
);
validated!(
    /// The name of a device attribute.
    AttributeName,
    Rule { what: "an attribute name", min: 1, max: 64, allowed: ident_char,
           allowed_text: "letters, digits and _ - ." }
);
validated!(
    /// The key of a device tag.
    TagKey,
    Rule { what: "a tag key", min: 1, max: 64, allowed: |c| ident_char(c) || c == ':',
           allowed_text: "letters, digits and _ - . :" }
);
validated!(
    /// A display name (tenant, product, group, asset tree or node, API key).
    DisplayName,
    Rule { what: "a name", min: 1, max: 128, allowed: text_char,
           allowed_text: "characters other than control characters" }
);
validated!(
    /// The file name of a package file.
    FileName,
    Rule { what: "a file name", min: 1, max: 128, allowed: |c| ident_char(c) || c == '+',
           allowed_text: "letters, digits and _ - . +" }
);

validated!(
    /// The name of a tenant's policy (W1); its versions are numbered under it.
    PolicyName,
    Rule { what: "a policy name", min: 1, max: 64, allowed: ident_char,
           allowed_text: "letters, digits and _ - ." }
);

impl ModuleName {
    pub fn default_module() -> Self {
        Self("default".to_owned())
    }
}

impl DisplayName {
    /// Display names are trimmed before the rule applies, so " a " and "a" are one name.
    pub fn parse_trimmed(field: &str, value: &str) -> Result<Self, Invalid> {
        Self::parse(field, value.trim())
    }
}

impl FileName {
    /// `.` and `..` pass the character rule but must never reach a file system path.
    pub fn parse_file(field: &str, value: impl Into<String>) -> Result<Self, Invalid> {
        let v = Self::parse(field, value)?;
        if v.0.chars().all(|c| c == '.') {
            return Err(Invalid::new(field, "a file name must not be only dots"));
        }
        Ok(v)
    }
}

/// A free-text value bounded in length (attribute and tag values, descriptions).
pub fn bounded_text(field: &str, v: &str, min: usize, max: usize) -> Result<(), Invalid> {
    let n = v.chars().count();
    if n < min || n > max {
        return Err(Invalid::new(
            field,
            format!("must be {min} to {max} characters long, got {n}"),
        ));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// How a product's devices speak MQTT (DESIGN §8).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Protocol {
    /// Alibaba Link Kit topics and signing.
    Alink,
    /// EnOS device SDK topics and signing.
    Enos,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// Full image or delta against one source version (SPEC P1).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PackageKind {
    Full,
    Diff,
}

impl PackageKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// The digest a device checks its download against (SPEC P1).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SignMethod {
    Md5,
    Sha256,
}

impl SignMethod {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// Verification status of a package (SPEC P2).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PackageStatus {
    Unverified,
    Verified,
    NoNeed,
}

impl PackageStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_map_to_and_from_their_wire_words() {
        for (p, w) in [(Protocol::Alink, "alink"), (Protocol::Enos, "enos")] {
            assert_eq!((p.as_str(), Protocol::parse(w)), (w, Some(p)));
            assert_eq!(serde_json::to_value(p).unwrap(), w);
        }
        for (k, w) in [
            (PackageStatus::NoNeed, "no_need"),
            (PackageStatus::Verified, "verified"),
            (PackageStatus::Unverified, "unverified"),
        ] {
            assert_eq!((k.as_str(), PackageStatus::parse(w)), (w, Some(k)));
            assert_eq!(serde_json::to_value(k).unwrap(), w);
        }
        for (k, w) in [(PackageKind::Full, "full"), (PackageKind::Diff, "diff")] {
            assert_eq!((k.as_str(), PackageKind::parse(w)), (w, Some(k)));
        }
        for (k, w) in [(SignMethod::Md5, "md5"), (SignMethod::Sha256, "sha256")] {
            assert_eq!((k.as_str(), SignMethod::parse(w)), (w, Some(k)));
        }
        assert_eq!(Protocol::parse("Alink"), None);
        assert_eq!(PackageStatus::parse("noneed"), None);
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let s = DeviceSecret::parse("secret", "hunter2-secret").unwrap();
        assert_eq!(format!("{s:?}"), "DeviceSecret(<redacted>)");
        let d = crate::domain::Device {
            id: crate::domain::DeviceId(1),
            tenant_id: crate::domain::TenantId(1),
            product_id: crate::domain::ProductId(1),
            name: DeviceName::parse("name", "dev").unwrap(),
            secret: "hunter2-secret".into(),
            online: false,
            activated_at: None,
            last_seen_at: None,
            created_at: 0,
        };
        let new = crate::domain::NewDevice {
            name: DeviceName::parse("name", "dev").unwrap(),
            secret: Some(s),
        };
        let shown = format!("{d:?} {d:#?} {new:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(format!("{:?}", d.name).contains("dev"));
    }

    #[test]
    fn device_names_follow_the_alibaba_rule_and_keep_topics_safe() {
        assert!(DeviceName::parse("name", "dev-01_a@b.c:d").is_ok());
        for bad in ["", "a/b", "a+b", "a#b", "a&b", "a|b", "a b", "ü"] {
            let e = DeviceName::parse("name", bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad}");
        }
        let long = "x".repeat(65);
        assert!(DeviceName::parse("name", long)
            .unwrap_err()
            .message
            .contains("1 to 64"));
    }

    #[test]
    fn file_names_cannot_escape_a_directory() {
        assert!(FileName::parse_file("file", "fw-2.0.bin").is_ok());
        assert!(FileName::parse_file("file", "..").is_err());
        assert!(FileName::parse_file("file", "a/b").is_err());
    }

    #[test]
    fn display_names_are_trimmed() {
        assert_eq!(
            DisplayName::parse_trimmed("name", "  Plant A ")
                .unwrap()
                .as_str(),
            "Plant A"
        );
        assert!(DisplayName::parse_trimmed("name", "   ").is_err());
    }
}
