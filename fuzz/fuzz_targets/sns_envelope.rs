//! Any bytes as an SNS delivery: envelope detection, parsing, the type header check and the
//! canonical string never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Ok(serde_json::Value::Object(root)) = serde_json::from_slice(body) else {
        return;
    };
    let header = ["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation", "x"]
        [pick as usize % 4];
    let _ = causeflow_shared::sns::is_envelope(&root);
    let _ = causeflow_shared::sns::check_type_header((pick & 0x80 != 0).then_some(header), &root);
    if let Ok(m) = causeflow_shared::sns::parse(&root) {
        let _ = causeflow_shared::sns::string_to_sign(&m);
        let _ = causeflow_shared::sns::check_cert_url(&m.signing_cert_url);
    }
});
