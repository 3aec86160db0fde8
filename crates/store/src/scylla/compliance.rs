//! The compliance event log in CQL (see [`crate::compliance`]).
//!
//! Each event is a row of `compliance_events`, partitioned by minute of commit time and
//! clustered by `(ts, source, n)`, written in the same logged batch as the change it records.
//! Several nodes write at once, each with its own clock, so a reader must know how far the log
//! is final: every process (a `source`, named at random when the store opens) keeps its events
//! in flight in a [`Sequencer`](crate::compliance::Sequencer) and republishes its floor (the
//! lowest `ts` it may still commit at) in `compliance_sources` about twice a second. The
//! horizon is the lowest floor of the live sources; a source whose row was not refreshed for
//! [`stale_after`] is dead (whatever it had in flight was applied or failed long before) and
//! is ignored; a source that closes cleanly deletes its row.
//!
//! A new source writes its row before its first event and then moves its clock to at least
//! every floor it reads, so a reader that computed a horizon without it never sees one of its
//! events appear below that horizon, however the nodes' clocks differ.

use super::{to_i64, to_u64, BoxedRow, Inner, ScyllaStore, Statements};
use crate::compliance::{EventBody, EventId, EventPage, StoredEvent, MAX_PAGE};
use crate::{Member, Result, StoreError};
use ::scylla::statement::prepared::PreparedStatement;
use protocol::{GroupId, UserId};
use std::sync::Weak;
use std::time::Duration;

/// Width of a `compliance_events` partition (ms of commit time).
pub(super) const BUCKET_MS: u64 = 60_000;

/// Most partitions one page reads (a day of minutes); past it the page ends early with a
/// cursor further on, so an idle stretch costs several calls, never an unbounded one.
const MAX_BUCKETS_PER_PAGE: u64 = 1_440;

/// How often a process republishes its floor.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// After how long without a refresh a source is taken for dead: well past any write it
/// could still have had in flight.
fn stale_after(request_timeout: Duration) -> u64 {
    (request_timeout * 4)
        .max(Duration::from_secs(30))
        .as_millis() as u64
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The event of a member joining or changing role.
pub(super) fn member_put(group: &GroupId, m: &Member) -> EventBody {
    EventBody::Member {
        group: group.clone(),
        user: m.user.clone(),
        change: crate::MemberChange::Put,
        role: Some(m.role),
    }
}

/// The event of a member leaving.
pub(super) fn member_removed(group: &GroupId, user: &UserId) -> EventBody {
    EventBody::Member {
        group: group.clone(),
        user: user.clone(),
        change: crate::MemberChange::Removed,
        role: None,
    }
}

/// Republishes the floor of the store behind `inner` until it is dropped or closed.
pub(super) async fn publish_loop(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if inner.registered.get().is_none() {
            continue;
        }
        let store = ScyllaStore { inner };
        if let Err(e) = store.publish_floor().await {
            tracing::debug!(error = %e, "compliance: could not publish this node's floor");
        }
    }
}

impl ScyllaStore {
    /// Writes this process's source row (once, before its first event) and moves its clock
    /// past every floor already published.
    pub(super) async fn register(&self) -> Result<()> {
        self.inner
            .registered
            .get_or_try_init(|| async {
                let st = self.stmts().await?;
                let floor = to_i64(self.inner.events.floor())?;
                self.exec(
                    &st.upsert_source,
                    (self.inner.events.source(), floor, to_i64(wall_ms())?),
                )
                .await?;
                self.exec(
                    &st.insert_origin,
                    (floor.to_string(), super::IDEM_TS_BASE - floor),
                )
                .await?;
                let rows: Vec<(String, Option<i64>, Option<i64>)> =
                    self.rows(&st.select_sources, ()).await?;
                for (_, f, _) in rows {
                    self.inner.events.advance_clock(to_u64(f.unwrap_or(0))?);
                }
                Ok::<(), StoreError>(())
            })
            .await
            .map(|_| ())
    }

    async fn publish_floor(&self) -> Result<()> {
        let st = self.stmts().await?;
        let floor = to_i64(self.inner.events.floor())?;
        self.exec(
            &st.upsert_source,
            (self.inner.events.source(), floor, to_i64(wall_ms())?),
        )
        .await
    }

    /// Removes this process's source row at a clean close (nothing of it is in flight any
    /// more), so readers need not wait for it to go stale.
    pub(super) async fn leave_compliance_sources(&self) {
        if self.inner.registered.get().is_none() {
            return;
        }
        let Ok(st) = self.stmts().await else {
            return;
        };
        if let Err(e) = self
            .exec(&st.delete_source, (self.inner.events.source(),))
            .await
        {
            tracing::debug!(error = %e, "compliance: could not remove this node's source row");
        }
    }

    /// A new event id (in flight until its write returns) and the event's JSON.
    pub(super) async fn new_event(&self, body: &EventBody) -> Result<(EventId, String)> {
        self.register().await?;
        let json = super::json(body)?;
        Ok((self.inner.events.begin(), json))
    }

    /// The `compliance_events` row of an event, for a batch.
    pub(super) fn event_row<'a>(
        &self,
        st: &'a Statements,
        event: &(EventId, String),
    ) -> Result<(&'a PreparedStatement, BoxedRow)> {
        let (id, body) = event;
        Ok((
            &st.insert_event,
            Box::new((
                to_i64(id.ts / BUCKET_MS)?,
                to_i64(id.ts)?,
                id.source.clone(),
                to_i64(id.n)?,
                body.clone(),
            )),
        ))
    }

    /// A logged batch carrying the events `ns`: they are final once it succeeded; after a
    /// failure they stay in flight a while, as the database may still apply it.
    pub(super) async fn batch_with_events(
        &self,
        parts: Vec<(&PreparedStatement, BoxedRow)>,
        ns: &[u64],
    ) -> Result<()> {
        match self.batch(parts).await {
            Ok(()) => {
                self.inner.events.done(ns);
                Ok(())
            }
            Err(e) => {
                for n in ns {
                    self.inner.events.failed(*n, crate::compliance::FAILED_HOLD);
                }
                Err(e)
            }
        }
    }

    /// The lowest floor of the live sources (this process's own floor included).
    async fn horizon(&self, st: &Statements) -> Result<u64> {
        let own = self.inner.events.floor();
        let now = wall_ms();
        let stale = stale_after(self.inner.opts.request_timeout);
        let rows: Vec<(String, Option<i64>, Option<i64>)> =
            self.rows(&st.select_sources, ()).await?;
        let mut horizon = own;
        for (source, floor, seen) in rows {
            if source == self.inner.events.source() {
                continue;
            }
            let seen = to_u64(seen.unwrap_or(0))?;
            if seen.saturating_add(stale) < now {
                continue;
            }
            horizon = horizon.min(to_u64(floor.unwrap_or(0))?);
        }
        Ok(horizon)
    }

    /// [`crate::ReviewStore::compliance_events`].
    pub(super) async fn read_events(&self, after: &EventId, limit: usize) -> Result<EventPage> {
        let st = self.stmts().await?;
        // Registered first, so this process's own writes are under its floor from now on.
        self.register().await?;
        let horizon = self.horizon(st).await?;
        let limit = limit.clamp(1, MAX_PAGE);
        let mut page = EventPage {
            next: after.clone(),
            horizon,
            ..Default::default()
        };
        let origin: Option<(String,)> = self.one(&st.select_origin, ()).await?;
        let origin = origin.and_then(|(v,)| v.parse::<u64>().ok()).unwrap_or(0);
        if horizon == 0 {
            return Ok(page);
        }
        let last_bucket = (horizon - 1) / BUCKET_MS;
        let mut bucket = (after.ts / BUCKET_MS).max(origin / BUCKET_MS);
        let first_bucket = bucket;
        let mut complete = false;
        let after_row = (to_i64(after.ts)?, after.source.clone(), to_i64(after.n)?);
        'buckets: loop {
            if bucket > last_bucket {
                complete = true;
                break;
            }
            if bucket - first_bucket >= MAX_BUCKETS_PER_PAGE {
                break;
            }
            let left = limit - page.events.len() + 1;
            let rows: Vec<(i64, String, i64, String)> = self
                .rows(
                    &st.select_events,
                    (
                        to_i64(bucket)?,
                        after_row.0,
                        after_row.1.as_str(),
                        after_row.2,
                        i32::try_from(left).unwrap_or(i32::MAX),
                    ),
                )
                .await?;
            let got = rows.len();
            for (ts, source, n, body) in rows {
                let id = EventId {
                    ts: to_u64(ts)?,
                    source,
                    n: to_u64(n)?,
                };
                if id.ts >= horizon {
                    complete = true;
                    break 'buckets;
                }
                if page.events.len() == limit {
                    page.has_more = true;
                    break 'buckets;
                }
                page.events.push(StoredEvent {
                    id,
                    body: super::unjson(&body)?,
                });
            }
            if got >= left {
                // Only the limit ends a full read.
                page.has_more = true;
                break;
            }
            bucket += 1;
        }
        if let Some(last) = page.events.last() {
            page.next = last.id.clone();
        }
        if !page.has_more {
            // Everything up to the horizon (or to the end of the buckets read) is read.
            let upto = if complete {
                horizon - 1
            } else {
                (bucket * BUCKET_MS).saturating_sub(1)
            };
            page.next = page.next.max(EventId::end_of(upto));
        }
        Ok(page)
    }
}
