//! The database in memory: the rows the core's `Record`s write, and `Core::restore` from
//! them. `shell/store.rs` is the durable twin (SQLite); the core's tests, the channel
//! tests and the simulator keep their rows here, so all three restore the same way.

use std::collections::{BTreeMap, BTreeSet};

use super::{Advance, CandId, Candidate, ChannelState, Core, CoreConfig, Memo, Millis, Record};
use crate::core::breakage::BrokenJob;
use crate::core::change::{Change, ChangeId};
use crate::core::evaluation::JobKey;

#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub changes: BTreeMap<ChangeId, Change>,
    /// As stored: without the working state (`Candidate::persisted`).
    pub candidates: BTreeMap<CandId, Candidate>,
    pub memo: BTreeMap<String, Memo>,
    /// Each channel's row and its advances, oldest first.
    pub channels: BTreeMap<String, (ChannelState, Vec<Advance>)>,
    pub drained: BTreeSet<String>,
    /// The broken registry, by repository and job.
    pub broken: BTreeMap<(String, JobKey), BrokenJob>,
}

impl Snapshot {
    /// Writes one record, as `Store::apply` does. Events are not rows here.
    pub fn apply(&mut self, r: &Record) {
        match r {
            Record::Change(c) => {
                self.changes.insert(c.id, c.clone());
            }
            Record::Candidate(c) => {
                self.candidates.insert(c.id, c.persisted());
            }
            Record::Memo { drv, memo } => {
                self.memo.insert(drv.clone(), memo.clone());
            }
            // The outbox is the shell's to deliver; nothing restored reads it.
            Record::Event { .. }
            | Record::Forge { .. }
            | Record::Notice(_)
            | Record::Verification(_) => {}
            Record::Broken(j) => {
                self.broken.insert((j.repo.clone(), j.key()), j.clone());
            }
            Record::Unbroken { repo, key } => {
                self.broken.remove(&(repo.clone(), key.clone()));
            }
            Record::BuilderDrained { builder, drained } => {
                if *drained {
                    self.drained.insert(builder.clone());
                } else {
                    self.drained.remove(builder);
                }
            }
            Record::Channel(st) => {
                self.channels.entry(st.name.clone()).or_default().0 = st.clone();
            }
            Record::ChannelAdvance { channel, advance } => {
                let row = self.channels.entry(channel.clone()).or_default();
                // The same advance recorded again after a restart is one advance.
                if row.1.last().is_some_and(|last| last.rev == advance.rev) {
                    return;
                }
                row.1.push(advance.clone());
            }
        }
    }

    /// The core as a restart rebuilds it from these rows.
    pub fn restore(&self, config: CoreConfig, now: Millis) -> Core {
        let mut core = Core::restore(
            config,
            self.changes.values().cloned().collect(),
            self.candidates.values().cloned().collect(),
            self.memo
                .iter()
                .map(|(d, m)| (d.clone(), m.clone()))
                .collect(),
            self.channels.values().cloned().collect(),
            now,
        );
        for b in &self.drained {
            core.set_drained(b);
        }
        core.restore_broken(self.broken.values().cloned().collect());
        core
    }
}
