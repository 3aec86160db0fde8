//! Skip placeholders: a seq taken from Redis by a node that died before storing its message.
//!
//! The placeholder is written `USING TIMESTAMP 1`, far below any real write (the driver and
//! the database stamp writes with the current time in microseconds), so it can never hide a
//! message: if the real write lands later (it was slow, or the retry queue wrote it), every
//! column of the real row wins, and readers see the message, not the skip.

use super::{enum_str, message_from_row, to_i64, MessageRow, ScyllaStore};
use crate::{skipped_placeholder, Result};
use protocol::{ConvId, Message, Seq};

/// The write timestamp of placeholders: older than any real write.
const PLACEHOLDER_WRITE_TS: i64 = 1;

impl ScyllaStore {
    /// Writes the placeholder for `seq` (unless a message is there, which wins anyway) and
    /// returns what the row holds now.
    pub(super) async fn write_skip(&self, conv: &ConvId, seq: Seq) -> Result<Option<Message>> {
        if seq.0 == 0 {
            return Ok(None);
        }
        let st = self.stmts().await?;
        let bucket = to_i64(self.bucket(seq.0))?;
        let s = to_i64(seq.0)?;
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let m = skipped_placeholder(conv, seq, ts);
        let ttl = self.ttl_for(conv).await?;
        let ks = &self.inner.opts.keyspace;
        self.inner
            .session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.messages (conv, bucket, seq, id, sender, kind, body, ts, \
                     client_msg_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     USING TIMESTAMP {PLACEHOLDER_WRITE_TS} AND TTL ?"
                ),
                (
                    conv.as_str(),
                    bucket,
                    s,
                    m.id.0.as_str(),
                    m.from.0.as_str(),
                    enum_str(&m.kind)?,
                    "",
                    to_i64(ts)?,
                    "",
                    ttl,
                ),
            )
            .await
            .map_err(super::cql::exec_err)?;
        // The conversation's last seq covers the placeholder (written at timestamp = seq, like
        // every append, so it never moves back): `after` and `sync` read up to it.
        self.exec(&st.update_meta, (s, s, to_i64(ts)?, conv.as_str()))
            .await?;
        let row: Option<MessageRow> = self
            .one(&st.select_message, (conv.as_str(), bucket, s))
            .await?;
        row.map(message_from_row).transpose()
    }
}
