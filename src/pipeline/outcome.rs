//! How a run ends, in one vocabulary ([`Ending`]), what its caller sees of that ([`Exit`]), and
//! how long to wait before trying again ([`backoff`]).

use std::time::Duration;

use outbox_relay_core::{ConnectorError, Retry};
use rand::Rng;

use super::Settings;
use crate::error::RelayError;

/// How a run ended without halting.
#[derive(Debug)]
pub(crate) enum Exit {
    /// Shutdown was requested; everything confirmed is acknowledged.
    Shutdown,
    /// The source (or the relay's own records) failed transiently; the caller starts again.
    SourceFailed(ConnectorError),
}

/// Why a run stops taking entries. Every part of a run (the main loop, a redrive) ends with
/// one of these; [`Ending::into_exit`] makes it the run's result.
#[derive(Debug)]
pub(super) enum Ending {
    /// Shutdown was requested: what the source still delivers (up to a transaction boundary)
    /// is sent first.
    Shutdown,
    /// The source or the relay's records failed: sending stops, the caller starts again (or
    /// halts, if the failure is not transient).
    SourceFailed(ConnectorError),
    /// The relay must stop: poison under `on_poison = "halt"`, a fatal sink error.
    Halt(RelayError),
}

impl Ending {
    /// Whether messages may still be sent: while running, and on a clean shutdown.
    pub(super) fn allows_sending(ending: Option<&Ending>) -> bool {
        matches!(ending, None | Some(Ending::Shutdown))
    }

    /// The run's result: a source failure that retrying cannot mend halts.
    pub(super) fn into_exit(self) -> Result<Exit, RelayError> {
        match self {
            Ending::Shutdown => Ok(Exit::Shutdown),
            Ending::Halt(error) => Err(error),
            Ending::SourceFailed(error) => match error.retry() {
                Retry::Fatal | Retry::Permanent => {
                    Err(RelayError::Fatal { what: "reading the outbox failed", source: error })
                }
                Retry::Transient => Ok(Exit::SourceFailed(error)),
            },
        }
    }
}

/// A failure of the source or of the relay's records ends the run.
impl From<ConnectorError> for Ending {
    fn from(error: ConnectorError) -> Self {
        Ending::SourceFailed(error)
    }
}

/// `initial × 2^attempt`, capped, with jitter in [½, 1] so relays do not retry in lockstep.
pub(crate) fn backoff(attempt: u32, settings: &Settings) -> Duration {
    let exp = settings
        .retry_initial_backoff
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(settings.retry_max_backoff);
    exp.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let settings = Settings {
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(2),
            ..Settings::default()
        };
        for _ in 0..50 {
            let first = backoff(0, &settings);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(2, &settings);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(40, &settings) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn only_a_transient_source_failure_lets_the_caller_start_again() {
        let transient = Ending::SourceFailed(ConnectorError::transient(std::io::Error::other("x")));
        assert!(matches!(transient.into_exit(), Ok(Exit::SourceFailed(_))));
        let permanent = Ending::SourceFailed(ConnectorError::permanent(std::io::Error::other("x")));
        assert!(matches!(permanent.into_exit(), Err(RelayError::Fatal { .. })));
        assert!(matches!(Ending::Shutdown.into_exit(), Ok(Exit::Shutdown)));
    }
}
