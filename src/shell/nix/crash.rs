//! Crash evidence: the signature of a builder daemon's (or client's) crash in an
//! infrastructure attempt's output, so crashes group by kind per implementation and
//! version and can be reported upstream with their last output (seed 000).

/// Signatures in the order they are looked for: the most specific first. Each is a
/// fragment of what Nix, Lix, ssh or the C++ runtime print when a process dies.
const SIGNATURES: &[(&str, &str)] = &[
    ("exception not rethrown", "exception not rethrown"),
    (
        "terminate called after throwing",
        "terminate called after throwing",
    ),
    ("Segmentation fault", "segmentation fault"),
    ("core dumped", "core dumped"),
    ("Aborted", "aborted"),
    ("unexpected end-of-file", "unexpected end-of-file"),
    ("Connection reset by peer", "connection reset"),
    ("Broken pipe", "broken pipe"),
];

/// The crash signature of an attempt's output, if it shows one: a known fragment, or
/// `signal N` for a process killed by a signal. `None`: no crash (a refused connection, a
/// timeout, an unsigned output are infrastructure failures but not crashes).
pub fn signature(output: &str) -> Option<String> {
    for (needle, name) in SIGNATURES {
        if output.contains(needle) {
            return Some((*name).to_string());
        }
    }
    signal_of(output).map(|n| format!("signal {n}"))
}

/// `… due to signal N`, `killed by signal N`, `terminated by signal N`.
fn signal_of(output: &str) -> Option<u32> {
    for marker in [
        "due to signal ",
        "killed by signal ",
        "terminated by signal ",
    ] {
        if let Some((_, rest)) = output.split_once(marker) {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_crashes_have_signatures_and_other_trouble_has_none() {
        // Captured with Nix 2.8: the remote `nix-daemon --stdio` killed mid-build.
        let killed =
            "building '/nix/store/p59yyjy1p372kck3jbbs2zn68nk3153f-grepouvo-77.1.drv'...\n\
                      error: unexpected end-of-file\n";
        assert_eq!(signature(killed).as_deref(), Some("unexpected end-of-file"));
        let rethrown = "error: unexpected end-of-file\nterminate called after throwing an instance of 'nix::Error'\n\
                        nix-daemon: exception not rethrown\n";
        assert_eq!(
            signature(rethrown).as_deref(),
            Some("exception not rethrown")
        );
        let signalled = "error: builder for '/nix/store/x-a.drv' failed due to signal 9 (Killed)\n";
        assert_eq!(signature(signalled).as_deref(), Some("signal 9"));
        for not_a_crash in [
            "ssh: connect to host 127.0.0.1 port 22222: Connection refused\n",
            "error: cannot add path '/nix/store/x-a' because it lacks a valid signature\n",
            "nix copy did not finish within 10 s (timeouts.transfer_secs); killed\n",
            "",
        ] {
            assert_eq!(signature(not_a_crash), None, "{not_a_crash}");
        }
    }
}
