//! Where an SNS message may come from: SigningCertURL and SubscribeURL must be SNS in the topic's
//! own region and partition, with real region names, checked before anything is fetched; and
//! the message must be recent.

use super::{SnsError, SnsMessage};

/// A real AWS region name: two letters, one or more words, a number (`eu-west-1`,
/// `us-gov-west-1`, `cn-north-1`). Look-alikes such as `s3` or `s3-eu-west-1`, which S3's
/// virtual-host names would otherwise pass off as a region, do not match.
pub fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    let [area, words @ .., number] = parts.as_slice() else {
        return false;
    };
    area.len() == 2
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && !words.is_empty()
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// The domain SNS is served under in `region`: China's regions are in their own partition.
fn sns_domain(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// `sns.<region>.amazonaws.com`, or `.amazonaws.com.cn` for China's regions, exactly, with a
/// real region name.
pub fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let Some((region, domain)) = rest.split_once('.') else {
        return false;
    };
    is_region(region) && domain == sns_domain(region)
}

fn check_sns_url(url: &str, what: &str) -> Result<reqwest::Url, SnsError> {
    let untrusted =
        |why: &str| SnsError::UntrustedUrl(format!("{what} {url:?} is not trusted: {why}"));
    let u = reqwest::Url::parse(url).map_err(|_| untrusted("not a URL"))?;
    if u.scheme() != "https" {
        return Err(untrusted("it must be https"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(untrusted("it carries credentials"));
    }
    if u.port().is_some_and(|p| p != 443) {
        return Err(untrusted("it names a port"));
    }
    match u.host_str() {
        // An IP address never matches: only the anchored SNS host names do.
        Some(h) if is_sns_host(h) => Ok(u),
        _ => Err(untrusted("its host is not sns.<region>.amazonaws.com")),
    }
}

/// Validates SigningCertURL: https, an SNS host, a path ending `.pem`.
pub fn check_cert_url(url: &str) -> Result<reqwest::Url, SnsError> {
    let u = check_sns_url(url, "SigningCertURL")?;
    if !u.path().ends_with(".pem") || u.query().is_some() {
        return Err(SnsError::UntrustedUrl(format!(
            "SigningCertURL {url:?} is not trusted: its path must end in .pem"
        )));
    }
    Ok(u)
}

/// Validates SubscribeURL: https on an SNS host, the ConfirmSubscription action.
pub fn check_subscribe_url(url: &str) -> Result<reqwest::Url, SnsError> {
    let u = check_sns_url(url, "SubscribeURL")?;
    let action = u
        .query_pairs()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.into_owned());
    if action.as_deref() != Some("ConfirmSubscription") {
        return Err(SnsError::UntrustedUrl(format!(
            "SubscribeURL {url:?} is not trusted: it is not a ConfirmSubscription link"
        )));
    }
    Ok(u)
}

/// How old a message may be: SNS's retries of one message span at most an hour.
pub const MAX_MESSAGE_AGE_SECS: i64 = 3600 + 300;

/// Binds the message's URLs to its topic: the signing certificate and the SubscribeURL must be
/// served by SNS in the topic's own region (this also rules out look-alike names such as S3
/// bucket endpoints), the certificate must be an SNS signing certificate, and the message must
/// be recent, so a captured message cannot be replayed for ever.
pub fn check_origin(m: &SnsMessage, now: chrono::DateTime<chrono::Utc>) -> Result<(), SnsError> {
    let region = topic_region(&m.topic_arn).ok_or_else(|| {
        SnsError::Invalid(format!(
            "TopicArn {:?} is not an SNS topic ARN",
            m.topic_arn
        ))
    })?;
    let host = format!("sns.{region}.{}", sns_domain(region));
    let cert = check_cert_url(&m.signing_cert_url)?;
    if Some(host.as_str()) != cert.host_str()
        || !cert.path().starts_with("/SimpleNotificationService-")
    {
        return Err(SnsError::UntrustedUrl(format!(
            "SigningCertURL {:?} is not trusted: it must be an SNS signing certificate of the topic's region ({region})",
            m.signing_cert_url
        )));
    }
    if let Some(url) = &m.subscribe_url {
        let u = check_subscribe_url(url)?;
        if Some(host.as_str()) != u.host_str() {
            return Err(SnsError::UntrustedUrl(format!(
                "SubscribeURL {url:?} is not trusted: it must be SNS in the topic's region ({region})"
            )));
        }
    }
    let sent = chrono::DateTime::parse_from_rfc3339(&m.timestamp).map_err(|_| {
        SnsError::Invalid(format!(
            "Timestamp {:?} is not an RFC 3339 time",
            m.timestamp
        ))
    })?;
    let age = now.signed_duration_since(sent).num_seconds();
    if !(-300..=MAX_MESSAGE_AGE_SECS).contains(&age) {
        return Err(SnsError::BadSignature(format!(
            "the SNS message is {age} s old; messages older than an hour (or from the future) are refused"
        )));
    }
    Ok(())
}

/// The region of `arn:<partition>:sns:<region>:<account>:<topic>`, for the partitions SNS
/// delivers from (`aws`, `aws-cn`, `aws-us-gov`) and a real region of that partition.
pub fn topic_region(topic_arn: &str) -> Option<&str> {
    let mut parts = topic_arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("sns"), Some(region), Some(account), Some(name)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let partition_ok = match partition {
        "aws" => !region.starts_with("cn-") && !region.starts_with("us-gov-"),
        "aws-cn" => region.starts_with("cn-"),
        "aws-us-gov" => region.starts_with("us-gov-"),
        _ => false,
    };
    let name_ok = (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    (partition_ok
        && is_region(region)
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && name_ok)
        .then_some(region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_urls() {
        assert!(check_cert_url(
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"
        )
        .is_ok());
        assert!(check_cert_url("https://sns.cn-north-1.amazonaws.com.cn/x.pem").is_ok());
        for bad in [
            "http://sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com.evil.com/x.pem",
            "https://evil.com/sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com/x.pem?x=1",
            "https://sns.eu-west-1.amazonaws.com/x.txt",
            "https://sns.eu-west-1.amazonaws.com:8443/x.pem",
            "https://user:pw@sns.eu-west-1.amazonaws.com/x.pem",
            "https://sqs.eu-west-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://SNS.EU-WEST-1.amazonaws.com.attacker.io/x.pem",
            // S3 virtual hosts of a bucket named `sns`, and partitions mixed up.
            "https://sns.s3.amazonaws.com/x.pem",
            "https://sns.s3-eu-west-1.amazonaws.com/x.pem",
            "https://sns.s3-external-1.amazonaws.com/x.pem",
            "https://sns.cn-north-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com.cn/x.pem",
            "not a url",
        ] {
            assert!(check_cert_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_regions() {
        assert_eq!(
            topic_region("arn:aws:sns:eu-west-1:123456789012:alarms"),
            Some("eu-west-1")
        );
        assert_eq!(
            topic_region("arn:aws-cn:sns:cn-north-1:123456789012:t"),
            Some("cn-north-1")
        );
        assert_eq!(
            topic_region("arn:aws-us-gov:sns:us-gov-west-1:123456789012:t"),
            Some("us-gov-west-1")
        );
        for bad in [
            "arn:aws:sqs:eu-west-1:123456789012:q",
            "arn:aws:sns:s3:123456789012:alarms",
            "arn:aws:sns:s3-eu-west-1:123456789012:alarms",
            "arn:aws:sns:cn-north-1:123456789012:alarms",
            "arn:aws-cn:sns:eu-west-1:123456789012:alarms",
            "arn:evil:sns:eu-west-1:123456789012:alarms",
            "arn:aws:sns:eu-west-1:1:alarms",
            "arn:aws:sns:eu-west-1:123456789012:",
            "arn:aws:sns:eu-west-1:123456789012:a/b",
        ] {
            assert_eq!(topic_region(bad), None, "{bad}");
        }
        assert!(is_region("ap-southeast-7") && is_region("us-isob-east-1"));
        assert!(!is_region("s3") && !is_region("s3-eu-west-1") && !is_region("eu-west"));
    }
}
