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
    b.dispatch(0, fx);
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
    b.dispatch(1, &mut fx);
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
        b.dispatch(now, &mut fx);
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
