//! The order of one session's pipelined sends. A session may have several `send`s waiting
//! for their durable append at once (`Store::keeps_append_order()` backends), and their
//! messages must enter the store in the order the client sent them: each send gets a
//! [`Ticket`] from the session's [`SendOrder`], and the send path's store hand-off runs through
//! [`in_order`], which lets the next send go once this one's job is in the store's queue.
//! The ticket is passed down the send path explicitly (`send::send`, then
//! `messages::append_and_deliver`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::Notify;

/// Orders the store hand-offs of one session's pipelined sends: send `n` may enter the store
/// only after send `n - 1` has (or has finished without storing anything).
#[derive(Default)]
struct Pipeline {
    /// The ticket whose turn it is.
    turn: AtomicU64,
    wake: Notify,
}

impl Pipeline {
    async fn wait_turn(&self, ticket: u64) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.turn.load(Ordering::Acquire) >= ticket {
                return;
            }
            notified.await;
        }
    }

    /// Lets the send after `ticket` go (idempotent).
    fn release(&self, ticket: u64) {
        if self.turn.fetch_max(ticket + 1, Ordering::AcqRel) <= ticket {
            self.wake.notify_waiters();
        }
    }
}

/// The place of one pipelined send in its session's order. Dropping it lets the next send
/// go, so a send that ends without storing anything (refused, held, failed) never blocks
/// the ones behind it.
pub struct Ticket {
    pipeline: Arc<Pipeline>,
    n: u64,
}

/// One session's send order: hands out a [`Ticket`] per pipelined send, in frame order.
#[derive(Default)]
pub struct SendOrder {
    pipeline: Arc<Pipeline>,
    next: u64,
}

impl SendOrder {
    /// The ticket of the next send.
    pub fn next_ticket(&mut self) -> Ticket {
        let n = self.next;
        self.next += 1;
        Ticket {
            pipeline: self.pipeline.clone(),
            n,
        }
    }
}

impl Ticket {
    /// Waits until the previous send has entered the store (or ended without storing).
    pub async fn wait_turn(&self) {
        self.pipeline.wait_turn(self.n).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pipeline.release(self.n);
    }
}

/// Runs a store hand-off (`Store::append_then`) of a pipelined send in the session's send
/// order: polls `hand_off` once (which queues the job into the store's writer; its bounded
/// queue is FIFO even when full), lets the next send go, then waits for the outcome. Without
/// a ticket (a send that is not pipelined, an approval) it is just `hand_off.await`.
pub async fn in_order<F: Future>(ticket: Option<&Ticket>, hand_off: F) -> F::Output {
    let Some(ticket) = ticket else {
        return hand_off.await;
    };
    // Unconstrained: with tokio's cooperative budget spent, the first poll of the store's
    // queue would return Pending *without* taking a place in it, and the next send (polled by
    // the same reader task, in any order) could enter the store first.
    let mut hand_off = std::pin::pin!(tokio::task::unconstrained(hand_off));
    let first = std::future::poll_fn(|cx| Poll::Ready(hand_off.as_mut().poll(cx))).await;
    ticket.pipeline.release(ticket.n);
    match first {
        Poll::Ready(out) => out,
        Poll::Pending => hand_off.await,
    }
}
