//! Classification of a build attempt's outcome from Nix's exit status and messages, with a
//! unit test per real captured message (Nix 2.8 on this machine, newer Nix and Lix from
//! their sources and from outputs published in their issue trackers).

use super::strip_ansi;
use crate::core::outcome::OutcomeClass;

pub(super) fn is_disk_full(line: &str) -> bool {
    line.contains("No space left on device") || line.contains("Disk quota exceeded")
}

/// Markers, in Nix's `error:` lines, of a problem with the builder rather than the package.
const INFRA_MARKERS: &[&str] = &[
    "unexpected end-of-file",
    "Connection refused",
    "Connection reset",
    "Connection timed out",
    "cannot connect to socket",
    "cannot open connection",
    "Broken pipe",
    "interrupted by the user",
    "error: writing to file",
    "Resource temporarily unavailable",
    "Cannot allocate memory",
    "out of memory",
    "Too many open files",
    "is not valid",
    "cannot build on",
    "failed to start SSH",
    "Host key verification failed",
    "Permission denied (publickey",
    "cannot build missing derivation",
];

/// A derivation whose own build the line says failed or timed out: (drv, timed_out).
fn failed_drv_in(line: &str) -> Option<(String, bool)> {
    // Nix 2.28 and later: "Cannot build 'D'. Reason: builder failed with exit code N."
    // (the two lines joined by `error_lines`).
    if let Some(rest) = line.split_once("Cannot build '").map(|x| x.1) {
        let drv = rest.split('\'').next()?;
        if rest[drv.len()..].contains("Reason: builder failed") {
            return Some((drv.to_string(), false));
        }
    }
    if let Some(rest) = line.split_once("builder for '").map(|x| x.1) {
        let drv = rest.split('\'').next()?;
        if rest[drv.len()..].starts_with("' failed") {
            return Some((drv.to_string(), false));
        }
    }
    if let Some(rest) = line.split_once("hash mismatch in fixed-output derivation '") {
        let drv = rest.1.split('\'').next()?;
        return Some((drv.to_string(), false));
    }
    if line.contains("timed out") {
        if let Some(rest) = line.split_once("building of '").map(|x| x.1) {
            let quoted = rest.split('\'').next()?;
            let drv = quoted.split('!').next()?;
            return Some((drv.to_string(), true));
        }
    }
    None
}

/// Does the line say that dependencies of `drv` failed?
fn dependencies_failed(line: &str, drv: &str) -> bool {
    // Nix 2.8 to 2.2x and Lix: "N dependencies of derivation 'D' failed to build".
    // Older Nix: "cannot build derivation 'D': N dependencies couldn't be built".
    // Nix 2.28 and later: "Cannot build 'D'. Reason: N dependency failed." (joined lines).
    (line.contains(&format!(
        "dependencies of derivation '{drv}' failed to build"
    ))) || (line.contains(&format!("cannot build derivation '{drv}'"))
        && line.contains("couldn't be built"))
        || (line.contains(&format!("Cannot build '{drv}'"))
            && (line.contains("dependency failed") || line.contains("dependencies failed")))
}

/// Nix's `error:` lines, each with the `Reason:` line that continues it (newer Nix prints
/// `error: Cannot build 'D'.` and the reason on the next line).
fn error_lines(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("error:") {
            out.push(l.clone());
        } else if l.starts_with("Reason:")
            && i > 0
            && lines[i - 1].starts_with("error:")
            && lines[i - 1].contains("Cannot build '")
        {
            let last = out.last_mut().expect("the line before was pushed");
            last.push(' ');
            last.push_str(l);
        }
    }
    out
}

/// Classifies a `nix-store --realise DRV` attempt from its exit code (`None`: killed by a
/// signal) and log. Returns the class and, for a dependency failure, the root derivation.
pub fn classify(drv: &str, exit_code: Option<i32>, log: &str) -> (OutcomeClass, Option<String>) {
    if exit_code == Some(0) {
        return (OutcomeClass::Success, None);
    }
    let lines: Vec<String> = log
        .lines()
        .map(|l| strip_ansi(l).trim().to_string())
        .collect();
    // Only Nix's own `error:` lines count, and only after its verdict on the build: the
    // package's output is the package's (a test suite checking ENOSPC handling prints
    // "No space left on device"), and a builder that Nix says failed failed. A real full
    // disk in a build is believed only after `failure_retries` builds elsewhere.
    let joined = error_lines(&lines);
    let errors: Vec<&String> = joined.iter().collect();
    // Nix sets bit 0x64 of the exit status for build failures (0x65 timeout, 0x66 hash
    // mismatch, 0x68 not deterministic).
    let nix_build_failure = matches!(exit_code, Some(c) if (100..=111).contains(&c));
    for l in &errors {
        if let Some((d, timed_out)) = failed_drv_in(l) {
            // SIGKILL from outside the build (the OOM killer, a dying daemon taking its
            // builder with it, an operator) says nothing the package can be blamed for.
            if d == drv && l.contains("due to signal 9") {
                return (OutcomeClass::Infrastructure, None);
            }
            if d == drv {
                let class = if timed_out {
                    OutcomeClass::TimedOut
                } else {
                    OutcomeClass::Failed
                };
                return (class, None);
            }
        }
    }
    // Checked after the own verdict: a builder's output may contain such words.
    if errors
        .iter()
        .any(|l| is_disk_full(l) || INFRA_MARKERS.iter().any(|m| l.contains(m)))
    {
        return (OutcomeClass::Infrastructure, None);
    }
    if errors.iter().any(|l| dependencies_failed(l, drv)) {
        let root = errors
            .iter()
            .filter_map(|l| failed_drv_in(l))
            .map(|(d, _)| d)
            .find(|d| d != drv);
        if root.is_some() || nix_build_failure {
            return (OutcomeClass::DependencyFailed, root);
        }
    }
    (OutcomeClass::Infrastructure, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::nix::build::tail_of;

    const FAIL: &str = "/nix/store/4mg02ijx993yh0smrj1cic4fb6qqa55w-fail.drv";
    const DEP: &str = "/nix/store/nvwlarcfgm8s71fxfm1iqjwpq9q3kr1d-dep.drv";

    // Recorded from Nix 2.8.0 on this machine (`nix-store --realise`).
    const LOG_FAILED: &str = "this derivation will be built:
  /nix/store/4mg02ijx993yh0smrj1cic4fb6qqa55w-fail.drv
building '/nix/store/4mg02ijx993yh0smrj1cic4fb6qqa55w-fail.drv'...
building
oops
error: builder for '/nix/store/4mg02ijx993yh0smrj1cic4fb6qqa55w-fail.drv' failed with exit code 1
";
    const LOG_DEP: &str = "these 2 derivations will be built:
  /nix/store/4mg02ijx993yh0smrj1cic4fb6qqa55w-fail.drv
  /nix/store/nvwlarcfgm8s71fxfm1iqjwpq9q3kr1d-dep.drv
building '/nix/store/4mg02ijx993yh0smrj1cic4fb6qqa55w-fail.drv'...
building
oops
error: builder for '/nix/store/4mg02ijx993yh0smrj1cic4fb6qqa55w-fail.drv' failed with exit code 1
error: 1 dependencies of derivation '/nix/store/nvwlarcfgm8s71fxfm1iqjwpq9q3kr1d-dep.drv' failed to build
";
    const LOG_TIMEOUT: &str = "this derivation will be built:
  /nix/store/wazpx1nymd84jsk73disc6gv3mcn6s2v-slow.drv
building '/nix/store/wazpx1nymd84jsk73disc6gv3mcn6s2v-slow.drv'...
error: building of '/nix/store/wazpx1nymd84jsk73disc6gv3mcn6s2v-slow.drv!*' from .drv file timed out after 2 seconds
";
    const LOG_SILENT: &str = "building '/nix/store/wazpx1nymd84jsk73disc6gv3mcn6s2v-slow.drv'...
error: building of '/nix/store/wazpx1nymd84jsk73disc6gv3mcn6s2v-slow.drv!*' from .drv file timed out after 2 seconds of silence
";
    const LOG_DEP_TIMEOUT: &str = "these 2 derivations will be built:
  /nix/store/vzhir50m0xad35sh83mk29i6wzhnwpv8-t.drv
  /nix/store/3si081v00jwabd8xh7j1vlshjix5pd8f-tdep.drv
building '/nix/store/vzhir50m0xad35sh83mk29i6wzhnwpv8-t.drv'...
error: building of '/nix/store/vzhir50m0xad35sh83mk29i6wzhnwpv8-t.drv!out' from .drv file timed out after 1 seconds
error: 1 dependencies of derivation '/nix/store/3si081v00jwabd8xh7j1vlshjix5pd8f-tdep.drv' failed to build
";
    const LOG_NO_DAEMON: &str =
        "error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket': No such file or directory\n";
    const LOG_INTERRUPTED: &str =
        "building '/nix/store/7p06ihjaiwfmcldqj5zzmpii8lpmsgzx-t5-1795268101.drv'...
error: interrupted by the user
";

    #[test]
    fn success() {
        assert_eq!(
            classify(FAIL, Some(0), "error: whatever"),
            (OutcomeClass::Success, None)
        );
    }

    #[test]
    fn own_failure() {
        assert_eq!(
            classify(FAIL, Some(100), LOG_FAILED),
            (OutcomeClass::Failed, None)
        );
    }

    #[test]
    fn dependency_failure_names_root() {
        assert_eq!(
            classify(DEP, Some(100), LOG_DEP),
            (OutcomeClass::DependencyFailed, Some(FAIL.to_string()))
        );
        // Older Nix / Lix wording.
        let old = format!(
            "error: builder for '{FAIL}' failed with exit code 1\n\
             error: cannot build derivation '{DEP}': 1 dependencies couldn't be built\n"
        );
        assert_eq!(
            classify(DEP, Some(100), &old),
            (OutcomeClass::DependencyFailed, Some(FAIL.to_string()))
        );
    }

    #[test]
    fn timeouts() {
        let slow = "/nix/store/wazpx1nymd84jsk73disc6gv3mcn6s2v-slow.drv";
        assert_eq!(
            classify(slow, Some(101), LOG_TIMEOUT),
            (OutcomeClass::TimedOut, None)
        );
        assert_eq!(
            classify(slow, Some(101), LOG_SILENT),
            (OutcomeClass::TimedOut, None)
        );
        assert_eq!(
            classify(
                "/nix/store/3si081v00jwabd8xh7j1vlshjix5pd8f-tdep.drv",
                Some(101),
                LOG_DEP_TIMEOUT
            ),
            (
                OutcomeClass::DependencyFailed,
                Some("/nix/store/vzhir50m0xad35sh83mk29i6wzhnwpv8-t.drv".to_string())
            )
        );
    }

    #[test]
    fn infrastructure() {
        assert_eq!(
            classify(FAIL, Some(1), LOG_NO_DAEMON).0,
            OutcomeClass::Infrastructure
        );
        assert_eq!(
            classify(FAIL, Some(1), LOG_INTERRUPTED).0,
            OutcomeClass::Infrastructure
        );
        assert_eq!(classify(FAIL, None, "").0, OutcomeClass::Infrastructure);
        let killed = format!("error: builder for '{FAIL}' failed due to signal 9 (Killed)\n");
        assert_eq!(
            classify(FAIL, Some(1), &killed).0,
            OutcomeClass::Infrastructure,
            "a SIGKILLed builder is never the package's failure"
        );
        let eof = format!("building '{FAIL}' on 'ssh-ng://b1'...\nerror: unexpected end-of-file\n");
        assert_eq!(
            classify(FAIL, Some(1), &eof).0,
            OutcomeClass::Infrastructure
        );
        // A remote dependency lost mid-build is not the package's fault.
        let lost = format!(
            "error: unexpected end-of-file\n\
             error: 1 dependencies of derivation '{DEP}' failed to build\n"
        );
        assert_eq!(
            classify(DEP, Some(1), &lost).0,
            OutcomeClass::Infrastructure
        );
        // Nix itself could not write: the machine's disk, not the package.
        let disk = "error: writing to file: No space left on device\n";
        assert_eq!(
            classify(FAIL, Some(1), disk).0,
            OutcomeClass::Infrastructure
        );
        // The package's own output says so, and Nix says its builder failed: a failure
        // (believed after `failure_retries` builds elsewhere), whatever the words.
        let words = format!(
            "cp: error writing 'x': No space left on device\n\
             error: Connection refused (as the test suite expects)\n\
             FAIL: test-enospc\n\
             error: builder for '{FAIL}' failed with exit code 1\n"
        );
        assert_eq!(classify(FAIL, Some(100), &words).0, OutcomeClass::Failed);
        let refused = "error: cannot open connection to remote store 'ssh-ng://b1': ssh: connect to host 127.0.0.1 port 2222: Connection refused\n";
        assert_eq!(
            classify(FAIL, Some(1), refused).0,
            OutcomeClass::Infrastructure
        );
        // Some unrelated failure mentioning neither this derivation nor a dependency.
        let other = "error: builder for '/nix/store/zzz-other.drv' failed with exit code 1\n";
        assert_eq!(
            classify(FAIL, Some(100), other).0,
            OutcomeClass::Infrastructure
        );
    }

    /// Lines a package's build may print: every marker the classifier knows, disk-full
    /// words, other derivations' verdicts, and noise.
    fn package_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let mut known: Vec<String> = INFRA_MARKERS.iter().map(|m| m.to_string()).collect();
        known.extend(
            [
                "No space left on device",
                "Disk quota exceeded",
                "error: writing to file: No space left on device",
                "error: unexpected end-of-file",
                "error: builder for '/nix/store/zzz-other.drv' failed with exit code 2",
                "error: 1 dependencies of derivation '/nix/store/zzz-x.drv' failed to build",
                "building of '/nix/store/zzz-y.drv!*' from .drv file timed out after 1 seconds",
            ]
            .map(String::from),
        );
        prop_oneof![
            proptest::sample::select(known),
            "[ -~]{0,60}",
            ("error: ", "[ -~]{0,40}").prop_map(|(a, b)| format!("{a}{b}")),
        ]
    }

    proptest::proptest! {
        /// Whatever the package printed, Nix's verdict on its builder decides: `failed`
        /// (or `timed-out`), never infrastructure because of words in the log.
        #[test]
        fn the_package_output_never_decides_the_class(
            lines in proptest::collection::vec(package_line(), 0..30),
            code in 100..=111i32,
            timed_out in proptest::bool::ANY,
        ) {
            let verdict = if timed_out {
                format!("error: building of '{FAIL}!*' from .drv file timed out after 2 seconds")
            } else {
                format!("error: builder for '{FAIL}' failed with exit code 1")
            };
            let log = format!("building '{FAIL}'...\n{}\n{verdict}\n", lines.join("\n"));
            let want = if timed_out { OutcomeClass::TimedOut } else { OutcomeClass::Failed };
            proptest::prop_assert_eq!(classify(FAIL, Some(code), &log).0, want);
        }

        /// Without Nix's verdict on it, the attempt never blames the derivation: whatever
        /// the output, it is infrastructure or a dependency's failure.
        #[test]
        fn without_a_verdict_the_derivation_is_never_failed(
            lines in proptest::collection::vec(package_line(), 0..30),
            code in proptest::option::of(0..=255i32),
        ) {
            let log = lines.join("\n");
            proptest::prop_assume!(!log.contains(FAIL));
            let class = classify(FAIL, code.filter(|c| *c != 0), &log).0;
            proptest::prop_assert!(
                matches!(class, OutcomeClass::Infrastructure | OutcomeClass::DependencyFailed),
                "{:?} from {:?}", class, log
            );
        }
    }

    /// Captured on this machine with Nix 2.8: the remote `nix-daemon --stdio` killed with
    /// SIGKILL mid-build (`nix build --store ssh-ng://…` exits 1), and a builder whose sshd
    /// is down.
    // Newer Nix (2.28 and later), as published in an issue tracker: the verdict is split
    // over two lines, `error: Cannot build 'D'.` and an indented `Reason:`.
    const NEW_FAILED: &str = "/nix/store/fa20hxbv707ghk5z5f55b5qbc5hx784q-superhtml-0.6.2.drv";
    const NEW_DEP: &str = "/nix/store/gwslc43ij17dqh0adshy5gd5g553xgfv-init.lua.drv";
    const LOG_NEW_NIX: &str = "\
error: Cannot build '/nix/store/fa20hxbv707ghk5z5f55b5qbc5hx784q-superhtml-0.6.2.drv'.
       Reason: builder failed with exit code 1.
       Output paths:
         /nix/store/4v2gkcnh9fgn2y8hwqq083s269skpv4q-superhtml-0.6.2
       Last 5 log lines:
       > Running phase: unpackPhase
       > unpacking source archive /nix/store/fqw7n8ypbdhl0d9hk3vxjrqrfh557hsh-source
       > source root is source
       > Running phase: patchPhase
       > ln: failed to create symbolic link '/p': Permission denied
       For full logs, run:
         nix log /nix/store/fa20hxbv707ghk5z5f55b5qbc5hx784q-superhtml-0.6.2.drv
error: Cannot build '/nix/store/gwslc43ij17dqh0adshy5gd5g553xgfv-init.lua.drv'.
       Reason: 1 dependency failed.
       Output paths:
         /nix/store/11lfkwrpviyfgqq97h8x0h5f68d7qf24-init.lua
";
    // Nix 2.11 to 2.2x, as published in an issue tracker (Nix 2.11.0): `;` and the log
    // tail after the verdict line. Lix keeps these wordings (its libstore sources).
    const LOG_NIX_2_11: &str = "\
building '/nix/store/l8kw9zjs1n8zb208js66bmjg2ws5yqjw-foobar.drv'...

ErrorErrorhexecuting '/nix/store/0nsb5dn203xvijyp9dzvacil0mg6n5aj-builder': Permission denied
error: builder for '/nix/store/l8kw9zjs1n8zb208js66bmjg2ws5yqjw-foobar.drv' failed with exit code 1;
       last 2 log lines:
       >
       > ErrorErrorhexecuting '/nix/store/0nsb5dn203xvijyp9dzvacil0mg6n5aj-builder': Permission denied
       For full logs, run 'nix log /nix/store/l8kw9zjs1n8zb208js66bmjg2ws5yqjw-foobar.drv'.
";

    #[test]
    fn recorded_outputs_of_newer_nix_and_lix() {
        assert_eq!(
            classify(NEW_FAILED, Some(100), LOG_NEW_NIX),
            (OutcomeClass::Failed, None)
        );
        assert_eq!(
            classify(NEW_DEP, Some(100), LOG_NEW_NIX),
            (OutcomeClass::DependencyFailed, Some(NEW_FAILED.to_string()))
        );
        let foobar = "/nix/store/l8kw9zjs1n8zb208js66bmjg2ws5yqjw-foobar.drv";
        assert_eq!(
            classify(foobar, Some(100), LOG_NIX_2_11),
            (OutcomeClass::Failed, None)
        );
        // Lix's dependency wording, from its sources (as Nix 2.8's).
        let lix = format!(
            "error: builder for '{FAIL}' failed with exit code 2;\n\
             error: 1 dependencies of derivation '{DEP}' failed to build\n"
        );
        assert_eq!(
            classify(DEP, Some(100), &lix),
            (OutcomeClass::DependencyFailed, Some(FAIL.to_string()))
        );
        // A package printing the words never decides: no verdict line of Nix's own.
        let forged = "Reason: builder failed with exit code 1.\nerror: unexpected end-of-file\n";
        assert_eq!(
            classify(NEW_FAILED, Some(1), forged),
            (OutcomeClass::Infrastructure, None)
        );
        // A newer Nix's signal 9 is the same infrastructure as Nix 2.8's.
        let killed = format!(
            "error: Cannot build '{NEW_FAILED}'.\n       Reason: builder failed due to signal 9 (Killed).\n"
        );
        assert_eq!(
            classify(NEW_FAILED, Some(100), &killed),
            (OutcomeClass::Infrastructure, None)
        );
    }

    #[test]
    fn captured_nix_2_8_builder_faults() {
        let killed =
            "building '/nix/store/p59yyjy1p372kck3jbbs2zn68nk3153f-grepouvo-77.1.drv'...\n\
                      error: unexpected end-of-file\n";
        let drv = "/nix/store/p59yyjy1p372kck3jbbs2zn68nk3153f-grepouvo-77.1.drv";
        assert_eq!(
            classify(drv, Some(1), killed),
            (OutcomeClass::Infrastructure, None)
        );
        let down = "ssh: connect to host 127.0.0.1 port 22222: Connection refused\n\
                    error: cannot open connection to remote store 'ssh-ng://b1': error: unexpected end-of-file\n";
        assert_eq!(
            classify(drv, Some(1), down),
            (OutcomeClass::Infrastructure, None)
        );
    }

    #[test]
    fn tail_is_capped() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail_of(&text, 40, 4096);
        assert_eq!(t.lines().count(), 40);
        assert!(t.starts_with("line 60"));
        assert!(t.ends_with("line 99"));
        let long = "é".repeat(5000);
        assert!(tail_of(&long, 40, 4096).len() <= 4096);
        assert_eq!(tail_of("a\nb", 40, 4096), "a\nb");
    }
}
