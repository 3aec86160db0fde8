//! The compliance log's message events, written as **one record per writer batch**.
//!
//! Every appended message has its own compliance event (see [`crate::compliance`]), but the
//! embedded store does not write one key per message: a writer collects the message events of
//! its batch in a [`MessageEvents`] buffer (a few byte copies per append, no JSON, no lock) and,
//! just before the batch's atomic commit, reserves one run of consecutive event ids for all of
//! them ([`crate::compliance::Sequencer::begin_range`]) and writes the buffer under the first
//! id's key, in the same write batch as the messages. So the events are still written in the
//! same atomic step as their messages and carry everything they carried before (conv, seq,
//! id, sender, client_msg_id, moderation outcome), while the append path pays one memtable
//! insert and one id allocation per batch instead of per message.
//!
//! A record at key `ts(be) n(be)` holding `count` events stands for the events
//! `(ts, "", n) .. (ts, "", n + count - 1)`; no other key falls inside that run, because the
//! sequencer hands the whole run out under its lock. Values of single events (recalls,
//! members, audit entries, and every event written before this format) are JSON objects and
//! start with `{`; a record starts with [`RECORD_TAG`].
//!
//! Record layout (integers little-endian): `RECORD_TAG`, `count: u32`, then per event
//! `seq: u64`, `conv`, `id`, `from`, `client_msg_id` (each `len: u32` + UTF-8 bytes), and the
//! moderation outcome (`0`, or `1` + `len: u32` + bytes).

use crate::{EventBody, NewMessage, Result, StoreError};
use protocol::{ConvId, MessageId, Seq, UserId};

/// First byte of a message-event record (a JSON event starts with `{`).
pub const RECORD_TAG: u8 = 0x01;

/// The message events of one writer batch, encoded as they are appended.
#[derive(Debug, Default)]
pub struct MessageEvents {
    buf: Vec<u8>,
    count: u32,
}

impl MessageEvents {
    /// Adds the event of `msg`, stored at `seq`.
    pub fn push(&mut self, msg: &NewMessage, seq: u64) {
        if self.buf.is_empty() {
            self.buf.push(RECORD_TAG);
            self.buf.extend_from_slice(&0u32.to_le_bytes());
        }
        self.buf.extend_from_slice(&seq.to_le_bytes());
        put_str(&mut self.buf, msg.conv.as_str());
        put_str(&mut self.buf, msg.id.as_str());
        put_str(&mut self.buf, msg.from.as_str());
        put_str(&mut self.buf, &msg.client_msg_id);
        match &msg.moderation {
            Some(m) => {
                self.buf.push(1);
                put_str(&mut self.buf, m);
            }
            None => self.buf.push(0),
        }
        self.count += 1;
    }

    /// How many events are buffered.
    pub fn len(&self) -> u64 {
        u64::from(self.count)
    }

    /// Whether no event is buffered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The record of the buffered events (empty when none are), leaving the buffer empty with
    /// its capacity for the next batch.
    pub fn take(&mut self) -> Vec<u8> {
        if let Some(c) = self.buf.get_mut(1..5) {
            c.copy_from_slice(&self.count.to_le_bytes());
        }
        self.count = 0;
        let record = self.buf.clone();
        self.buf.clear();
        record
    }

    /// Forgets the buffered events (their batch failed).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    // Ids and keys are far below 4 GiB (the protocol caps frames much lower).
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Whether a compliance value is a message-event record (else one JSON event).
pub fn is_record(value: &[u8]) -> bool {
    value.first() == Some(&RECORD_TAG)
}

/// How many events a compliance value stands for (1 for a JSON event).
pub fn count(value: &[u8]) -> Result<u64> {
    if !is_record(value) {
        return Ok(1);
    }
    let mut r = Reader { b: value, at: 1 };
    Ok(u64::from(r.u32()?))
}

/// The events of a compliance value, in id order (one for a JSON event).
pub fn decode(value: &[u8]) -> Result<Vec<EventBody>> {
    if !is_record(value) {
        let body = serde_json::from_slice(value)
            .map_err(|e| StoreError::corrupt_with("decode compliance event", e))?;
        return Ok(vec![body]);
    }
    let mut r = Reader { b: value, at: 1 };
    let count = r.u32()? as usize;
    // Every event takes at least 25 bytes: a corrupt count cannot make us allocate much.
    let mut out = Vec::with_capacity(count.min(value.len() / 25));
    for _ in 0..count {
        let seq = r.u64()?;
        let conv = ConvId::parse(r.str()?)
            .map_err(|_| StoreError::corrupt("compliance record: bad conversation id"))?;
        let id = MessageId::new(r.str()?);
        let from = UserId::new(r.str()?);
        let client_msg_id = r.str()?.to_owned();
        let moderation = match r.byte()? {
            0 => None,
            _ => Some(r.str()?.to_owned()),
        };
        out.push(EventBody::Message {
            conv,
            seq: Seq(seq),
            id,
            from,
            client_msg_id,
            moderation,
        });
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self
            .at
            .checked_add(n)
            .and_then(|end| self.b.get(self.at..end))
            .ok_or_else(|| StoreError::corrupt("compliance record: truncated"))?;
        self.at += n;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self) -> Result<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.bytes(n)?)
            .map_err(|_| StoreError::corrupt("compliance record: not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_record_decodes_to_the_events_pushed() {
        let conv = ConvId::parse("group:g1").unwrap();
        let mut a = crate::conformance::new_msg(&conv, "u1", "k1");
        a.moderation = Some("mask".into());
        let b = crate::conformance::new_msg(&ConvId::parse("dm:a:b").unwrap(), "a", "k2");
        let mut ev = MessageEvents::default();
        ev.push(&a, 7);
        ev.push(&b, 1);
        assert_eq!(ev.len(), 2);
        let rec = ev.take();
        assert!(ev.is_empty());
        assert!(is_record(&rec));
        assert_eq!(count(&rec).unwrap(), 2);
        let got = decode(&rec).unwrap();
        assert_eq!(
            got[0],
            EventBody::Message {
                conv: conv.clone(),
                seq: Seq(7),
                id: a.id.clone(),
                from: UserId::new("u1"),
                client_msg_id: "k1".into(),
                moderation: Some("mask".into()),
            }
        );
        assert!(matches!(
            &got[1],
            EventBody::Message {
                seq: Seq(1),
                moderation: None,
                ..
            }
        ));
        // The buffer is reusable and a JSON event still decodes.
        ev.push(&a, 8);
        assert_eq!(count(&ev.take()).unwrap(), 1);
        let json = serde_json::to_vec(&got[1]).unwrap();
        assert!(!is_record(&json));
        assert_eq!(decode(&json).unwrap(), vec![got[1].clone()]);
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let conv = ConvId::parse("group:g1").unwrap();
        let mut ev = MessageEvents::default();
        ev.push(&crate::conformance::new_msg(&conv, "u1", "k1"), 1);
        let rec = ev.take();
        for cut in 0..rec.len() {
            let _ = decode(&rec[..cut]);
        }
        let mut huge = rec.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
    }
}
