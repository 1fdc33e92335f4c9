//! Steps parked until their inputs are built. A job's closure is not realised whole on one
//! builder: every input derivation whose outputs are not valid locally is a build step of
//! its own (dispatched anywhere it fits), and the step that needs it waits here, out of the
//! scheduler's ready queues, until each input has a verdict.

use std::collections::{BTreeMap, BTreeSet};

use super::scheduler::StepInfo;

#[derive(Debug, Default)]
pub(crate) struct StepGraph {
    /// Parked step -> what the shell read from it and the inputs still without a verdict.
    waiting: BTreeMap<String, (StepInfo, BTreeSet<String>)>,
    /// Input -> the parked steps that need it. Entries of steps that left by another way
    /// stay until the input is decided: they are then skipped.
    needed_by: BTreeMap<String, BTreeSet<String>>,
}

impl StepGraph {
    /// Parks `drv` until every one of `inputs` has a verdict.
    pub(crate) fn park(&mut self, drv: &str, info: StepInfo, inputs: BTreeSet<String>) {
        for i in &inputs {
            self.needed_by
                .entry(i.clone())
                .or_default()
                .insert(drv.to_string());
        }
        self.waiting.insert(drv.to_string(), (info, inputs));
    }

    /// `input` built: the parked steps that now have all their inputs, with their infos.
    pub(crate) fn built(&mut self, input: &str) -> Vec<(String, StepInfo)> {
        let mut ready = vec![];
        for d in self.needed_by.remove(input).unwrap_or_default() {
            let Some((_, pending)) = self.waiting.get_mut(&d) else {
                continue;
            };
            pending.remove(input);
            if pending.is_empty() {
                let (info, _) = self.waiting.remove(&d).expect("present");
                ready.push((d, info));
            }
        }
        ready
    }

    /// `input` failed or could not be built: the parked steps that needed it, which leave.
    pub(crate) fn lost(&mut self, input: &str) -> Vec<String> {
        self.needed_by
            .remove(input)
            .unwrap_or_default()
            .into_iter()
            .filter(|d| self.waiting.remove(d).is_some())
            .collect()
    }

    /// Forgets a parked step (nobody needs it any more).
    pub(crate) fn forget(&mut self, drv: &str) -> bool {
        self.waiting.remove(drv).is_some()
    }

    #[cfg(test)]
    pub(crate) fn is_parked(&self, drv: &str) -> bool {
        self.waiting.contains_key(drv)
    }

    /// The inputs a parked step still waits for.
    pub(crate) fn pending(&self, drv: &str) -> impl Iterator<Item = &String> {
        self.waiting
            .get(drv)
            .into_iter()
            .flat_map(|(_, p)| p.iter())
    }

    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_step_is_ready_once_its_last_input_is_built() {
        let mut g = StepGraph::default();
        g.park("top", StepInfo::default(), set(&["a", "b"]));
        assert!(g.built("a").is_empty());
        assert_eq!(g.built("b").len(), 1);
        assert_eq!(g.parked(), 0);
    }

    #[test]
    fn a_lost_input_takes_its_parked_dependents_only() {
        let mut g = StepGraph::default();
        g.park("x", StepInfo::default(), set(&["a"]));
        g.park("y", StepInfo::default(), set(&["a", "b"]));
        g.park("z", StepInfo::default(), set(&["b"]));
        assert!(g.forget("x"));
        assert_eq!(g.lost("a"), vec!["y".to_string()]);
        assert!(g.is_parked("z"));
        assert!(g.built("b").iter().any(|(d, _)| d == "z"));
    }
}
