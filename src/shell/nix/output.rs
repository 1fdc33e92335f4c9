//! Reading what Nix prints when it fails: infrastructure failures told apart from errors
//! of the evaluated code, Nix's messages cleaned and capped, and `nix-eval-jobs` lines.

use std::process::ExitStatus;

use super::strip_ansi;
use crate::core::evaluation::{Job, JobKey, JobResult};

/// Longest error message kept per attribute or evaluation (bytes).
pub const MAX_MESSAGE: usize = 4000;

/// The result of a step that can fail for infrastructure reasons: `Err` is such a failure
/// (the whole evaluation is abandoned, see [`classify_failure`]); `Ok` holds the step's
/// result, which may itself be an error of the evaluated code.
pub type Infra<T> = Result<T, String>;

/// Which side of the line a failed evaluator run falls on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The evaluator could not do its work; the same commit may well evaluate later or
    /// elsewhere. The evaluation is abandoned (retried by the core), never stored.
    Infrastructure,
    /// Nix reported an error of the evaluated code: the commit's own outcome, stored.
    Evaluation,
}

/// Phrases in Nix's error message (matched case-insensitively) that name a resource of the
/// machine, not a property of the code.
const INFRASTRUCTURE_MESSAGES: &[&str] = &[
    // ENOSPC / EDQUOT writing `.drv` files, the store database or temporary files.
    "no space left on device",
    "disk quota exceeded",
    // A store that cannot be written to (`--read-write-mode` writes the `.drv` files).
    "read-only file system",
    // Nix's own "error: out of memory" (Boehm GC, `std::bad_alloc`), and ENOMEM.
    "out of memory",
    "std::bad_alloc",
    "cannot allocate memory",
    // EMFILE / ENFILE; EAGAIN ("unable to fork: Resource temporarily unavailable").
    "too many open files",
    "resource temporarily unavailable",
    // SIGTERM or SIGINT (a shutdown): Nix 2.8 exits 1 with "error: interrupted by the user".
    "interrupted by the user",
    // The Nix daemon: "cannot connect to socket at '/nix/var/nix/daemon-socket/socket': ...",
    // "cannot open connection to remote store 'daemon': ...", or the connection dropped
    // ("unexpected end-of-file"; a syntax error says "unexpected end of file").
    "cannot connect to socket",
    "cannot connect to daemon",
    "cannot open connection to remote store",
    "unexpected end-of-file",
    "connection reset by peer",
    "broken pipe",
];

/// Classifies a failed run of `nix-instantiate` or `nix-eval-jobs` (non-zero exit or
/// killed) from its exit status and its stderr (colours stripped).
///
/// Infrastructure:
/// - killed by a signal: the kernel's OOM killer (SIGKILL), a crash of the evaluator itself,
///   a shutdown. Nix reports errors of the evaluated code itself and exits with a status;
/// - no `error:` line at all: nothing to blame the code for;
/// - an error whose message names the machine (see [`INFRASTRUCTURE_MESSAGES`]).
///
/// Everything else (syntax errors, `throw`, `abort`, `assert`, type errors, infinite recursion,
/// a missing file the jobset imports) is an error of the evaluated code. Only the text from
/// the first `error:` line on is searched, so the jobset's own `builtins.trace` output before
/// it does not count; a jobset that `throw`s "No space left on device" would still be taken
/// for infrastructure (and retried), a price paid for not parsing Nix's traces.
pub fn classify_failure(status: ExitStatus, stderr: &str) -> FailureKind {
    if status.code().is_none() {
        return FailureKind::Infrastructure;
    }
    let Some(start) = error_start(stderr) else {
        return FailureKind::Infrastructure;
    };
    if is_infrastructure_message(&stderr[start..]) {
        FailureKind::Infrastructure
    } else {
        FailureKind::Evaluation
    }
}

/// Whether an error message names the machine rather than the code.
pub fn is_infrastructure_message(msg: &str) -> bool {
    let msg = msg.to_lowercase();
    INFRASTRUCTURE_MESSAGES.iter().any(|m| msg.contains(m))
}

/// Byte offset of the first line that starts with `error:`.
fn error_start(text: &str) -> Option<usize> {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("error:") {
            return Some(at);
        }
        at += line.len();
    }
    None
}

/// A failed run of `program`: `Ok(Nix's message)` for an error of the evaluated code,
/// `Err(message)` for an infrastructure failure (see [`classify_failure`]).
pub fn failure(program: &str, status: ExitStatus, stderr: &str) -> Infra<String> {
    let msg = clean_message(stderr);
    if classify_failure(status, stderr) == FailureKind::Evaluation {
        return Ok(msg);
    }
    let what = if status.code().is_none() {
        format!("{program} was killed ({status})")
    } else {
        format!("{program} failed ({status})")
    };
    Err(if msg.is_empty() {
        what
    } else {
        format!("{what}: {msg}")
    })
}

/// Nix's error text without colours, the `--show-trace` hint and leading warnings; capped.
pub fn clean_message(stderr: &str) -> String {
    let text = strip_ansi(stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("(use '--show-trace' to show detailed location information)"))
        .collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("error:"))
        .unwrap_or(0);
    let msg = lines[start..].join("\n");
    truncate(msg.trim(), MAX_MESSAGE)
}

/// The last line of a Nix command's output that mentions an error, trimmed: the one that
/// says why it failed (`nix copy`, `nix store ping`, ...).
pub fn last_error_line(text: &str) -> Option<&str> {
    text.lines()
        .rev()
        .find(|l| l.contains("error"))
        .map(str::trim)
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One line of `nix-eval-jobs` output. `default_system` keys error lines (they carry no
/// system). Lines that are not JSON objects with an attribute are skipped (`None`).
pub fn parse_nix_eval_jobs_line(line: &str, default_system: &str) -> Option<(JobKey, JobResult)> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let obj = v.as_object()?;
    let attr = match obj.get("attrPath").and_then(|p| p.as_array()) {
        Some(p) if !p.is_empty() => p
            .iter()
            .map(|x| x.as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("."),
        _ => obj.get("attr")?.as_str()?.to_string(),
    };
    let system = obj
        .get("system")
        .and_then(|s| s.as_str())
        .unwrap_or(default_system)
        .to_string();
    let key = JobKey { attr, system };
    if let Some(err) = obj.get("error").filter(|e| !e.is_null()) {
        let msg = err.as_str().map(String::from).unwrap_or(err.to_string());
        return Some((key, JobResult::Error(clean_message(&msg))));
    }
    let drv_path = obj.get("drvPath")?.as_str()?.to_string();
    let mut outputs: Vec<(String, String)> = obj
        .get("outputs")
        .and_then(|o| o.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    outputs.sort();
    let maintainers = obj
        .get("meta")
        .and_then(|m| m.get("maintainers"))
        .and_then(|m| m.as_array())
        .map(|ms| {
            ms.iter()
                .filter_map(crate::core::evaluation::Maintainer::from_json)
                .collect()
        })
        .unwrap_or_default();
    Some((
        key,
        JobResult::Ok(Job {
            drv_path,
            outputs,
            maintainers,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from nix-eval-jobs 2.x (`--meta`) on nixpkgs, shortened.
    const NEJ_OK: &str = r#"{"attr":"python3Packages.requests","attrPath":["python3Packages","requests"],"drvPath":"/nix/store/8nd1x6ssi7fmwzq9ni7v0dwk3idxm2xw-python3.11-requests-2.31.0.drv","inputDrvs":{"/nix/store/1l2yxz2hfs8fs0xs1jkj7ag7w8x4h1gy-python3-3.11.6.drv":["out"]},"isCached":false,"meta":{"available":true,"broken":false,"description":"HTTP library for Python","homepage":"http://docs.python-requests.org/","maintainers":[{"email":"fabian@affolter-engineering.ch","github":"fabaff","githubId":116184,"name":"Fabian Affolter"},"someone"],"name":"python3.11-requests-2.31.0"},"name":"python3.11-requests-2.31.0","outputs":{"out":"/nix/store/lz6hhd6dn9vi8s7k4l4xd2w3m47mnw1j-python3.11-requests-2.31.0","dist":"/nix/store/a8fl0y6x1hdkrh4mlhspz4yrjr3j59aq-python3.11-requests-2.31.0-dist"},"system":"x86_64-linux"}"#;
    const NEJ_ERR: &str = r#"{"attr":"broken","attrPath":["broken"],"error":"\u001b[31;1merror:\u001b[0m\n       … while evaluating the attribute 'broken'\n\n       error: Package ‘foo-1.0’ is marked as broken, refusing to evaluate.\n(use '--show-trace' to show detailed location information)"}"#;

    #[test]
    fn parses_nix_eval_jobs_job() {
        let (k, r) = parse_nix_eval_jobs_line(NEJ_OK, "aarch64-linux").unwrap();
        assert_eq!(k.attr, "python3Packages.requests");
        assert_eq!(k.system, "x86_64-linux");
        let j = r.job().unwrap();
        assert!(j.drv_path.ends_with("requests-2.31.0.drv"));
        assert_eq!(j.outputs[0].0, "dist");
        assert_eq!(j.outputs[1].0, "out");
        let ids: Vec<&str> = j.maintainers.iter().map(|m| m.id()).collect();
        assert_eq!(ids, vec!["fabaff", "someone"]);
        assert_eq!(
            j.maintainers[0].email.as_deref(),
            Some("fabian@affolter-engineering.ch")
        );
    }

    #[test]
    fn parses_nix_eval_jobs_error() {
        let (k, r) = parse_nix_eval_jobs_line(NEJ_ERR, "x86_64-linux").unwrap();
        assert_eq!(k.attr, "broken");
        assert_eq!(k.system, "x86_64-linux");
        match r {
            JobResult::Error(m) => {
                assert!(m.starts_with("error:"), "{m}");
                assert!(m.contains("is marked as broken"));
                assert!(!m.contains("show-trace"));
                assert!(!m.contains('\u{1b}'));
            }
            _ => panic!("expected error"),
        }
        assert!(parse_nix_eval_jobs_line("not json", "x").is_none());
        assert!(parse_nix_eval_jobs_line("{}", "x").is_none());
    }

    #[test]
    fn nix_eval_jobs_lines_without_a_job_are_absent() {
        // A set that is not entered, or a value that is no derivation: no entry, no error.
        let set = r#"{"attr":"lib","attrPath":["lib"],"attrs":[]}"#;
        assert!(parse_nix_eval_jobs_line(set, "x86_64-linux").is_none());
        let null_error = r#"{"attr":"lib","attrPath":["lib"],"error":null}"#;
        assert!(parse_nix_eval_jobs_line(null_error, "x86_64-linux").is_none());
    }

    fn exited(code: i32) -> ExitStatus {
        std::os::unix::process::ExitStatusExt::from_raw(code << 8)
    }

    fn killed(signal: i32) -> ExitStatus {
        std::os::unix::process::ExitStatusExt::from_raw(signal)
    }

    #[test]
    fn classifies_failures_of_the_evaluator() {
        use FailureKind::{Evaluation as Code, Infrastructure as Infra};
        let e1 = exited(1);
        #[rustfmt::skip]
        let cases: &[(&str, ExitStatus, &str, FailureKind)] = &[
            ("throw", e1, "error: fixture: zlib does not evaluate (throw)\n", Code),
            ("abort", e1, "error: evaluation aborted with the following error message: 'x'\n", Code),
            ("assert", e1, "error: assertion '(false)' failed\n\n       at /t/release.nix:2:3:\n", Code),
            ("type error", e1, "error: cannot add a string to an integer\n", Code),
            ("infinite recursion", e1, "error: infinite recursion encountered\n", Code),
            ("syntax error", e1, "error: syntax error, unexpected end of file, expecting ';'\n", Code),
            ("not an attribute set", e1, "error: the jobset does not evaluate to an attribute set\n", Code),
            ("missing import", e1, "error: getting status of '/t/missing.nix': No such file or directory\n", Code),
            ("warnings first", e1, "warning: unknown setting 'foo'\nerror: undefined variable 'x'\n", Code),
            ("the jobset's trace", e1, "trace: out of memory\nerror: undefined variable 'x'\n", Code),
            ("indented, new style", e1, "error:\n       … while evaluating the attribute 'drvPath'\n\n       error: undefined variable 'x'\n", Code),
            ("disk full", e1, "error: writing to file: No space left on device\n", Infra),
            ("disk full, nested", e1, "error:\n       … while evaluating the attribute 'drvPath'\n\n       error: writing to file: No space left on device\n", Infra),
            ("quota", e1, "error: writing to file: Disk quota exceeded\n", Infra),
            ("read-only store", e1, "error: opening file '/nix/store/x.drv': Read-only file system\n", Infra),
            ("out of memory", e1, "GC Warning: Out of Memory! Heap size: 7994 MiB. Returning NULL!\nerror: out of memory\n", Infra),
            ("bad_alloc", e1, "error: std::bad_alloc\n", Infra),
            ("ENOMEM", e1, "error: unable to fork: Cannot allocate memory\n", Infra),
            ("EMFILE", e1, "error: opening file '/t/a.nix': Too many open files\n", Infra),
            ("daemon socket", e1, "error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket': Connection refused\n", Infra),
            ("remote store", e1, "error: cannot open connection to remote store 'daemon': error: cannot connect to daemon at '/s'\n", Infra),
            ("daemon dropped", e1, "error: unexpected end-of-file\n", Infra),
            ("daemon reset", e1, "error: reading from file: Connection reset by peer\n", Infra),
            ("EAGAIN", e1, "error: unable to fork: Resource temporarily unavailable\n", Infra),
            // Recorded with Nix 2.8: nix-instantiate sent SIGTERM.
            ("SIGTERM", e1, "error: interrupted by the user\n", Infra),
            ("stack overflow", e1, "error: stack overflow (possible infinite recursion)\n", Code),
            ("killed", killed(9), "", Infra),
            ("killed after an error", killed(9), "error: undefined variable 'x'\n", Infra),
            ("crashed", killed(11), "", Infra),
            ("no message", e1, "", Infra),
            ("only warnings", e1, "warning: unknown setting 'foo'\n", Infra),
            ("other exit status", exited(101), "error: undefined variable 'x'\n", Code),
        ];
        for (name, status, stderr, want) in cases {
            assert_eq!(
                classify_failure(*status, stderr),
                *want,
                "{name}: {stderr:?}"
            );
        }
    }

    #[test]
    fn failure_messages() {
        let m = failure("nix-instantiate", exited(1), "warning: w\nerror: boom\n");
        assert_eq!(m, Ok("error: boom".to_string()));
        let m = failure("nix-instantiate", killed(9), "").unwrap_err();
        assert!(
            m.starts_with("nix-instantiate was killed (signal: 9"),
            "{m}"
        );
        let m = failure(
            "nix-eval-jobs",
            exited(1),
            "error: x: No space left on device\n",
        );
        let m = m.unwrap_err();
        assert!(
            m.starts_with("nix-eval-jobs failed (exit status: 1): error: x: No space"),
            "{m}"
        );
        assert!(is_infrastructure_message("error: std::bad_alloc"));
        assert!(!is_infrastructure_message("error: attribute 'x' missing"));
    }

    #[test]
    fn clean_message_caps_and_skips_warnings() {
        let m = clean_message("warning: foo\nerror: boom\n\n       at x\n");
        assert_eq!(m, "error: boom\n\n       at x");
        let long = format!("error: {}", "é".repeat(5000));
        assert!(clean_message(&long).len() <= MAX_MESSAGE + 4);
    }
}
