//! `cpbackup daemon`: the agent as a service. The control plane pushes tasks over HTTP in the
//! vendors' own shapes (`api`), a queue runs them with the command line's own functions
//! (`runner`), every state change is journaled (`journal`) and reported back through a durable
//! outbox (`report`), schedules start backups by themselves (`schedule`, `cron`), and a
//! restart settles whatever a crash left (`Runner::recover`).
//!
//! It must never lose a task or an event across a crash, and never leave a manifest saying
//! AVAILABLE for an archive that is not complete.

pub mod api;
pub mod config;
pub mod cron;
pub mod journal;
pub mod listen;
pub mod protect;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod task;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use config::Config;
use journal::Journal;
use report::Reporter;
use runner::Runner;

/// Run until SIGTERM or SIGINT.
pub fn run(cfg: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cpbackup-api")
        .enable_all()
        .build()
        .ctx(|| "starting the async runtime".into())?;
    rt.block_on(async move {
        let addr = cfg.addr()?;
        let listener = tokio::net::TcpListener::bind(addr).await.ctx(|| format!("listening on {addr}"))?;
        serve(cfg, listener, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}

/// Serve on `listener` until `shutdown` completes, then stop cleanly: no new tasks, running
/// ones finished or cancelled within the deadline, every state journaled.
pub async fn serve(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let tls = listen::Tls::from_config(&cfg)?;
    let local = listener.local_addr().ctx(|| "reading the listening address".into())?;
    if tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            "listening on {local}, beyond this phone, without TLS: tokens and data cross the network in clear; set tls_cert_file and tls_key_file"
        );
    }
    let journal = Arc::new(Journal::open(&cfg.state_dir.join("journal"))?);
    let secret = cfg.callback_secret.clone().unwrap_or_default().into_bytes();
    let reporter = Reporter::new(journal.clone(), secret, report::http_agent());
    let deadline = Duration::from_secs(cfg.shutdown_deadline_secs);
    let runner = Runner::new(cfg, journal.clone(), reporter.clone());
    {
        // Recovery talks to the store with blocking calls of its own.
        let r = runner.clone();
        tokio::task::spawn_blocking(move || r.recover())
            .await
            .map_err(|e| Error::internal(format!("recovering the journal: {e}")))??;
    }
    {
        let reporter = reporter.clone();
        std::thread::Builder::new()
            .name("outbox".into())
            .spawn(move || reporter.run())
            .ctx(|| "starting the outbox thread".into())?;
    }
    let schedules = schedule::Scheduler::load(runner.clone(), journal.clone())?;
    runner.start();
    tokio::spawn(schedules.clone().run());
    tracing::info!("listening on {local}{}", if tls.is_some() { " (TLS)" } else { "" });
    // The one line on stdout: supervisors and tests learn the port (listen = "…:0") from it.
    println!("cpbackup daemon listening on {local}");
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = api::router(api::AppState { runner: runner.clone(), schedules });
    let server = tokio::spawn(listen::serve(listener, app, tls.clone(), async move {
        let _ = stop_rx.await;
    }));
    tokio::spawn(reload_on_sighup(tls));
    shutdown.await;
    // Refuse new tasks, let running ones end, then stop the listener.
    runner.shutdown(deadline).await;
    let _ = stop_tx.send(());
    match server.await {
        Ok(r) => r,
        Err(e) => Err(Error::internal(format!("the HTTP server stopped unexpectedly: {e}"))),
    }
}

/// SIGHUP: read the TLS certificates again (a failed reload keeps the ones in use). Running
/// tasks and open connections are not touched; without TLS there is nothing to reload, and
/// the signal does not stop the agent.
async fn reload_on_sighup(tls: Option<Arc<listen::Tls>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => return tracing::error!("cannot watch SIGHUP: {e}"),
    };
    while hup.recv().await.is_some() {
        match &tls {
            None => tracing::info!("SIGHUP: no TLS certificates to reload"),
            Some(t) => match t.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                Err(e) => tracing::error!("SIGHUP: {e}; still serving the certificates read before"),
            },
        }
    }
}
