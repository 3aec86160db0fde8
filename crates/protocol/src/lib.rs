//! Wire types of the chat protocol, version 1.
//!
//! Everything a client and the server exchange over the WebSocket lives here as plain serde
//! types: ids as newtypes ([`UserId`], [`GroupId`], [`ConvId`], [`Seq`]), the frames each side
//! sends ([`ClientFrame`], [`ServerFrame`]), the stable error codes ([`ErrorCode`]) and close
//! codes ([`close`]), and the two codecs ([`Codec::Json`] text frames, [`Codec::MsgPack`] binary
//! frames) that carry the same shape. The crate does no I/O, so the gateway, the load tester
//! and the end-to-end tests all share one definition. `docs/PROTOCOL.md` describes the same
//! contract for people.

mod codec;
mod error;
mod frames;
mod ids;

pub use codec::{Codec, DecodeError};
pub use error::{close, ErrorCode};
pub use frames::*;
pub use ids::{ConvId, ConvIdError, ConvKind, GroupId, MessageId, Seq, UserId};

/// The protocol version this crate speaks, sent in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
