//! `mergequeue serve`: wires the driver, the HTTP API, signals and systemd together.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shell::api::Api;
use crate::shell::config::Config;
use crate::shell::driver::{load_token, Driver};
use crate::shell::systemd;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let token = load_token(&config)?;
    if token.is_none() {
        log::warn!(
            "no api_token_file and no api-token credential: every write request will be refused"
        );
    }
    let driver = Driver::open(config.clone())?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    log::info!("listening on {}", listener.local_addr()?);
    let driver_handle = driver.handle();
    let api = Arc::new(Api {
        config: config.clone(),
        token,
        driver: driver_handle.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http = tokio::spawn(crate::shell::api::serve(
        api,
        listener,
        stopped(stop_rx.clone()),
    ));
    let core = tokio::spawn(driver.run(stopped(stop_rx.clone())));
    let _ = systemd::notify("READY=1");
    if let Some(every) = systemd::watchdog_interval() {
        // Pet the watchdog only when the engine answers: a wedged driver loop must make
        // systemd restart the service, not be hidden by a healthy side task.
        let mut rx = stop_rx.clone();
        let handle = driver_handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {
                        let (reply, pong) = tokio::sync::oneshot::channel();
                        let alive = handle.tx.send(crate::shell::driver::Msg::Ping { reply }).await.is_ok()
                            && tokio::time::timeout(every, pong).await.is_ok_and(|r| r.is_ok());
                        if alive {
                            let _ = systemd::notify("WATCHDOG=1");
                        } else {
                            log::warn!("the engine did not answer within {every:?}; not petting the watchdog");
                        }
                    }
                    _ = rx.changed() => return,
                }
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => log::info!("interrupted: stopping"),
        r = core => {
            // The driver ended by itself: a database error. Fail loudly.
            let _ = systemd::notify("STOPPING=1");
            return match r { Ok(Ok(())) => Ok(()), Ok(Err(e)) => Err(e), Err(e) => Err(e.into()) };
        }
    }
    let _ = systemd::notify("STOPPING=1");
    let _ = stop_tx.send(true);
    let _ = http.await;
    Ok(())
}
