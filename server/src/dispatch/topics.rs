//! The MQTT topic sets of both protocols: which uplink a topic is, the downlink topics to
//! publish on and to subscribe devices to, and the per-device topic ACL.

use super::CodecError;
use crate::domain::{DeviceName, ProductKey, Protocol};

/// Alibaba Link Kit uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlinkTopic {
    /// `/ota/device/inform/{pk}/{dn}`
    Inform,
    /// `/ota/device/progress/{pk}/{dn}`
    Progress,
    /// `/sys/{pk}/{dn}/thing/ota/firmware/get`
    FirmwareGet,
}

/// EnOS uplinks, all under `/sys/{pk}/{dk}/ota/device/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnosTopic {
    Inform,
    Progress,
    GetVersion,
    Request,
    UpgradeReply,
}

impl EnosTopic {
    /// The last topic segment.
    pub fn segment(self) -> &'static str {
        match self {
            EnosTopic::Inform => "inform",
            EnosTopic::Progress => "progress",
            EnosTopic::GetVersion => "getversion",
            EnosTopic::Request => "request",
            EnosTopic::UpgradeReply => "upgrade_reply",
        }
    }

    fn from_segment(s: &str) -> Option<Self> {
        Some(match s {
            "inform" => EnosTopic::Inform,
            "progress" => EnosTopic::Progress,
            "getversion" => EnosTopic::GetVersion,
            "request" => EnosTopic::Request,
            "upgrade_reply" => EnosTopic::UpgradeReply,
            _ => return None,
        })
    }

    /// Whether the device waits for `<topic>_reply`; the SDK blocks up to 30 s on these.
    pub fn expects_reply(self) -> bool {
        !matches!(self, EnosTopic::UpgradeReply)
    }
}

/// Which uplink a topic carries; the protocol is part of it so a codec can never be handed a
/// topic of the other protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Alink(AlinkTopic),
    Enos(EnosTopic),
}

impl TopicKind {
    pub fn protocol(self) -> Protocol {
        match self {
            TopicKind::Alink(_) => Protocol::Alink,
            TopicKind::Enos(_) => Protocol::Enos,
        }
    }
}

/// A parsed uplink topic, borrowing the names from the topic string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkTopic<'a> {
    pub product_key: &'a str,
    /// Device name (alink) or device key (EnOS).
    pub device: &'a str,
    pub kind: TopicKind,
}

impl UplinkTopic<'_> {
    pub fn protocol(&self) -> Protocol {
        self.kind.protocol()
    }

    /// Where the answer to this uplink goes, if the protocol has one.
    pub fn reply_topic(&self) -> Option<String> {
        match self.kind {
            TopicKind::Alink(AlinkTopic::FirmwareGet) => {
                Some(alink_get_reply_topic(self.product_key, self.device))
            }
            TopicKind::Alink(_) => None,
            TopicKind::Enos(t) if t.expects_reply() => {
                Some(enos_reply_topic(self.product_key, self.device, t))
            }
            TopicKind::Enos(_) => None,
        }
    }
}

/// Recognises a device's uplink topic. Anything else (downlink topics, extra or empty
/// segments, wildcards, names our registry could never hold) is refused, so a device cannot
/// reach another device's task through an odd topic (SPEC V4).
pub fn parse_uplink_topic(topic: &str) -> Result<UplinkTopic<'_>, CodecError> {
    let unknown = |why: &str| CodecError::UnknownTopic {
        topic: shorten(topic),
        reason: why.to_owned(),
    };
    let rest = topic
        .strip_prefix('/')
        .ok_or_else(|| unknown("an uplink topic starts with '/'"))?;
    let seg: Vec<&str> = rest.split('/').collect();
    let (pk, dn, kind) = match seg.as_slice() {
        ["ota", "device", which, pk, dn] => {
            let kind = match *which {
                "inform" => AlinkTopic::Inform,
                "progress" => AlinkTopic::Progress,
                _ => return Err(unknown("not an alink uplink (inform or progress)")),
            };
            (*pk, *dn, TopicKind::Alink(kind))
        }
        ["sys", pk, dn, "thing", "ota", "firmware", "get"] => {
            (*pk, *dn, TopicKind::Alink(AlinkTopic::FirmwareGet))
        }
        ["sys", pk, dn, "ota", "device", which] => {
            let kind = EnosTopic::from_segment(which).ok_or_else(|| {
                unknown("not an EnOS uplink (inform, progress, getversion, request, upgrade_reply)")
            })?;
            (*pk, *dn, TopicKind::Enos(kind))
        }
        _ => return Err(unknown("not an OTA uplink topic of alink or EnOS")),
    };
    ProductKey::parse("product key in topic", pk).map_err(|e| unknown(&e.to_string()))?;
    DeviceName::parse("device name in topic", dn).map_err(|e| unknown(&e.to_string()))?;
    Ok(UplinkTopic {
        product_key: pk,
        device: dn,
        kind,
    })
}

/// Alink upgrade push.
pub fn alink_upgrade_topic(pk: &str, dn: &str) -> String {
    format!("/ota/device/upgrade/{pk}/{dn}")
}

/// Alink answer to `firmware/get`.
pub fn alink_get_reply_topic(pk: &str, dn: &str) -> String {
    format!("/sys/{pk}/{dn}/thing/ota/firmware/get_reply")
}

/// EnOS upgrade command.
pub fn enos_upgrade_topic(pk: &str, dk: &str) -> String {
    format!("/sys/{pk}/{dk}/ota/device/upgrade")
}

/// EnOS answer to a request: the SDK listens on exactly `<request topic>_reply`.
pub fn enos_reply_topic(pk: &str, dk: &str, request: EnosTopic) -> String {
    format!("/sys/{pk}/{dk}/ota/device/{}_reply", request.segment())
}

/// The downlink topics to subscribe a device to when it connects. Neither SDK subscribes to
/// its push topic (protocol doc, checklist #1); EnOS subscribes to replies lazily, without
/// waiting for the SUBACK, so subscribing them up front closes that race too.
pub fn subscriptions_on_connect(protocol: Protocol, pk: &str, dn: &str) -> Vec<String> {
    match protocol {
        Protocol::Alink => vec![alink_upgrade_topic(pk, dn), alink_get_reply_topic(pk, dn)],
        Protocol::Enos => {
            let mut v = vec![enos_upgrade_topic(pk, dn)];
            v.extend(
                [
                    EnosTopic::Inform,
                    EnosTopic::Progress,
                    EnosTopic::GetVersion,
                    EnosTopic::Request,
                ]
                .map(|t| enos_reply_topic(pk, dn, t)),
            );
            v
        }
    }
}

/// The ACL: whether `topic` (a topic or a subscription filter) lies inside the device's own
/// subtrees, `/ota/device/{x}/{pk}/{dn}` or `/sys/{pk}/{dn}/...`. Product key and device name
/// must match literally, so a wildcard can never stand in for them.
pub fn topic_belongs_to(topic: &str, pk: &str, dn: &str) -> bool {
    if pk.is_empty() || dn.is_empty() {
        return false;
    }
    let Some(rest) = topic.strip_prefix('/') else {
        return false;
    };
    let seg: Vec<&str> = rest.split('/').collect();
    match seg.as_slice() {
        // `#` here would also match the parent level `/ota/device`, outside the subtree.
        ["ota", "device", which, p, d] => {
            !which.is_empty() && *which != "#" && *p == pk && *d == dn
        }
        ["sys", p, d, tail @ ..] => {
            *p == pk && *d == dn && !tail.is_empty() && tail.iter().any(|s| !s.is_empty())
        }
        _ => false,
    }
}

/// Error messages quote the topic; a device controls it, so keep it short.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its message
mod tests {
    use super::*;

    // SPEC V1
    #[test]
    fn alink_uplink_topics_parse() {
        let t = parse_uplink_topic("/ota/device/inform/a1PK/lk3").unwrap();
        assert_eq!(
            (t.product_key, t.device, t.kind),
            ("a1PK", "lk3", TopicKind::Alink(AlinkTopic::Inform))
        );
        assert_eq!(t.protocol(), Protocol::Alink);
        assert_eq!(t.reply_topic(), None);
        let t = parse_uplink_topic("/ota/device/progress/a1PK/lk3").unwrap();
        assert_eq!(t.kind, TopicKind::Alink(AlinkTopic::Progress));
        let t = parse_uplink_topic("/sys/a1PK/lk3/thing/ota/firmware/get").unwrap();
        assert_eq!(t.kind, TopicKind::Alink(AlinkTopic::FirmwareGet));
        assert_eq!(
            t.reply_topic().unwrap(),
            "/sys/a1PK/lk3/thing/ota/firmware/get_reply"
        );
    }

    // SPEC V2
    #[test]
    fn enos_uplink_topics_parse_and_reply_on_request_topic_plus_reply() {
        for (seg, kind) in [
            ("inform", EnosTopic::Inform),
            ("progress", EnosTopic::Progress),
            ("getversion", EnosTopic::GetVersion),
            ("request", EnosTopic::Request),
            ("upgrade_reply", EnosTopic::UpgradeReply),
        ] {
            let topic = format!("/sys/pkE/en3/ota/device/{seg}");
            let t = parse_uplink_topic(&topic).unwrap();
            assert_eq!(
                (t.product_key, t.device, t.kind),
                ("pkE", "en3", TopicKind::Enos(kind))
            );
            assert_eq!(t.protocol(), Protocol::Enos);
            if kind == EnosTopic::UpgradeReply {
                assert_eq!(t.reply_topic(), None);
            } else {
                assert_eq!(t.reply_topic().unwrap(), format!("{topic}_reply"));
            }
        }
    }

    // SPEC V4
    #[test]
    fn other_topics_are_refused() {
        for bad in [
            "",
            "/",
            "ota/device/inform/a1PK/lk3",
            "/ota/device/inform/a1PK/lk3/",
            "/ota/device/inform/a1PK/lk3/x",
            "/ota/device/inform/a1PK",
            "/ota/device/inform//lk3",
            "/ota/device/inform/a1PK/",
            "/ota/device/inform/+/lk3",
            "/ota/device/inform/a1PK/#",
            "/ota/device/upgrade/a1PK/lk3",
            "/ota/device/request/a1PK/lk3",
            "/OTA/device/inform/a1PK/lk3",
            "/sys/a1PK/lk3/thing/ota/firmware/get_reply",
            "/sys/a1PK/lk3/thing/ota/firmware/get/x",
            "/sys/+/lk3/thing/ota/firmware/get",
            "/sys/pkE/en3/ota/device/upgrade",
            "/sys/pkE/en3/ota/device/inform_reply",
            "/sys/pkE/en3/ota/device/Inform",
            "/sys/pkE//ota/device/inform",
            "/sys/pkE/en3/ota/device/inform/",
            "/sys/pkE/en3/ota/device/#",
            "/sys/pkE/en 3/ota/device/inform",
            "/sys/pkE/en3/ota/device",
            "/ext/session/pkE/en3/thing/activate/info",
        ] {
            let e = parse_uplink_topic(bad).unwrap_err();
            assert!(matches!(e, CodecError::UnknownTopic { .. }), "{bad}: {e}");
        }
        let long = format!("/{}", "x".repeat(10_000));
        assert!(parse_uplink_topic(&long).unwrap_err().to_string().len() < 400);
    }

    // SPEC V1
    #[test]
    fn alink_downlinks_and_connect_subscriptions() {
        assert_eq!(
            alink_upgrade_topic("a1PK", "lk3"),
            "/ota/device/upgrade/a1PK/lk3"
        );
        assert_eq!(
            subscriptions_on_connect(Protocol::Alink, "a1PK", "lk3"),
            vec![
                "/ota/device/upgrade/a1PK/lk3",
                "/sys/a1PK/lk3/thing/ota/firmware/get_reply"
            ]
        );
    }

    // SPEC V2
    #[test]
    fn enos_downlinks_and_connect_subscriptions() {
        assert_eq!(
            enos_upgrade_topic("pkE", "en3"),
            "/sys/pkE/en3/ota/device/upgrade"
        );
        assert_eq!(
            subscriptions_on_connect(Protocol::Enos, "pkE", "en3"),
            vec![
                "/sys/pkE/en3/ota/device/upgrade",
                "/sys/pkE/en3/ota/device/inform_reply",
                "/sys/pkE/en3/ota/device/progress_reply",
                "/sys/pkE/en3/ota/device/getversion_reply",
                "/sys/pkE/en3/ota/device/request_reply",
            ]
        );
    }

    // SPEC V4
    #[test]
    fn acl_keeps_a_device_in_its_own_topics() {
        for p in [Protocol::Alink, Protocol::Enos] {
            for t in subscriptions_on_connect(p, "pk1", "dev1") {
                assert!(topic_belongs_to(&t, "pk1", "dev1"), "{t}");
                assert!(!topic_belongs_to(&t, "pk1", "dev2"), "{t}");
                assert!(!topic_belongs_to(&t, "pk2", "dev1"), "{t}");
            }
        }
        for own in [
            "/ota/device/inform/pk1/dev1",
            "/ota/device/progress/pk1/dev1",
            "/ota/device/+/pk1/dev1",
            "/sys/pk1/dev1/thing/ota/firmware/get",
            "/sys/pk1/dev1/ota/device/inform",
            "/sys/pk1/dev1/#",
            "/sys/pk1/dev1/+/device/upgrade",
        ] {
            assert!(topic_belongs_to(own, "pk1", "dev1"), "{own}");
        }
        for foreign in [
            "/ota/device/inform/pk1/dev2",
            "/ota/device/inform/pk1/+",
            "/ota/device/inform/+/dev1",
            "/ota/device/#",
            "/ota/device/#/pk1/dev1",
            "/ota/device/inform/pk1/dev1/x",
            "/ota/device//pk1/dev1",
            "/sys/pk1/+/ota/device/inform",
            "/sys/+/dev1/ota/device/inform",
            "/sys/pk1/#",
            "/sys/#",
            "#",
            "/#",
            "/sys/pk1/dev1",
            "/sys/pk1/dev1/",
            "sys/pk1/dev1/ota/device/inform",
            "/ext/register",
            "/pk1/dev1/user/get",
        ] {
            assert!(!topic_belongs_to(foreign, "pk1", "dev1"), "{foreign}");
        }
        assert!(!topic_belongs_to("/sys///x", "", ""));
    }
}
