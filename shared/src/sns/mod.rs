//! Amazon SNS HTTP(S) delivery (docs/contract.md#authentication): the envelope and the
//! canonical string each message type signs (`envelope`), where a message may come from
//! (`origin`: SigningCertURL, SubscribeURL and TopicArn checks, before any fetch), the RSA
//! signature and the certificate cache (`certs`), and confirming a subscription (`confirm`).

mod certs;
mod confirm;
mod envelope;
mod origin;

pub use certs::{public_key_of, verify_with, CertCache, HttpsGet, ReqwestGet};
pub use confirm::SubscribeUrlConfirmer;
pub use envelope::{
    check_type_header, is_envelope, parse, string_to_sign, SnsError, SnsMessage, SnsType,
};
pub use origin::{
    check_cert_url, check_origin, check_subscribe_url, is_region, is_sns_host, topic_region,
    MAX_MESSAGE_AGE_SECS,
};
