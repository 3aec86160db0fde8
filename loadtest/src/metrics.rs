//! Measurements: live counters (atomics, read by the progress bar), HDR histograms of
//! end-to-end, send-to-ack and connection-setup latency, and a per-second timeline.
//!
//! Recording must cost the load generator little, so each worker thread records into its own
//! [`Recorder`] (a thread-local `Arc<Mutex<_>>` that only that thread locks while the run
//! goes on) and the recorders are merged once at the end. Values are microseconds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Largest recorded latency, µs (one hour).
const MAX_US: u64 = 3_600_000_000;

/// A histogram for latencies in µs, 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds that hdrhistogram accepts: cannot fail
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// A smaller histogram (2 significant digits) for the per-second timeline.
#[allow(clippy::expect_used)] // constant bounds that hdrhistogram accepts: cannot fail
fn coarse_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("valid histogram bounds")
}

/// Live counters, shared by every session task.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sessions connected right now.
    pub connected: AtomicI64,
    /// Successful connections (including reconnects).
    pub connects: AtomicU64,
    /// Failed connection attempts.
    pub connect_failures: AtomicU64,
    /// Reconnects (churn, slow consumer, errors).
    pub reconnects: AtomicU64,
    /// `send` frames written (first attempts).
    pub sent: AtomicU64,
    /// Sends written again after a reconnect (same client_msg_id).
    pub resent: AtomicU64,
    /// `ack`s received.
    pub acked: AtomicU64,
    /// Sends waiting for their ack.
    pub outstanding: AtomicI64,
    /// Fresh live deliveries.
    pub delivered: AtomicU64,
    /// Fresh deliveries through `synced`.
    pub recovered: AtomicU64,
    /// Deliveries the acks so far call for (acked messages x recipients).
    pub expected: AtomicU64,
    /// `error` frames.
    pub errors: AtomicU64,
    /// Bytes received in WebSocket payloads.
    pub bytes_in: AtomicU64,
    /// Error frames by code.
    pub error_codes: Mutex<BTreeMap<String, u64>>,
    /// Closes by code (0: the connection broke without a close frame).
    pub close_codes: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    /// Adds one to a named counter in a map.
    pub fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        let mut m = map.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry(key.to_owned()).or_default() += 1;
    }

    /// A copy of a map.
    pub fn snapshot(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
        map.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The values the progress display shows.
    pub fn progress(&self) -> Progress {
        Progress {
            connected: self.connected.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed)
                + self.recovered.load(Ordering::Relaxed),
            expected: self.expected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed)
                + self.connect_failures.load(Ordering::Relaxed),
            outstanding: self.outstanding.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of the live counters (also what shard processes report to their parent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Sessions connected.
    pub connected: i64,
    /// Sends.
    pub sent: u64,
    /// Acks.
    pub acked: u64,
    /// Deliveries (live and recovered).
    pub delivered: u64,
    /// Deliveries called for so far.
    pub expected: u64,
    /// Errors and failed connects.
    pub errors: u64,
    /// Sends without an ack yet.
    pub outstanding: i64,
    /// Reconnects.
    pub reconnects: u64,
}

impl std::ops::Add for Progress {
    type Output = Progress;
    fn add(self, o: Progress) -> Progress {
        Progress {
            connected: self.connected + o.connected,
            sent: self.sent + o.sent,
            acked: self.acked + o.acked,
            delivered: self.delivered + o.delivered,
            expected: self.expected + o.expected,
            errors: self.errors + o.errors,
            outstanding: self.outstanding + o.outstanding,
            reconnects: self.reconnects + o.reconnects,
        }
    }
}

/// One second of the timeline.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Sends.
    pub sent: u64,
    /// Acks.
    pub acked: u64,
    /// Live deliveries.
    pub delivered: u64,
    /// End-to-end latency of the deliveries in this second.
    pub latency: Histogram<u64>,
}

impl Bucket {
    fn new() -> Self {
        Self {
            sent: 0,
            acked: 0,
            delivered: 0,
            latency: coarse_histogram(),
        }
    }
}

/// One thread's measurements.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Send to delivery on each recipient, µs.
    pub e2e: Histogram<u64>,
    /// Send to ack, µs.
    pub ack: Histogram<u64>,
    /// TCP connect + WebSocket upgrade + `hello`, µs.
    pub connect: Histogram<u64>,
    /// Per second since the start.
    pub timeline: Vec<Bucket>,
}

/// Most seconds the timeline keeps.
const MAX_SECONDS: usize = 24 * 3600;

impl Recorder {
    /// Empty.
    pub fn new() -> Self {
        Self {
            e2e: histogram(),
            ack: histogram(),
            connect: histogram(),
            timeline: Vec::new(),
        }
    }

    /// The bucket of second `sec`.
    pub fn bucket(&mut self, sec: usize) -> &mut Bucket {
        let sec = sec.min(MAX_SECONDS);
        while self.timeline.len() <= sec {
            self.timeline.push(Bucket::new());
        }
        &mut self.timeline[sec]
    }

    /// Adds another recorder.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.e2e.add(&other.e2e);
        let _ = self.ack.add(&other.ack);
        let _ = self.connect.add(&other.connect);
        for (i, b) in other.timeline.iter().enumerate() {
            let mine = self.bucket(i);
            mine.sent += b.sent;
            mine.acked += b.acked;
            mine.delivered += b.delivered;
            let _ = mine.latency.add(&b.latency);
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static LOCAL: RefCell<Option<(u64, Arc<Mutex<Recorder>>)>> = const { RefCell::new(None) };
}

/// The measurements of one run: counters plus the per-thread recorders.
#[derive(Debug)]
pub struct Metrics {
    id: u64,
    /// Live counters.
    pub counters: Counters,
    recorders: Mutex<Vec<Arc<Mutex<Recorder>>>>,
}

impl Metrics {
    /// Fresh metrics.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            counters: Counters::default(),
            recorders: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on this thread's recorder.
    pub fn with<R>(&self, f: impl FnOnce(&mut Recorder) -> R) -> R {
        LOCAL.with(|cell| {
            let mut slot = cell.borrow_mut();
            let rec = match slot.as_ref() {
                Some((id, rec)) if *id == self.id => rec.clone(),
                _ => {
                    let rec = Arc::new(Mutex::new(Recorder::new()));
                    self.recorders
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(rec.clone());
                    *slot = Some((self.id, rec.clone()));
                    rec
                }
            };
            drop(slot);
            let mut guard = rec.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
    }

    /// All recorders merged.
    pub fn merged(&self) -> Recorder {
        let mut out = Recorder::new();
        for r in self
            .recorders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            out.merge(&r.lock().unwrap_or_else(PoisonError::into_inner));
        }
        out
    }
}

/// A histogram as (value, count) pairs, for shard reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

impl HistData {
    /// From a histogram.
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        HistData(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Into a histogram with `sigfig` digits.
    pub fn to_hist(&self, coarse: bool) -> Histogram<u64> {
        let mut h = if coarse {
            coarse_histogram()
        } else {
            histogram()
        };
        for &(v, n) in &self.0 {
            let _ = h.record_n(v.clamp(1, MAX_US), n);
        }
        h
    }
}

/// A recorder in serializable form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecorderData {
    /// End to end.
    pub e2e: HistData,
    /// Send to ack.
    pub ack: HistData,
    /// Connection setup.
    pub connect: HistData,
    /// Per second: sent, acked, delivered, latency.
    pub timeline: Vec<(u64, u64, u64, HistData)>,
}

impl From<&Recorder> for RecorderData {
    fn from(r: &Recorder) -> Self {
        Self {
            e2e: HistData::from_hist(&r.e2e),
            ack: HistData::from_hist(&r.ack),
            connect: HistData::from_hist(&r.connect),
            timeline: r
                .timeline
                .iter()
                .map(|b| {
                    (
                        b.sent,
                        b.acked,
                        b.delivered,
                        HistData::from_hist(&b.latency),
                    )
                })
                .collect(),
        }
    }
}

impl From<&RecorderData> for Recorder {
    fn from(d: &RecorderData) -> Self {
        let mut r = Recorder {
            e2e: d.e2e.to_hist(false),
            ack: d.ack.to_hist(false),
            connect: d.connect.to_hist(false),
            timeline: Vec::new(),
        };
        for (i, (s, a, del, h)) in d.timeline.iter().enumerate() {
            let b = r.bucket(i);
            b.sent = *s;
            b.acked = *a;
            b.delivered = *del;
            b.latency = h.to_hist(true);
        }
        r
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarizes a µs histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_merge_across_threads_and_round_trip() {
        let m = Metrics::new();
        m.with(|r| {
            r.e2e.saturating_record(1000);
            r.bucket(2).delivered += 1;
        });
        let m2 = m.clone();
        std::thread::spawn(move || m2.with(|r| r.e2e.saturating_record(3000)))
            .join()
            .unwrap();
        let merged = m.merged();
        assert_eq!(merged.e2e.len(), 2);
        assert_eq!(merged.timeline.len(), 3);
        let back = Recorder::from(&RecorderData::from(&merged));
        assert_eq!(back.e2e.len(), 2);
        assert_eq!(back.timeline[2].delivered, 1);
        let s = LatencySummary::of(&back.e2e);
        assert!(
            (s.p50_ms - 1.0).abs() < 0.01 && (s.max_ms - 3.0).abs() < 0.01,
            "{s:?}"
        );
    }
}
