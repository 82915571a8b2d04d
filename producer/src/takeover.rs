//! Heartbeats, and adoption of the clients of dead instances (invariant 6): when
//! to adopt whom. How one client is adopted is [`crate::ownership::Ownership::adopt`].
//!
//! Every interval this instance records its heartbeat in the producer registry.
//! Heartbeats are stamped and aged by the Redis server's clock, not this host's
//! (`tally_common::stash::ProducerRegistry`): a producer whose clock is off must
//! neither look dead nor judge the others dead. An instance whose heartbeat is 3
//! intervals old by that clock is dead: each survivor adopts
//! the dead instance's clients that the consistent-hash ring over the live
//! instances assigns to it, by compare-and-set on the stash's owner and epoch, and
//! flushes them to the end. At start an instance re-adopts the clients recorded
//! under its own id at once (a restart with a stable `instance_id`).

use std::sync::Arc;
use std::time::Duration;

use tally_common::ring::{Ring, DEFAULT_VNODES};
use tally_common::stash::Adoption;
use tally_common::ClientId;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::shared::{FlushCommand, Shared};

/// Adopts every client recorded under `from` that `shared` should take: all of them
/// when `from` is this instance's own id, else the ring's share.
pub async fn adopt_from(shared: &Arc<Shared>, from: &str, ring: Option<&Ring>) -> usize {
    let owned = match shared.store.owned(from).await {
        Ok(owned) => owned,
        Err(e) => {
            warn!(from, "cannot list clients: {e}");
            return 0;
        }
    };
    let mut adopted = 0;
    for name in owned {
        let Ok(id) = ClientId::from_record(&name) else {
            continue;
        };
        if let Some(ring) = ring {
            if ring.owner(id.as_str()) != Some(shared.instance.as_str()) {
                continue;
            }
        }
        let slot = shared.ownership.slot(&id);
        match shared.ownership.adopt(&slot, from).await {
            Ok(Adoption::Adopted(claim)) => {
                info!(client = %id, from, epoch = claim.epoch, sn = claim.sn, flushed = claim.flushed, "adopted client");
                metrics::counter!(tally_common::observe::names::PRODUCER_TAKEOVERS).increment(1);
                adopted += 1;
                let _ = shared
                    .flusher
                    .send(FlushCommand::Claimed {
                        slot: slot.clone(),
                        epoch: claim.epoch,
                        sn: claim.sn,
                        flushed: claim.flushed,
                        connected: false,
                    })
                    .await;
                shared.ownership.unlist(from, &slot).await;
            }
            Ok(Adoption::OwnedElsewhere { owner }) => {
                debug!(client = %id, from, owner, "not adopted: owned elsewhere");
            }
            Err(e) => warn!(client = %id, from, "adoption failed: {e}"),
        }
    }
    adopted
}

/// Heartbeats and adopts until `stop` is cancelled.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = Duration::from_millis(shared.settings.producer.heartbeat_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let registry = match shared.store.heartbeat(&shared.instance).await {
            Ok(registry) => registry,
            Err(e) => {
                warn!("heartbeat failed: {e}");
                continue;
            }
        };
        let (live, dead) = registry.others_by_liveness(
            &shared.instance,
            shared.settings.producer.heartbeat_interval_ms,
        );
        if dead.is_empty() {
            continue;
        }
        let ring = Ring::new(
            live.iter()
                .map(|(n, _)| n.clone())
                .chain([shared.instance.clone()]),
            DEFAULT_VNODES,
        );
        for (name, beat) in dead {
            info!(dead = %name, silent_ms = registry.age_ms(beat), "producer instance is dead; adopting its share of clients");
            adopt_from(&shared, &name, Some(&ring)).await;
            match shared.store.owned(&name).await {
                Ok(rest) if rest.is_empty() => {
                    let _ = shared.store.forget_producer(&name).await;
                    info!(dead = %name, "all clients of the dead instance adopted");
                }
                _ => {}
            }
        }
    }
}
