//! The submission body checks never panic, and whatever they accept is a ref git could be
//! given safely: a full ref, no control byte, not an option.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((git_ref, _priority)) = mergequeue::shell::api::check_submit_body(data) {
        assert!(git_ref.starts_with("refs/"), "{git_ref:?}");
        assert!(!git_ref.bytes().any(|b| b < 0x20 || b == 0x7f), "{git_ref:?}");
        assert!(!git_ref.contains(".."), "{git_ref:?}");
    }
});
