//! Ref validation never panics, and an accepted name keeps git's rules.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(given) = std::str::from_utf8(data) {
        if let Ok(full) = mergequeue::shell::refname::check_given(given) {
            assert!(!given.starts_with('-'));
            assert!(full.len() <= mergequeue::shell::refname::MAX_LEN);
            assert!(!full.contains("..") && !full.contains("@{") && !full.contains("//"));
            assert!(!full.ends_with('/') && !full.ends_with('.') && !full.ends_with(".lock"));
        }
    }
});
