//! Direct dispatch: the worker holds a bounded set of leased deliveries in memory, a few more
//! than it has sending slots, so a slot never waits for a claim round trip. The publish committer
//! puts new deliveries straight into that set when it has room, writing them already leased to
//! this worker; the worker's claims fill the rest from the queue. The row in the store stays the
//! record: if the replica dies before the attempt is recorded, the lease runs out and any worker
//! claims the delivery again, exactly as for one it had claimed itself.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::worker::Claimed;

/// A delivery leased at publish time, with its place among the held deliveries.
pub(crate) type Handed = (Claimed, OwnedSemaphorePermit);

/// Deliveries held by this process's worker: at most twice its sending slots.
pub(crate) struct Dispatch {
    /// One permit per concurrent send.
    pub sending: Arc<Semaphore>,
    /// One permit per leased delivery held in memory, waiting for a slot or being sent. The
    /// worker's claims and the committer draw from it; a waiting claim is served first (the
    /// semaphore is fair and `try_acquire` never jumps its queue), so due deliveries are not
    /// starved by new ones.
    pub held: Arc<Semaphore>,
    /// Set while a worker runs in this process; without one, every delivery waits in the queue.
    running: AtomicBool,
    tx: mpsc::UnboundedSender<Handed>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Handed>>>,
    /// A lease token per process: rows leased at publish time are recognisable in the store.
    pub token: String,
}

impl Dispatch {
    pub(crate) fn new(concurrency: u32) -> Dispatch {
        let (tx, rx) = mpsc::unbounded_channel();
        Dispatch {
            sending: Arc::new(Semaphore::new(concurrency as usize)),
            held: Arc::new(Semaphore::new(2 * concurrency as usize)),
            running: AtomicBool::new(false),
            tx,
            rx: Mutex::new(Some(rx)),
            token: format!("direct-{}", runway_core::id::base32_encode(&runway_core::secret::random_bytes::<12>())),
        }
    }

    /// The receiving side, for the one worker of this process.
    pub(crate) fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<Handed>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Release);
    }

    /// Takes room for up to `wanted` deliveries about to be written; none when no worker runs
    /// here, fewer when the worker holds nearly all it may (those stay in the queue).
    pub(crate) fn reserve(&self, wanted: usize) -> Vec<OwnedSemaphorePermit> {
        if wanted == 0 || !self.running.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut permits = Vec::with_capacity(wanted.min(self.held.available_permits()));
        while permits.len() < wanted {
            match self.held.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        permits
    }

    /// Hands a committed, leased delivery to the worker. If the worker is gone (shutdown), the
    /// lease runs out and the delivery is claimed again: nothing is lost.
    pub(crate) fn hand_over(&self, handed: Handed) {
        let _ = self.tx.send(handed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_only_free_room_while_a_worker_runs() {
        let d = Dispatch::new(2);
        assert!(d.reserve(2).is_empty(), "no worker, no direct dispatch");
        d.set_running(true);
        let first = d.reserve(3);
        assert_eq!(first.len(), 3, "room for twice the sending slots");
        assert_eq!(d.reserve(5).len(), 1, "only one place left");
        drop(first);
        d.set_running(false);
        assert!(d.reserve(1).is_empty(), "a stopped worker ends direct dispatch");
    }

    #[tokio::test]
    async fn a_waiting_claim_gets_freed_room_before_direct_dispatch() {
        let d = Dispatch::new(1);
        d.set_running(true);
        let held = d.reserve(2);
        let waiting = tokio::spawn({
            let room = d.held.clone();
            async move { room.acquire_owned().await.map(|_| ()) }
        });
        // On this single-threaded test runtime, yielding lets the waiter queue up on the semaphore.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the worker is waiting for room");
        drop(held);
        assert_eq!(d.reserve(2).len(), 1, "of the two places freed, the waiting worker got one");
        waiting.await.unwrap().unwrap();
    }
}
