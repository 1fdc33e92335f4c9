//! The driver's build side: attempts run as tasks of their own, each stoppable when the
//! core cancels it; inspections of one step go out as one `nix show-derivation` batch.

use tokio::sync::oneshot;

use super::{Driver, Msg};
use crate::core::outcome::{BuildReport, OutcomeClass};
use crate::core::{BuildInput, Input};

impl Driver {
    /// Runs one attempt of `drv` on `builder`; it reports through `Msg::Built`.
    pub(super) fn start_build(&mut self, drv: String, builder: String) -> anyhow::Result<()> {
        let Some(b) = self.builders.get(&builder).cloned() else {
            anyhow::bail!("the core chose unknown builder {builder}");
        };
        let tx = self.tx.clone();
        let (stop, stopped) = oneshot::channel();
        self.stops.insert((drv.clone(), builder), stop);
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            // Dropping the attempt stops it: nix is terminated, and a remote daemon stops
            // its build when the connection closes.
            let report = tokio::select! {
                r = b.realise(&drv) => r,
                Ok(()) = stopped => BuildReport {
                    drv_path: drv.clone(),
                    class: OutcomeClass::Cancelled,
                    log_tail: "stopped: nobody waits for this build any more".into(),
                    root_drv: None,
                    builder: b.id.clone(),
                    duration_ms: start.elapsed().as_millis() as u64,
                    log_path: None,
                },
            };
            let _ = tx.send(Msg::Built(report)).await;
        });
        Ok(())
    }

    /// Stops a running attempt; one that already reported is left alone.
    pub(super) fn stop_build(&mut self, drv: String, builder: String) {
        if let Some(stop) = self.stops.remove(&(drv, builder)) {
            let _ = stop.send(());
        }
    }

    /// Builds `drv` again on `second` and reports the comparison (`BuildInput::Verified`).
    pub(super) fn verify_build(&self, drv: String, first: String, second: String) {
        let Some(b) = self.builders.get(&second).cloned() else {
            return;
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = b.verify(&drv).await;
            let input = BuildInput::Verified {
                drv,
                first,
                second,
                result,
            };
            let _ = tx.send(Msg::Input(Input::Build(input))).await;
        });
    }

    pub(super) fn query_referrers(&self, root: String) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let drvs = crate::shell::builder::referrers(&root).await;
            let _ = tx
                .send(Msg::Input(Input::Build(BuildInput::Referrers {
                    root,
                    drvs,
                })))
                .await;
        });
    }

    /// One `nix show-derivation` for all the step's new build requests.
    pub(super) fn inspect_gathered(&mut self) {
        if self.inspect.is_empty() {
            return;
        }
        let drvs = std::mem::take(&mut self.inspect);
        let (tx, args) = (self.tx.clone(), self.config.nix_args());
        let timeout = self.config.timeouts.inspect();
        tokio::spawn(async move {
            let infos = crate::shell::builder::inspect(&args, &drvs, timeout).await;
            let _ = tx
                .send(Msg::Input(Input::Build(BuildInput::Inspected { infos })))
                .await;
        });
    }
}
