//! The Nix machines-file parser never panics, and every error names a line of the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err((line, _)) = mergequeue::shell::config::parse_machines(text) {
            assert!(line >= 1 && line <= text.lines().count().max(1), "line {line}");
        }
    }
});
