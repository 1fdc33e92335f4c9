//! A synthetic package set generated from a seed: packages in topological order, each
//! depending on earlier ones (a Zipf-weighted core such as stdenv and compilers, popular
//! libraries by preferential attachment, and nearby "family" packages). A change to a
//! package rebuilds its reverse closure; closures are computed by breadth-first search
//! over the reverse edges with a generation-stamped visited array (no clearing, no
//! hashing), capped where only the size class matters.

use super::scenario::Scenario;

pub type Pkg = u32;

pub struct Graph {
    pub n: usize,
    /// The `tested` aggregate (NixOS tests), an extra node depending on a sample of
    /// packages; `None` when the scenario has none.
    pub tested: Option<Pkg>,
    /// Reverse edges in CSR form: dependents of p are rdeps[rstart[p]..rstart[p+1]].
    rstart: Vec<u32>,
    rdeps: Vec<Pkg>,
    /// Per package: availability bit per system.
    pub avail: Vec<u8>,
    pub broken: Vec<bool>,
    /// Build duration at speed 1, milliseconds.
    pub dur_ms: Vec<u64>,
    /// Packages whose (capped) reverse closure falls in each size class.
    pub buckets: Vec<Vec<Pkg>>,
    mark: Vec<u32>,
    gen: u32,
}

/// Empirical quantile function, linear between points in log(1+s).
pub fn quantile(table: &[(f64, f64)], u: f64) -> f64 {
    if table.is_empty() {
        return 0.0;
    }
    if u <= table[0].0 {
        return table[0].1;
    }
    for w in table.windows(2) {
        let ((q0, s0), (q1, s1)) = (w[0], w[1]);
        if u <= q1 {
            let f = (u - q0) / (q1 - q0);
            let (l0, l1) = ((1.0 + s0).ln(), (1.0 + s1).ln());
            return (l0 + f * (l1 - l0)).exp() - 1.0;
        }
    }
    table[table.len() - 1].1
}

impl Graph {
    pub fn generate(sc: &Scenario, seed: u64) -> Graph {
        let g = &sc.graph;
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x6772_6170_6800_0000);
        let n = g.packages;
        let core = g.core_packages.clamp(1, n);
        let total = n + usize::from(g.tested_deps > 0);
        // Zipf over the core by inverse transform on precomputed cumulative weights.
        let zipf: Vec<f64> = {
            let mut acc = 0.0;
            (0..core)
                .map(|i| {
                    acc += 1.0 / (i as f64 + 1.0);
                    acc
                })
                .collect()
        };
        let pick_core = |rng: &mut fastrand::Rng, below: usize| -> usize {
            let lim = below.min(core);
            let x = rng.f64() * zipf[lim - 1];
            zipf[..lim].partition_point(|&c| c < x)
        };
        let mut edges: Vec<(Pkg, Pkg)> = Vec::with_capacity((n as f64 * g.mean_deps) as usize);
        // Libraries (a share of the non-core packages) can be depended on; the rest are
        // leaves, as most of Nixpkgs is. `popular` holds one entry per edge into a
        // library, so sampling it is preferential attachment.
        let mut libraries: Vec<Pkg> = Vec::new();
        let mut popular: Vec<Pkg> = Vec::new();
        for i in 1..n {
            let k = 1 + geometric(&mut rng, (g.mean_deps - 1.0).max(0.0));
            let mut deps: Vec<Pkg> = Vec::with_capacity(k);
            for _ in 0..k {
                let r = rng.f64();
                let d = if r < g.core_edge_share || i <= core || libraries.is_empty() {
                    pick_core(&mut rng, i)
                } else if rng.f64() < g.popular_edge_share && !popular.is_empty() {
                    popular[rng.usize(..popular.len())] as usize
                } else {
                    libraries[rng.usize(..libraries.len())] as usize
                };
                deps.push(d as Pkg);
            }
            deps.sort_unstable();
            deps.dedup();
            for d in deps {
                edges.push((d, i as Pkg));
                if d as usize >= core {
                    popular.push(d);
                }
            }
            if i >= core && rng.f64() < g.library_share {
                libraries.push(i as Pkg);
            }
        }
        let tested = (g.tested_deps > 0).then_some(n as Pkg);
        if let Some(t) = tested {
            let mut deps: Vec<Pkg> = (0..g.tested_deps)
                .map(|_| {
                    if rng.bool() {
                        pick_core(&mut rng, n) as Pkg
                    } else {
                        rng.u32(..n as u32)
                    }
                })
                .collect();
            deps.sort_unstable();
            deps.dedup();
            edges.extend(deps.into_iter().map(|d| (d, t)));
        }
        edges.sort_unstable();
        let mut rstart = vec![0u32; total + 1];
        for &(d, _) in &edges {
            rstart[d as usize + 1] += 1;
        }
        for i in 0..total {
            rstart[i + 1] += rstart[i];
        }
        let rdeps: Vec<Pkg> = edges.iter().map(|&(_, r)| r).collect();
        let nsys = g.systems.len().min(8);
        let avail: Vec<u8> = (0..total)
            .map(|p| {
                if Some(p as Pkg) == tested {
                    return 1; // the first system only
                }
                let mut bits = 0u8;
                for (s, sys) in g.systems.iter().take(nsys).enumerate() {
                    if s == 0 || rng.f64() < sys.availability {
                        bits |= 1 << s;
                    }
                }
                bits
            })
            .collect();
        let broken: Vec<bool> = (0..total)
            .map(|p| Some(p as Pkg) != tested && rng.f64() < g.preexisting_broken)
            .collect();
        let bt = &sc.build_times;
        let dur_ms: Vec<u64> = (0..total)
            .map(|p| {
                if Some(p as Pkg) == tested {
                    let (lo, hi) = bt.tested_minutes;
                    return ((lo + rng.f64() * (hi - lo).max(0.0)) * 60_000.0) as u64;
                }
                // Core packages (compilers, libc) are the long builds.
                let mut u = rng.f64();
                if p < core {
                    u = 0.9 + 0.1 * u;
                }
                (quantile(&bt.quantiles, u) * 1000.0) as u64
            })
            .collect();
        let mut g = Graph {
            n: total,
            tested,
            rstart,
            rdeps,
            avail,
            broken,
            dur_ms,
            buckets: vec![],
            mark: vec![0; total],
            gen: 0,
        };
        let cap = sc.sizes.iter().map(|c| c.max).max().unwrap_or(1);
        let mut buckets = vec![vec![]; sc.sizes.len()];
        for p in 0..n as Pkg {
            let size = g.closure_size(p, cap + 1);
            for (b, c) in sc.sizes.iter().enumerate() {
                if size >= c.min && size <= c.max {
                    buckets[b].push(p);
                }
            }
        }
        g.buckets = buckets;
        g
    }

    pub fn dependents(&self, p: Pkg) -> &[Pkg] {
        &self.rdeps[self.rstart[p as usize] as usize..self.rstart[p as usize + 1] as usize]
    }

    fn next_gen(&mut self) -> u32 {
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.gen = 1;
        }
        self.gen
    }

    /// Size of p's reverse closure (p included), counting up to `cap`.
    pub fn closure_size(&mut self, p: Pkg, cap: usize) -> usize {
        let gen = self.next_gen();
        let mut stack = vec![p];
        self.mark[p as usize] = gen;
        let mut count = 0;
        while let Some(x) = stack.pop() {
            count += 1;
            if count >= cap {
                return count;
            }
            let (a, b) = (self.rstart[x as usize], self.rstart[x as usize + 1]);
            for i in a..b {
                let y = self.rdeps[i as usize];
                if self.mark[y as usize] != gen {
                    self.mark[y as usize] = gen;
                    stack.push(y);
                }
            }
        }
        count
    }

    /// p's reverse closure (p included), sorted: what a change to p rebuilds.
    pub fn closure(&mut self, p: Pkg) -> Vec<Pkg> {
        let gen = self.next_gen();
        let mut out = vec![p];
        self.mark[p as usize] = gen;
        let mut i = 0;
        while i < out.len() {
            let x = out[i];
            i += 1;
            let (a, b) = (self.rstart[x as usize], self.rstart[x as usize + 1]);
            for j in a..b {
                let y = self.rdeps[j as usize];
                if self.mark[y as usize] != gen {
                    self.mark[y as usize] = gen;
                    out.push(y);
                }
            }
        }
        out.sort_unstable();
        out
    }

    pub fn attr(&self, p: Pkg) -> String {
        if Some(p) == self.tested {
            "tested".to_string()
        } else {
            format!("pkgs.p{p}")
        }
    }

    pub fn parse_attr(&self, attr: &str) -> Option<Pkg> {
        if attr == "tested" {
            return self.tested;
        }
        attr.strip_prefix("pkgs.p")?
            .parse()
            .ok()
            .filter(|&p: &Pkg| (p as usize) < self.n)
    }
}

/// Number of failures before the first success with the given mean.
pub fn geometric(rng: &mut fastrand::Rng, mean: f64) -> usize {
    if mean <= 0.0 {
        return 0;
    }
    let p = 1.0 / (1.0 + mean);
    let u = rng.f64().max(f64::MIN_POSITIVE);
    (u.ln() / (1.0 - p).ln()).floor().min(1e9) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_and_clamps() {
        let t = [(0.0, 0.0), (0.5, 6.0), (1.0, 100.0)];
        assert_eq!(quantile(&t, 0.0), 0.0);
        assert!((quantile(&t, 0.5) - 6.0).abs() < 1e-9);
        let mid = quantile(&t, 0.75);
        assert!(mid > 6.0 && mid < 100.0);
        assert_eq!(quantile(&t, 2.0), 100.0);
    }
}
