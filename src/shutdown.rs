//! Turns SIGTERM/SIGINT into a cancellation token that every task observes. Invariant: the
//! first signal starts a graceful drain; a second one exits at once (status 130).

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Cancels the returned token on the first SIGTERM or SIGINT.
pub(crate) fn on_signal() -> (CancellationToken, AbortOnDropHandle<()>) {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let task = tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting for in-flight messages");
        std::process::exit(130);
    });
    (token, AbortOnDropHandle::new(task))
}
