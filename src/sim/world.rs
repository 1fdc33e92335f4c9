//! The simulated outside world: the accepted changes (generated up front from the seed),
//! git (commits as a landed history plus changes on top), evaluation and the ground truth
//! used by the invariant checks.
//!
//! A commit's content is `history[..l]` of its branch plus `extras`; a job's derivation
//! is determined by the package and the (commutative) sum of the hashes of the changes in
//! the commit that rebuild it. The branch tip's sums are kept in dense arrays, so the
//! value of any package at any commit is the tip's value corrected by the few changes
//! that differ. Evaluations are synthesised for a *scope*: the packages rebuilt by the
//! changes still queued or testing on the branch, plus the required jobs. Every job that
//! differs between a candidate and its base is in that scope and all others are
//! identical on both sides, so the core's `diff` sees exactly the real rebuild set
//! without a 100k-job evaluation per commit.

use std::collections::{HashMap, HashSet};

use super::graph::{Graph, Pkg};
use super::scenario::Scenario;
use crate::core::evaluation::{EvalOutcome, Evaluation, Job, JobKey, JobResult};
use crate::core::{Millis, SourcePoll};

pub const HOUR: Millis = 3_600_000;
pub const DAY: Millis = 24 * HOUR;

#[derive(Debug, Clone)]
pub struct ChangeSpec {
    pub idx: usize,
    pub at: Millis,
    pub lane: usize,
    pub root: Pkg,
    /// The reverse closure of `root`, sorted.
    pub rebuild: Vec<Pkg>,
    pub h: u64,
    /// Breaks the build of this package and (as dependency failures) its dependents.
    pub break_root: Option<Pkg>,
    pub breaks: Vec<Pkg>,
    pub eval_error: bool,
    pub breaks_eval: bool,
    pub conflict: bool,
    pub small: bool,
}

impl ChangeSpec {
    /// Whether the change genuinely must not land.
    pub fn bad(&self) -> bool {
        self.break_root.is_some() || self.eval_error || self.breaks_eval || self.conflict
    }
}

#[derive(Debug, Clone)]
pub struct DrvInfo {
    pub pkg: Pkg,
    pub sys: u8,
    pub broken: bool,
    /// The package's own failure (not a dependency's).
    pub root: bool,
    /// The branch of the first evaluation that produced it.
    pub lane: u8,
}

struct Branch {
    name: String,
    history: Vec<u32>,
    tip: u32,
    /// Every commit the branch pointed at, oldest first, with the history length there
    /// (its first-parent chain, for channels).
    tips: Vec<(u32, usize)>,
    val: Vec<u64>,
    brk: Vec<u16>,
    everr: Vec<u16>,
}

struct Commit {
    branch: u16,
    l: u32,
    extras: Vec<u32>,
}

/// A job as the world sees it.
#[derive(Debug, Clone)]
pub struct JobRef {
    pub pkg: Pkg,
    pub sys: u8,
    pub drv: String,
    pub broken: bool,
    pub root: bool,
    pub everr: bool,
    /// Changed from the package set the simulation starts with (never built before it).
    pub fresh: bool,
}

pub struct World {
    pub graph: Graph,
    pub changes: Vec<ChangeSpec>,
    pub systems: Vec<String>,
    branches: Vec<Branch>,
    commits: Vec<Commit>,
    ids: Vec<String>,
    by_id: HashMap<String, u32>,
    interned: HashMap<(u16, u32, Vec<u32>), u32>,
    heads: HashMap<String, usize>,
    pub landed_at: Vec<Option<Millis>>,
    pub drvs: HashMap<String, DrvInfo>,
    /// A fresh derivation's fresh inputs (on its system): built before it, so that a
    /// candidate takes its critical path, not its longest single build.
    pub inputs: HashMap<String, Box<[String]>>,
    evaluated: HashSet<u32>,
    /// Spurious failures reported so far (a flaky base build can mask a regression).
    pub spurious: u64,
    pub regressions: Vec<usize>,
    /// The queue runs the marking-broken policy: a change that breaks jobs other than
    /// the required aggregate may land (after its grace period), with them marked
    /// broken; it is counted in `marked_broken`, not as a regression.
    pub marking_broken: bool,
    pub marked_broken: Vec<usize>,
    // Scratch, indexed by package.
    mark: Vec<u32>,
    gen: u32,
    acc: Vec<(u64, i32, i32)>,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

pub fn head_of(idx: usize) -> String {
    format!(
        "{:08x}{:032x}",
        0xffff_0000u32 | idx as u32,
        mix(idx as u64 + 7)
    )
}

pub fn ref_of(idx: usize) -> String {
    format!("refs/pull/{idx}/head")
}

pub fn idx_of_ref(r: &str) -> Option<usize> {
    r.strip_prefix("refs/pull/")?
        .strip_suffix("/head")?
        .parse()
        .ok()
}

/// The workload: arrival times (Poisson, thinned by hour of day and weekday) and what each
/// change does, all from the scenario and the seed, identical for every policy.
fn workload(sc: &Scenario, graph: &mut Graph, seed: u64) -> Vec<ChangeSpec> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x776f_726b_6c6f_6164);
    let hsum: f64 = sc.hourly_profile.iter().sum();
    let wsum: f64 = sc.weekday_factor.iter().sum();
    let rate = |t: Millis| {
        let day = (t / DAY) as usize;
        let wd = (day + sc.start_weekday as usize) % 7;
        let h = ((t % DAY) / HOUR) as usize;
        sc.changes_per_day / DAY as f64
            * (sc.weekday_factor[wd] * 7.0 / wsum)
            * (sc.hourly_profile[h] * 24.0 / hsum)
    };
    let max_rate = sc.changes_per_day / DAY as f64
        * (sc.weekday_factor.iter().cloned().fold(0.0, f64::max) * 7.0 / wsum)
        * (sc.hourly_profile.iter().cloned().fold(0.0, f64::max) * 24.0 / hsum);
    let end = (sc.days * DAY as f64) as Millis;
    let wtotal: f64 = sc.sizes.iter().map(|c| c.weight).sum();
    let f = &sc.failures;
    let mut out: Vec<ChangeSpec> = vec![];
    let mut t = 0.0f64;
    loop {
        t += -rng.f64().max(1e-300).ln() / max_rate;
        if t >= end as f64 {
            break;
        }
        if rng.f64() * max_rate > rate(t as Millis) {
            continue;
        }
        let mut x = rng.f64() * wtotal;
        let mut class = 0;
        for (i, c) in sc.sizes.iter().enumerate() {
            if x < c.weight {
                class = i;
                break;
            }
            x -= c.weight;
            class = i;
        }
        // The nearest class with packages in it.
        let b = (0..sc.sizes.len())
            .map(|d| [class.saturating_sub(d), (class + d).min(sc.sizes.len() - 1)])
            .flat_map(|x| x.into_iter())
            .find(|&b| !graph.buckets[b].is_empty())
            .unwrap_or(0);
        let bucket = &graph.buckets[b];
        if bucket.is_empty() {
            break;
        }
        let root = bucket[rng.usize(..bucket.len())];
        let rebuild = graph.closure(root);
        let idx = out.len();
        let mut break_root = None;
        if rng.f64() < f.build_failure {
            // Usually the package itself; sometimes one of its dependents.
            let cand = if rng.f64() < 0.6 {
                root
            } else {
                rebuild[rng.usize(..rebuild.len())]
            };
            if !graph.broken[cand as usize] && Some(cand) != graph.tested {
                break_root = Some(cand);
            }
        }
        let breaks = break_root.map_or(vec![], |b| graph.closure(b));
        let eval_error = Some(root) != graph.tested && rng.f64() < f.eval_error;
        let breaks_eval = rng.f64() < f.whole_eval_failure;
        let conflict = rng.f64() < f.conflict;
        let lane = sc.sizes[b]
            .lane
            .as_ref()
            .and_then(|name| sc.lanes.iter().position(|l| &l.branch == name))
            .unwrap_or(0);
        let (total_ms, sequential_ms) = build_hours(graph, &rebuild);
        out.push(ChangeSpec {
            idx,
            at: t as Millis,
            lane,
            root,
            rebuild,
            h: mix(seed ^ (idx as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
            break_root,
            breaks,
            eval_error,
            breaks_eval,
            conflict,
            small: (total_ms as f64) < sc.small_total_hours * HOUR as f64
                && (sequential_ms as f64) < sc.small_sequential_hours * HOUR as f64,
        });
    }
    out
}

/// The build time of a rebuild set at speed 1 (every system its packages have jobs
/// on) and its longest chain of builds (the critical path), in milliseconds. The set is
/// sorted and a package's dependencies are lower-numbered: one pass in order.
pub fn build_hours(graph: &Graph, rebuild: &[Pkg]) -> (u64, u64) {
    let mut before: HashMap<Pkg, u64> = HashMap::new();
    let (mut total, mut longest) = (0u64, 0u64);
    for &p in rebuild {
        let d = graph.dur_ms[p as usize];
        total += d * u64::from(graph.avail[p as usize].count_ones());
        let end = before.get(&p).copied().unwrap_or(0) + d;
        longest = longest.max(end);
        for &y in graph.dependents(p) {
            let b = before.entry(y).or_default();
            *b = (*b).max(end);
        }
    }
    (total, longest)
}

impl World {
    pub fn new(sc: &Scenario, seed: u64) -> World {
        let mut graph = Graph::generate(sc, seed);
        let changes = workload(sc, &mut graph, seed);
        let n = graph.n;
        let mut w = World {
            systems: sc.graph.systems.iter().map(|s| s.name.clone()).collect(),
            branches: vec![],
            commits: vec![],
            ids: vec![],
            by_id: HashMap::new(),
            interned: HashMap::new(),
            heads: HashMap::new(),
            landed_at: vec![None; changes.len()],
            drvs: HashMap::new(),
            inputs: HashMap::new(),
            evaluated: HashSet::new(),
            spurious: 0,
            regressions: vec![],
            marking_broken: false,
            marked_broken: vec![],
            mark: vec![0; n],
            gen: 0,
            acc: vec![(0, 0, 0); n],
            graph,
            changes,
        };
        for (b, lane) in sc.lanes.iter().enumerate() {
            let tip = w.intern(b as u16, 0, vec![]);
            w.branches.push(Branch {
                name: lane.branch.clone(),
                history: vec![],
                tip,
                tips: vec![(tip, 0)],
                val: vec![0; n],
                brk: vec![0; n],
                everr: vec![0; n],
            });
        }
        for c in 0..w.changes.len() {
            w.heads.insert(head_of(c), c);
        }
        w
    }

    fn intern(&mut self, branch: u16, l: u32, extras: Vec<u32>) -> u32 {
        let k = (branch, l, extras);
        if let Some(&c) = self.interned.get(&k) {
            return c;
        }
        let id = self.commits.len() as u32;
        let sha = format!("{:08x}{:032x}", id, mix(id as u64 ^ 0xc0ffee));
        self.by_id.insert(sha.clone(), id);
        self.ids.push(sha);
        self.commits.push(Commit {
            branch: k.0,
            l: k.1,
            extras: k.2.clone(),
        });
        self.interned.insert(k, id);
        id
    }

    pub fn commit_id(&self, c: u32) -> &str {
        &self.ids[c as usize]
    }

    pub fn commit(&self, sha: &str) -> Option<u32> {
        self.by_id.get(sha).copied()
    }

    pub fn is_evaluated(&self, c: u32) -> bool {
        self.evaluated.contains(&c)
    }

    pub fn branch_name(&self, c: u32) -> &str {
        &self.branches[self.commits[c as usize].branch as usize].name
    }

    pub fn change_of_head(&self, head: &str) -> Option<usize> {
        self.heads.get(head).copied()
    }

    pub fn branch_index(&self, name: &str) -> Option<usize> {
        self.branches.iter().position(|b| b.name == name)
    }

    pub fn tip(&self, branch: usize) -> u32 {
        self.branches[branch].tip
    }

    pub fn history(&self, branch: usize) -> &[u32] {
        &self.branches[branch].history
    }

    /// (l, extras) with the extras that already are in the history folded into l.
    fn norm(&self, c: u32) -> (usize, &[u32]) {
        let cm = &self.commits[c as usize];
        let h = &self.branches[cm.branch as usize].history;
        let mut l = cm.l as usize;
        let mut i = 0;
        while i < cm.extras.len() && h.get(l) == Some(&cm.extras[i]) {
            l += 1;
            i += 1;
        }
        (l, &cm.extras[i..])
    }

    /// Merges one change onto a commit; a conflict names the file.
    pub fn merge(&mut self, base: u32, change: usize) -> Result<u32, String> {
        let ch = &self.changes[change];
        let root = ch.root;
        let branch = self.commits[base as usize].branch;
        let (l, extras) = self.norm(base);
        let clash = extras
            .iter()
            .any(|&o| o as usize != change && self.changes[o as usize].root == root);
        if ch.conflict || clash {
            return Err(format!(
                "CONFLICT (content): merge conflict in pkgs/p{root}/default.nix"
            ));
        }
        let l = l as u32;
        let mut extras = extras.to_vec();
        extras.push(change as u32);
        Ok(self.intern(branch, l, extras))
    }

    pub fn merge_all(&mut self, base: u32, changes: &[usize]) -> Result<u32, String> {
        let mut cur = base;
        for &c in changes {
            cur = self.merge(cur, c)?;
        }
        Ok(cur)
    }

    fn next_gen(&mut self) -> u32 {
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.gen = 1;
        }
        self.gen
    }

    /// Marks the packages and returns them deduplicated.
    fn scope(&mut self, sets: &[&[Pkg]]) -> Vec<Pkg> {
        let gen = self.next_gen();
        let mut out = vec![];
        for s in sets {
            for &p in *s {
                if self.mark[p as usize] != gen {
                    self.mark[p as usize] = gen;
                    out.push(p);
                }
            }
        }
        out.sort_unstable();
        out
    }

    fn apply(&mut self, ch: usize, sign: i32) {
        let gen = self.gen;
        let c = &self.changes[ch];
        for &p in &c.rebuild {
            if self.mark[p as usize] == gen {
                let a = &mut self.acc[p as usize];
                a.0 = if sign > 0 {
                    a.0.wrapping_add(c.h)
                } else {
                    a.0.wrapping_sub(c.h)
                };
            }
        }
        for &p in &c.breaks {
            if self.mark[p as usize] == gen {
                self.acc[p as usize].1 += sign;
            }
        }
        if c.eval_error && self.mark[c.root as usize] == gen {
            self.acc[c.root as usize].2 += sign;
        }
    }

    /// Jobs of the marked packages `pkgs` at commit `c` (call right after `scope`).
    fn jobs_at(&mut self, c: u32, pkgs: &[Pkg]) -> Vec<JobRef> {
        let (l, extras) = self.norm(c);
        let extras = extras.to_vec();
        let b = self.commits[c as usize].branch as usize;
        let stale: Vec<u32> = self.branches[b].history[l..].to_vec();
        for &p in pkgs {
            let br = &self.branches[b];
            self.acc[p as usize] = (
                br.val[p as usize],
                br.brk[p as usize] as i32,
                br.everr[p as usize] as i32,
            );
        }
        for &ch in &stale {
            self.apply(ch as usize, -1);
        }
        for &ch in &extras {
            self.apply(ch as usize, 1);
        }
        let roots: Vec<Pkg> = extras
            .iter()
            .filter_map(|&x| self.changes[x as usize].break_root)
            .collect();
        let mut out = Vec::with_capacity(pkgs.len() * self.systems.len());
        for &p in pkgs {
            let (val, brk, ev) = self.acc[p as usize];
            let pre = self.graph.broken[p as usize];
            for s in 0..self.systems.len() {
                if self.graph.avail[p as usize] & (1 << s) == 0 {
                    continue;
                }
                let h1 = mix(val ^ mix(p as u64 + 1) ^ (s as u64 + 1) << 56);
                let drv = format!("/nix/store/{h1:016x}{:016x}-p{p}.drv", mix(h1));
                out.push(JobRef {
                    pkg: p,
                    sys: s as u8,
                    drv,
                    broken: pre || brk > 0,
                    root: pre || roots.contains(&p),
                    everr: ev > 0,
                    fresh: val != 0,
                });
            }
        }
        out
    }

    fn register(&mut self, c: u32, jobs: &[JobRef]) {
        let lane = self.commits[c as usize].branch as u8;
        // Dependencies point to lower-numbered packages: a fresh job is an input of the
        // jobs of its dependents on its system.
        let at: HashMap<(Pkg, u8), usize> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| ((j.pkg, j.sys), i))
            .collect();
        let mut inputs: HashMap<usize, Vec<String>> = HashMap::new();
        // A package broken before the simulation starts does not break its dependents in
        // this world (their base versions build): it is no input anyone waits for.
        for j in jobs
            .iter()
            .filter(|j| j.fresh && !self.graph.broken[j.pkg as usize])
        {
            for &y in self.graph.dependents(j.pkg) {
                if let Some(&i) = at.get(&(y, j.sys)) {
                    inputs.entry(i).or_default().push(j.drv.clone());
                }
            }
        }
        for (i, v) in inputs {
            if !self.inputs.contains_key(&jobs[i].drv) {
                self.inputs
                    .insert(jobs[i].drv.clone(), v.into_boxed_slice());
            }
        }
        for j in jobs {
            if !self.drvs.contains_key(&j.drv) {
                self.drvs.insert(
                    j.drv.clone(),
                    DrvInfo {
                        pkg: j.pkg,
                        sys: j.sys,
                        broken: j.broken,
                        root: j.root,
                        lane,
                    },
                );
            }
        }
    }

    fn to_results(&self, jobs: Vec<JobRef>) -> Vec<(JobKey, JobResult)> {
        jobs.into_iter()
            .map(|j| {
                let key = JobKey {
                    attr: self.graph.attr(j.pkg),
                    system: self.systems[j.sys as usize].clone(),
                };
                let r = if j.everr {
                    JobResult::Error(format!(
                        "error: attribute 'src' missing\n       at pkgs/p{}/default.nix:12:3",
                        j.pkg
                    ))
                } else {
                    let out = j.drv.trim_end_matches(".drv").to_string();
                    JobResult::Ok(Job {
                        drv_path: j.drv,
                        outputs: vec![("out".into(), out)],
                        maintainers: vec![],
                    })
                };
                (key, r)
            })
            .collect()
    }

    fn whole_eval_error(&self, c: u32) -> Option<String> {
        let (_, extras) = self.norm(c);
        extras
            .iter()
            .find(|&&x| self.changes[x as usize].breaks_eval)
            .map(|x| format!("error: syntax error, unexpected '}}' (introduced by change {x})"))
    }

    /// The evaluation of a commit restricted to the scope (packages the given changes
    /// rebuild, plus the `tested` aggregate).
    pub fn evaluate(&mut self, c: u32, scope_changes: &[usize]) -> Evaluation {
        self.evaluated.insert(c);
        let sha = self.commit_id(c).to_string();
        if let Some(msg) = self.whole_eval_error(c) {
            return Evaluation::new(sha, EvalOutcome::Failed(msg), vec![]);
        }
        let (l, extras) = self.norm(c);
        let b = self.commits[c as usize].branch as usize;
        let mut involved: Vec<usize> = scope_changes.to_vec();
        involved.extend(extras.iter().map(|&x| x as usize));
        involved.extend(self.branches[b].history[l..].iter().map(|&x| x as usize));
        let tested: Vec<Pkg> = self.graph.tested.into_iter().collect();
        let changes = std::mem::take(&mut self.changes);
        let mut sets: Vec<&[Pkg]> = involved.iter().map(|&x| &changes[x].rebuild[..]).collect();
        sets.push(&tested);
        let pkgs = self.scope(&sets);
        self.changes = changes;
        let jobs = self.jobs_at(c, &pkgs);
        self.register(c, &jobs);
        Evaluation::new(sha, EvalOutcome::Ok, self.to_results(jobs))
    }

    /// Only the given attributes at a commit.
    pub fn evaluate_attrs(&mut self, c: u32, attrs: &[String]) -> Vec<(JobKey, JobResult)> {
        let ps: Vec<Pkg> = attrs
            .iter()
            .filter_map(|a| self.graph.parse_attr(a))
            .collect();
        let pkgs = self.scope(&[&ps]);
        let jobs = self.jobs_at(c, &pkgs);
        self.register(c, &jobs);
        let mut r = self.to_results(jobs);
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    }

    /// For the baselines: every job that differs between `base` and `c`, plus `tested`.
    pub fn gate_jobs(&mut self, base: u32, c: u32) -> Result<Vec<JobRef>, String> {
        self.evaluated.insert(c);
        if let Some(msg) = self.whole_eval_error(c) {
            return Err(msg);
        }
        let (lb, _) = self.norm(base);
        let (l, extras) = self.norm(c);
        let b = self.commits[c as usize].branch as usize;
        let mut involved: Vec<usize> = extras.iter().map(|&x| x as usize).collect();
        involved.extend(
            self.branches[b].history[lb.min(l)..l]
                .iter()
                .map(|&x| x as usize),
        );
        let tested: Vec<Pkg> = self.graph.tested.into_iter().collect();
        let changes = std::mem::take(&mut self.changes);
        let mut sets: Vec<&[Pkg]> = involved.iter().map(|&x| &changes[x].rebuild[..]).collect();
        sets.push(&tested);
        let pkgs = self.scope(&sets);
        self.changes = changes;
        let jobs = self.jobs_at(c, &pkgs);
        if let Some(j) = jobs.iter().find(|j| j.everr) {
            return Err(format!("error: p{} fails to evaluate", j.pkg));
        }
        self.register(c, &jobs);
        Ok(jobs)
    }

    /// Position of a commit on a branch's first-parent chain of tips.
    pub fn tip_index(&self, branch: usize, c: u32) -> Option<usize> {
        self.branches[branch].tips.iter().rposition(|t| t.0 == c)
    }

    /// The changes a branch contained when it pointed at its `i`-th tip.
    pub fn history_at(&self, branch: usize, i: usize) -> &[u32] {
        &self.branches[branch].history[..self.branches[branch].tips[i].1]
    }

    /// What a channel's shell sees when it polls: the source head, whether it descends
    /// from the channel's revision, and the commits strictly between, newest first.
    pub fn poll_source(&self, branch: usize, target: Option<u32>, cap: usize) -> SourcePoll {
        let tips = &self.branches[branch].tips;
        let head = self.branches[branch].tip;
        let (descends, between) = match target {
            None => (true, vec![]),
            Some(t) => match self.tip_index(branch, t) {
                None => (false, vec![]),
                Some(i) => (
                    true,
                    // Strictly between: after the target, before the head.
                    tips.get(i + 1..tips.len() - 1)
                        .unwrap_or(&[])
                        .iter()
                        .rev()
                        .take(cap)
                        .map(|&(c, _)| self.commit_id(c).to_string())
                        .collect(),
                ),
            },
        };
        SourcePoll {
            head: self.commit_id(head).to_string(),
            target: target.map(|t| self.commit_id(t).to_string()),
            target_time: None,
            descends,
            between,
        }
    }

    /// The first gate job that cannot build at `c` (broken or failing to evaluate).
    pub fn gate_broken(&mut self, c: u32, attrs: &[String]) -> Option<String> {
        if let Some(msg) = self.whole_eval_error(c) {
            return Some(msg);
        }
        let ps: Vec<Pkg> = attrs
            .iter()
            .filter_map(|a| self.graph.parse_attr(a))
            .collect();
        let jobs = self.jobs_at(c, &ps);
        jobs.iter()
            .find(|j| j.broken || j.everr)
            .map(|j| format!("gate job p{} ({}) cannot build", j.pkg, j.drv))
    }

    /// Fast-forwards the branch from `old` to `new` (compare-and-swap on `old`). Checks the
    /// non-negotiables: only fast-forwards, only to evaluated (tested) commits, each change
    /// at most once. Returns Err(violation) for a broken invariant; Ok(None) when landed
    /// (or already there), Ok(Some(tip)) when the branch is no longer at `old`.
    pub fn land(&mut self, old: u32, new: u32, now: Millis) -> Result<Option<u32>, String> {
        let b = self.commits[new as usize].branch as usize;
        let (ln, en) = self.norm(new);
        let en = en.to_vec();
        if en.is_empty() && ln <= self.branches[b].history.len() {
            // Already contained: re-landing after a restart is idempotent.
            return Ok(None);
        }
        let tip = self.branches[b].tip;
        if tip != old {
            return Ok(Some(tip));
        }
        if ln != self.branches[b].history.len() || self.commits[old as usize].branch as usize != b {
            return Err(format!(
                "landing {} over {} is not a fast-forward",
                self.commit_id(new),
                self.commit_id(old)
            ));
        }
        if !self.evaluated.contains(&new) {
            return Err(format!(
                "landing {} which was never evaluated",
                self.commit_id(new)
            ));
        }
        for &x in &en {
            let x = x as usize;
            if self.landed_at[x].is_some() {
                return Err(format!("change {x} landed twice"));
            }
            let ch = &self.changes[x];
            // A package that already failed on the branch and now fails to evaluate is
            // still failing (Hydra's sense), not newly broken: the change may land.
            let r = ch.root as usize;
            let br = &self.branches[b];
            let was_failing = self.graph.broken[r] || br.brk[r] > 0 || br.everr[r] > 0;
            let marked = self.marking_broken
                && (ch.eval_error || ch.break_root.is_some())
                && !self.graph.tested.is_some_and(|t| ch.breaks.contains(&t));
            if marked {
                self.marked_broken.push(x);
            }
            if ch.breaks_eval || (ch.eval_error && !was_failing && !marked) || ch.conflict {
                return Err(format!(
                    "change {x} landed although it does not evaluate or merge"
                ));
            }
            if ch.break_root.is_some() && !marked {
                if self.spurious == 0 {
                    return Err(format!(
                        "change {x} landed although it breaks p{} (no spurious failure could have masked it)",
                        ch.break_root.unwrap_or(0)
                    ));
                }
                self.regressions.push(x);
            }
        }
        let changes = std::mem::take(&mut self.changes);
        let br = &mut self.branches[b];
        for &x in &en {
            let ch = &changes[x as usize];
            for &p in &ch.rebuild {
                br.val[p as usize] = br.val[p as usize].wrapping_add(ch.h);
            }
            for &p in &ch.breaks {
                br.brk[p as usize] += 1;
            }
            if ch.eval_error {
                br.everr[ch.root as usize] += 1;
            }
            br.history.push(x);
        }
        br.tip = new;
        br.tips.push((new, br.history.len()));
        self.changes = changes;
        for &x in &en {
            self.landed_at[x as usize] = Some(now);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[ignore]
    fn print_nixpkgs_stats() {
        let sc =
            super::super::Scenario::load(std::path::Path::new("scenarios/nixpkgs.toml")).unwrap();
        let w = super::World::new(&sc, 1);
        for (i, b) in w.graph.buckets.iter().enumerate() {
            eprintln!("bucket {i}: {} packages", b.len());
        }
        let mut sizes: Vec<(usize, usize)> = w
            .changes
            .iter()
            .map(|c| (c.lane, c.rebuild.len()))
            .collect();
        sizes.sort();
        eprintln!(
            "{:?}",
            sizes.iter().filter(|s| s.1 > 100).collect::<Vec<_>>()
        );
        eprintln!(
            "total rebuilds {}",
            sizes.iter().map(|s| s.1).sum::<usize>()
        );
    }
}
