//! What the core's machines hand back: commands for the shell, now or at a later time,
//! and the times at which the lanes must be looked at again. Every machine writes here;
//! none reads another's output.

use std::collections::{BTreeMap, BTreeSet};

use super::{Command, Millis, Record};

#[derive(Debug, Default)]
pub(crate) struct Effects {
    out: Vec<Command>,
    /// Delayed commands, by due time and sequence (insertion order among equals).
    timers: BTreeMap<(Millis, u64), Command>,
    seq: u64,
    /// Times at which `Core::tick` must run although no input arrives (batch delays,
    /// holds, retries of builds).
    wakes: BTreeSet<Millis>,
}

impl Effects {
    pub(crate) fn push(&mut self, cmd: Command) {
        self.out.push(cmd);
    }

    pub(crate) fn record(&mut self, r: Record) {
        self.out.push(Command::Record(r));
    }

    /// A line of progress for operators.
    pub(crate) fn event(&mut self, at: Millis, repo: &str, text: String) {
        self.record(Record::Event {
            at,
            repo: repo.to_string(),
            text,
        });
    }

    /// `cmd`, but not before `at`.
    pub(crate) fn later(&mut self, at: Millis, cmd: Command) {
        self.seq += 1;
        self.timers.insert((at, self.seq), cmd);
    }

    pub(crate) fn wake(&mut self, at: Millis) {
        self.wakes.insert(at);
    }

    /// Releases the commands that came due, in due order.
    pub(crate) fn fire(&mut self, now: Millis) {
        self.wakes.retain(|&w| w > now);
        while let Some((&(at, seq), _)) = self.timers.iter().next() {
            if at > now {
                break;
            }
            let cmd = self.timers.remove(&(at, seq)).expect("present");
            self.out.push(cmd);
        }
    }

    /// The earliest delayed command or wake-up.
    pub(crate) fn next_due(&self) -> Option<Millis> {
        let t = self.timers.keys().next().map(|(t, _)| *t);
        t.into_iter().chain(self.wakes.first().copied()).min()
    }

    pub(crate) fn take(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.out)
    }

    /// Takes back the command pushed last, to send it later instead.
    pub(crate) fn pop(&mut self) -> Option<Command> {
        self.out.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(name: &str) -> Command {
        Command::PollSource {
            channel: name.into(),
        }
    }

    #[test]
    fn delayed_commands_leave_in_due_order_and_not_before() {
        let mut fx = Effects::default();
        fx.later(20, poll("b"));
        fx.later(10, poll("a"));
        fx.later(20, poll("c"));
        assert_eq!(fx.next_due(), Some(10));
        fx.fire(9);
        assert!(fx.take().is_empty());
        fx.fire(20);
        assert_eq!(fx.take(), vec![poll("a"), poll("b"), poll("c")]);
        assert_eq!(fx.next_due(), None);
    }

    #[test]
    fn a_wake_up_counts_until_it_passes() {
        let mut fx = Effects::default();
        fx.wake(50);
        fx.later(70, poll("a"));
        assert_eq!(fx.next_due(), Some(50));
        fx.fire(50);
        assert_eq!(fx.next_due(), Some(70));
    }
}
