//! Generated derivation graphs and edits: each node is a package with inputs among the
//! nodes before it and one source; an edit changes a node's own attributes, its source,
//! adds an input or drops one. Store paths hash what they are built from, as Nix's do,
//! so a change ripples up to everything above it. What each changed job rebuilds because
//! of is worked out from the edits and the graph, not from store paths.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
struct Node {
    /// Inputs on the base (indexes below this node's).
    inputs: BTreeSet<usize>,
    own: bool,
    src: bool,
    add: Option<usize>,
    drop: Option<usize>,
}

fn graph() -> impl Strategy<Value = Vec<Node>> {
    (2usize..12).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                (
                    proptest::collection::btree_set(0..i.max(1), 0..=i.min(3)),
                    proptest::bool::weighted(0.2),
                    proptest::bool::weighted(0.15),
                    proptest::option::weighted(0.1, 0..i.max(1)),
                    proptest::option::weighted(0.1, 0usize..4),
                )
                    .prop_map(move |(inputs, own, src, add, drop)| {
                        let inputs: BTreeSet<usize> =
                            inputs.into_iter().filter(|&j| j < i).collect();
                        let add = add.filter(|&j| j < i && !inputs.contains(&j));
                        let drop = drop.and_then(|k| inputs.iter().nth(k).copied());
                        Node {
                            inputs,
                            own,
                            src,
                            add,
                            drop,
                        }
                    })
            })
            .collect::<Vec<_>>()
    })
}

fn digest(parts: &[&str]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

struct Side {
    drv: Vec<String>,
    src: Vec<String>,
    inputs: Vec<BTreeSet<usize>>,
}

fn side(g: &[Node], candidate: bool) -> Side {
    let mut s = Side {
        drv: vec![],
        src: vec![],
        inputs: vec![],
    };
    for (i, n) in g.iter().enumerate() {
        let mut inputs = n.inputs.clone();
        let (own, src) = if candidate {
            if let Some(a) = n.add {
                inputs.insert(a);
            }
            if let Some(d) = n.drop {
                inputs.remove(&d);
            }
            (n.own, n.src)
        } else {
            (false, false)
        };
        let src_path = format!(
            "/nix/store/{}-src{i}",
            digest(&[&format!("src{i}"), &src.to_string()])
        );
        let mut parts = vec![format!("p{i}"), own.to_string(), src_path.clone()];
        parts.extend(inputs.iter().map(|&j| s.drv[j].clone()));
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        s.drv.push(format!("/nix/store/{}-p{i}.drv", digest(&refs)));
        s.src.push(src_path);
        s.inputs.push(inputs);
    }
    s
}

fn known(sides: &[&Side]) -> BTreeMap<String, DrvInputs> {
    let mut k = BTreeMap::new();
    for s in sides {
        for i in 0..s.drv.len() {
            k.insert(
                s.drv[i].clone(),
                DrvInputs {
                    drvs: s.inputs[i].iter().map(|&j| s.drv[j].clone()).collect(),
                    srcs: [s.src[i].clone()].into(),
                },
            );
        }
    }
    k
}

/// Node `i` differs on the two sides when an edit touches it or any input it has.
fn changed(g: &[Node]) -> Vec<bool> {
    let mut c = vec![false; g.len()];
    for (i, n) in g.iter().enumerate() {
        c[i] =
            n.own || n.src || n.add.is_some() || n.drop.is_some() || n.inputs.iter().any(|&j| c[j]);
    }
    c
}

/// What node `i` rebuilds because of, from the edits: what its own edits added, dropped
/// or changed in its source, what its changed inputs (kept on both sides) rebuild
/// because of; and the node itself when none of that applies (its own attributes).
fn expected(g: &[Node], b: &Side, n: &Side, ch: &[bool], i: usize) -> BTreeSet<Cause> {
    let mut out = BTreeSet::new();
    if !ch[i] {
        return out;
    }
    let node = &g[i];
    for &j in &node.inputs {
        if Some(j) != node.drop && ch[j] {
            out.extend(expected(g, b, n, ch, j));
        }
    }
    if let Some(a) = node.add {
        out.insert(Cause::Added {
            name: format!("p{a}"),
            new: n.drv[a].clone(),
        });
    }
    if let Some(d) = node.drop {
        out.insert(Cause::Removed {
            name: format!("p{d}"),
            base: b.drv[d].clone(),
        });
    }
    if node.src {
        out.insert(Cause::Source {
            name: format!("src{i}"),
            base: b.src[i].clone(),
            new: n.src[i].clone(),
        });
    }
    if out.is_empty() {
        assert!(
            node.own,
            "a changed node without a changed input changed itself"
        );
        out.insert(Cause::Derivation {
            name: format!("p{i}"),
            base: b.drv[i].clone(),
            new: n.drv[i].clone(),
        });
    }
    out
}

fn jobs(b: &Side, n: &Side, ch: &[bool]) -> Vec<ChangedJob> {
    (0..ch.len())
        .filter(|&i| ch[i])
        .map(|i| {
            let key = JobKey {
                attr: format!("p{i}"),
                system: "x86_64-linux".into(),
            };
            (key, b.drv[i].clone(), n.drv[i].clone())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_changed_job_is_explained_by_the_first_inputs_that_changed(g in graph()) {
        let (b, n) = (side(&g, false), side(&g, true));
        let ch = changed(&g);
        let jobs = jobs(&b, &n, &ch);
        // As the shell reads: nothing at first, then what the walk says it misses.
        let all = known(&[&b, &n]);
        let mut have = BTreeMap::new();
        let mut rounds = 0;
        let why = loop {
            let why = explain(&jobs, &have);
            if why.missing.is_empty() {
                break why;
            }
            for d in &why.missing {
                prop_assert!(all.contains_key(d), "asked for {d}, which no side has");
                have.insert(d.clone(), all[d].clone());
            }
            rounds += 1;
            prop_assert!(rounds <= g.len() + 1, "the walk does not end");
        };
        prop_assert_eq!(&why, &explain(&jobs, &all));
        let mut counts: BTreeMap<Cause, usize> = BTreeMap::new();
        for (j, row) in jobs.iter().zip(&why.jobs) {
            let i: usize = j.0.attr[1..].parse().unwrap();
            let want = expected(&g, &b, &n, &ch, i);
            prop_assert_eq!(row.causes.iter().cloned().collect::<BTreeSet<_>>(), want.clone(), "{}", j.0.attr);
            for c in want {
                *counts.entry(c).or_default() += 1;
            }
        }
        let mut top: Vec<(Cause, usize)> = counts.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let got: Vec<(Cause, usize)> = why.top.iter().map(|t| (t.cause.clone(), t.jobs)).collect();
        prop_assert_eq!(got, top);
    }
}

#[test]
fn store_names_drop_the_hash_and_the_drv_suffix() {
    assert_eq!(
        store_name("/nix/store/abc123-python3.11-pillow-10.0.drv"),
        "python3.11-pillow-10.0"
    );
    assert_eq!(store_name("/nix/store/abc123-source"), "source");
    assert_eq!(store_name("plain"), "plain");
}
