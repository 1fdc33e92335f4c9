//! Jobset evaluation with real Nix on generated package sets.

use std::path::Path;
use std::time::Instant;

use mergequeue::core::evaluation::{diff, EvalOutcome, Evaluation, JobKey, JobResult};
use mergequeue::shell::config::Evaluator;
use mergequeue::shell::nix::eval::{EvalSandbox, NixEval};
use mergequeue::tools::fixture::{generate, EvalBreak, PackageSet, Spec};

const SYSTEM: &str = "x86_64-linux";

fn require_nix() {
    let ok = std::process::Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "nix-instantiate is not on PATH: these tests need real Nix. Run the prerequisite \
         installer first (apt-get update && apt-get install -y nix-bin git busybox-static, \
         see docs/nix-here.md), then re-run the tests."
    );
}

fn eval() -> NixEval {
    NixEval {
        nix_args: vec!["--option".into(), "substituters".into(), "".into()],
        evaluator: Evaluator::NixInstantiate,
        sandbox: EvalSandbox::default(),
        jobset: Default::default(),
        limits: Default::default(),
    }
}

fn systems() -> Vec<String> {
    vec![SYSTEM.to_string()]
}

fn small(dir: &Path, packages: usize, seed: u64) -> PackageSet {
    generate(
        dir,
        &Spec {
            packages,
            seed,
            broken: 1,
            ..Spec::default()
        },
    )
    .unwrap()
}

fn get<'a>(e: &'a Evaluation, attr: &str) -> &'a JobResult {
    e.get(&JobKey {
        attr: attr.into(),
        system: SYSTEM.into(),
    })
    .unwrap_or_else(|| panic!("no job {attr}"))
}

fn error_of(e: &Evaluation, attr: &str) -> String {
    match get(e, attr) {
        JobResult::Error(m) => m.clone(),
        JobResult::Ok(_) => panic!("{attr} evaluated, expected an error"),
    }
}

#[tokio::test]
async fn finds_all_jobs_with_drv_outputs_and_maintainers() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let set = small(dir.path(), 60, 7);
    let e = eval()
        .evaluate(dir.path(), "release.nix", &systems(), "c1")
        .await
        .unwrap();
    assert_eq!(e.outcome, EvalOutcome::Ok);
    assert_eq!(e.commit, "c1");
    assert_eq!(e.jobs.len(), set.names.len());
    assert!(!set.nested().is_empty(), "the fixture should have python.*");
    for name in &set.names {
        let j = get(&e, name)
            .job()
            .unwrap_or_else(|| panic!("{name} failed"));
        assert!(j.drv_path.starts_with("/nix/store/") && j.drv_path.ends_with(".drv"));
        assert!(
            Path::new(&j.drv_path).exists(),
            "{} was not written to the store",
            j.drv_path
        );
        assert_eq!(j.outputs.len(), 1);
        assert_eq!(j.outputs[0].0, "out");
        let ids: Vec<&str> = j.maintainers.iter().map(|m| m.id()).collect();
        assert_eq!(ids, set.maintainers[name], "{name}");
        // Set-style maintainers keep their email; plain strings are handles only.
        for m in &j.maintainers {
            if let Some(e) = &m.email {
                assert_eq!(e, &format!("{}@example.org", m.id()));
            }
        }
    }
    // Maintainers come both as strings and as { github = ...; } sets in the fixture.
    let files: String = set
        .names
        .iter()
        .map(|n| std::fs::read_to_string(set.file(n)).unwrap())
        .collect();
    assert!(files.contains("maintainers = [ m.\""));
    assert!(files.contains("maintainers = [ \""));
}

#[tokio::test]
async fn throw_abort_and_type_errors_are_isolated() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let mut set = small(dir.path(), 60, 8);
    let leaves: Vec<String> = set
        .healthy_leaves()
        .into_iter()
        .filter(|n| !n.contains('.'))
        .collect();
    let nested: Vec<String> = set
        .leaves()
        .into_iter()
        .filter(|n| n.contains('.'))
        .collect();
    assert!(leaves.len() >= 3 && !nested.is_empty());
    let (t, a, ty, na) = (&leaves[0], &leaves[1], &leaves[2], &nested[0]);
    set.break_eval(t).unwrap();
    set.abort_eval(a).unwrap();
    set.break_eval_with(ty, EvalBreak::TypeError).unwrap();
    set.abort_eval(na).unwrap();

    let started = Instant::now();
    let e = eval()
        .evaluate(dir.path(), "release.nix", &systems(), "c2")
        .await
        .unwrap();
    eprintln!("evaluation with 3 uncaught errors: {:?}", started.elapsed());
    assert_eq!(e.outcome, EvalOutcome::Ok);
    assert_eq!(e.jobs.len(), set.names.len());

    let m = error_of(&e, t);
    assert!(
        m.contains(&format!("fixture: {t} does not evaluate (throw)")),
        "{m}"
    );
    assert!(!m.contains("show-trace"), "{m}");
    let m = error_of(&e, a);
    assert!(m.contains("evaluation aborted"), "{m}");
    assert!(
        m.contains(&format!("fixture: {a} does not evaluate (abort)")),
        "{m}"
    );
    let m = error_of(&e, ty);
    assert!(m.contains("cannot add a string to an integer"), "{m}");
    let m = error_of(&e, na);
    assert!(m.contains("evaluation aborted"), "{m}");

    let broken = [t, a, ty, na];
    for name in &set.names {
        if !broken.contains(&name) {
            assert!(get(&e, name).job().is_some(), "{name} should evaluate");
        }
    }
}

#[tokio::test]
async fn reverse_dependencies_of_an_eval_error_fail_too() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let mut set = small(dir.path(), 40, 9);
    set.abort_eval("openssl").unwrap();
    let e = eval()
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await
        .unwrap();
    assert_eq!(e.outcome, EvalOutcome::Ok);
    let rdeps = set.reverse_deps("openssl");
    for name in &set.names {
        let failed = get(&e, name).job().is_none();
        let expected = name == "openssl" || rdeps.contains(name);
        assert_eq!(failed, expected, "{name}");
    }
}

#[tokio::test]
async fn whole_jobset_failures() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    small(dir.path(), 10, 1);
    std::fs::write(
        dir.path().join("syntax.nix"),
        "{ system ? null }: { a = ; }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("number.nix"), "{ system }: 42\n").unwrap();
    std::fs::write(dir.path().join("throws.nix"), "throw \"no jobs today\"\n").unwrap();
    let ev = eval();
    let e = ev
        .evaluate(dir.path(), "syntax.nix", &systems(), "c")
        .await
        .unwrap();
    match &e.outcome {
        EvalOutcome::Failed(m) => assert!(m.contains("syntax error"), "{m}"),
        o => panic!("{o:?}"),
    }
    assert!(e.jobs.is_empty());
    let e = ev
        .evaluate(dir.path(), "number.nix", &systems(), "c")
        .await
        .unwrap();
    match &e.outcome {
        EvalOutcome::Failed(m) => assert!(m.contains("attribute set"), "{m}"),
        o => panic!("{o:?}"),
    }
    let e = ev
        .evaluate(dir.path(), "throws.nix", &systems(), "c")
        .await
        .unwrap();
    match &e.outcome {
        EvalOutcome::Failed(m) => assert!(m.contains("no jobs today"), "{m}"),
        o => panic!("{o:?}"),
    }
    let e = ev
        .evaluate(dir.path(), "missing.nix", &systems(), "c")
        .await
        .unwrap();
    assert!(e.failed());
    // A missing jobset fails every requested attribute: it does not make them absent.
    let r = ev
        .evaluate_attrs(dir.path(), "missing.nix", &systems(), &["libc".into()])
        .await
        .unwrap();
    assert_eq!(r.len(), 1, "{r:?}");
    match &r[0].1 {
        JobResult::Error(m) => assert!(m.contains("does not exist"), "{m}"),
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn plain_attrset_and_function_forms_agree() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    small(dir.path(), 30, 2);
    std::fs::write(
        dir.path().join("plain.nix"),
        "import ./release.nix { system = \"x86_64-linux\"; }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("nosystem.nix"),
        "{ extra ? 1 }: import ./release.nix { system = \"x86_64-linux\"; }\n",
    )
    .unwrap();
    let ev = eval();
    let f = ev
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await
        .unwrap();
    let p = ev
        .evaluate(dir.path(), "plain.nix", &systems(), "c")
        .await
        .unwrap();
    let n = ev
        .evaluate(dir.path(), "nosystem.nix", &systems(), "c")
        .await
        .unwrap();
    assert_eq!(f.jobs, p.jobs);
    assert_eq!(f.jobs, n.jobs);

    // Nested sets are entered only with recurseForDerivations = true.
    std::fs::write(
        dir.path().join("hidden.nix"),
        "let p = import ./release.nix { }; in p // { hidden = { x = p.libc; }; \
         shown = { recurseForDerivations = true; y = p.zlib; deeper = { z = p.libc; }; }; }\n",
    )
    .unwrap();
    let h = ev
        .evaluate(dir.path(), "hidden.nix", &systems(), "c")
        .await
        .unwrap();
    assert_eq!(h.outcome, EvalOutcome::Ok);
    assert_eq!(h.jobs.len(), f.jobs.len() + 1);
    assert_eq!(get(&h, "shown.y").job(), get(&f, "zlib").job());
    assert!(h.by_attr("hidden").next().is_none());
    assert!(h.by_attr("shown.deeper").next().is_none());
}

#[tokio::test]
async fn function_jobsets_are_called_per_system() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let set = small(dir.path(), 15, 3);
    let systems = vec!["x86_64-linux".to_string(), "aarch64-linux".to_string()];
    let e = eval()
        .evaluate(dir.path(), "release.nix", &systems, "c")
        .await
        .unwrap();
    assert_eq!(e.jobs.len(), 2 * set.names.len());
    let x = e
        .get(&JobKey {
            attr: "libc".into(),
            system: "x86_64-linux".into(),
        })
        .and_then(|r| r.job())
        .unwrap();
    let a = e
        .get(&JobKey {
            attr: "libc".into(),
            system: "aarch64-linux".into(),
        })
        .and_then(|r| r.job())
        .unwrap();
    assert_ne!(x.drv_path, a.drv_path);
}

#[tokio::test]
async fn evaluate_attrs_matches_evaluate() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let mut set = small(dir.path(), 50, 4);
    let leaves = set.healthy_leaves();
    let thrower = leaves.iter().find(|n| !n.contains('.')).unwrap().clone();
    let aborter = leaves
        .iter()
        .rev()
        .find(|n| !n.contains('.') && **n != thrower)
        .unwrap()
        .clone();
    set.break_eval(&thrower).unwrap();
    set.abort_eval(&aborter).unwrap();
    let ev = eval();
    let full = ev
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await
        .unwrap();
    let attrs: Vec<String> = vec![
        "libc".into(),
        "tested".into(),
        thrower.clone(),
        aborter.clone(),
        set.nested()[0].clone(),
        "no-such-package".into(),
        "python.no-such-package".into(),
    ];
    let started = Instant::now();
    let got = ev
        .evaluate_attrs(dir.path(), "release.nix", &systems(), &attrs)
        .await
        .unwrap();
    eprintln!(
        "evaluate_attrs of {} attrs: {:?}",
        attrs.len(),
        started.elapsed()
    );
    // Attributes that do not exist are absent, not failing.
    assert_eq!(got.len(), attrs.len() - 2, "{got:?}");
    for (k, r) in &got {
        assert!(!k.attr.contains("no-such-package"), "{k}: {r:?}");
        assert_eq!(Some(r), full.get(k), "{k}");
    }
    // A nested set expands to its jobs.
    let python = ev
        .evaluate_attrs(dir.path(), "release.nix", &systems(), &["python".into()])
        .await
        .unwrap();
    let expected: Vec<_> = full
        .by_attr("python")
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    assert_eq!(python, expected);
    assert!(!python.is_empty());
}

#[tokio::test]
async fn absent_attributes_have_no_entry_and_failing_ones_are_errors() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let mut set = small(dir.path(), 40, 6);
    let leaves: Vec<String> = set
        .healthy_leaves()
        .into_iter()
        .filter(|n| !n.contains('.'))
        .collect();
    assert!(leaves.len() >= 2);
    let (thrower, removed) = (leaves[0].clone(), leaves[1].clone());
    set.break_eval(&thrower).unwrap();
    std::fs::write(
        dir.path().join("extra.nix"),
        "{ system ? builtins.currentSystem }: let p = import ./release.nix { inherit system; }; \
         in p // { notAJob = 42; plainSet = { x = p.libc; }; \
         emptySet = { recurseForDerivations = true; }; \
         bad = throw \"bad attribute\"; badType = 1 + \"x\"; }\n",
    )
    .unwrap();
    let ev = eval();
    let attrs = |extra: &[&str]| -> Vec<String> { extra.iter().map(|a| a.to_string()).collect() };
    let asked = attrs(&[
        "libc",
        &removed,
        &thrower,
        "no-such-package",
        "python.no-such-package",
        "libc.no-such-output",
        "notAJob",
        "plainSet",
        "emptySet",
        "bad",
        "badType",
    ]);
    let got = ev
        .evaluate_attrs(dir.path(), "extra.nix", &systems(), &asked)
        .await
        .unwrap();
    let names: Vec<&str> = got.iter().map(|(k, _)| k.attr.as_str()).collect();
    let mut expected = vec!["bad", "badType", "libc", removed.as_str(), thrower.as_str()];
    expected.sort();
    assert_eq!(names, expected, "{got:?}");
    let result = |attr: &str| &got.iter().find(|(k, _)| k.attr == attr).unwrap().1;
    assert!(result("libc").job().is_some());
    assert!(result(&removed).job().is_some());
    match result(&thrower) {
        JobResult::Error(m) => assert!(m.contains("does not evaluate (throw)"), "{m}"),
        o => panic!("{o:?}"),
    }
    match result("bad") {
        JobResult::Error(m) => assert!(m.contains("bad attribute"), "{m}"),
        o => panic!("{o:?}"),
    }
    match result("badType") {
        JobResult::Error(m) => assert!(m.contains("cannot add a string to an integer"), "{m}"),
        o => panic!("{o:?}"),
    }

    // At a commit where the package is gone, asking for it yields nothing.
    set.remove_package(&removed).unwrap();
    let got = ev
        .evaluate_attrs(
            dir.path(),
            "release.nix",
            &systems(),
            &attrs(&[&removed, &thrower]),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0.attr, thrower);
    assert!(got[0].1.job().is_none());
}

/// Set in the child process [`run_alone`] starts: the scenario it runs.
const SCENARIO: &str = "MERGEQUEUE_TEST_EVAL_SCENARIO";

/// Runs test `name` of this binary alone in a child process whose `PATH` is `path`, with
/// [`SCENARIO`] set: changing `PATH` here would affect the tests running concurrently.
fn run_alone(name: &str, scenario: &str, path: &Path) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("PATH", path)
        .env(SCENARIO, scenario)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "scenario {scenario}:\n{stdout}\n{stderr}"
    );
}

/// An evaluator that cannot run, is killed, finds the disk full or prints something cut
/// short: `Err` (infrastructure), never an evaluation saying the commit failed.
#[tokio::test]
async fn an_evaluator_that_cannot_do_its_work_is_an_infrastructure_failure() {
    const NAME: &str = "an_evaluator_that_cannot_do_its_work_is_an_infrastructure_failure";
    let Ok(scenario) = std::env::var(SCENARIO) else {
        require_nix();
        let bins = tempfile::tempdir().unwrap();
        let fakes = [
            ("missing", None),
            ("killed", Some("kill -KILL $$")),
            (
                "disk-full",
                Some("echo 'error: writing to file: No space left on device' >&2; exit 1"),
            ),
            ("truncated", Some("printf '[{\"path\": ['")),
            ("silent", Some("exit 1")),
        ];
        for (scenario, script) in fakes {
            let bin = bins.path().join(scenario);
            std::fs::create_dir(&bin).unwrap();
            if let Some(script) = script {
                let fake = bin.join("nix-instantiate");
                std::fs::write(&fake, format!("#!/bin/sh\n{script}\n")).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            run_alone(NAME, scenario, &bin);
        }
        return;
    };
    // In the child: PATH holds at most a fake nix-instantiate, and no nix-eval-jobs.
    let dir = tempfile::tempdir().unwrap();
    small(dir.path(), 10, 1);
    let ev = eval();
    let e = ev
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await;
    let msg = e.expect_err("an evaluation that could not run");
    eprintln!("{scenario}: {msg}");
    let expected = match scenario.as_str() {
        "missing" => "cannot run nix-instantiate",
        "killed" => "nix-instantiate was killed",
        "disk-full" => "No space left on device",
        "truncated" => "unexpected output",
        "silent" => "nix-instantiate failed (exit status: 1)",
        s => panic!("unknown scenario {s}"),
    };
    assert!(msg.contains(expected), "{msg}");
    let r = ev
        .evaluate_attrs(dir.path(), "release.nix", &systems(), &["libc".into()])
        .await;
    assert!(r.is_err(), "{r:?}");
    // Without systems configured, asking Nix for the current one fails the same way.
    let e = ev.evaluate(dir.path(), "release.nix", &[], "c").await;
    assert!(e.is_err(), "{e:?}");
    // A configured evaluator that is not installed.
    let nej = NixEval {
        evaluator: Evaluator::NixEvalJobs,
        ..eval()
    };
    let e = nej
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await;
    assert!(e.unwrap_err().contains("nix-eval-jobs is not on PATH"));
}

#[tokio::test]
async fn bump_rebuilds_exactly_the_package_and_its_reverse_deps() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let mut set = small(dir.path(), 80, 5);
    let ev = eval();
    let before = ev
        .evaluate(dir.path(), "release.nix", &systems(), "a")
        .await
        .unwrap();
    set.bump("zlib").unwrap();
    let after = ev
        .evaluate(dir.path(), "release.nix", &systems(), "b")
        .await
        .unwrap();
    let d = diff(&before, &after);
    let changed: Vec<String> = d.changed.iter().map(|k| k.attr.clone()).collect();
    let mut expected = set.reverse_deps("zlib");
    expected.push("zlib".into());
    expected.sort();
    assert_eq!(changed, expected);
    assert!(d.added.is_empty() && d.removed.is_empty() && d.failing.is_empty());
}

/// The 300-package default fixture: prints the time (see the report in docs).
#[tokio::test]
async fn default_fixture_evaluation_time() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let set = generate(dir.path(), &Spec::default()).unwrap();
    let ev = eval();
    let started = Instant::now();
    let e = ev
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await
        .unwrap();
    let cold = started.elapsed();
    let started = Instant::now();
    let e2 = ev
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await
        .unwrap();
    let warm = started.elapsed();
    eprintln!(
        "evaluated {} jobs: {cold:?} (drvs written), {warm:?} (again)",
        e.jobs.len()
    );
    assert_eq!(e.jobs.len(), set.names.len());
    assert!(e.jobs.iter().all(|(_, r)| r.job().is_some()));
    assert_eq!(e, e2);
    assert!(cold.as_secs() < 60);
}

/// Pull-request code cannot read the service's secrets: a jobset that reads a credential
/// file, `/etc`, the environment or a file URL fails to evaluate (each attribute on its own),
/// and no message contains the secret. The same jobset with `restrict_eval = false` does
/// read it, which shows the test would catch a leak.
#[tokio::test]
async fn restricted_evaluation_keeps_secrets_out_of_reach() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let secret = format!("s3cr3t-{}", fastrand::u64(..));
    let cred = secrets.path().join("api-token");
    std::fs::write(&cred, &secret).unwrap();
    let var = format!("MQ_TEST_SECRET_{}", std::process::id());
    std::env::set_var(&var, &secret);
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("ok.txt"), "fine").unwrap();
    let job = |name: &str| {
        format!("derivation {{ name = {name}; system = \"{SYSTEM}\"; builder = \"/bin/sh\"; }}")
    };
    let release = format!(
        r#"{{
  credential = {};
  etc = {};
  env = {};
  url = {};
  own = {};
}}"#,
        job(&format!(
            "builtins.readFile {:?}",
            cred.display().to_string()
        )),
        job("builtins.substring 0 8 (builtins.readFile /etc/hostname)"),
        job(&format!("\"env-${{builtins.getEnv \"{var}\"}}\"")),
        job(&format!(
            "builtins.readFile (builtins.fetchurl \"file://{}\")",
            cred.display()
        )),
        job("builtins.readFile ./ok.txt"),
    );
    std::fs::write(repo.join("release.nix"), &release).unwrap();
    let e = eval()
        .evaluate(&repo, "release.nix", &systems(), "c")
        .await
        .expect("the evaluation runs");
    let shown = format!("{e:?}");
    assert!(!shown.contains(&secret), "the secret leaked: {shown}");
    for attr in ["credential", "etc", "url"] {
        let msg = error_of(&e, attr);
        assert!(
            msg.contains("forbidden in restricted mode") || msg.contains("not allowed"),
            "{attr}: {msg}"
        );
    }
    // getEnv answers "" under restricted evaluation: the job evaluates, without the value.
    match get(&e, "env") {
        JobResult::Ok(j) => assert!(j.drv_path.ends_with("-env-.drv"), "{}", j.drv_path),
        other => panic!("env: {other:?}"),
    }
    assert!(matches!(get(&e, "own"), JobResult::Ok(_)), "{shown}");

    // Unrestricted (an operator's explicit choice), the same jobset reads the credential.
    let open = NixEval {
        sandbox: EvalSandbox {
            restrict: false,
            ..EvalSandbox::default()
        },
        ..eval()
    };
    let e = open
        .evaluate(&repo, "release.nix", &systems(), "c")
        .await
        .unwrap();
    match get(&e, "credential") {
        JobResult::Ok(j) => assert!(j.drv_path.ends_with(&format!("-{secret}.drv"))),
        other => panic!("credential, unrestricted: {other:?}"),
    }
    std::env::remove_var(&var);
}

/// A Hydra-style `release.nix`: jobs nested as `NAME.SYSTEM` without
/// `recurseForDerivations`, and a `config` argument that adds unfree jobs.
const HYDRA_RELEASE: &str = r#"{ system ? builtins.currentSystem, config ? { }, unused ? null }:
let
  mk = name: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "echo ${name} > $out" ];
  };
in
{
  hello.x86_64-linux = mk "hello";
  tools = { grep.x86_64-linux = mk "grep"; };
  cuda = if config.cudaSupport or false then { x86_64-linux = mk "cuda"; } else { };
  lib = { id = x: x; answer = 42; };
}
"#;

fn attrs(e: &Evaluation) -> Vec<String> {
    e.jobs.iter().map(|(k, _)| k.attr.clone()).collect()
}

#[tokio::test]
async fn a_hydra_release_nix_is_walked_with_force_recurse_and_given_its_arguments() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("release.nix"), HYDRA_RELEASE).unwrap();
    // As nix-env reads it: nested jobs are invisible without recurseForDerivations.
    let plain = eval()
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await
        .unwrap();
    assert_eq!(attrs(&plain), Vec::<String>::new());
    let hydra = NixEval {
        jobset: mergequeue::shell::nix::eval::JobsetOptions {
            force_recurse: true,
            args: Default::default(),
        },
        ..eval()
    };
    let e = hydra
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await
        .unwrap();
    assert_eq!(e.outcome, EvalOutcome::Ok);
    assert_eq!(
        attrs(&e),
        ["hello.x86_64-linux", "tools.grep.x86_64-linux"],
        "every set walked; functions and numbers are no jobs"
    );
    // A jobset argument (an unfree- or CUDA-aware package set), given as JSON.
    let mut args = serde_json::Map::new();
    args.insert(
        "config".into(),
        serde_json::json!({ "cudaSupport": true, "allowUnfree": true }),
    );
    // Not named by the function: not given (it would be an error).
    args.insert("other".into(), serde_json::json!(1));
    let cuda = NixEval {
        jobset: mergequeue::shell::nix::eval::JobsetOptions {
            force_recurse: true,
            args,
        },
        ..eval()
    };
    let e = cuda
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await
        .unwrap();
    assert_eq!(
        attrs(&e),
        [
            "cuda.x86_64-linux",
            "hello.x86_64-linux",
            "tools.grep.x86_64-linux"
        ]
    );
    match get(&e, "cuda.x86_64-linux") {
        JobResult::Ok(j) => assert!(j.drv_path.ends_with("-cuda.drv"), "{}", j.drv_path),
        other => panic!("{other:?}"),
    }
}

/// `[nix] eval_workers` and `eval_max_memory_mib` reach nix-eval-jobs as `--workers` and
/// `--max-memory-size` (a recording stand-in: nix-eval-jobs is not installed here).
#[tokio::test]
async fn nix_eval_jobs_gets_its_workers_and_memory_limit() {
    const NAME: &str = "nix_eval_jobs_gets_its_workers_and_memory_limit";
    let Ok(record) = std::env::var(SCENARIO) else {
        let bins = tempfile::tempdir().unwrap();
        let record = bins.path().join("args");
        let fake = bins.path().join("nix-eval-jobs");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", record.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        run_alone(NAME, &record.display().to_string(), bins.path());
        let args = std::fs::read_to_string(&record).unwrap();
        assert!(args.contains("--workers 3"), "{args}");
        assert!(args.contains("--max-memory-size 1024"), "{args}");
        return;
    };
    // In the child: PATH holds only the recording nix-eval-jobs.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("release.nix"), "{ system }: { }").unwrap();
    let ev = NixEval {
        evaluator: Evaluator::NixEvalJobs,
        limits: mergequeue::shell::nix::eval::EvalJobsLimits {
            workers: 3,
            max_memory_mib: 1024,
        },
        ..eval()
    };
    let _ = ev
        .evaluate(dir.path(), "release.nix", &systems(), "c")
        .await;
    assert!(std::path::Path::new(&record).exists(), "nix-eval-jobs ran");
}
