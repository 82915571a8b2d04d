//! TLS on the ingest listener (`[producer.tls]`): the server configuration in
//! force, reloaded from its files on SIGHUP, and the handshake of one connection.
//!
//! Invariant: a reload replaces the configuration only with one that was built
//! whole from the files; a bad reload logs an error and the previous one stays in
//! force. A new connection takes the configuration in force when its handshake
//! starts; connections already open keep theirs. A handshake that fails or does not
//! finish by the connection's first-line deadline closes the connection, counted
//! as refused with reason `tls_handshake`, before any line of it is read.

use std::sync::{Arc, PoisonError, RwLock};

use tally_common::settings::TlsSettings;
use tally_common::tls::{certificate_names, server_config, TlsError};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

/// The listener's TLS configuration, swappable while connections are served.
pub struct ServerTls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Builds the configuration from `settings`' files.
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(server_config(settings)?),
            settings: settings.clone(),
        })
    }

    /// The configuration in force.
    fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again; on success new connections use them, on failure
    /// nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_config(&self.settings)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Completes the TLS handshake of `socket` by `due`: the stream and the SAN
    /// dNSNames of the client's certificate (empty without one), or `None` when it
    /// failed or took too long (counted, and the socket closed).
    pub async fn handshake(
        &self,
        socket: TcpStream,
        due: tokio::time::Instant,
    ) -> Option<(TlsStream<TcpStream>, Vec<String>)> {
        let acceptor = TlsAcceptor::from(self.config());
        let failure = match tokio::time::timeout_at(due, acceptor.accept(socket)).await {
            Ok(Ok(stream)) => {
                let names = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(certificate_names)
                    .unwrap_or_default();
                return Some((stream, names));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "not completed within producer.first_line_timeout_ms".to_owned(),
        };
        metrics::counter!(
            tally_common::observe::names::PRODUCER_REFUSED_CONNECTIONS,
            "reason" => tally_common::protocol::TLS_HANDSHAKE
        )
        .increment(1);
        debug!("TLS handshake failed: {failure}");
        None
    }
}

/// Reloads `tls` on every SIGHUP until `stop`. Without TLS there is nothing to
/// reload, but SIGHUP is still caught: its default action would end the producer
/// without flushing.
pub async fn reload_on_sighup(tls: Option<Arc<ServerTls>>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot watch SIGHUP, producer.tls will not be reloaded: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            got = hangups.recv() => if got.is_none() { return },
            () = stop.cancelled() => return,
        }
        let Some(tls) = &tls else {
            info!("SIGHUP: nothing to reload (no [producer.tls])");
            continue;
        };
        match tls.reload() {
            Ok(()) => info!("SIGHUP: producer.tls reloaded; new connections use it"),
            Err(e) => error!(
                "SIGHUP: producer.tls not reloaded, the previous certificate stays in force: {e}"
            ),
        }
    }
}
