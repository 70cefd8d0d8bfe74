//! Signed, expiring download tokens (SPEC V3): `base64url(file id ‖ expiry ‖ HMAC-SHA256)`,
//! so a download needs no bearer key and a link cannot be forged or extended.

use super::FirmwareError;
use crate::clock::{rfc3339, Millis};
use crate::domain::PackageFileId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Separates these MACs from any other use of the same key.
const CONTEXT: &[u8] = b"ota-server download v1\0";
/// File id (8 bytes, big endian) then expiry in Unix seconds (8 bytes, big endian).
const PAYLOAD_LEN: usize = 16;
const MAC_LEN: usize = 32;
const TOKEN_LEN: usize = PAYLOAD_LEN + MAC_LEN;

/// Signs and verifies download tokens with one key.
#[derive(Clone)]
pub struct Signer {
    mac: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<key redacted>)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Result<Self, FirmwareError> {
        if key.is_empty() {
            return Err(FirmwareError::EmptyKey);
        }
        let mac = HmacSha256::new_from_slice(key).map_err(|_| FirmwareError::EmptyKey)?;
        Ok(Self { mac })
    }

    fn keyed(&self, payload: &[u8]) -> HmacSha256 {
        let mut m = self.mac.clone();
        m.update(CONTEXT);
        m.update(payload);
        m
    }

    /// A token for `file`, valid until `expires_at` (Unix seconds, exclusive).
    pub fn sign(&self, file: PackageFileId, expires_at: i64) -> String {
        let mut raw = [0u8; TOKEN_LEN];
        raw[..8].copy_from_slice(&file.0.to_be_bytes());
        raw[8..PAYLOAD_LEN].copy_from_slice(&expires_at.to_be_bytes());
        let tag = self.keyed(&raw[..PAYLOAD_LEN]).finalize().into_bytes();
        raw[PAYLOAD_LEN..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The file a token grants, if the token is genuine and not expired at `now`.
    pub fn verify(&self, token: &str, now: Millis) -> Result<PackageFileId, FirmwareError> {
        // A valid token is exactly 64 characters; refuse anything else before decoding.
        if token.len() != TOKEN_LEN.div_ceil(3) * 4 {
            return Err(FirmwareError::TokenMalformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| FirmwareError::TokenMalformed)?;
        if raw.len() != TOKEN_LEN {
            return Err(FirmwareError::TokenMalformed);
        }
        let (payload, tag) = raw.split_at(PAYLOAD_LEN);
        // `verify_slice` compares in constant time.
        self.keyed(payload)
            .verify_slice(tag)
            .map_err(|_| FirmwareError::TokenForged)?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&payload[..8]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&payload[8..]);
        let expires_at = i64::from_be_bytes(exp);
        if now.div_euclid(1000) >= expires_at {
            return Err(FirmwareError::TokenExpired {
                expired_at: rfc3339(expires_at.saturating_mul(1000)),
            });
        }
        Ok(PackageFileId(i64::from_be_bytes(id)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const NOW: Millis = 1_795_000_000_000;

    fn signer() -> Signer {
        Signer::new(b"unit-test-key").unwrap()
    }

    // SPEC V3
    #[test]
    fn tokens_round_trip_until_they_expire() {
        let s = signer();
        let exp = NOW / 1000 + 60;
        let t = s.sign(PackageFileId(42), exp);
        assert_eq!(t.len(), 64);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(s.verify(&t, NOW).unwrap(), PackageFileId(42));
        // the last valid millisecond, then expired at the expiry second itself
        assert_eq!(s.verify(&t, exp * 1000 - 1).unwrap(), PackageFileId(42));
        let e = s.verify(&t, exp * 1000).unwrap_err();
        assert!(matches!(e, FirmwareError::TokenExpired { .. }), "{e}");
        assert!(e.to_string().contains("expired"), "{e}");
    }

    // SPEC V3
    #[test]
    fn altered_or_foreign_tokens_are_forged() {
        let s = signer();
        let t = s.sign(PackageFileId(7), NOW / 1000 + 60);
        // flip every character in turn: none may still verify
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            let e = s.verify(&altered, NOW).unwrap_err();
            assert!(
                matches!(
                    e,
                    FirmwareError::TokenForged | FirmwareError::TokenMalformed
                ),
                "char {i}: {e}"
            );
        }
        // a longer expiry or another file id with the old MAC is forged
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        raw[15] ^= 1;
        let e = s.verify(&URL_SAFE_NO_PAD.encode(&raw), NOW).unwrap_err();
        assert!(matches!(e, FirmwareError::TokenForged), "{e}");
        // another key's token is forged
        let other = Signer::new(b"another-key").unwrap();
        let e = s
            .verify(&other.sign(PackageFileId(7), NOW / 1000 + 60), NOW)
            .unwrap_err();
        assert!(matches!(e, FirmwareError::TokenForged), "{e}");
        assert!(e.to_string().contains("not issued by this server"), "{e}");
    }

    // SPEC V3
    #[test]
    fn malformed_tokens_say_so() {
        let s = signer();
        for bad in ["", "abc", &"!".repeat(64), &"A".repeat(65), &"A".repeat(63)] {
            let e = s.verify(bad, NOW).unwrap_err();
            assert!(matches!(e, FirmwareError::TokenMalformed), "{bad:?}: {e}");
            assert!(e.to_string().contains("malformed"), "{e}");
        }
        assert!(matches!(
            Signer::new(b"").unwrap_err(),
            FirmwareError::EmptyKey
        ));
    }
}
