//! What mergequeue reads from Nix about derivations and builds: `nix show-derivation` JSON
//! (step infos and output paths), `nix path-info --json` NAR hashes, `nix --version` lines, build logs classified into outcomes, the log tails kept, and
//! signing keys (the cache's public key derived from its secret key file).
//! Any input: no panic, and the tail stays within its bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mergequeue::shell::builder::{parse_output_paths, parse_show_derivation, parse_version_line};
use mergequeue::shell::nix::verify::parse_nar_hashes;
use mergequeue::shell::nix::build::{classify, tail_of};
use mergequeue::shell::nix::output::{clean_message, truncate};

fuzz_target!(|data: &[u8]| {
    for (drv, info) in parse_show_derivation(data) {
        assert!(!info.features.iter().any(|f| f.contains(char::is_whitespace)), "{drv}");
    }
    let _ = parse_output_paths(data);
    let hashes = parse_nar_hashes(data);
    assert!(hashes.windows(2).all(|w| w[0] <= w[1]), "sorted by path");
    let text = String::from_utf8_lossy(data);
    let _ = parse_version_line(&text);
    let code = data.first().map(|&b| b as i32 - 128);
    let _ = classify("/nix/store/aaaa-x.drv", code, &text);
    let tail = tail_of(&text, 20, 512);
    assert!(tail.len() <= 512, "tail of {} bytes", tail.len());
    let _ = clean_message(&text);
    if let Some(public) = mergequeue::shell::cache::public_of(&text) {
        assert!(public.contains(':'), "{public}");
    }
    // At most 100 bytes and the ellipsis (3 bytes).
    assert!(truncate(&text, 100).len() <= 103);
});
