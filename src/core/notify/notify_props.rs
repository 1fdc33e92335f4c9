//! Property test of the notification plan over generated streams of notices: a
//! maintainer hears about a job and its root once per event, at most the cap a day,
//! never when opted out; mentions are capped; the comment and the webhook never
//! repeat themselves. The expectation is a plain model of those rules run beside the
//! planner, fed the same history.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::{plan, NotifyPolicy, Sent};
use crate::core::breakage::{Notice, NoticeEvent, NoticeJob};
use crate::core::evaluation::Maintainer;
use crate::core::Millis;

const PEOPLE: usize = 6;

fn person(i: usize, github: bool, email: bool) -> Maintainer {
    Maintainer {
        github: github.then(|| format!("m{i}")),
        email: email.then(|| format!("m{i}@example.org")),
        name: Some(format!("M {i}")),
        matrix: None,
    }
}

/// A job: (attribute, root, maintainers).
type GenJob = (u8, Option<u8>, Vec<usize>);
/// A notice: (minutes after the previous, event, pr, jobs).
type GenNotice = (i64, u8, Option<u64>, Vec<GenJob>);

#[derive(Debug, Clone)]
struct Case {
    /// Per person: (has a handle, has an email).
    people: Vec<(bool, bool)>,
    opt_out: BTreeSet<usize>,
    cap: u32,
    max_mentions: usize,
    forge: bool,
    mail: bool,
    notices: Vec<GenNotice>,
}

fn case() -> impl Strategy<Value = Case> {
    let people = prop::collection::vec((any::<bool>(), any::<bool>()), PEOPLE);
    let job = (
        0u8..5,
        prop::option::weighted(0.3, 0u8..3),
        prop::collection::vec(0..PEOPLE, 0..4),
    );
    let notice = (
        prop_oneof![Just(1i64), 0i64..600, Just(1500)],
        0u8..3,
        prop::option::of(1u64..4),
        prop::collection::vec(job, 1..5),
    );
    (
        people,
        prop::collection::btree_set(0..PEOPLE, 0..3),
        0u32..4,
        0usize..4,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(notice, 1..25),
    )
        .prop_map(
            |(people, opt_out, cap, max_mentions, forge, mail, notices)| Case {
                people,
                opt_out,
                cap,
                max_mentions,
                forge,
                mail,
                notices,
            },
        )
}

fn event(e: u8) -> NoticeEvent {
    [
        NoticeEvent::PlannedLanding,
        NoticeEvent::NewlyBroken,
        NoticeEvent::Fixed,
    ][e as usize % 3]
}

fn run(c: &Case) -> Result<(), TestCaseError> {
    let who: Vec<Maintainer> = c
        .people
        .iter()
        .enumerate()
        .map(|(i, &(g, e))| person(i, g, e))
        .collect();
    let policy = NotifyPolicy {
        cap_per_day: c.cap,
        opt_out: c
            .opt_out
            .iter()
            .map(|&i| {
                // Opted out by handle when there is one, else by email, else by name.
                who[i]
                    .github
                    .clone()
                    .or(who[i].email.clone())
                    .unwrap_or(format!("M {i}"))
            })
            .collect(),
        max_mentions: c.max_mentions,
        url: "http://mq.test".into(),
    };
    let mut history: Vec<Sent> = vec![];
    // The model: per person, what they were told and when.
    let mut told: BTreeSet<(usize, u8, String, String)> = BTreeSet::new();
    let mut times: BTreeMap<usize, Vec<Millis>> = BTreeMap::new();
    let mut posted: BTreeSet<(String, u8, String, String)> = BTreeSet::new();
    let mut now: Millis = 1_800_000_000_000;
    for (gap, ev, pr, jobs) in &c.notices {
        now += gap * 60_000;
        let n = Notice {
            event: event(*ev),
            repo: "r".into(),
            branch: "main".into(),
            change: 7,
            title: "t".into(),
            pr: *pr,
            at: now,
            planned: Some(now + 1000),
            jobs: jobs
                .iter()
                .map(|(a, root, ms)| NoticeJob {
                    attr: format!("p{a}"),
                    system: "x86_64-linux".into(),
                    drv: format!("/nix/store/{a}-p{a}.drv"),
                    root: root.map(|r| format!("/nix/store/r{r}-root.drv")),
                    maintainers: ms.iter().map(|&m| who[m].clone()).collect(),
                    log_tail: "error: boom".into(),
                })
                .collect(),
        };
        let d = plan(&n, &policy, &history, c.forge, c.mail, now);
        let ids: Vec<(String, String)> = n.jobs.iter().map(super::job_id).collect();

        // The model's answer, person by person in id order.
        let mut expect_notified = vec![];
        let mut mentions = 0;
        let mut order: Vec<usize> = jobs.iter().flat_map(|j| j.2.iter().copied()).collect();
        order.sort_by_key(|&m| who[m].id().to_string());
        order.dedup();
        for m in order {
            let mine: Vec<usize> = (0..jobs.len())
                .filter(|&i| jobs[i].2.contains(&m))
                .collect();
            let fresh: Vec<usize> = mine
                .iter()
                .copied()
                .filter(|&i| !told.contains(&(m, *ev, ids[i].0.clone(), ids[i].1.clone())))
                .collect();
            if c.opt_out.contains(&m) || fresh.is_empty() {
                continue;
            }
            let today = times
                .get(&m)
                .map_or(0, |t| t.iter().filter(|&&t| t > now - 86_400_000).count());
            if today >= c.cap as usize {
                prop_assert!(d.capped.contains(&who[m].id().to_string()));
                continue;
            }
            let mention =
                c.forge && pr.is_some() && who[m].github.is_some() && mentions < c.max_mentions;
            mentions += usize::from(mention);
            let mailed = c.mail && who[m].email.is_some();
            if mention || mailed {
                expect_notified.push(who[m].id().to_string());
                times.entry(m).or_default().push(now);
                for i in fresh {
                    told.insert((m, *ev, ids[i].0.clone(), ids[i].1.clone()));
                }
            }
        }
        prop_assert_eq!(&d.notified, &expect_notified);

        // Mails go to the notified people's addresses, one each.
        let mailed: Vec<&str> = d.mails.iter().map(|m| m.to.as_str()).collect();
        let expect_mailed: Vec<String> = expect_notified
            .iter()
            .filter_map(|id| who.iter().find(|w| w.id() == id))
            .filter_map(|w| if c.mail { w.email.clone() } else { None })
            .collect();
        prop_assert_eq!(
            mailed,
            expect_mailed.iter().map(String::as_str).collect::<Vec<_>>()
        );

        // The comment pings no one opted out or capped, at most max_mentions people,
        // and only when some job is new to this pull request.
        let fresh_for = |who: String, posted: &BTreeSet<(String, u8, String, String)>| {
            ids.iter()
                .any(|(j, r)| !posted.contains(&(who.clone(), *ev, j.clone(), r.clone())))
        };
        match (c.forge, pr) {
            (true, Some(pr)) if fresh_for(format!("#{pr}"), &posted) => {
                let (on, body) = d.comment.clone().expect("a comment");
                prop_assert_eq!(on, *pr);
                let pinged = body.matches('@').count();
                prop_assert!(pinged <= c.max_mentions, "{body}");
                for &o in &c.opt_out {
                    prop_assert!(!body.contains(&format!("@m{o}")), "{body}");
                }
                for w in &who {
                    if let Some(e) = &w.email {
                        prop_assert!(!body.contains(e.as_str()), "an address in public: {body}");
                    }
                }
                for (j, r) in &ids {
                    posted.insert((format!("#{pr}"), *ev, j.clone(), r.clone()));
                }
            }
            _ => prop_assert!(d.comment.is_none()),
        }
        if fresh_for("webhook".into(), &posted) {
            let body = d.webhook.clone().expect("a webhook");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            prop_assert_eq!(v["event"].as_str(), Some(n.event.as_str()));
            prop_assert_eq!(v["jobs"].as_array().map(Vec::len), Some(n.jobs.len()));
            for (j, r) in &ids {
                posted.insert(("webhook".into(), *ev, j.clone(), r.clone()));
            }
        } else {
            prop_assert!(d.webhook.is_none());
        }
        history.extend(d.sent);
    }
    // Over the whole stream, nobody heard more than the cap in any day.
    for t in times.values() {
        for &a in t {
            let n = t.iter().filter(|&&b| b >= a && b < a + 86_400_000).count();
            prop_assert!(n <= c.cap as usize);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn notifications_are_deduplicated_capped_and_respect_opt_out(c in case()) {
        run(&c)?;
    }
}
