//! `tally-producer`: TCP line ingest with sequence numbers, a replicated Redis
//! stash and an idempotent Kafka flush. Logic lives in the library; the shared
//! service skeleton (`tally_common::service`) parses arguments, loads settings,
//! starts logging and the observe endpoint, and turns signals into the shutdown;
//! this file only binds the listener.

use std::process::ExitCode;

use tally_common::service::{self, Role};

fn main() -> ExitCode {
    service::main(Role::Producer, |settings, started| async move {
        let listen = settings.producer.listen.clone();
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        tally_producer::run_with_readiness(settings, listener, started.shutdown, started.readiness)
            .await
            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
    })
}
