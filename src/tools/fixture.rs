//! Synthetic Nix package sets for integration tests and `mergequeue demo`.
//!
//! [`generate`] writes a self-contained directory (no git; callers commit it) that needs no
//! nixpkgs and no network: every derivation is built by a static busybox copied into
//! `bootstrap/`, so it builds in the local store and in a chroot store alike.
//!
//! Layout of a generated set:
//!
//! ```text
//! bootstrap/busybox      copy of /bin/busybox (in a folder: busybox picks applets by argv[0])
//! lib.nix                { system }: { mk = { pname, version, deps, sleep, fail, eval, maintainers, features }: drv; }
//! maintainers.nix        { alice = { github = "alice"; name = "alice"; }; ... }
//! release.nix            { system ? builtins.currentSystem }: attrset of all packages
//! pkgs/<name>.nix        one file per package (so changes to different packages never conflict)
//! pkgs/python/<name>.nix the nested set `python.*` (`recurseForDerivations = true`)
//! pkgs/tested.nix        aggregate job depending on the core libraries (like Hydra's `tested`)
//! ```
//!
//! `release.nix` is a **function** `{ system ? builtins.currentSystem }:` returning the package
//! attrset; `release.nix` discovers packages with `builtins.readDir ./pkgs`, so adding a package
//! only adds a file. Each package file keeps every tweakable value on its own line
//! (`version`, `sleep`, `fail`, `eval`), which the [`PackageSet`] helpers edit in place.
//!
//! A build prints `building NAME-VERSION`, optionally sleeps, and writes `$out` (a file) with its
//! name-version and an md5 of its dependencies' outputs. A broken build prints
//! [`BUILD_FAILURE_MARKER`]` NAME-VERSION is broken` to stderr and exits 1.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The line a broken fixture build prints (to stderr) before `exit 1`.
pub const BUILD_FAILURE_MARKER: &str = "FIXTURE-BUILD-FAILURE:";

/// The aggregate job, like Hydra's `tested`.
pub const AGGREGATE: &str = "tested";

/// Core libraries with fixed dependencies, generated first (so everything else can depend on
/// them, which gives them nixpkgs-like reverse-dependency fan-out).
const CORE: &[(&str, &[&str])] = &[
    ("libc", &[]),
    ("zlib", &["libc"]),
    ("openssl", &["libc", "zlib"]),
    ("ncurses", &["libc"]),
    ("readline", &["libc", "ncurses"]),
    ("libffi", &["libc"]),
    ("sqlite", &["libc", "readline"]),
    ("curl", &["libc", "openssl", "zlib"]),
    ("libxml2", &["libc", "zlib"]),
    ("pcre2", &["libc"]),
    (
        "python3",
        &["libc", "libffi", "openssl", "readline", "sqlite", "zlib"],
    ),
    ("perl", &["libc"]),
];

/// Core packages the aggregate job depends on (those present).
const TESTED_DEPS: &[&str] = &["libc", "zlib", "openssl", "curl", "python3"];

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Number of packages (the aggregate `tested` job comes on top).
    pub packages: usize,
    pub seed: u64,
    /// Maximum number of direct dependencies a non-core package picks.
    pub max_deps: usize,
    /// (min, max) seconds each build sleeps; drawn uniformly per package, may be 0.
    pub build_secs: (f64, f64),
    /// Packages whose build is already broken (`exit 1`); never core libraries.
    pub broken: usize,
    /// GitHub handles; every package gets one or two of them.
    pub maintainers: Vec<String>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            packages: 300,
            seed: 1,
            max_deps: 4,
            build_secs: (0.0, 0.0),
            broken: 3,
            maintainers: ["alice", "bob", "carol", "dave", "erin", "frank"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

/// How [`PackageSet::break_eval_with`] makes an attribute fail to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalBreak {
    /// `throw "..."` (caught by `builtins.tryEval`).
    Throw,
    /// `abort "..."` (not caught by `builtins.tryEval`).
    Abort,
    /// `1 + "..."` (a type error, not caught by `builtins.tryEval`).
    TypeError,
}

impl EvalBreak {
    fn as_nix(self) -> &'static str {
        match self {
            EvalBreak::Throw => "throw",
            EvalBreak::Abort => "abort",
            EvalBreak::TypeError => "type-error",
        }
    }
}

/// A generated package set on disk, with helpers that edit its working tree.
#[derive(Debug, Clone)]
pub struct PackageSet {
    pub dir: PathBuf,
    /// Attribute paths of all jobs in generation (topological) order, nested ones as
    /// `python.NAME`, the aggregate [`AGGREGATE`] last.
    pub names: Vec<String>,
    /// Direct dependencies per attribute path.
    pub deps: BTreeMap<String, Vec<String>>,
    /// Packages whose build currently fails (kept up to date by the helpers).
    pub broken: Vec<String>,
    /// Packages that currently fail to evaluate (kept up to date by the helpers).
    pub eval_broken: Vec<String>,
    /// The core libraries present.
    pub core: Vec<String>,
    /// Maintainers per attribute path (GitHub handles).
    pub maintainers: BTreeMap<String, Vec<String>>,
}

const LIB_NIX: &str = r#"# Helpers of the generated package set (mergequeue fixture).
# Builds use only a static busybox, so they work in the local store and in chroot stores.
{ system }:
let
  bb = builtins.path { path = ./bootstrap; name = "bootstrap"; };
in
{
  mk = { pname, version, deps ? [ ], sleep ? "0", fail ? false, eval ? "ok", maintainers ? [ ], features ? [ ], random ? false }:
    if eval == "throw" then throw "fixture: ${pname} does not evaluate (throw)"
    else if eval == "abort" then abort "fixture: ${pname} does not evaluate (abort)"
    else if eval == "type-error" then 1 + "fixture: ${pname} does not evaluate (type error)"
    else
      # meta cannot go into `derivation` (a set cannot be coerced to a string): attach it after.
      # requiredSystemFeatures only when asked for: other derivations keep their hashes.
      derivation ({
        name = "${pname}-${version}";
        inherit system deps;
        builder = "${bb}/busybox";
        args = [ "sh" "-c" ''
          set -e
          echo "building ${pname}-${version}"
          ${if sleep == "0" || sleep == "0.00" then "" else "sleep ${sleep}"}
          ${if fail then "echo '__MARKER__ ${pname}-${version} is broken' >&2; exit 1" else ""}
          { echo "${pname}-${version}"; for d in $deps; do cat "$d"; done | md5sum; } > "$out"
          echo "built ${pname}-${version}"${if random then "; echo $RANDOM$RANDOM$RANDOM >> $out" else ""}
        '' ];
      } // (if features == [ ] then { } else { requiredSystemFeatures = features; }))
      // { meta = { inherit maintainers; description = "${pname}, a generated package"; }; };
}
"#;

const RELEASE_NIX: &str = r#"# The jobset of the generated package set (mergequeue fixture).
# A function: the evaluator calls it with { system = S; } for each configured system;
# `nix-build release.nix -A NAME` works too. Packages are discovered from ./pkgs, one file each;
# a directory becomes a nested set that CI recurses into.
{ system ? builtins.currentSystem }:
let
  lib = import ./lib.nix { inherit system; };
  m = import ./maintainers.nix;
  args = { inherit (lib) mk; inherit pkgs m; };
  loadDir = dir:
    let
      entries = builtins.readDir dir;
      load = file:
        let
          type = entries.${file};
          base = builtins.match "(.*)\\.nix" file;
        in
        if type == "directory" then
          [ { name = file; value = loadDir (dir + "/${file}") // { recurseForDerivations = true; }; } ]
        else if type == "regular" && base != null then
          [ { name = builtins.head base; value = import (dir + "/${file}") args; } ]
        else [ ];
    in
    builtins.listToAttrs (builtins.concatMap load (builtins.attrNames entries));
  pkgs = loadDir ./pkgs;
in
pkgs
"#;

/// Writes a package set for `spec` into `dir` (created if missing). Deterministic per spec.
pub fn generate(dir: &Path, spec: &Spec) -> io::Result<PackageSet> {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut names: Vec<String> = Vec::new();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut rdeps_count: Vec<usize> = Vec::new();
    let mut core = Vec::new();

    for (name, ds) in CORE.iter().take(spec.packages) {
        let ds: Vec<String> = ds
            .iter()
            .filter(|d| names.iter().any(|n| n == *d))
            .map(|d| d.to_string())
            .collect();
        for d in &ds {
            let i = names.iter().position(|n| n == d).unwrap();
            rdeps_count[i] += 1;
        }
        names.push(name.to_string());
        rdeps_count.push(0);
        deps.insert(name.to_string(), ds);
        core.push(name.to_string());
    }
    let has_python = names.iter().any(|n| n == "python3");
    let mut used: BTreeSet<String> = names.iter().cloned().collect();
    used.insert(AGGREGATE.to_string());
    used.insert("python".to_string());

    while names.len() < spec.packages {
        let python = has_python && rng.f64() < 0.12;
        let base = loop {
            let n = syllable_name(&mut rng);
            if used.insert(n.clone()) {
                break n;
            }
        };
        let name = if python {
            format!("python.{base}")
        } else {
            base
        };
        let mut ds: Vec<usize> = Vec::new();
        if python {
            ds.push(names.iter().position(|n| n == "python3").unwrap());
        } else if rng.f64() < 0.8 {
            ds.push(0); // libc, like stdenv
        }
        let want = if spec.max_deps == 0 {
            0
        } else {
            rng.usize(1..=spec.max_deps)
        };
        // Preferential attachment among eligible earlier packages: weight 1 + fan-out^1.2.
        let eligible: Vec<usize> = (0..names.len())
            .filter(|&j| python || !names[j].starts_with("python."))
            .collect();
        let weights: Vec<f64> = eligible
            .iter()
            .map(|&j| 1.0 + (rdeps_count[j] as f64).powf(1.2))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut tries = 0;
        while ds.len() < want && tries < 4 * spec.max_deps + 4 && !eligible.is_empty() {
            tries += 1;
            let mut x = rng.f64() * total;
            let mut pick = eligible[eligible.len() - 1];
            for (k, w) in weights.iter().enumerate() {
                if x < *w {
                    pick = eligible[k];
                    break;
                }
                x -= w;
            }
            if !ds.contains(&pick) {
                ds.push(pick);
            }
        }
        ds.sort_unstable();
        for &d in &ds {
            rdeps_count[d] += 1;
        }
        deps.insert(name.clone(), ds.iter().map(|&d| names[d].clone()).collect());
        names.push(name);
        rdeps_count.push(0);
    }

    // Per-package parameters, drawn in a fixed order.
    let mut files: Vec<PackageFile> = Vec::new();
    for name in &names {
        let (lo, hi) = spec.build_secs;
        let sleep = if hi <= 0.0 {
            0.0
        } else {
            lo.max(0.0) + rng.f64() * (hi - lo).max(0.0)
        };
        let mut ms = Vec::new();
        if !spec.maintainers.is_empty() {
            let k = if rng.f64() < 0.3 { 2 } else { 1 };
            for _ in 0..k {
                let mm = spec.maintainers[rng.usize(..spec.maintainers.len())].clone();
                if !ms.contains(&mm) {
                    ms.push(mm);
                }
            }
        }
        files.push(PackageFile {
            name: name.clone(),
            version: format!("1.{}.0", rng.u32(0..20)),
            deps: deps[name].clone(),
            sleep: format!("{sleep:.2}"),
            fail: false,
            eval: "ok",
            maintainers: ms,
            plain_maintainers: rng.f64() < 0.25,
        });
    }

    // Broken packages: never core, and never a dependency of the aggregate.
    let mut candidates: Vec<usize> = (0..names.len())
        .filter(|&i| !core.contains(&names[i]))
        .collect();
    let mut broken = Vec::new();
    for _ in 0..spec.broken.min(candidates.len()) {
        let i = candidates.remove(rng.usize(..candidates.len()));
        files[i].fail = true;
        broken.push(names[i].clone());
    }

    // The aggregate job.
    if !names.is_empty() {
        let tdeps: Vec<String> = TESTED_DEPS
            .iter()
            .filter(|d| names.iter().any(|n| n == *d))
            .map(|d| d.to_string())
            .collect();
        deps.insert(AGGREGATE.to_string(), tdeps.clone());
        files.push(PackageFile {
            name: AGGREGATE.to_string(),
            version: "1.0.0".into(),
            deps: tdeps,
            sleep: "0.00".into(),
            fail: false,
            eval: "ok",
            maintainers: spec.maintainers.iter().take(1).cloned().collect(),
            plain_maintainers: false,
        });
        names.push(AGGREGATE.to_string());
    }

    // Write the tree.
    fs::create_dir_all(dir.join("bootstrap"))?;
    fs::create_dir_all(dir.join("pkgs"))?;
    let bb = dir.join("bootstrap/busybox");
    if !bb.exists() {
        fs::copy("/bin/busybox", &bb)?;
    }
    fs::write(
        dir.join("lib.nix"),
        LIB_NIX.replace("__MARKER__", BUILD_FAILURE_MARKER),
    )?;
    fs::write(dir.join("release.nix"), RELEASE_NIX)?;
    let mut mnt =
        String::from("# Maintainers of the generated package set (mergequeue fixture).\n{\n");
    for m in &spec.maintainers {
        mnt.push_str(&format!(
            "  {} = {{ github = {}; name = {}; email = {}; }};\n",
            nix_str(m),
            nix_str(m),
            nix_str(m),
            nix_str(&format!("{m}@example.org"))
        ));
    }
    mnt.push_str("}\n");
    fs::write(dir.join("maintainers.nix"), mnt)?;
    let mut maintainers = BTreeMap::new();
    for f in &files {
        let path = package_file(dir, &f.name);
        fs::create_dir_all(path.parent().unwrap())?;
        fs::write(&path, f.render())?;
        maintainers.insert(f.name.clone(), f.maintainers.clone());
    }

    Ok(PackageSet {
        dir: dir.to_path_buf(),
        names,
        deps,
        broken,
        eval_broken: Vec::new(),
        core,
        maintainers,
    })
}

struct PackageFile {
    name: String,
    version: String,
    deps: Vec<String>,
    sleep: String,
    fail: bool,
    eval: &'static str,
    maintainers: Vec<String>,
    /// Write maintainers as plain strings instead of `m.NAME` attrsets.
    plain_maintainers: bool,
}

impl PackageFile {
    fn render(&self) -> String {
        let pname = self.name.rsplit('.').next().unwrap();
        let deps: Vec<String> = self.deps.iter().map(|d| format!("pkgs.{d}")).collect();
        let ms: Vec<String> = self
            .maintainers
            .iter()
            .map(|m| {
                if self.plain_maintainers {
                    nix_str(m)
                } else {
                    format!("m.{}", nix_str(m))
                }
            })
            .collect();
        format!(
            "# {name}: generated by the mergequeue fixture.\n\
             {{ mk, pkgs, m }}:\n\
             mk {{\n\
             \x20 pname = \"{pname}\";\n\
             \x20 version = \"{version}\";\n\
             \x20 deps = [ {deps} ];\n\
             \x20 sleep = \"{sleep}\";\n\
             \x20 fail = {fail};\n\
             \x20 eval = \"{eval}\";\n\
             \x20 maintainers = [ {ms} ];\n\
             }}\n",
            name = self.name,
            version = self.version,
            deps = deps.join(" "),
            sleep = self.sleep,
            fail = self.fail,
            eval = self.eval,
            ms = ms.join(" "),
        )
    }
}

fn nix_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' | '$' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

fn syllable_name(rng: &mut fastrand::Rng) -> String {
    const ONSETS: &[&str] = &[
        "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gr", "st",
        "tr", "pl", "kl",
    ];
    const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ou"];
    const CODAS: &[&str] = &["", "", "n", "r", "x", "s", "l", "k"];
    let syllables = rng.usize(2..=3);
    let mut s = String::new();
    for _ in 0..syllables {
        s.push_str(ONSETS[rng.usize(..ONSETS.len())]);
        s.push_str(VOWELS[rng.usize(..VOWELS.len())]);
    }
    s.push_str(CODAS[rng.usize(..CODAS.len())]);
    s
}

/// `pkgs/<attr with '.' as '/'>.nix`
fn package_file(dir: &Path, attr: &str) -> PathBuf {
    dir.join("pkgs")
        .join(format!("{}.nix", attr.replace('.', "/")))
}

impl PackageSet {
    /// The file that defines `attr`.
    pub fn file(&self, attr: &str) -> PathBuf {
        package_file(&self.dir, attr)
    }

    /// The `release.nix` path.
    pub fn release_nix(&self) -> PathBuf {
        self.dir.join("release.nix")
    }

    /// All transitive reverse dependencies of `name` (not `name` itself), sorted.
    pub fn reverse_deps(&self, name: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            for (p, ds) in &self.deps {
                if ds.contains(&n) && out.insert(p.clone()) {
                    todo.push(p.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    /// All transitive dependencies of `name` (not `name` itself), sorted.
    pub fn transitive_deps(&self, name: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            for d in self.deps.get(&n).into_iter().flatten() {
                if out.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    /// Packages nothing depends on (excluding the aggregate), in generation order.
    pub fn leaves(&self) -> Vec<String> {
        let depended: BTreeSet<&String> = self.deps.values().flatten().collect();
        self.names
            .iter()
            .filter(|n| n.as_str() != AGGREGATE && !depended.contains(n))
            .cloned()
            .collect()
    }

    /// Leaves that build (not broken) and whose dependencies all build.
    pub fn healthy_leaves(&self) -> Vec<String> {
        self.leaves()
            .into_iter()
            .filter(|n| {
                !self.broken.contains(n)
                    && !self.eval_broken.contains(n)
                    && self
                        .transitive_deps(n)
                        .iter()
                        .all(|d| !self.broken.contains(d) && !self.eval_broken.contains(d))
            })
            .collect()
    }

    /// Attribute paths inside the nested `python` set.
    pub fn nested(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| n.contains('.'))
            .cloned()
            .collect()
    }

    /// The current version of `name`.
    pub fn version(&self, name: &str) -> io::Result<String> {
        let text = fs::read_to_string(self.file(name))?;
        field(&text, "version")
            .map(|v| v.trim_matches('"').to_string())
            .ok_or_else(|| bad(name, "no version line"))
    }

    /// Bumps the patch version: changes the derivation, so `name` and all its reverse
    /// dependencies rebuild. Returns the new version.
    pub fn bump(&mut self, name: &str) -> io::Result<String> {
        let v = self.version(name)?;
        let mut parts: Vec<u64> = v.split('.').filter_map(|p| p.parse().ok()).collect();
        if parts.is_empty() {
            parts.push(0);
        }
        *parts.last_mut().unwrap() += 1;
        let nv = parts
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(".");
        self.set_field(name, "version", &format!("\"{nv}\""))?;
        Ok(nv)
    }

    /// Sets the version of `name` (changes its derivation like [`PackageSet::bump`]).
    pub fn set_version(&mut self, name: &str, version: &str) -> io::Result<()> {
        self.set_field(name, "version", &nix_str(version))
    }

    /// Makes the build of `name` print [`BUILD_FAILURE_MARKER`] and exit 1 (this changes the
    /// derivation, so reverse dependencies rebuild and fail with a dependency failure).
    pub fn break_build(&mut self, name: &str) -> io::Result<()> {
        self.set_field(name, "fail", "true")?;
        if !self.broken.iter().any(|b| b == name) {
            self.broken.push(name.to_string());
        }
        Ok(())
    }

    /// Makes attribute `name` `throw` (its reverse dependencies fail to evaluate too).
    pub fn break_eval(&mut self, name: &str) -> io::Result<()> {
        self.break_eval_with(name, EvalBreak::Throw)
    }

    /// Makes attribute `name` `abort` (not caught by `builtins.tryEval`).
    pub fn abort_eval(&mut self, name: &str) -> io::Result<()> {
        self.break_eval_with(name, EvalBreak::Abort)
    }

    pub fn break_eval_with(&mut self, name: &str, how: EvalBreak) -> io::Result<()> {
        self.set_field(name, "eval", &format!("\"{}\"", how.as_nix()))?;
        if !self.eval_broken.iter().any(|b| b == name) {
            self.eval_broken.push(name.to_string());
        }
        Ok(())
    }

    /// Undoes `break_build` and `break_eval*` for `name` (the version stays).
    pub fn fix(&mut self, name: &str) -> io::Result<()> {
        self.set_field(name, "fail", "false")?;
        self.set_field(name, "eval", "\"ok\"")?;
        self.broken.retain(|b| b != name);
        self.eval_broken.retain(|b| b != name);
        Ok(())
    }

    /// Sets how many seconds the build of `name` sleeps.
    pub fn set_sleep(&mut self, name: &str, secs: f64) -> io::Result<()> {
        self.set_field(name, "sleep", &format!("\"{secs:.2}\""))
    }

    /// Adds a new package file (attribute path `name`, e.g. `foo` or `python.foo`).
    pub fn add_package(&mut self, name: &str, deps: &[&str]) -> io::Result<()> {
        if self.names.iter().any(|n| n == name) {
            return Err(bad(name, "already exists"));
        }
        for d in deps {
            if !self.names.iter().any(|n| n == d) {
                return Err(bad(d, "unknown dependency"));
            }
        }
        let f = PackageFile {
            name: name.to_string(),
            version: "1.0.0".into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            sleep: "0.00".into(),
            fail: false,
            eval: "ok",
            maintainers: vec![],
            plain_maintainers: true,
        };
        let path = self.file(name);
        fs::create_dir_all(path.parent().unwrap())?;
        fs::write(&path, f.render())?;
        self.names.push(name.to_string());
        self.deps.insert(name.to_string(), f.deps);
        self.maintainers.insert(name.to_string(), vec![]);
        Ok(())
    }

    /// Sets `meta.maintainers` of `name` to plain handles (changes no derivation).
    pub fn set_maintainers(&mut self, name: &str, handles: &[&str]) -> io::Result<()> {
        let ms: Vec<String> = handles.iter().map(|h| nix_str(h)).collect();
        self.set_field(name, "maintainers", &format!("[ {} ]", ms.join(" ")))?;
        self.maintainers.insert(
            name.to_string(),
            handles.iter().map(|h| h.to_string()).collect(),
        );
        Ok(())
    }

    /// Deletes the file of `name` (reverse dependencies then fail to evaluate).
    pub fn remove_package(&mut self, name: &str) -> io::Result<()> {
        fs::remove_file(self.file(name))?;
        self.names.retain(|n| n != name);
        self.deps.remove(name);
        self.maintainers.remove(name);
        Ok(())
    }

    fn set_field(&self, name: &str, key: &str, value: &str) -> io::Result<()> {
        let path = self.file(name);
        let text = fs::read_to_string(&path)?;
        let prefix = format!("  {key} = ");
        let mut found = false;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with(&prefix) {
                    found = true;
                    format!("{prefix}{value};")
                } else {
                    l.to_string()
                }
            })
            .collect();
        if !found {
            return Err(bad(name, &format!("no `{key}` line")));
        }
        fs::write(&path, out.join("\n") + "\n")
    }
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("  {key} = ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim_end_matches(';'))
}

fn bad(name: &str, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_has_large_fan_out() {
        let dir = tempfile::tempdir().unwrap();
        let set = generate(dir.path(), &Spec::default()).unwrap();
        assert_eq!(set.names.len(), 301);
        let libc = set.reverse_deps("libc").len();
        assert!(libc > 200, "libc fan-out {libc}");
        let leaves = set.leaves().len();
        assert!(leaves > 50, "leaves {leaves}");
        assert!(!set.nested().is_empty());
        assert_eq!(set.broken.len(), 3);
    }

    #[test]
    fn edits_change_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = generate(
            dir.path(),
            &Spec {
                packages: 20,
                ..Spec::default()
            },
        )
        .unwrap();
        let name = set.leaves()[0].clone();
        let before = fs::read_to_string(set.file(&name)).unwrap();
        let v = set.version(&name).unwrap();
        let nv = set.bump(&name).unwrap();
        assert_ne!(v, nv);
        set.break_build(&name).unwrap();
        set.break_eval(&name).unwrap();
        let after = fs::read_to_string(set.file(&name)).unwrap();
        let changed = before
            .lines()
            .zip(after.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 3);
        set.fix(&name).unwrap();
        assert!(!set.broken.contains(&name));
        let fixed = fs::read_to_string(set.file(&name)).unwrap();
        assert_eq!(
            before
                .lines()
                .filter(|l| !l.contains("version"))
                .collect::<Vec<_>>(),
            fixed
                .lines()
                .filter(|l| !l.contains("version"))
                .collect::<Vec<_>>()
        );
    }
}
