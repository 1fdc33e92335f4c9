//! Unit tests of the builds machine.

use super::*;
use crate::core::scheduler::BuilderSpec;

fn cfg() -> CoreConfig {
    CoreConfig {
        builders: vec![BuilderSpec {
            id: "b1".into(),
            systems: ["x86_64-linux".to_string()].into(),
            supported: Default::default(),
            mandatory: Default::default(),
            max_jobs: 4,
            speed: 1.0,
        }],
        infra_retries: 2,
        failure_retries: 1,
        ..CoreConfig::default()
    }
}

fn report(drv: &str, class: OutcomeClass) -> BuildReport {
    BuildReport {
        drv_path: drv.into(),
        class,
        log_tail: format!("{drv}: {}", class.as_str()),
        root_drv: None,
        builder: "b1".into(),
        duration_ms: 10,
        log_path: None,
    }
}

/// Queues `drv`, learns its system and dispatches it; returns the builds sent.
fn start(b: &mut Builds, c: &CoreConfig, drv: &str, fx: &mut Effects) -> usize {
    b.request_build(drv, 2, 0, fx);
    let info = StepInfo {
        system: "x86_64-linux".into(),
        ..StepInfo::default()
    };
    b.on_inspected(c, vec![(drv.into(), Ok(info))], |_| None, 0, fx);
    b.dispatch(c, 0, fx);
    fx.take()
        .iter()
        .filter(|c| matches!(c, Command::Build { .. }))
        .count()
}

#[test]
fn a_remembered_or_queued_build_is_not_requested_again() {
    let c = cfg();
    let mut b = Builds::new(&c);
    let mut fx = Effects::default();
    assert!(b.request_build("/a.drv", 2, 0, &mut fx));
    assert!(!b.request_build("/a.drv", 2, 0, &mut fx));
    assert_eq!(start(&mut b, &c, "/a.drv", &mut fx), 1);
    let news = b.on_built(&c, report("/a.drv", OutcomeClass::Success), 5, &mut fx);
    assert_eq!(news, BuildNews::Verdict("/a.drv".into()));
    assert!(!b.request_build("/a.drv", 2, 6, &mut fx));
}

#[test]
fn a_failure_is_built_again_before_it_is_believed_and_then_expires() {
    let c = cfg();
    let mut b = Builds::new(&c);
    let mut fx = Effects::default();
    start(&mut b, &c, "/f.drv", &mut fx);
    let first = b.on_built(&c, report("/f.drv", OutcomeClass::Failed), 1, &mut fx);
    assert_eq!(first, BuildNews::Nothing, "one retry before blaming");
    assert!(b.known("/f.drv", 1).is_none());
    b.dispatch(&c, 1, &mut fx);
    let second = b.on_built(&c, report("/f.drv", OutcomeClass::Failed), 2, &mut fx);
    assert_eq!(second, BuildNews::Verdict("/f.drv".into()));
    assert!(b.known("/f.drv", 2).is_some_and(|m| !m.ok()));
    assert!(
        b.known("/f.drv", 2 + c.failure_ttl_ms).is_none(),
        "failures expire"
    );
}

#[test]
fn infrastructure_trouble_is_never_remembered_and_gives_up_after_the_retries() {
    let c = cfg();
    let mut b = Builds::new(&c);
    let mut fx = Effects::default();
    start(&mut b, &c, "/i.drv", &mut fx);
    let mut now = 0;
    let mut last = BuildNews::Nothing;
    for _ in 0..=c.infra_retries {
        last = b.on_built(
            &c,
            report("/i.drv", OutcomeClass::Infrastructure),
            now,
            &mut fx,
        );
        assert!(b.known("/i.drv", now).is_none());
        now += 3_600_000;
        b.dispatch(&c, now, &mut fx);
    }
    assert!(matches!(last, BuildNews::Abandoned { ref drv, .. } if drv == "/i.drv"));
}

#[test]
fn only_queued_dependents_of_a_failure_fail_without_a_build() {
    let c = cfg();
    let mut b = Builds::new(&c);
    let mut fx = Effects::default();
    b.request_build("/dep.drv", 2, 0, &mut fx);
    assert!(!b.fail_dependent(&c, "/root.drv", "/root.drv", 0, &mut fx));
    assert!(!b.fail_dependent(&c, "/root.drv", "/other.drv", 0, &mut fx));
    assert!(b.fail_dependent(&c, "/root.drv", "/dep.drv", 0, &mut fx));
    let m = b.known("/dep.drv", 0).expect("remembered");
    assert_eq!(m.class, OutcomeClass::DependencyFailed);
    assert_eq!(m.root_drv.as_deref(), Some("/root.drv"));
}

#[test]
fn an_evaluation_that_could_not_run_is_asked_for_again_later() {
    let c = cfg();
    let mut b = Builds::new(&c);
    let mut fx = Effects::default();
    b.request_eval("r", "abc", &mut fx);
    b.request_eval("r", "abc", &mut fx);
    assert_eq!(fx.take().len(), 1, "one request per commit");
    b.on_eval_failed(&c, ("r", "abc", "disk full"), 0, &mut fx);
    assert_eq!(fx.next_due(), Some(c.backoff(1)));
    fx.fire(c.backoff(1));
    assert!(fx
        .take()
        .iter()
        .any(|x| matches!(x, Command::Evaluate { commit, .. } if commit == "abc")));
}

fn two_builders(sample: f64, nondeterministic: &[&str]) -> CoreConfig {
    let mut c = cfg();
    let mut b2 = c.builders[0].clone();
    b2.id = "b2".into();
    c.builders.push(b2);
    c.verify = Some(crate::core::verify::VerifyPolicy {
        per_million: (sample * 1e6) as u32,
        nondeterministic: nondeterministic.iter().map(|s| s.to_string()).collect(),
    });
    c
}

fn verifies(fx: &mut Effects) -> Vec<(String, String, String)> {
    fx.take()
        .into_iter()
        .filter_map(|c| match c {
            Command::Verify {
                drv,
                first,
                builder,
            } => Some((drv, first, builder)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_sampled_success_is_built_again_elsewhere_and_a_mismatch_lowers_trust() {
    let c = two_builders(1.0, &["noisy-*"]);
    let mut b = Builds::new(&c);
    let mut fx = Effects::default();
    for (drv, h2) in [
        ("/nix/store/a-same-1.drv", "sha256:1"),
        ("/nix/store/b-diff-1.drv", "sha256:2"),
        ("/nix/store/c-noisy-1.drv", "sha256:3"),
    ] {
        start(&mut b, &c, drv, &mut fx);
        let ran_on = b.scheduler.running_on(drv).unwrap().to_string();
        let mut r = report(drv, OutcomeClass::Success);
        r.builder = ran_on.clone();
        b.on_built(&c, r, 1, &mut fx);
        let v = verifies(&mut fx);
        assert_eq!(v.len(), 1, "{drv}: {v:?}");
        assert_eq!(v[0].1, ran_on);
        assert_ne!(v[0].2, ran_on, "another builder");
        let hashes = ["sha256:1".to_string(), h2.to_string()];
        b.on_verified(&c, (drv, &v[0].1, &v[0].2), Ok(hashes), 2, &mut fx);
        let recorded: Vec<_> = fx
            .take()
            .into_iter()
            .filter_map(|x| match x {
                Command::Record(Record::Verification(v)) => Some(v),
                _ => None,
            })
            .collect();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].matched, h2 == "sha256:1");
        assert_eq!(recorded[0].nondeterministic, drv.contains("noisy"));
    }
    // Only the unexplained mismatch counted, against both builders.
    for id in ["b1", "b2"] {
        assert_eq!(b.scheduler.builder(id).unwrap().mismatches, 1, "{id}");
    }
    // A report for a comparison nobody asked for changes nothing.
    b.on_verified(
        &c,
        ("/nix/store/z.drv", "b1", "b2"),
        Ok(["x".into(), "y".into()]),
        3,
        &mut fx,
    );
    assert_eq!(b.scheduler.builder("b1").unwrap().mismatches, 1);
}

#[test]
fn nothing_is_verified_outside_the_sample_or_without_a_second_builder() {
    let mut fx = Effects::default();
    let c = two_builders(0.0, &[]);
    let mut b = Builds::new(&c);
    start(&mut b, &c, "/nix/store/a-x.drv", &mut fx);
    let on = b
        .scheduler
        .running_on("/nix/store/a-x.drv")
        .unwrap()
        .to_string();
    let mut r = report("/nix/store/a-x.drv", OutcomeClass::Success);
    r.builder = on;
    b.on_built(&c, r, 1, &mut fx);
    assert!(verifies(&mut fx).is_empty());
    let mut one = cfg();
    one.verify = two_builders(1.0, &[]).verify;
    let mut b = Builds::new(&one);
    start(&mut b, &one, "/nix/store/a-x.drv", &mut fx);
    b.on_built(
        &one,
        report("/nix/store/a-x.drv", OutcomeClass::Success),
        1,
        &mut fx,
    );
    assert!(
        verifies(&mut fx).is_empty(),
        "one builder: nothing to compare with"
    );
}
