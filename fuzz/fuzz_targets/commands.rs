//! The comment command parser: any text, no panic; a comment without an `@` yields
//! nothing (an HTML comment may split a mention, `@merge<!-- -->queue`, so the bot's name
//! itself need not appear); parsing is the same whatever the bot name's case.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mergequeue::core::commands::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let got = parse(body, "mergequeue");
    if !body.contains('@') {
        assert!(got.is_empty(), "{body:?} gave {got:?}");
    }
    assert_eq!(got, parse(body, "MergeQueue"));
});
