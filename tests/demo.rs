//! The README's first command, run the way a user runs it (smaller set to save time).

/// Runs `mergequeue demo ARGS --dir TMP`; its output, once it went as expected.
fn demo(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mergequeue"))
        .arg("demo")
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Demo went as expected."), "{text}");
    text
}

#[test]
fn the_demo_goes_as_expected() {
    let text = demo(&["--packages", "150"]);
    assert!(
        text.contains("log tail:"),
        "a rejection quotes the log tail: {text}"
    );
}

/// `demo --forge`: the same script as pull requests on the local fake forge.
#[test]
fn the_forge_demo_shows_what_the_forge_shows() {
    let text = demo(&["--forge", "--packages", "120"]);
    let shown = text
        .split("What the forge shows")
        .nth(1)
        .expect("the forge's view");
    for part in [
        "commands need write access",
        "status  success  landed on master",
        "status  failure  job ",
        "comment Landed on `master`",
        "was rejected.",
        "status  error    not queued: cancelled by maintainer",
        "[merged]",
    ] {
        assert!(
            shown.contains(part),
            "the forge shows no {part:?}:\n{shown}"
        );
    }
    assert!(!shown.contains("position 0"), "{shown}");
}
