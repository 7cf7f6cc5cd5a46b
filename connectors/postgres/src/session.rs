//! One PostgreSQL session: the client, the task that drives its socket, and wake-ups from
//! LISTEN. Invariant: the driver task lives exactly as long as the [`Session`] (aborted on drop),
//! and every call made through [`Session::timed`] has a deadline.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::task::AbortOnDropHandle;

use crate::tls::{SslMode, TlsSettings};
use crate::PostgresError;

/// Deadlines and identity for a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Deadline for establishing the connection (TCP + startup + auth).
    pub connect_timeout: Duration,
    /// Deadline for each statement issued through [`Session::timed`].
    pub query_timeout: Duration,
    /// `application_name`, unless the URL sets one; shows in `pg_stat_activity`.
    pub application_name: String,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(30),
            application_name: "outbox-relay".into(),
        }
    }
}

#[derive(Debug)]
pub struct Session {
    client: Client,
    notified: Arc<Notify>,
    target: String,
    query_timeout: Duration,
    _driver: AbortOnDropHandle<()>,
}

/// Settings every session of the relay runs with, the walsender's included: the text form of
/// dates and times does not depend on the server's or the role's defaults (ISO, in UTC), so
/// templates render, and `time` parses, the same everywhere.
const TEXT_FORMATS: &str = "-c DateStyle=ISO -c TimeZone=UTC";

/// The startup `options` of a session: the URL's own (if any), then [`TEXT_FORMATS`].
pub(crate) fn with_text_formats(own: Option<&str>) -> String {
    match own {
        Some(own) if !own.trim().is_empty() => format!("{own} {TEXT_FORMATS}"),
        _ => TEXT_FORMATS.to_string(),
    }
}

impl Session {
    /// Connects to `url` (a libpq-style URL or key=value string).
    pub async fn connect(url: &str, options: &SessionOptions) -> Result<Self, PostgresError> {
        let (mut config, tls) = parse_url(url)?;
        if config.get_application_name().is_none() {
            config.application_name(&options.application_name);
        }
        config.connect_timeout(options.connect_timeout);
        let gucs = with_text_formats(config.get_options());
        config.options(&gucs);
        // The relay writes (its state, deletes, marks): after a failover it must find the new
        // primary among the hosts listed, never settle on a standby.
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        config.tcp_user_timeout(options.query_timeout);
        let target = describe(&config);
        config.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        let connector = MakeRustlsConnect::new(crate::tls::client_config(&tls)?);

        let connecting = config.connect(connector);
        let (client, mut connection) = tokio::time::timeout(options.connect_timeout, connecting)
            .await
            .map_err(|_| PostgresError::ConnectTimeout {
                target: target.clone(),
                after: options.connect_timeout,
            })?
            .map_err(|source| PostgresError::Connect { target: target.clone(), source })?;

        let notified = Arc::new(Notify::new());
        let wake = Arc::clone(&notified);
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(AsyncMessage::Notice(notice)) => {
                        tracing::debug!(notice = %notice.message(), "postgres notice");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(error = %error, "postgres connection ended");
                        break;
                    }
                }
            }
            // Wake a waiter so it notices the closed connection on its next statement.
            wake.notify_one();
        });

        let session = Self {
            client,
            notified,
            target,
            query_timeout: options.query_timeout,
            _driver: AbortOnDropHandle::new(driver),
        };
        session.warn_if_plaintext(&config, tls.mode).await;
        Ok(session)
    }

    /// Warns (once per process) when this connection crosses a network unencrypted.
    async fn warn_if_plaintext(&self, config: &Config, mode: SslMode) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio_postgres::config::Host;
        static WARNED: AtomicBool = AtomicBool::new(false);
        let remote = config.get_hosts().iter().any(|host| match host {
            Host::Tcp(name) => !crate::tls::is_local(name),
            #[cfg(unix)]
            Host::Unix(_) => false,
        });
        if !remote || WARNED.load(Ordering::Relaxed) {
            return;
        }
        let encrypted = match mode {
            SslMode::Disable => false,
            SslMode::Prefer => {
                let ssl = "select coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false)";
                let row = self
                    .timed("checking the connection's encryption", self.client.query_one(ssl, &[]));
                row.await.map_or(true, |row| row.get(0))
            }
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => true,
        };
        if !encrypted && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target = %self.target,
                "the connection to PostgreSQL is not encrypted: add sslmode=verify-full and \
                 sslrootcert=<the server's CA> to postgres.url"
            );
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// For transactions.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// `host:port/database`, without credentials, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Resolves on the next NOTIFY delivered to this session (cancel-safe; wake-ups coalesce).
    pub async fn notified(&self) {
        self.notified.notified().await;
    }

    /// Prepares `sql` on this session.
    pub async fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement, PostgresError> {
        self.timed("preparing a statement", self.client.prepare(sql)).await
    }

    /// Runs `call` with this session's statement deadline.
    pub async fn timed<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, PostgresError> {
        match tokio::time::timeout(self.query_timeout, call).await {
            Ok(result) => result.map_err(|source| PostgresError::Query { what, source }),
            Err(_) => Err(PostgresError::Timeout { what, after: self.query_timeout }),
        }
    }
}

/// Parses a libpq-style URL or key=value string. A raw `@` in the password splits the URL at
/// that `@`: the password's tail would become the host, and show in every connection error.
/// The TLS parameters, which tokio-postgres only partly knows, come apart ([`crate::tls`]).
pub(crate) fn parse_url(url: &str) -> Result<(Config, TlsSettings), PostgresError> {
    use tokio_postgres::config::Host;
    let (url, tls) = crate::tls::split(url)?;
    let config = Config::from_str(&url).map_err(|source| PostgresError::Url { source })?;
    let split = config.get_hosts().iter().any(|host| match host {
        Host::Tcp(name) => name.contains('@'),
        #[cfg(unix)]
        Host::Unix(_) => false,
    });
    if split {
        return Err(PostgresError::UrlAt);
    }
    Ok((config, tls))
}

/// `host:port/database` of a config, never its password.
fn describe(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// Quotes an SQL identifier: `a"b` becomes `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_hides_credentials() {
        let config = Config::from_str("postgres://app:s3cret@db.internal:6543/orders").unwrap();
        assert_eq!(describe(&config), "db.internal:6543/orders");
    }

    #[test]
    fn a_raw_at_in_the_password_is_refused_without_echoing_it() {
        let err = parse_url("postgres://app:s3cr@t-tail@db.internal/orders").unwrap_err();
        assert!(matches!(err, PostgresError::UrlAt), "{err}");
        assert!(!err.to_string().contains("t-tail"), "{err}");
        assert!(parse_url("postgres://app:s3cr%40t@db.internal/orders").is_ok());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("outbox"), "\"outbox\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
