//! The gateway's json frame decoder on arbitrary bytes: no panic, and every frame it accepts
//! survives a re-encode and decode unchanged (see `frames.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "frames.rs"]
mod frames;

fuzz_target!(|data: &[u8]| frames::check(protocol::Codec::Json, data));
