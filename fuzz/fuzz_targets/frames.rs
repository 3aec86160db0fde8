//! Shared by `frame_json` and `frame_msgpack`: decode a client frame (and, for client
//! libraries, a server frame) from untrusted bytes, and check the round trip the protocol
//! promises: whatever decodes re-encodes, in either codec, to bytes that decode to the same
//! value.

use protocol::{ClientFrame, Codec, ServerFrame};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    for codec in [Codec::Json, Codec::MsgPack] {
        let bytes = codec.encode(value);
        match codec.decode::<T>(&bytes) {
            Ok(back) => assert_eq!(&back, value, "{codec:?} round trip changed the value"),
            Err(e) => panic!("{codec:?} cannot decode its own encoding: {e} ({value:?})"),
        }
    }
}

/// Decodes `data` with `codec` as the gateway does and checks the invariants.
pub fn check(codec: Codec, data: &[u8]) {
    match codec.decode::<ClientFrame>(data) {
        Ok(frame) => {
            round_trip(&frame);
            // The rid the gateway echoes is the one the frame carries.
            if let Some(rid) = frame.rid() {
                let again = codec.decode::<ClientFrame>(data);
                assert_eq!(again.ok().as_ref().and_then(ClientFrame::rid), Some(rid));
            }
        }
        Err(e) => {
            // The error message goes into an `error` frame: it must encode.
            assert!(!e.message.is_empty());
        }
    }
    if let Ok(frame) = codec.decode::<ServerFrame>(data) {
        round_trip(&frame);
    }
}
