//! Cluster-mode glue: sequence numbers for the ScyllaDB store come from Redis counters.

use async_trait::async_trait;
use protocol::{ConvId, Seq};
use router::redis::RedisSeq;
use store::{SeqSource, StoreError};

/// [`SeqSource`] over Redis `INCR` counters (see `router::redis::RedisSeq`).
pub struct RedisSeqSource(pub RedisSeq);

fn unavailable(e: router::RouterError) -> StoreError {
    StoreError::Unavailable(format!("sequence counter: {e}"))
}

#[async_trait]
impl SeqSource for RedisSeqSource {
    async fn next(&self, conv: &ConvId) -> store::Result<Option<Seq>> {
        Ok(self.0.next(conv).await.map_err(unavailable)?.map(Seq))
    }

    async fn restore(&self, conv: &ConvId, last: Seq) -> store::Result<Seq> {
        Ok(Seq(self
            .0
            .restore(conv, last.0)
            .await
            .map_err(unavailable)?))
    }
}
