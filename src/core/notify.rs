//! Who hears about a notice, and how: the notifier's decisions (`docs/breakage.md`).
//!
//! The core decides *that* maintainers are to hear something (`Notice`); this plan
//! decides *who* of them, given what was already sent: a maintainer hears about a job
//! and its root cause once per event, at most `cap_per_day` times a day over every
//! channel, never when opted out. A dependency failure names its root, and the core
//! already put the root job's maintainers on it, so dependents' maintainers are not
//! pinged. The pull-request comment and the webhook are recipients too, deduplicated
//! the same way (a held change retested and held again does not comment twice about
//! the same jobs), but not capped. The shell delivers the plan and stores `sent`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::breakage::{Notice, NoticeEvent, NoticeJob};
use super::evaluation::Maintainer;
use super::Millis;

const DAY_MS: Millis = 86_400_000;
/// Characters of a log tail quoted in a mail or comment.
const TAIL: usize = 1500;

/// `[notify]` as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyPolicy {
    pub cap_per_day: u32,
    pub opt_out: Vec<String>,
    pub max_mentions: usize,
    /// Base of the links, without a trailing slash.
    pub url: String,
}

/// One notification about one job already sent to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sent {
    /// A maintainer's id, or `forge:#PR` / `webhook` for those recipients.
    pub maintainer: String,
    pub event: String,
    /// `attr (system)`.
    pub job: String,
    /// The root derivation (or the job's own) the failure comes from.
    pub root: String,
    /// When it was sent: one value per notice and recipient, so a day's count is the
    /// number of distinct values.
    pub at: Millis,
}

/// A mail to one maintainer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The maintainer's id (what the history rows name).
    pub owner: String,
    pub to_name: Option<String>,
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// What to deliver for one notice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    /// A comment on the change's pull request: (pr, body).
    pub comment: Option<(u64, String)>,
    pub mails: Vec<Mail>,
    /// The webhook's JSON body, when it has something new to hear.
    pub webhook: Option<String>,
    /// Maintainers notified (mentioned or mailed), by id.
    pub notified: Vec<String>,
    /// Those of them mentioned in the comment: reached even when their mail fails.
    pub mentioned: Vec<String>,
    /// Maintainers who would have been but are over the day's cap.
    pub capped: Vec<String>,
    /// Rows for the history, to store once delivered.
    pub sent: Vec<Sent>,
}

#[derive(Serialize)]
struct HookJob<'a> {
    attr: &'a str,
    system: &'a str,
    drv: &'a str,
    root: Option<&'a str>,
    maintainers: Vec<&'a str>,
    log_tail: &'a str,
    log_url: String,
}

#[derive(Serialize)]
struct Hook<'a> {
    event: &'static str,
    repo: &'a str,
    branch: &'a str,
    change: u64,
    title: &'a str,
    pr: Option<u64>,
    at: Millis,
    planned: Option<Millis>,
    url: String,
    jobs: Vec<HookJob<'a>>,
    notified: &'a [String],
}

/// The job's key and root as the history stores them.
fn job_id(j: &NoticeJob) -> (String, String) {
    let job = format!("{} ({})", j.attr, j.system);
    let root = j
        .root
        .clone()
        .or_else(|| (!j.drv.is_empty()).then(|| j.drv.clone()))
        .unwrap_or_else(|| job.clone());
    (job, root)
}

fn opted_out(p: &NotifyPolicy, m: &Maintainer) -> bool {
    p.opt_out.iter().any(|o| m.is(o) || o == m.id())
}

/// Plans the delivery of `n` at `now`, given the history of the recipients it names
/// (at least their last day, and every earlier row about these jobs).
pub fn plan(
    n: &Notice,
    p: &NotifyPolicy,
    history: &[Sent],
    has_forge: bool,
    has_mail: bool,
    now: Millis,
) -> Delivery {
    let event = n.event.as_str();
    let told: BTreeSet<(&str, &str, &str)> = history
        .iter()
        .filter(|s| s.event == event)
        .map(|s| (s.maintainer.as_str(), s.job.as_str(), s.root.as_str()))
        .collect();
    let mut today: BTreeMap<&str, BTreeSet<Millis>> = BTreeMap::new();
    for s in history.iter().filter(|s| s.at > now - DAY_MS) {
        today.entry(&s.maintainer).or_default().insert(s.at);
    }
    let ids: Vec<(String, String)> = n.jobs.iter().map(job_id).collect();
    let new_for = |who: &str| -> Vec<usize> {
        (0..n.jobs.len())
            .filter(|&i| !told.contains(&(who, ids[i].0.as_str(), ids[i].1.as_str())))
            .collect()
    };
    let mut d = Delivery::default();
    let sent = |who: &str, jobs: &[usize], d: &mut Delivery| {
        // Two notices planned in the same millisecond are two notices: each gets its own
        // `at`, since the day's count is the number of distinct values.
        let last = today.get(who).and_then(|t| t.last().copied());
        let at = last.map_or(now, |l| now.max(l + 1));
        for &i in jobs {
            d.sent.push(Sent {
                maintainer: who.to_string(),
                event: event.to_string(),
                job: ids[i].0.clone(),
                root: ids[i].1.clone(),
                at,
            });
        }
    };

    // Each maintainer once, with the jobs of this notice that are new to them.
    let mut people: BTreeMap<&str, (&Maintainer, Vec<usize>)> = BTreeMap::new();
    for (i, j) in n.jobs.iter().enumerate() {
        for m in &j.maintainers {
            people.entry(m.id()).or_insert((m, vec![])).1.push(i);
        }
    }
    let mut mentions = vec![];
    let mut quiet = vec![];
    for (id, (m, jobs)) in &people {
        let fresh: Vec<usize> = new_for(id)
            .into_iter()
            .filter(|i| jobs.contains(i))
            .collect();
        // A comment is public: it names people by handle or name, never by address.
        let label = m.github.clone().or(m.name.clone());
        let skip = opted_out(p, m) || fresh.is_empty();
        let capped = !skip && today.get(id).map_or(0, BTreeSet::len) >= p.cap_per_day as usize;
        if capped {
            d.capped.push(id.to_string());
        }
        let mut reached = false;
        if !skip
            && !capped
            && has_forge
            && n.pr.is_some()
            && m.github.is_some()
            && mentions.len() < p.max_mentions
        {
            mentions.push(format!("@{}", label.clone().unwrap_or_default()));
            d.mentioned.push(id.to_string());
            reached = true;
        } else if let Some(l) = label {
            quiet.push(l);
        }
        if skip || capped {
            continue;
        }
        if has_mail {
            if let Some(to) = &m.email {
                d.mails.push(mail(n, p, m, to, &fresh));
                reached = true;
            }
        }
        if reached {
            d.notified.push(id.to_string());
            sent(id, &fresh, &mut d);
        }
    }

    let all: Vec<usize> = (0..n.jobs.len()).collect();
    if let (true, Some(pr)) = (has_forge, n.pr) {
        let who = format!("forge:#{pr}");
        let fresh = new_for(&who);
        if !fresh.is_empty() {
            d.comment = Some((pr, comment(n, p, &mentions, &quiet)));
            sent(&who, &all, &mut d);
        }
    }
    let fresh = new_for("webhook");
    if !fresh.is_empty() {
        d.webhook = Some(webhook(n, p, &d.notified));
        sent("webhook", &all, &mut d);
    }
    d
}

fn what(n: &Notice) -> String {
    match n.event {
        NoticeEvent::PlannedLanding => format!(
            "is planned to land on {}; it breaks these jobs",
            super::grace::utc_date(n.planned.unwrap_or(n.at))
        ),
        NoticeEvent::NewlyBroken => "landed; these jobs are broken by it".into(),
        NoticeEvent::Fixed => "landed; these jobs build again".into(),
    }
}

fn change_url(n: &Notice, p: &NotifyPolicy) -> String {
    format!("{}/repos/{}/changes/{}", p.url, n.repo, n.change)
}

fn log_url(p: &NotifyPolicy, drv: &str) -> String {
    format!("{}/api/v1/attempts?drv={drv}", p.url)
}

fn tail(s: &str) -> &str {
    let mut at = s.len().saturating_sub(TAIL);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

fn job_line(p: &NotifyPolicy, j: &NoticeJob) -> String {
    let mut line = format!("{} ({})", j.attr, j.system);
    if let Some(r) = &j.root {
        line.push_str(&format!(", because its dependency {r} fails"));
    }
    if !j.drv.is_empty() {
        line.push_str(&format!(
            ", log: {}",
            log_url(p, j.root.as_ref().unwrap_or(&j.drv))
        ));
    }
    line
}

fn comment(n: &Notice, p: &NotifyPolicy, mentions: &[String], quiet: &[String]) -> String {
    let mut s = format!(
        "**mergequeue**: #{} on `{}` {}:\n\n",
        n.change,
        n.branch,
        what(n)
    );
    for j in &n.jobs {
        s.push_str(&format!("- {}\n", job_line(p, j)));
    }
    if !mentions.is_empty() {
        s.push_str(&format!("\nMaintainers: {}", mentions.join(" ")));
    }
    if !quiet.is_empty() {
        let sep = if mentions.is_empty() {
            "\nMaintainers"
        } else {
            ";"
        };
        s.push_str(&format!("{sep} (not pinged): {}", quiet.join(", ")));
    }
    s.push_str(&format!("\n\nDetails: {}\n", change_url(n, p)));
    s
}

fn mail(n: &Notice, p: &NotifyPolicy, m: &Maintainer, to: &str, jobs: &[usize]) -> Mail {
    let verb = match n.event {
        NoticeEvent::PlannedLanding => "will break",
        NoticeEvent::NewlyBroken => "broke",
        NoticeEvent::Fixed => "fixed",
    };
    let subject = format!(
        "[mergequeue] {} {}: #{} {verb} {} job(s) you maintain",
        n.repo,
        n.branch,
        n.change,
        jobs.len()
    );
    let mut body = format!(
        "Change #{} ({}) on {} {} {}:\n\n",
        n.change,
        n.title,
        n.repo,
        n.branch,
        what(n)
    );
    for &i in jobs {
        let j = &n.jobs[i];
        body.push_str(&format!("* {}\n", job_line(p, j)));
        if !j.log_tail.is_empty() {
            for l in tail(&j.log_tail).lines() {
                body.push_str(&format!("    {l}\n"));
            }
        }
    }
    body.push_str(&format!(
        "\nDetails: {}\n\nYou get this because you maintain these jobs; ask for your handle \
         or address to be put on the opt-out list ([notify] opt_out) to get none.\n",
        change_url(n, p)
    ));
    Mail {
        owner: m.id().to_string(),
        to_name: m.name.clone(),
        to: to.to_string(),
        subject,
        body,
    }
}

fn webhook(n: &Notice, p: &NotifyPolicy, notified: &[String]) -> String {
    let jobs = n
        .jobs
        .iter()
        .map(|j| HookJob {
            attr: &j.attr,
            system: &j.system,
            drv: &j.drv,
            root: j.root.as_deref(),
            maintainers: j
                .maintainers
                .iter()
                .filter(|m| !opted_out(p, m))
                .map(Maintainer::id)
                .collect(),
            log_tail: tail(&j.log_tail),
            log_url: log_url(p, j.root.as_ref().unwrap_or(&j.drv)),
        })
        .collect();
    let hook = Hook {
        event: n.event.as_str(),
        repo: &n.repo,
        branch: &n.branch,
        change: n.change,
        title: &n.title,
        pr: n.pr,
        at: n.at,
        planned: n.planned,
        url: change_url(n, p),
        jobs,
        notified,
    };
    serde_json::to_string(&hook).expect("serialisable")
}

#[cfg(test)]
mod notify_props;
