//! The README's first command, run the way a user runs it (smaller set to save time).

#[test]
fn the_demo_goes_as_expected() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mergequeue"))
        .args(["demo", "--packages", "150", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Demo went as expected."), "{text}");
    assert!(
        text.contains("log tail:"),
        "a rejection quotes the log tail: {text}"
    );
}
