//! Credentials: API key generation and hashing, and webhook signature verification.
//!
//! API keys are stored as SHA-256 digests: they are 256-bit random values, so a fast hash is
//! enough and lets a request's key be looked up by digest. Webhook secrets must stay usable as
//! HMAC keys, so they are stored as issued. Signatures are checked with `Mac::verify_slice`,
//! which compares in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Grafana signs `"{unix seconds}:" + body` and we accept timestamps this close to now
/// (docs/contract.md#authentication).
pub const MAX_TIMESTAMP_SKEW_SECS: i64 = 300;

/// A freshly issued key. The plaintext key and secret exist only here: they are shown once.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub key_id: String,
    pub api_key: String,
    pub key_hash: String,
    pub webhook_secret: String,
}

/// `bytes` random bytes from the operating system, URL-safe base64 without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The operating system's CSPRNG; without one there is no safe key to issue.
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    URL_SAFE_NO_PAD.encode(buf)
}

/// Issues a new key id, API key and webhook secret.
pub fn issue_key() -> IssuedKey {
    let key_id = format!("key_{}", &random_token(9));
    let api_key = format!("cf_{}", random_token(32));
    IssuedKey {
        key_hash: hash_api_key(&api_key),
        key_id,
        api_key,
        webhook_secret: new_webhook_secret(),
    }
}

/// The documented development key of `events/` (tenant `demo`). For local use only: anyone can
/// read it, so never store it in a deployed stack.
pub const DEV_API_KEY: &str = "cf_dev_local_only_0000000000000000000000000000000000";
/// The webhook secret of [`DEV_API_KEY`].
pub const DEV_WEBHOOK_SECRET: &str = "whsec_dev_local_only_do_not_use_in_production";

/// The development key as an issued key.
pub fn dev_key() -> IssuedKey {
    IssuedKey {
        key_id: "key_dev_local_only".into(),
        api_key: DEV_API_KEY.into(),
        key_hash: hash_api_key(DEV_API_KEY),
        webhook_secret: DEV_WEBHOOK_SECRET.into(),
    }
}

/// A new webhook (HMAC) secret.
pub fn new_webhook_secret() -> String {
    format!("whsec_{}", random_token(32))
}

/// The digest under which an API key is stored and looked up.
pub fn hash_api_key(api_key: &str) -> String {
    to_hex(&Sha256::digest(api_key.as_bytes()))
}

/// Lower-case hex of `bytes`. The `hex` crate's encoder goes through a char iterator, about ten
/// times slower: with two digests hexed per alert it was a visible share of the load profile.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Hex HMAC-SHA256 of `parts` concatenated, keyed with `secret` (what senders put in
/// `X-Webhook-Signature`).
pub fn sign(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    to_hex(&mac.finalize().into_bytes())
}

/// Why a signature header did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature is not 64 hex digits (optionally prefixed with sha256=)")]
    Malformed,
    #[error("signature mismatch")]
    Mismatch,
}

/// Checks a hex HMAC-SHA256 `header` over `parts` against every secret in `secrets` (a key holds
/// two during rotation). Accepts upper- or lower-case hex and a `sha256=` prefix.
pub fn verify(secrets: &[&str], parts: &[&[u8]], header: &str) -> Result<(), SignatureError> {
    let header = header.trim();
    let hex_sig = header
        .strip_prefix("sha256=")
        .or_else(|| header.strip_prefix("SHA256="))
        .unwrap_or(header);
    if hex_sig.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut expected = [0u8; 32];
    hex::decode_to_slice(hex_sig, &mut expected).map_err(|_| SignatureError::Malformed)?;
    let mut ok = false;
    for secret in secrets {
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        // Every secret is tried, so timing does not tell which one matched.
        ok |= mac.verify_slice(&expected).is_ok();
    }
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Why a signature timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("the timestamp header is not a Unix time in seconds")]
    Malformed,
    #[error("the timestamp is {0} seconds away from now; at most 300 are accepted")]
    Stale(i64),
}

/// Checks a Grafana signature timestamp (Unix seconds) against `now`.
pub fn check_timestamp(value: &str, now_unix: i64) -> Result<(), TimestampError> {
    let ts: i64 = value
        .trim()
        .parse()
        .map_err(|_| TimestampError::Malformed)?;
    let skew = now_unix.saturating_sub(ts).saturating_abs();
    if skew > MAX_TIMESTAMP_SKEW_SECS {
        return Err(TimestampError::Stale(skew));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_the_hex_crates() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&all), hex::encode(&all));
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let body = br#"{"a":1}"#;
        let sig = sign("s3cret", &[body]);
        assert_eq!(verify(&["s3cret"], &[body], &sig), Ok(()));
        assert_eq!(verify(&["s3cret"], &[body], &sig.to_uppercase()), Ok(()));
        assert_eq!(
            verify(&["s3cret"], &[body], &format!("sha256={sig}")),
            Ok(())
        );
        assert_eq!(verify(&["old", "s3cret"], &[body], &sig), Ok(()));
        assert_eq!(
            verify(&["other"], &[body], &sig),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&["s3cret"], &[b"{}"], &sig),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&["s3cret"], &[body], &sig[..63]),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&["s3cret"], &[body], "zz"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(verify(&[], &[body], &sig), Err(SignatureError::Mismatch));
    }

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", &[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn timestamps() {
        assert!(check_timestamp("1000", 1200).is_ok());
        assert!(check_timestamp("1000", 1301).is_err());
        assert!(check_timestamp("1400", 1000).is_err());
        assert_eq!(check_timestamp("x", 0), Err(TimestampError::Malformed));
    }

    #[test]
    fn issued_keys_hash_to_their_stored_digest() {
        let k = issue_key();
        assert_eq!(hash_api_key(&k.api_key), k.key_hash);
        assert!(k.api_key.starts_with("cf_") && k.webhook_secret.starts_with("whsec_"));
        assert_ne!(issue_key().api_key, k.api_key);
    }
}
