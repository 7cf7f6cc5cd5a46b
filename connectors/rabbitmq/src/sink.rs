//! The RabbitMQ sink proper. Invariant: a message's lane is a pure function of its key, and a
//! broken connection is never replaced within a burst: the send that finds it broken fails, and
//! only a later send — after the engine saw every confirm of the old connection resolve —
//! connects again.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{
    Channel, Confirmation, Connection, ConnectionProperties, ConnectionStatus, ExchangeKind,
};
use outbox_relay_core::{
    cloudevents, Capabilities, Checked, Confirm, ConnectorError, Message, Replays, Sink,
};

use crate::properties::{header_frame_size, properties, validate};
use crate::{RabbitSinkError, Topology};

/// Distinct exchanges remembered as existing before the memo is reset.
const KNOWN_EXCHANGES_MAX: usize = 10_000;

#[derive(Clone)]
pub struct RabbitOptions {
    /// `amqp://user:password@host:port/vhost`.
    pub url: String,
    /// Channels publishing in parallel; a key always uses the same one.
    pub lanes: usize,
    /// Largest message (payload + key + headers) the relay hands to RabbitMQ.
    pub max_message_bytes: usize,
    /// Deadline for connecting and for each declaration.
    pub connect_timeout: Duration,
    pub topology: Topology,
    /// For `amqps://`: a CA and a client identity beyond the defaults.
    pub tls: TlsFiles,
}

/// PEM files for TLS (`amqps://`): CA certificates the broker's certificate may chain to (the
/// Mozilla roots are trusted too), and a client certificate with its PKCS#8 key.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca: Option<std::path::PathBuf>,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl TlsFiles {
    /// Reads the files (once, at start: a missing file is a configuration error).
    fn load(&self) -> Result<OwnedTLSConfig, RabbitSinkError> {
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| RabbitSinkError::TlsFile {
                what: what.into(),
                path: path.display().to_string(),
                source,
            })
        };
        let cert_chain = match &self.ca {
            Some(path) => {
                let pem = read("tls_ca_file", path)?;
                Some(String::from_utf8(pem).map_err(|_| RabbitSinkError::TlsFile {
                    what: "tls_ca_file".into(),
                    path: path.display().to_string(),
                    source: std::io::Error::other("not PEM text"),
                })?)
            }
            None => None,
        };
        let identity = match &self.identity {
            Some((cert, key)) => Some(OwnedIdentity::PKCS8 {
                pem: read("tls_cert_file", cert)?,
                key: read("tls_key_file", key)?,
            }),
            None => None,
        };
        Ok(OwnedTLSConfig { identity, cert_chain })
    }
}

impl std::fmt::Debug for RabbitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitOptions")
            .field("url", &"<redacted>")
            .field("lanes", &self.lanes)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish_non_exhaustive()
    }
}

pub struct RabbitSink {
    options: RabbitOptions,
    tls: OwnedTLSConfig,
    target: String,
    connected: Option<Connected>,
    /// A connection given up on while a publish was being written: its frames may still be
    /// queued, in lapin or in the socket. No new connection is opened until it is closed (or
    /// broken, or surely dropped by the broker), or the unmarked originals could reach the
    /// broker after the marked re-sends.
    abandoned: Option<Abandoned>,
}

struct Abandoned {
    status: ConnectionStatus,
    /// Past this the broker has dropped the connection if it heard nothing on it, so nothing
    /// sent on it can land any more (two heartbeats; none if heartbeats are off).
    dropped_by: Option<Instant>,
}

impl Abandoned {
    fn over(&self) -> bool {
        self.status.closed()
            || self.status.errored()
            || self.dropped_by.is_some_and(|at| Instant::now() >= at)
    }
}

struct Connected {
    connection: Connection,
    lanes: Vec<Channel>,
    /// For passive exchange checks, which close the channel when the exchange is missing.
    probe: Option<Channel>,
    known_exchanges: HashSet<String>,
}

impl std::fmt::Debug for RabbitSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSink")
            .field("target", &self.target)
            .field("connected", &self.connected.is_some())
            .finish()
    }
}

impl RabbitSink {
    /// Validates the URL; connects lazily on the first send (or [`RabbitSink::check`]).
    pub fn new(options: RabbitOptions) -> Result<Self, RabbitSinkError> {
        let uri =
            AMQPUri::from_str(&options.url).map_err(|reason| RabbitSinkError::Url { reason })?;
        let target =
            format!("{}:{} (vhost {:?})", uri.authority.host, uri.authority.port, uri.vhost);
        let tls = options.tls.load()?;
        Ok(Self {
            options: RabbitOptions { lanes: options.lanes.max(1), ..options },
            tls,
            target,
            connected: None,
            abandoned: None,
        })
    }

    /// `host:port (vhost "name")`, without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Connects and declares the configured topology: proves reachability and permissions.
    pub async fn check(&mut self) -> Result<(), RabbitSinkError> {
        self.connection().await.map(|_| ())
    }

    /// Verifies that `exchange` exists (for `check`).
    pub async fn check_exchange(&mut self, exchange: &str) -> Result<(), RabbitSinkError> {
        let timeout = self.options.connect_timeout;
        self.connection().await?.ensure_exchange(exchange, timeout).await
    }

    /// The live connection, connecting if there is none. A connection found broken is dropped
    /// and reported, not replaced in the same call: messages sent on it may still have confirms
    /// outstanding, and sending on a new one now could overtake them. The engine re-sends after
    /// every old confirm resolved, and that send connects afresh.
    async fn connection(&mut self) -> Result<&mut Connected, RabbitSinkError> {
        if let Some(old) = &self.connected {
            let healthy = old.connection.status().connected()
                && old.lanes.iter().all(|l| l.status().connected());
            if !healthy {
                let old = self.connected.take().expect("checked");
                tracing::info!(target = %self.target, "RabbitMQ connection lost; reconnecting on the next attempt");
                let closing = old.connection.close(200, "reconnecting".into());
                let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
                return Err(RabbitSinkError::ConnectionLost { target: self.target.clone() });
            }
        } else {
            if let Some(abandoned) = &self.abandoned {
                if !abandoned.over() {
                    return Err(RabbitSinkError::StillClosing { target: self.target.clone() });
                }
                self.abandoned = None;
            }
            self.connected = Some(self.connect().await?);
        }
        Ok(self.connected.as_mut().expect("connected"))
    }

    /// Gives up on the current connection: closes it in the background and remembers it, so
    /// [`Self::connection`] waits for the close before it connects again.
    ///
    /// The channels stay open until the close is answered. Dropping one would close it at once
    /// and fail its confirms while what was written to the socket still travels; the broker's
    /// `close-ok` comes only after it has read everything sent before it.
    fn abandon(&mut self) {
        let Some(old) = self.connected.take() else { return };
        let heartbeat = u64::from(old.connection.configuration().heartbeat());
        self.abandoned = Some(Abandoned {
            status: old.connection.status().clone(),
            dropped_by: (heartbeat > 0)
                .then(|| Instant::now() + Duration::from_secs(2 * heartbeat + 1)),
        });
        tokio::spawn(async move {
            let _ = old.connection.close(200, "a publish timed out".into()).await;
            drop(old);
        });
    }

    async fn connect(&self) -> Result<Connected, RabbitSinkError> {
        let timeout = self.options.connect_timeout;
        let target = self.target.clone();
        let properties =
            ConnectionProperties::default().with_connection_name("outbox-relay".into());
        let runtime = lapin::runtime::default_runtime().map_err(|source| {
            RabbitSinkError::Connect { target: target.clone(), source: Box::new(source) }
        })?;
        let connecting = Connection::connect_with_config(
            &self.options.url,
            properties,
            self.tls.clone(),
            runtime,
        );
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| RabbitSinkError::ConnectTimeout {
                target: target.clone(),
                after: timeout,
            })?
            .map_err(|source| RabbitSinkError::Connect {
                target: target.clone(),
                source: Box::new(source),
            })?;
        let within = |what: &str| RabbitSinkError::Timeout { what: what.into(), after: timeout };
        let setup = open_channel(&connection, timeout, &target).await?;
        tokio::time::timeout(timeout, self.options.topology.declare(&setup))
            .await
            .map_err(|_| within("topology declarations"))??;
        let _ = setup.close(200, "topology declared".into()).await;

        let mut lanes = Vec::with_capacity(self.options.lanes);
        for _ in 0..self.options.lanes {
            let lane = open_channel(&connection, timeout, &target).await?;
            tokio::time::timeout(timeout, lane.confirm_select(ConfirmSelectOptions::default()))
                .await
                .map_err(|_| within("confirm.select"))?
                .map_err(|source| RabbitSinkError::Connect {
                    target: self.target.clone(),
                    source: Box::new(source),
                })?;
            lanes.push(lane);
        }
        tracing::info!(target = %self.target, lanes = lanes.len(), "connected to RabbitMQ");
        Ok(Connected { connection, lanes, probe: None, known_exchanges: HashSet::new() })
    }
}

impl Connected {
    /// Checks once per exchange that it exists, so a missing exchange is a clear permanent error
    /// for the message instead of a channel closed under every message in flight.
    async fn ensure_exchange(
        &mut self,
        exchange: &str,
        timeout: Duration,
    ) -> Result<(), RabbitSinkError> {
        if exchange.is_empty() || self.known_exchanges.contains(exchange) {
            return Ok(()); // the default exchange always exists
        }
        let probe = match self.probe.take().filter(|p| p.status().connected()) {
            Some(probe) => probe,
            None => tokio::time::timeout(timeout, self.connection.create_channel())
                .await
                .map_err(|_| RabbitSinkError::Timeout {
                    what: "channel.open".into(),
                    after: timeout,
                })?
                .map_err(|source| RabbitSinkError::ExchangeCheck {
                    exchange: exchange.into(),
                    source: Box::new(source),
                })?,
        };
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        let declared = probe.exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        );
        match tokio::time::timeout(timeout, declared).await {
            Err(_) => Err(RabbitSinkError::Timeout {
                what: format!("exchange check of {exchange:?}"),
                after: timeout,
            }),
            Ok(Ok(())) => {
                self.probe = Some(probe);
                if self.known_exchanges.len() >= KNOWN_EXCHANGES_MAX {
                    self.known_exchanges.clear();
                }
                self.known_exchanges.insert(exchange.to_owned());
                Ok(())
            }
            Ok(Err(source)) => match source.kind() {
                lapin::ErrorKind::ProtocolError(amqp)
                    if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) =>
                {
                    Err(RabbitSinkError::MissingExchange { exchange: exchange.into() })
                }
                _ => Err(RabbitSinkError::ExchangeCheck {
                    exchange: exchange.into(),
                    source: Box::new(source),
                }),
            },
        }
    }
}

impl Sink for RabbitSink {
    async fn send(&mut self, message: &Message) -> Result<Confirm, ConnectorError> {
        validate(message, self.options.max_message_bytes)?;
        let timeout = self.options.connect_timeout;
        let connected = self.connection().await?;
        let frame_max = connected.connection.configuration().frame_max() as usize;
        let header_frame = header_frame_size(message);
        if header_frame > frame_max {
            // The broker would close the connection on every attempt: poison, not an outage.
            return Err(RabbitSinkError::HeadersTooLarge {
                id: message.id.clone(),
                size: header_frame,
                frame_max,
            }
            .into());
        }
        connected.ensure_exchange(&message.destination, timeout).await?;

        let lane = lane_of(message.key.as_deref(), connected.lanes.len());
        let channel = &connected.lanes[lane];
        if !channel.status().connected() {
            return Err(RabbitSinkError::ChannelClosed { lane }.into());
        }
        let routing_key = message.key.as_deref().unwrap_or("");
        let options = BasicPublishOptions { mandatory: true, immediate: false };
        let structured = message
            .cloudevent
            .as_ref()
            .filter(|event| event.mode == cloudevents::Mode::Structured)
            .map(|event| event.structured(message));
        let body = structured.as_deref().or(message.payload.as_deref()).unwrap_or(&[]);
        let publish = channel.basic_publish(
            message.destination.as_str().into(),
            routing_key.into(),
            options,
            body,
            properties(message),
        );
        let id = message.id.clone();
        let exchange = message.destination.clone();
        let confirm = match tokio::time::timeout(timeout, publish).await {
            Ok(published) => published.map_err(|source| RabbitSinkError::Publish {
                id: id.clone(),
                exchange: exchange.clone(),
                source: Box::new(source),
            })?,
            Err(_) => {
                // A frame may be half written or still queued: never reuse this connection,
                // and open no other before it is closed.
                self.abandon();
                return Err(RabbitSinkError::Timeout {
                    what: format!("the publish of message {id}"),
                    after: timeout,
                }
                .into());
            }
        };
        let routing_key = routing_key.to_owned();
        Ok(Box::pin(async move {
            match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                    Err(RabbitSinkError::Unroutable {
                        id,
                        exchange,
                        routing_key,
                        reply_code: returned.reply_code,
                        reply_text: returned.reply_text.to_string(),
                    }
                    .into())
                }
                Ok(Confirmation::Nack(None) | Confirmation::NotRequested) => {
                    Err(RabbitSinkError::Nacked { id }.into())
                }
                Err(source) => {
                    Err(RabbitSinkError::ConfirmLost { id, exchange, source: Box::new(source) }
                        .into())
                }
            }
        }))
    }

    fn capabilities(&self) -> Capabilities {
        // The key picks the channel (lane); a channel's publishes reach a queue in order.
        Capabilities { orders_by_key: true, replays: Replays::Marked }
    }

    async fn check(&mut self, destination: Option<&str>) -> Result<Checked, ConnectorError> {
        RabbitSink::check(self).await?;
        let reached = format!("connected to {} and declared the topology", self.target());
        let destination = match destination {
            None => None,
            Some(exchange) => Some(match self.check_exchange(exchange).await {
                Ok(()) => Ok(format!("{exchange:?} exists")),
                Err(error) => Err(outbox_relay_core::chain(&error)),
            }),
        };
        Ok(Checked { reached, destination_kind: "exchange", destination })
    }
}

async fn open_channel(
    connection: &Connection,
    timeout: Duration,
    target: &str,
) -> Result<Channel, RabbitSinkError> {
    tokio::time::timeout(timeout, connection.create_channel())
        .await
        .map_err(|_| RabbitSinkError::Timeout { what: "channel.open".into(), after: timeout })?
        .map_err(|source| RabbitSinkError::Connect {
            target: target.into(),
            source: Box::new(source),
        })
}

/// FNV-1a of the key, modulo the lane count: stable across runs and processes.
fn lane_of(key: Option<&str>, lanes: usize) -> usize {
    let Some(key) = key else { return 0 };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_new_connection_opens_while_one_given_up_on_is_not_closed() {
        let options = RabbitOptions {
            url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            lanes: 1,
            max_message_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(1),
            topology: Topology::default(),
            tls: TlsFiles::default(),
        };
        let mut sink = RabbitSink::new(options).unwrap();
        // As left by a publish that timed out: the old connection has not closed yet.
        let status = ConnectionStatus::default();
        sink.abandoned = Some(Abandoned { status, dropped_by: None });
        let error = sink.connection().await.err().expect("refused");
        assert!(matches!(error, RabbitSinkError::StillClosing { .. }), "{error}");
        assert_eq!(ConnectorError::from(error).retry(), outbox_relay_core::Retry::Transient);

        // Two heartbeats later the broker has dropped it: connecting is tried again.
        let past = Instant::now() - Duration::from_secs(1);
        let status = ConnectionStatus::default();
        sink.abandoned = Some(Abandoned { status, dropped_by: Some(past) });
        let error = sink.connection().await.err().expect("nothing listens there");
        assert!(!matches!(error, RabbitSinkError::StillClosing { .. }), "{error}");
        assert!(sink.abandoned.is_none());
    }

    #[test]
    fn a_raw_at_in_the_password_stays_out_of_the_target() {
        let options = |url: &str| RabbitOptions {
            url: url.into(),
            lanes: 1,
            max_message_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(1),
            topology: Topology::default(),
            tls: TlsFiles::default(),
        };
        for url in [
            "amqp://app:s3cr@t-tail@localhost:5672/%2f",
            "amqp://app:s3cr%40t-tail@localhost:5672/%2f",
        ] {
            let sink = RabbitSink::new(options(url)).unwrap();
            assert_eq!(sink.target(), "localhost:5672 (vhost \"/\")");
        }
    }

    #[test]
    fn a_key_always_maps_to_the_same_lane() {
        assert_eq!(lane_of(None, 4), 0);
        let first = lane_of(Some("order-42"), 4);
        for _ in 0..10 {
            assert_eq!(lane_of(Some("order-42"), 4), first);
        }
        let used: HashSet<usize> = (0..100).map(|i| lane_of(Some(&format!("k{i}")), 4)).collect();
        assert_eq!(used.len(), 4, "keys spread over every lane");
    }
}
