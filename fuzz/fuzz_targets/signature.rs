//! Any signature header against any body: verification never panics, and only the right
//! signature verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize) % (data.len().max(1));
    let (header, body) = data.split_at(split);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let secret = "whsec_fuzz";
    let good = causeflow_shared::auth::sign(secret, &[body]);
    let ok = causeflow_shared::auth::verify(&[secret], &[body], header).is_ok();
    let expected = header
        .trim()
        .strip_prefix("sha256=")
        .unwrap_or(header.trim())
        .eq_ignore_ascii_case(&good);
    assert_eq!(ok, expected, "{header:?}");
    let _ = causeflow_shared::auth::check_timestamp(header, 1_700_000_000);
});
