//! MQTT CONNECT authentication with the device-secret schemes of Alibaba (HMAC) and EnOS
//! (plain hash of the sorted fields with the secret appended), so SDK devices log in to our
//! broker unchanged. Dynamic registration (product-secret modes) is out of scope.

use crate::domain::{DeviceName, Invalid, ProductKey, Protocol};
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Why CONNECT credentials could not even be read; a wrong password is not an error here
/// but a `false` from [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("username must be \"{{deviceName}}&{{productKey}}\": {0}")]
    MalformedUsername(String),
    #[error("client id must be \"{{id}}|key=value,...|\": {0}")]
    MalformedClientId(String),
    #[error("client id names no signmethod")]
    MissingSignMethod,
    #[error("signmethod {0:?} is not one of hmacsha1, hmacsha256, hmacmd5")]
    UnsupportedSignMethod(String),
    #[error("client id gives {0} more than once")]
    DuplicateKey(String),
    #[error(
        "dynamic registration (authType={0}) is not supported; connect with the device secret"
    )]
    DynamicRegistration(String),
    #[error(transparent)]
    InvalidName(#[from] Invalid),
}

/// The `signmethod` of the client id. EnOS uses the same names for plain hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSignMethod {
    HmacSha1,
    HmacSha256,
    HmacMd5,
}

/// Who a CONNECT claims to be, and what its password was computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub product_key: ProductKey,
    /// Alibaba device name or EnOS device key.
    pub device_name: DeviceName,
    /// The whole MQTT client id; it changes on every connect (it embeds a timestamp).
    pub client_id: String,
    /// The part before the first `|`: the "clientId" both schemes sign.
    pub sign_client_id: String,
    pub sign_method: AuthSignMethod,
    /// Alibaba: 2 = TLS, 3 = TCP (advisory). EnOS: 2 = device secret.
    pub secure_mode: Option<String>,
    /// Opaque: Alibaba sends unix seconds, EnOS a float of milliseconds
    /// (`1795362344568.884`); it is signed as the exact text.
    pub timestamp: Option<String>,
}

/// Reads the identity from client id and username. Unknown `k=v` keys of the client id
/// (`ext`, `_ss`, `lan`, `_v`, `sii`, `instanceId`, ...) are ignored, as Alibaba does.
pub fn parse_identity(client_id: &str, username: &str) -> Result<Identity, AuthError> {
    let (dn, pk) = username
        .split_once('&')
        .ok_or_else(|| AuthError::MalformedUsername("no '&'".into()))?;
    let device_name = DeviceName::parse("device name in username", dn)?;
    let product_key = ProductKey::parse("product key in username", pk)?;

    let (cid, rest) = client_id
        .split_once('|')
        .ok_or_else(|| AuthError::MalformedClientId("no '|' before the key=value list".into()))?;
    if cid.is_empty() {
        return Err(AuthError::MalformedClientId(
            "the id before '|' is empty".into(),
        ));
    }
    let list = rest.strip_suffix('|').unwrap_or(rest);
    if list.contains('|') {
        return Err(AuthError::MalformedClientId(
            "more than one key=value list".into(),
        ));
    }
    let mut sign_method = None;
    let mut secure_mode = None;
    let mut timestamp = None;
    for (key, value) in list.split(',').filter_map(|kv| kv.split_once('=')) {
        let slot = match key.to_ascii_lowercase().as_str() {
            "signmethod" => &mut sign_method,
            "securemode" => &mut secure_mode,
            "timestamp" => &mut timestamp,
            "authtype" => {
                // Product-secret registration signs other content with another key;
                // refusing it by name says why, instead of a bare wrong-password.
                if matches!(
                    value.to_ascii_lowercase().as_str(),
                    "register" | "regnwl" | "connwl"
                ) {
                    return Err(AuthError::DynamicRegistration(value.to_owned()));
                }
                continue;
            }
            _ => continue,
        };
        // Two values for a signed field would leave it open which one the device meant.
        if slot.replace(value.to_owned()).is_some() {
            return Err(AuthError::DuplicateKey(key.to_owned()));
        }
    }
    let sign_method = match sign_method {
        None => return Err(AuthError::MissingSignMethod),
        Some(m) => match m.to_ascii_lowercase().as_str() {
            "hmacsha1" => AuthSignMethod::HmacSha1,
            "hmacsha256" => AuthSignMethod::HmacSha256,
            "hmacmd5" => AuthSignMethod::HmacMd5,
            _ => return Err(AuthError::UnsupportedSignMethod(m)),
        },
    };
    Ok(Identity {
        product_key,
        device_name,
        client_id: client_id.to_owned(),
        sign_client_id: cid.to_owned(),
        sign_method,
        secure_mode,
        timestamp,
    })
}

/// Whether `password` is what a device holding `secret` sends for `identity` under the
/// product's protocol. Hex is compared case-insensitively (EnOS SHA-1 is uppercase, some
/// Alibaba clients too) and in constant time.
pub fn verify(protocol: Protocol, identity: &Identity, password: &[u8], secret: &str) -> bool {
    let mode = identity.secure_mode.as_deref();
    let Ok(given) = hex::decode(password) else {
        return false;
    };
    match protocol {
        Protocol::Alink => {
            if !matches!(mode, None | Some("2") | Some("3")) {
                return false;
            }
            let content = sign_content(identity, "deviceName");
            let key = secret.as_bytes();
            match identity.sign_method {
                AuthSignMethod::HmacSha1 => hmac_matches::<Hmac<Sha1>>(key, &content, &given),
                AuthSignMethod::HmacSha256 => hmac_matches::<Hmac<Sha256>>(key, &content, &given),
                AuthSignMethod::HmacMd5 => hmac_matches::<Hmac<Md5>>(key, &content, &given),
            }
        }
        Protocol::Enos => {
            // 3 signs with the product secret (dynamic activation), 4 is message
            // integration; neither is a device-secret login.
            if mode != Some("2") {
                return false;
            }
            let mut content = sign_content(identity, "deviceKey");
            content.push_str(secret);
            let expected = match identity.sign_method {
                AuthSignMethod::HmacSha1 => Sha1::digest(content.as_bytes()).to_vec(),
                AuthSignMethod::HmacSha256 => Sha256::digest(content.as_bytes()).to_vec(),
                AuthSignMethod::HmacMd5 => Md5::digest(content.as_bytes()).to_vec(),
            };
            constant_time_eq(&expected, &given)
        }
    }
}

/// `key+value` of clientId, device name, productKey and timestamp, in alphabetical key
/// order (which is this fixed order for both schemes); no timestamp, no timestamp pair.
fn sign_content(id: &Identity, device_key: &str) -> String {
    let mut s = format!(
        "clientId{}{device_key}{}productKey{}",
        id.sign_client_id, id.device_name, id.product_key
    );
    if let Some(ts) = &id.timestamp {
        s.push_str("timestamp");
        s.push_str(ts);
    }
    s
}

fn hmac_matches<M: Mac + hmac::digest::KeyInit>(key: &[u8], content: &str, tag: &[u8]) -> bool {
    let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(content.as_bytes());
    mac.verify_slice(tag).is_ok()
}

/// Digest lengths are public, so only the contents need constant time.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its message
mod tests {
    use super::*;

    const ALI_CID: &str =
        "a1PK&dev1|securemode=3,signmethod=hmacsha1,ext=1,_ss=1,lan=Python,_v=1.2.13,timestamp=1795362339|";
    const ALI_SECRET: &str = "8pVQGm2c3kq7Tn0RYdWJ";
    /// Built by hand from the doc's rule, not by the code under test.
    const ALI_CONTENT: &str = "clientIda1PK&dev1deviceNamedev1productKeya1PKtimestamp1795362339";

    fn hmac_hex<M: Mac + hmac::digest::KeyInit>(key: &str, content: &str) -> String {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key.as_bytes()).unwrap();
        m.update(content.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    fn with_method(method: &str) -> String {
        ALI_CID.replace("hmacsha1", method)
    }

    // SPEC V1
    #[test]
    fn alibaba_link_kit_example_verifies() {
        let id = parse_identity(ALI_CID, "dev1&a1PK").unwrap();
        assert_eq!(id.product_key.as_str(), "a1PK");
        assert_eq!(id.device_name.as_str(), "dev1");
        assert_eq!(id.sign_client_id, "a1PK&dev1");
        assert_eq!(id.sign_method, AuthSignMethod::HmacSha1);
        assert_eq!(id.secure_mode.as_deref(), Some("3"));
        assert_eq!(id.timestamp.as_deref(), Some("1795362339"));

        let password = hmac_hex::<Hmac<Sha1>>(ALI_SECRET, ALI_CONTENT);
        // Same value from Python's hmac module, as a check on the test itself.
        assert_eq!(password, "0c284bc7a5b6f4f0d98cf4a8ceba1edf42a8fa45");
        assert!(verify(
            Protocol::Alink,
            &id,
            password.as_bytes(),
            ALI_SECRET
        ));
        assert!(verify(
            Protocol::Alink,
            &id,
            password.to_uppercase().as_bytes(),
            ALI_SECRET
        ));
        assert!(!verify(
            Protocol::Alink,
            &id,
            password.as_bytes(),
            "8pVQGm2c3kq7Tn0RYdWj"
        ));

        let tampered =
            parse_identity(&ALI_CID.replace("1795362339", "1795362340"), "dev1&a1PK").unwrap();
        assert!(!verify(
            Protocol::Alink,
            &tampered,
            password.as_bytes(),
            ALI_SECRET
        ));
        let other_device = parse_identity(ALI_CID, "dev2&a1PK").unwrap();
        assert!(!verify(
            Protocol::Alink,
            &other_device,
            password.as_bytes(),
            ALI_SECRET
        ));
        // The same secret under the other product's scheme does not open the door.
        assert!(!verify(
            Protocol::Enos,
            &id,
            password.as_bytes(),
            ALI_SECRET
        ));
    }

    // SPEC V1
    #[test]
    fn alibaba_all_three_sign_methods() {
        for (method, from_python) in [
            ("hmacsha1", "0c284bc7a5b6f4f0d98cf4a8ceba1edf42a8fa45"),
            (
                "hmacsha256",
                "3caeab03df936e528fac3be55859f72eafb88b22a33e37aaeb8622350a54b995",
            ),
            ("hmacmd5", "34ac0ac47cc6027edecb3f6874776f8b"),
        ] {
            let id = parse_identity(&with_method(method), "dev1&a1PK").unwrap();
            let by_hand = match method {
                "hmacsha1" => hmac_hex::<Hmac<Sha1>>(ALI_SECRET, ALI_CONTENT),
                "hmacsha256" => hmac_hex::<Hmac<Sha256>>(ALI_SECRET, ALI_CONTENT),
                _ => hmac_hex::<Hmac<Md5>>(ALI_SECRET, ALI_CONTENT),
            };
            assert_eq!(by_hand, from_python, "{method}");
            assert!(
                verify(Protocol::Alink, &id, by_hand.as_bytes(), ALI_SECRET),
                "{method}"
            );
            assert!(
                !verify(Protocol::Alink, &id, by_hand.as_bytes(), "wrong-secret"),
                "{method}"
            );
            for (other, _) in [("hmacsha1", ()), ("hmacsha256", ()), ("hmacmd5", ())] {
                if other != method {
                    let id = parse_identity(&with_method(other), "dev1&a1PK").unwrap();
                    assert!(!verify(
                        Protocol::Alink,
                        &id,
                        by_hand.as_bytes(),
                        ALI_SECRET
                    ));
                }
            }
        }
    }

    // SPEC V1
    #[test]
    fn alibaba_without_timestamp_and_other_client_id_forms() {
        let cid = "a1PK.dev1|securemode=2,signmethod=hmacsha256,instanceId=iot-x,random=abc|";
        let id = parse_identity(cid, "dev1&a1PK").unwrap();
        assert_eq!(id.timestamp, None);
        let content = "clientIda1PK.dev1deviceNamedev1productKeya1PK";
        let password = hmac_hex::<Hmac<Sha256>>(ALI_SECRET, content);
        assert_eq!(
            password,
            "d528bb52ff738dcd8a4d6888dd7d83307b8b2e7c0810e5dee01aa391629f19ef"
        );
        assert!(verify(
            Protocol::Alink,
            &id,
            password.as_bytes(),
            ALI_SECRET
        ));
        // Signed with a timestamp the client id does not carry: refused.
        let with_ts = hmac_hex::<Hmac<Sha256>>(ALI_SECRET, &format!("{content}timestamp1"));
        assert!(!verify(
            Protocol::Alink,
            &id,
            with_ts.as_bytes(),
            ALI_SECRET
        ));
        // Securemode other than the device-secret ones.
        let direct =
            parse_identity(&cid.replace("securemode=2", "securemode=-2"), "dev1&a1PK").unwrap();
        assert!(!verify(
            Protocol::Alink,
            &direct,
            password.as_bytes(),
            ALI_SECRET
        ));
    }

    const ENOS_CID: &str = "dkE|securemode=2,signmethod=hmacsha256,timestamp=1795362344568.884|";
    const ENOS_SECRET: &str = "Zk3PqR7vW2xY9mN4";
    const ENOS_CONTENT: &str = "clientIddkEdeviceKeydkEproductKeypkEtimestamp1795362344568.884";

    // SPEC V2
    #[test]
    fn enos_all_three_sign_methods_are_plain_hashes() {
        let plain = format!("{ENOS_CONTENT}{ENOS_SECRET}");
        for (method, password, by_hand) in [
            (
                "hmacsha256",
                "8aef1f21051700aa9c93f0434387c2b88094f868fd01ffab2f286568f4b60631",
                hex::encode(Sha256::digest(plain.as_bytes())),
            ),
            (
                "hmacmd5",
                "c0997e7e31ee755631626b8363d77d99",
                hex::encode(Md5::digest(plain.as_bytes())),
            ),
            (
                "hmacsha1",
                "908185D6FBFCF4369989CF8616ABC954BCB03EF2",
                hex::encode_upper(Sha1::digest(plain.as_bytes())),
            ),
        ] {
            assert_eq!(by_hand, password, "{method}");
            let id = parse_identity(&ENOS_CID.replace("hmacsha256", method), "dkE&pkE").unwrap();
            assert_eq!(id.timestamp.as_deref(), Some("1795362344568.884"));
            assert_eq!(id.sign_client_id, "dkE");
            assert!(
                verify(Protocol::Enos, &id, password.as_bytes(), ENOS_SECRET),
                "{method}"
            );
            assert!(
                verify(
                    Protocol::Enos,
                    &id,
                    password.to_ascii_lowercase().as_bytes(),
                    ENOS_SECRET
                ),
                "{method}"
            );
            assert!(
                !verify(Protocol::Enos, &id, password.as_bytes(), "Zk3PqR7vW2xY9mN5"),
                "{method}"
            );
            // Timestamps are opaque text: "…568.88" is not "…568.884".
            let ts = parse_identity(
                &ENOS_CID
                    .replace("hmacsha256", method)
                    .replace(".884", ".88"),
                "dkE&pkE",
            )
            .unwrap();
            assert!(
                !verify(Protocol::Enos, &ts, password.as_bytes(), ENOS_SECRET),
                "{method}"
            );
            // No HMAC in EnOS, and no plain hash in Alibaba.
            assert!(
                !verify(Protocol::Alink, &id, password.as_bytes(), ENOS_SECRET),
                "{method}"
            );
        }
        let id = parse_identity(ENOS_CID, "dkE&pkE").unwrap();
        let hmac = hmac_hex::<Hmac<Sha256>>(ENOS_SECRET, ENOS_CONTENT);
        assert!(!verify(Protocol::Enos, &id, hmac.as_bytes(), ENOS_SECRET));
    }

    // SPEC V2
    #[test]
    fn enos_only_the_device_secret_mode_logs_in() {
        let password = "8aef1f21051700aa9c93f0434387c2b88094f868fd01ffab2f286568f4b60631";
        for mode in ["securemode=3", "securemode=4", "securemode=", "x=1"] {
            let id = parse_identity(&ENOS_CID.replace("securemode=2", mode), "dkE&pkE").unwrap();
            assert!(
                !verify(Protocol::Enos, &id, password.as_bytes(), ENOS_SECRET),
                "{mode}"
            );
        }
    }

    // SPEC V4
    #[test]
    fn malformed_credentials_are_refused_with_a_reason() {
        let cases: [(&str, &str, &str); 12] = [
            (ALI_CID, "dev1a1PK", "username"),
            (ALI_CID, "&a1PK", "device name"),
            (ALI_CID, "dev1&", "product key"),
            (ALI_CID, "dev1&a1PK&x", "product key"),
            (ALI_CID, "dev/1&a1PK", "device name"),
            ("a1PK&dev1", "dev1&a1PK", "client id"),
            ("|signmethod=hmacsha1|", "dev1&a1PK", "empty"),
            ("x|signmethod=hmacsha1|y|", "dev1&a1PK", "more than one"),
            ("x|securemode=3,timestamp=1|", "dev1&a1PK", "no signmethod"),
            ("x|signmethod=hmacsha512|", "dev1&a1PK", "hmacsha512"),
            ("x|signmethod=hmacsha1,timestamp=1,timestamp=2|", "dev1&a1PK", "timestamp more than once"),
            ("dev1.a1PK|random=abcdefghijklmno,authType=register,securemode=2,signmethod=hmacsha256|", "dev1&a1PK", "dynamic registration"),
        ];
        for (cid, user, want) in cases {
            let e = parse_identity(cid, user).unwrap_err().to_string();
            assert!(e.contains(want), "{cid} {user}: {e}");
        }
        // A missing trailing pipe and stray items are tolerated.
        assert!(parse_identity("x|signmethod=HmacSHA1,junk,,a=b", "dev1&a1PK").is_ok());
        let id = parse_identity(ALI_CID, "dev1&a1PK").unwrap();
        for pw in [
            &b""[..],
            b"zz",
            b"0c284bc7a5b6f4f0d98cf4a8ceba1edf42a8fa4",
            b"0c284bc7a5b6f4f0d98cf4a8ceba1edf42a8fa4500",
            &[0xff, 0xfe],
        ] {
            assert!(!verify(Protocol::Alink, &id, pw, ALI_SECRET));
            assert!(!verify(Protocol::Enos, &id, pw, ALI_SECRET));
        }
    }

    // SPEC V4
    #[test]
    fn random_credentials_never_panic() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"a1&|=,.-_ signmethodhmacsha1256timestampsecuremode23";
        let mut word = |n: usize| -> String {
            (0..n)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect()
        };
        for i in 0..500 {
            let cid = word(i % 60);
            let user = word(i % 13);
            let pw = word(i % 41);
            if let Ok(id) = parse_identity(&cid, &user) {
                assert!(!verify(Protocol::Alink, &id, pw.as_bytes(), "secret-1234"));
                assert!(!verify(Protocol::Enos, &id, pw.as_bytes(), "secret-1234"));
            }
        }
    }
}
