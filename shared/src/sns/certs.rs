//! SNS signing certificates: the HTTPS fetch (validated URLs only), the cache (pre-seeded or
//! fetched once), and RSA signature verification (SignatureVersion 1 = SHA1withRSA, 2 =
//! SHA256withRSA).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;

use super::{check_cert_url, string_to_sign, SnsError, SnsMessage};

/// Fetches a document over HTTPS. Implemented with reqwest in production; tests inject fakes.
#[async_trait]
pub trait HttpsGet: Send + Sync {
    async fn get(&self, url: &reqwest::Url) -> Result<String, String>;
}

/// HTTPS GET with no redirects, a short timeout and a size cap. The client (and its parsed
/// trust roots) is built on first use: certificate fetches are rare, and Lambda init should not
/// pay for them.
#[derive(Default)]
pub struct ReqwestGet {
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

impl ReqwestGet {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                reqwest::Client::builder()
                    .https_only(true)
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(std::time::Duration::from_secs(5))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

#[async_trait]
impl HttpsGet for ReqwestGet {
    async fn get(&self, url: &reqwest::Url) -> Result<String, String> {
        let resp = self
            .client()?
            .get(url.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > 64 * 1024) {
            return Err(format!("{url} is too large"));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > 64 * 1024 {
            return Err(format!("{url} is too large"));
        }
        String::from_utf8(body.to_vec()).map_err(|_| format!("{url} is not text"))
    }
}

/// Signing certificates by URL: pre-seeded from disk, else fetched once (after validation) and
/// kept in memory.
pub struct CertCache {
    fetcher: Arc<dyn HttpsGet>,
    keys: RwLock<HashMap<String, RsaPublicKey>>,
}

/// The RSA public key of a PEM certificate.
pub fn public_key_of(pem: &str) -> Result<RsaPublicKey, String> {
    use x509_cert::der::{DecodePem, Encode};
    let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes())
        .map_err(|e| format!("certificate: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("certificate key: {e}"))?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| format!("certificate key is not RSA: {e}"))
}

/// The cache key of a certificate URL: `host/path`.
fn cache_key(url: &reqwest::Url) -> String {
    format!("{}{}", url.host_str().unwrap_or_default(), url.path())
}

impl CertCache {
    pub fn new(fetcher: Arc<dyn HttpsGet>) -> Self {
        CertCache {
            fetcher,
            keys: RwLock::new(HashMap::new()),
        }
    }

    /// Adds a certificate for `url` (validated like a SigningCertURL).
    pub fn seed(&self, url: &str, pem: &str) -> Result<(), String> {
        let u = check_cert_url(url).map_err(|e| e.to_string())?;
        let key = public_key_of(pem)?;
        self.keys
            .write()
            .expect("cert cache")
            .insert(cache_key(&u), key);
        Ok(())
    }

    /// Pre-seeds from `path`: a directory laid out as `<host>/<path>.pem` (a mirror of the
    /// SigningCertURLs), or a JSON file `{"<SigningCertURL>": "<PEM>"}`. Returns how many.
    pub fn seed_from(&self, path: &Path) -> Result<usize, String> {
        let mut n = 0;
        if path.is_dir() {
            let mut stack = vec![path.to_path_buf()];
            while let Some(dir) = stack.pop() {
                for entry in
                    std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?
                {
                    let p = entry.map_err(|e| e.to_string())?.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|e| e == "pem") {
                        let rel = p.strip_prefix(path).map_err(|e| e.to_string())?;
                        let url = format!("https://{}", rel.to_string_lossy().replace('\\', "/"));
                        let pem = std::fs::read_to_string(&p)
                            .map_err(|e| format!("{}: {e}", p.display()))?;
                        self.seed(&url, &pem)
                            .map_err(|e| format!("{}: {e}", p.display()))?;
                        n += 1;
                    }
                }
            }
        } else {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let map: HashMap<String, String> =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            for (url, pem) in map {
                self.seed(&url, &pem)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The key for a SigningCertURL, validating the URL before anything is fetched.
    pub async fn key(&self, url: &str) -> Result<RsaPublicKey, SnsError> {
        let u = check_cert_url(url)?;
        let k = cache_key(&u);
        if let Some(key) = self.keys.read().expect("cert cache").get(&k) {
            return Ok(key.clone());
        }
        let pem = self.fetcher.get(&u).await.map_err(|e| {
            SnsError::CertUnavailable(format!("fetching the SNS signing certificate failed: {e}"))
        })?;
        let key = public_key_of(&pem).map_err(SnsError::BadSignature)?;
        self.keys
            .write()
            .expect("cert cache")
            .insert(k, key.clone());
        Ok(key)
    }

    /// Verifies `m`'s signature.
    pub async fn verify(&self, m: &SnsMessage) -> Result<(), SnsError> {
        let key = self.key(&m.signing_cert_url).await?;
        verify_with(&key, m)
    }
}

/// Verifies `m`'s signature with `key`.
pub fn verify_with(key: &RsaPublicKey, m: &SnsMessage) -> Result<(), SnsError> {
    let bad = || SnsError::BadSignature("the SNS message signature does not verify".into());
    let sig = STANDARD.decode(m.signature.trim()).map_err(|_| bad())?;
    let sig = Signature::try_from(sig.as_slice()).map_err(|_| bad())?;
    let text = string_to_sign(m);
    let ok = match m.signature_version.as_str() {
        "1" => VerifyingKey::<sha1::Sha1>::new(key.clone())
            .verify(text.as_bytes(), &sig)
            .is_ok(),
        "2" => VerifyingKey::<sha2::Sha256>::new(key.clone())
            .verify(text.as_bytes(), &sig)
            .is_ok(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}
