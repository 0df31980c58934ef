//! Console sign-in: one-time links, the session cookie, CSRF and same-origin checks.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use crate::auth::random_token;
use crate::error::StoreError;
use crate::ports::{ConsoleSession, ConsoleSessions};

/// A session unused this long is signed out.
pub const SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);
/// A session is signed out this long after sign-in however busy it is.
pub const SESSION_ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// The idle clock is moved at most this often, so browsing is not a write per page.
const TOUCH_EVERY_MS: i64 = 60_000;

/// Cookie over plain HTTP (loopback, a proxy that terminates TLS without saying so).
pub const COOKIE: &str = "cf_console";
/// Cookie over HTTPS: the `__Host-` prefix makes browsers refuse it unless Secure, path `/`, no
/// domain, so a sibling subdomain cannot plant one.
pub const SECURE_COOKIE: &str = "__Host-cf_console";

fn digest(secret: &str) -> String {
    crate::auth::to_hex(&Sha256::digest(secret.as_bytes()))
}

/// Records a one-time sign-in link for `tenant` and returns its URL under `base_url`.
pub async fn create_sign_in_link(
    sessions: &dyn ConsoleSessions,
    tenant: &str,
    ttl: Duration,
    base_url: &str,
) -> Result<String, StoreError> {
    if ttl.is_zero() || ttl > super::MAX_LINK_TTL {
        return Err(StoreError::Invalid(
            "a sign-in link lives from 1 second to 24 hours".into(),
        ));
    }
    crate::validate::check_tenant_id(tenant)?;
    let token = random_token(32);
    let expires = crate::now_ms() + ttl.as_millis() as i64;
    sessions
        .create_link(tenant, &digest(&token), expires)
        .await?;
    Ok(format!(
        "{}/console/signin?token={token}",
        base_url.trim_end_matches('/')
    ))
}

/// A new session for `tenant`: its cookie value (the secret) and the record.
pub async fn start(
    sessions: &dyn ConsoleSessions,
    tenant: &str,
) -> Result<(String, ConsoleSession), StoreError> {
    let secret = random_token(32);
    let now = crate::now_ms();
    let s = ConsoleSession {
        tenant_id: tenant.to_owned(),
        csrf_token: random_token(24),
        created_at_ms: now,
        last_seen_ms: now,
    };
    let expires = now + SESSION_ABSOLUTE.as_millis() as i64;
    sessions
        .create_session(&digest(&secret), &s, expires)
        .await?;
    Ok((secret, s))
}

/// Redeems a sign-in link token: the tenant, once.
pub async fn redeem(
    sessions: &dyn ConsoleSessions,
    token: &str,
) -> Result<Option<String>, StoreError> {
    if token.is_empty() || token.len() > 128 {
        return Ok(None);
    }
    sessions.redeem_link(&digest(token), crate::now_ms()).await
}

/// Whether the request came over HTTPS (directly, or per the proxy's `X-Forwarded-Proto`, which
/// API Gateway sets). Trusting the header can only make the cookie stricter.
pub fn https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that stores `secret` in the browser.
pub fn cookie(secret: &str, secure: bool) -> HeaderValue {
    let (name, flags) = if secure {
        (SECURE_COOKIE, "; Secure")
    } else {
        (COOKIE, "")
    };
    let v = format!(
        "{name}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{flags}",
        SESSION_ABSOLUTE.as_secs()
    );
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(""))
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "__Host-cf_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure",
        )
    } else {
        HeaderValue::from_static("cf_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// The session secret the browser sent, if any. Over HTTPS only the `__Host-` cookie counts: a
/// plain-named one could have been planted by a sibling subdomain or over plain HTTP, to slip a
/// victim into the attacker's session.
pub fn secret_from(headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = if https(headers) {
        &[SECURE_COOKIE]
    } else {
        &[SECURE_COOKIE, COOKIE]
    };
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            let Some((k, val)) = part.trim().split_once('=') else {
                continue;
            };
            if names.contains(&k) && !val.is_empty() && val.len() <= 128 {
                return Some(val.to_owned());
            }
        }
    }
    None
}

/// Why a request is not signed in to the tenant it names.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No session, or it ended or expired.
    SignedOut,
    /// Signed in to another tenant: answered like a page that does not exist.
    OtherTenant,
}

/// The signed-in session of this request for `tenant`, with its digest (the store's key). A
/// request the page makes on its own (live updates) is `background`: it does not move the idle
/// clock, so an unattended open tab still signs out when idle.
pub async fn current(
    sessions: &dyn ConsoleSessions,
    headers: &HeaderMap,
    tenant: Option<&str>,
) -> Result<Result<(String, ConsoleSession), Denied>, StoreError> {
    current_with(sessions, headers, tenant, false).await
}

/// [`current`], saying whether the request is the page's own background request.
pub async fn current_with(
    sessions: &dyn ConsoleSessions,
    headers: &HeaderMap,
    tenant: Option<&str>,
    background: bool,
) -> Result<Result<(String, ConsoleSession), Denied>, StoreError> {
    let Some(secret) = secret_from(headers) else {
        return Ok(Err(Denied::SignedOut));
    };
    let hash = digest(&secret);
    let Some(s) = sessions.session(&hash).await? else {
        return Ok(Err(Denied::SignedOut));
    };
    let now = crate::now_ms();
    if now - s.last_seen_ms > SESSION_IDLE.as_millis() as i64
        || now - s.created_at_ms > SESSION_ABSOLUTE.as_millis() as i64
    {
        sessions.end_session(&hash).await?;
        return Ok(Err(Denied::SignedOut));
    }
    if tenant.is_some_and(|t| t != s.tenant_id) {
        return Ok(Err(Denied::OtherTenant));
    }
    if !background && now - s.last_seen_ms > TOUCH_EVERY_MS {
        sessions.touch(&hash, now).await?;
    }
    Ok(Ok((hash, s)))
}

/// Constant-time equality of a sent CSRF token and the session's.
pub fn csrf_ok(sent: Option<&str>, session: &ConsoleSession) -> bool {
    let Some(sent) = sent else { return false };
    let (a, b) = (sent.as_bytes(), session.csrf_token.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a state-changing request comes from this site: browsers send `Sec-Fetch-Site` and
/// `Origin` on such requests, and a cross-site one is refused even before the CSRF token is
/// looked at (it also stops another site signing a browser in to the attacker's tenant). The
/// origin may be this request's `Host`, or `public_url` when a proxy in front rewrites `Host`.
pub fn same_origin(headers: &HeaderMap, public_url: Option<&str>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
            let public = public_url
                .and_then(|u| reqwest::Url::parse(u).ok())
                .map(|u| u.origin().ascii_serialization());
            (!host.is_empty() && origin_host.eq_ignore_ascii_case(host))
                || public.is_some_and(|p| p.eq_ignore_ascii_case(origin))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookie_is_read_back_and_flagged() {
        let c = cookie("abc", true);
        let c = c.to_str().unwrap();
        assert!(c.starts_with("__Host-cf_console=abc;"));
        for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(c.contains(flag), "{c}");
        }
        assert!(!cookie("abc", false).to_str().unwrap().contains("Secure"));
        let h = headers(&[("cookie", "a=b; cf_console=s3cret; c=d")]);
        assert_eq!(secret_from(&h).as_deref(), Some("s3cret"));
        // Over HTTPS a plain-named (plantable) cookie is not a session.
        let planted = [
            ("cookie", "cf_console=planted; __Host-cf_console=real"),
            ("x-forwarded-proto", "https"),
        ];
        assert_eq!(secret_from(&headers(&planted)).as_deref(), Some("real"));
        let only_planted = [
            ("cookie", "cf_console=planted"),
            ("x-forwarded-proto", "https"),
        ];
        assert_eq!(secret_from(&headers(&only_planted)), None);
        assert_eq!(secret_from(&headers(&[("cookie", "cf_console=")])), None);
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let host = ("host", "127.0.0.1:8080");
        let so = |h: &[(&'static str, &str)]| same_origin(&headers(h), None);
        assert!(so(&[host]));
        assert!(so(&[host, ("origin", "http://127.0.0.1:8080")]));
        assert!(!so(&[host, ("origin", "https://evil.example")]));
        assert!(!so(&[host, ("sec-fetch-site", "cross-site")]));
        assert!(!so(&[host, ("sec-fetch-site", "same-site")]));
        assert!(!so(&[("origin", "http://127.0.0.1:8080")]));
        // Behind a proxy that rewrites Host, the public URL's origin is this site.
        let proxied = [
            ("host", "10.0.0.5:8080"),
            ("origin", "https://alerts.example.com"),
        ];
        assert!(same_origin(
            &headers(&proxied),
            Some("https://alerts.example.com/")
        ));
        assert!(!same_origin(
            &headers(&proxied),
            Some("https://other.example.com")
        ));
        assert!(!same_origin(&headers(&proxied), None));
    }

    #[test]
    fn csrf_compares_whole_tokens() {
        let s = ConsoleSession {
            tenant_id: "t".into(),
            csrf_token: "abcdef".into(),
            created_at_ms: 0,
            last_seen_ms: 0,
        };
        assert!(csrf_ok(Some("abcdef"), &s));
        assert!(!csrf_ok(Some("abcdeg"), &s));
        assert!(!csrf_ok(Some("abcde"), &s));
        assert!(!csrf_ok(None, &s));
    }
}
