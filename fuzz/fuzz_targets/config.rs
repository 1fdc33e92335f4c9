//! The configuration parser never panics: any text is a `Config` or a `ConfigError`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mergequeue::shell::config::Config::parse(text, "fuzz.toml");
    }
});
