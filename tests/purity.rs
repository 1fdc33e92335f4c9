//! The core is pure: no code under `src/core/` reads a clock, draws random numbers,
//! touches files, processes, sockets or the environment, or uses the shell, the tools or
//! the simulation. Test-only code is exempt: files named `*tests.rs` or `*_props.rs`
//! (which must be declared under `#[cfg(test)]`) and items gated by `#[cfg(test)]`.
//! Comments and the contents of string literals are not code and are not checked.
//! The modules of the shell and of the core import each other without cycles.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What the core must not use. Each matches where it does not continue an identifier
/// (`rand::` does not match `operand::`; `fastrand` is listed on its own).
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::process",
    "std::net",
    "tokio",
    "SystemTime",
    "Instant::now",
    "std::time::Instant",
    "fastrand",
    "rand::",
    "std::env",
    "crate::shell",
    "crate::tools",
    "crate::sim",
    "hyper",
    "rusqlite",
    "git2",
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_str().unwrap();
    name.ends_with("tests.rs") || name.ends_with("_props.rs")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Blanks comments and the contents of string and character literals (newlines kept),
/// so that what remains is code and every character keeps its line.
fn code_only(src: &str) -> Vec<char> {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let mut out = c.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for ch in &mut out[from..to.min(n)] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut i = 0;
    while i < n {
        match c[i] {
            '/' if at(i + 1) == '/' => {
                let mut j = i;
                while j < n && c[j] != '\n' {
                    j += 1;
                }
                blank(&mut out, i, j);
                i = j;
            }
            '/' if at(i + 1) == '*' => {
                let (mut j, mut depth) = (i + 2, 1);
                while j < n && depth > 0 {
                    if c[j] == '/' && at(j + 1) == '*' {
                        depth += 1;
                        j += 2;
                    } else if c[j] == '*' && at(j + 1) == '/' {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                blank(&mut out, i, j);
                i = j;
            }
            '"' => {
                let mut j = i + 1;
                while j < n && c[j] != '"' {
                    j += if c[j] == '\\' { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j);
                i = j + 1;
            }
            'r' if matches!(at(i + 1), '"' | '#')
                && (i == 0
                    || !is_ident(c[i - 1])
                    || (c[i - 1] == 'b' && (i == 1 || !is_ident(c[i - 2])))) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while at(j) == '#' {
                    hashes += 1;
                    j += 1;
                }
                if at(j) != '"' {
                    i += 1;
                    continue;
                }
                let start = j + 1;
                j = start;
                while j < n && !(c[j] == '"' && (1..=hashes).all(|h| at(j + h) == '#')) {
                    j += 1;
                }
                blank(&mut out, start, j);
                i = j + 1 + hashes;
            }
            '\'' if at(i + 1) == '\\' => {
                let mut j = i + 3;
                while j < n && c[j] != '\'' {
                    j += 1;
                }
                blank(&mut out, i + 1, j);
                i = j + 1;
            }
            '\'' if at(i + 2) == '\'' => {
                blank(&mut out, i + 1, i + 2);
                i += 3;
            }
            _ => i += 1,
        }
    }
    out
}

/// Blanks every item gated by `#[cfg(test)]` in `code` and returns the names of the
/// modules so declared without a body (`#[cfg(test)] mod tests;`).
fn blank_test_items(code: &mut [char]) -> BTreeSet<String> {
    let n = code.len();
    let mut gated_mods = BTreeSet::new();
    // Ends the attribute starting at `i` (`#[` ... matching `]`).
    let attr_end = |code: &[char], i: usize| {
        let mut depth = 0;
        let mut j = i + 1;
        while j < n {
            match code[j] {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        n
    };
    let mut i = 0;
    while i + 1 < n {
        if !(code[i] == '#' && code[i + 1] == '[') {
            i += 1;
            continue;
        }
        let end = attr_end(code, i);
        let attr: String = code[i..end].iter().filter(|c| !c.is_whitespace()).collect();
        if attr != "#[cfg(test)]" {
            i = end;
            continue;
        }
        // Skip further attributes, then the item: up to `;` or its matching `}`.
        let mut j = end;
        loop {
            while j < n && code[j].is_whitespace() {
                j += 1;
            }
            if j + 1 < n && code[j] == '#' && code[j + 1] == '[' {
                j = attr_end(code, j);
            } else {
                break;
            }
        }
        let item_start = j;
        let mut depth = 0;
        while j < n {
            match code[j] {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    j += 1;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        let item: String = code[item_start..j].iter().collect();
        let words: Vec<&str> = item
            .trim_end_matches(';')
            .split_whitespace()
            .filter(|w| !w.starts_with("pub"))
            .collect();
        if item.ends_with(';') && words.len() == 2 && words[0] == "mod" {
            gated_mods.insert(words[1].to_string());
        }
        for ch in &mut code[i..j] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = j;
    }
    gated_mods
}

/// Expands a `use` tree (whitespace removed) into flat paths: `std::{fs,io}` gives
/// `std::fs` and `std::io`.
fn expand_use(prefix: &str, tree: &str, out: &mut Vec<String>) {
    // Split at top-level commas.
    let mut parts = vec![];
    let (mut depth, mut start) = (0, 0);
    for (k, ch) in tree.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        if let Some(open) = part.find('{') {
            let inner = &part[open + 1..part.rfind('}').unwrap_or(part.len())];
            expand_use(&format!("{prefix}{}", &part[..open]), inner, out);
        } else {
            out.push(format!("{prefix}{part}"));
        }
    }
}

fn find_bounded(hay: &str, pat: &str) -> Vec<usize> {
    hay.match_indices(pat)
        .map(|(k, _)| k)
        .filter(|&k| !hay[..k].chars().next_back().is_some_and(is_ident))
        .collect()
}

/// The violations in one file's source: (line, what it uses, the line's text).
fn violations(src: &str) -> (Vec<(usize, &'static str, String)>, BTreeSet<String>) {
    let mut code = code_only(src);
    let gated_mods = blank_test_items(&mut code);
    let code: String = code.into_iter().collect();
    let src_lines: Vec<&str> = src.lines().collect();
    let line_of = |byte: usize| code[..byte].matches('\n').count() + 1;
    let mut found = BTreeSet::new();
    for pat in FORBIDDEN {
        for k in find_bounded(&code, pat) {
            found.insert((line_of(k), *pat));
        }
    }
    // `use` trees: `use std::{fs, io};` uses `std::fs`.
    for k in find_bounded(&code, "use") {
        let rest = &code[k + 3..];
        if !rest.starts_with(char::is_whitespace) {
            continue;
        }
        let Some(semi) = rest.find(';') else { continue };
        let tree: String = rest[..semi]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let tree = tree.replace(" as ", "@").replace(' ', "");
        let mut paths = vec![];
        expand_use("", &tree, &mut paths);
        let (first, last) = (line_of(k), line_of(k + 3 + semi));
        for path in paths {
            let path = path.split('@').next().unwrap();
            for pat in FORBIDDEN {
                let seen = found
                    .iter()
                    .any(|(l, p)| (first..=last).contains(l) && p == pat);
                if !seen && !find_bounded(path, pat).is_empty() {
                    found.insert((first, *pat));
                }
            }
        }
    }
    let out = found
        .into_iter()
        .map(|(line, pat)| {
            let text = src_lines.get(line - 1).unwrap_or(&"").trim().to_string();
            (line, pat, text)
        })
        .collect();
    (out, gated_mods)
}

#[test]
fn the_core_performs_no_io_and_uses_nothing_outside_the_core() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let core = root.join("src/core");
    let mut files = vec![];
    rs_files(&core, &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("src/core/mod.rs")),
        "no src/core/mod.rs under {}",
        core.display()
    );

    let mut problems = vec![];
    let mut gated: BTreeSet<PathBuf> = BTreeSet::new();
    let mut skipped = vec![];
    for file in &files {
        let rel = file.strip_prefix(root).unwrap().display().to_string();
        let src = std::fs::read_to_string(file).unwrap();
        let (found, gated_mods) = violations(&src);
        if is_test_file(file) {
            // Test code; the test modules it declares are gated like any other.
            skipped.push(file.clone());
        } else {
            for (line, pat, text) in found {
                problems.push(format!("{rel}:{line}: uses `{pat}`: {text}"));
            }
        }
        // Modules declared by this file live in its directory (mod.rs) or in the
        // directory named after it.
        let dir = if file.file_name().unwrap() == "mod.rs" {
            file.parent().unwrap().to_path_buf()
        } else {
            file.with_extension("")
        };
        for m in gated_mods {
            gated.insert(dir.join(format!("{m}.rs")));
            gated.insert(dir.join(m).join("mod.rs"));
        }
    }
    for file in skipped {
        if !gated.contains(&file) {
            let rel = file.strip_prefix(root).unwrap().display().to_string();
            problems.push(format!(
                "{rel}: skipped as test-only, but not declared under #[cfg(test)]"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the core must stay pure (move I/O, clocks, randomness and shell code out of \
         src/core):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_sees_code_and_only_code() {
    let src = r##"//! A comment may name tokio and std::fs.
use std::collections::BTreeMap;
use std::{fs, io};
use std::time::{Duration, Instant as I};
fn f<'a>(s: &'a str) -> char {
    let _ = "std::process::Command { in a string";
    let _ = r#"hyper " rusqlite"#;
    let t = std::time::Instant::now(); /* git2 */
    '{'
}
fn operand() { let _ = operand::x; }
fn g() { crate::shell::driver::now_ms(); }
#[cfg(test)]
mod tests {
    use std::env;
    fn h() { let _ = '}'; std::fs::read("x"); }
}
#[cfg(test)]
mod props;
fn k() { let _ = fastrand::u8(..); }
"##;
    let (found, gated) = violations(src);
    let found: Vec<(usize, &str)> = found.iter().map(|(l, p, _)| (*l, *p)).collect();
    assert_eq!(
        found,
        vec![
            (3, "std::fs"),
            (4, "std::time::Instant"),
            (8, "Instant::now"),
            (8, "std::time::Instant"),
            (12, "crate::shell"),
            (20, "fastrand"),
        ]
    );
    assert_eq!(gated, BTreeSet::from(["props".to_string()]));
}

/// The sibling modules a file names: `crate::{layer}::NAME` and, in the core,
/// `super::NAME`, in code (comments and strings blanked), `use` trees expanded.
fn sibling_refs(src: &str, layer: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let code: String = code_only(src).into_iter().collect();
    let mut paths = vec![];
    for k in find_bounded(&code, "use") {
        let rest = &code[k + 3..];
        if !rest.starts_with(char::is_whitespace) {
            continue;
        }
        let Some(semi) = rest.find(';') else { continue };
        let tree: String = rest[..semi].split_whitespace().collect();
        expand_use("", &tree, &mut paths);
    }
    paths.push(code.split_whitespace().collect());
    let mut out = BTreeSet::new();
    for text in &paths {
        for prefix in [format!("crate::{layer}::"), "super::".to_string()] {
            for (k, _) in text.match_indices(&prefix) {
                let name: String = text[k + prefix.len()..]
                    .chars()
                    .take_while(|c| is_ident(*c))
                    .collect();
                if siblings.contains(&name) {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// The module graph of `src/{layer}`: each file is its module (a folder is one module);
/// `mod.rs` of the layer (its composition root) and test files are left out.
fn module_graph(layer: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer);
    let mut files = vec![];
    rs_files(&root, &mut files);
    let module_of = |f: &Path| -> Option<String> {
        let rel = f.strip_prefix(&root).unwrap();
        let first = rel.components().next()?.as_os_str().to_str()?.to_string();
        let name = first.trim_end_matches(".rs").to_string();
        (name != "mod" && !is_test_file(f)).then_some(name)
    };
    let siblings: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut graph: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for f in &files {
        let Some(m) = module_of(f) else { continue };
        let refs = sibling_refs(&std::fs::read_to_string(f).unwrap(), layer, &siblings);
        let e = graph.entry(m.clone()).or_default();
        e.extend(refs.into_iter().filter(|r| *r != m));
    }
    graph
}

/// A cycle in `graph`, if any, as the modules along it.
fn find_cycle(graph: &std::collections::BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(k) = path.iter().position(|p| p == n) {
            let mut cycle = path[k..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut vec![], &mut done))
}

#[test]
fn the_shell_and_the_core_have_no_import_cycles() {
    for layer in ["shell", "core"] {
        let graph = module_graph(layer);
        assert!(graph.len() > 5, "{layer}: too few modules seen: {graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("src/{layer} has an import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_check_sees_cycles() {
    let siblings: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    let refs = sibling_refs(
        "use crate::shell::{a::X, b};\n// crate::shell::zzz\nfn f() { super::b::g(); }",
        "shell",
        &siblings,
    );
    assert_eq!(refs, siblings);
    let mut g = std::collections::BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&g).is_some());
    g.insert("b".to_string(), BTreeSet::new());
    assert!(find_cycle(&g).is_none());
}
