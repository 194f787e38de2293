//! Signal handling: the first SIGTERM or SIGINT asks for a graceful stop (stop consuming,
//! finish in-flight work, commit, exit 0); a second one exits at once.

use tokio_util::sync::CancellationToken;

/// Exit code of a forced stop (second signal).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Installs the handlers and returns the token cancelled on the first signal.
pub fn install() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: stopping consumption, draining, committing");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now without draining");
        std::process::exit(FORCED_EXIT_CODE);
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
