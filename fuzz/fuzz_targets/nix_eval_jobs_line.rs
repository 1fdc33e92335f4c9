//! The nix-eval-jobs output parser never panics; a job it returns has a non-empty
//! attribute path and system.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        if let Some((key, _)) =
            mergequeue::shell::nix::output::parse_nix_eval_jobs_line(line, "x86_64-linux")
        {
            assert!(!key.system.is_empty());
        }
    }
});
