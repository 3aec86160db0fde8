//! The two wire encodings: JSON in WebSocket text frames and MessagePack in binary frames,
//! with the same field names and shapes.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Which encoding a session speaks, chosen at connect time with `?codec=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// JSON text frames (the default).
    #[default]
    Json,
    /// MessagePack binary frames, maps with named fields.
    MsgPack,
}

/// A frame that could not be decoded; `rid` is set when the request id could still be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// What was wrong, for the `error` frame's message.
    pub message: String,
    /// The request id, if readable.
    pub rid: Option<String>,
}

#[derive(Deserialize)]
struct RidOnly {
    #[serde(default)]
    rid: Option<String>,
}

impl Codec {
    /// Parses `json` or `msgpack` (the values of the `codec` query parameter).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Codec::Json),
            "msgpack" => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// Whether frames of this codec travel as WebSocket text frames.
    pub fn is_text(self) -> bool {
        self == Codec::Json
    }

    /// Encodes a value. Serializing the protocol's own types cannot fail; should a foreign
    /// type fail, the result is an encoded `internal` error frame instead of a panic.
    pub fn encode<T: Serialize>(self, value: &T) -> Bytes {
        let out = match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Codec::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        };
        match out {
            Ok(v) => Bytes::from(v),
            Err(e) => {
                let frame = crate::ServerFrame::error(
                    None,
                    crate::ErrorCode::Internal,
                    format!("encode: {e}"),
                );
                match self {
                    Codec::Json => Bytes::from(serde_json::to_vec(&frame).unwrap_or_default()),
                    Codec::MsgPack => {
                        Bytes::from(rmp_serde::to_vec_named(&frame).unwrap_or_default())
                    }
                }
            }
        }
    }

    /// Decodes a value, keeping the request id when the input was at least readable.
    pub fn decode<T: DeserializeOwned>(self, data: &[u8]) -> Result<T, DecodeError> {
        let result = match self {
            Codec::Json => serde_json::from_slice::<T>(data).map_err(|e| e.to_string()),
            Codec::MsgPack => rmp_serde::from_slice::<T>(data).map_err(|e| e.to_string()),
        };
        result.map_err(|message| {
            let rid = match self {
                Codec::Json => serde_json::from_slice::<RidOnly>(data).ok(),
                Codec::MsgPack => rmp_serde::from_slice::<RidOnly>(data).ok(),
            }
            .and_then(|r| r.rid);
            DecodeError { message, rid }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn arb_id() -> impl Strategy<Value = String> + Clone {
        "[a-z0-9_]{1,12}"
    }

    fn arb_text() -> impl Strategy<Value = String> {
        any::<String>()
    }

    fn arb_conv() -> impl Strategy<Value = ConvId> {
        prop_oneof![
            (arb_id(), arb_id())
                .prop_map(|(a, b)| ConvId::direct(&UserId::new(a), &UserId::new(b))),
            arb_id().prop_map(|g| ConvId::group(&GroupId::new(g))),
        ]
    }

    fn arb_kind() -> impl Strategy<Value = MessageKind> {
        prop_oneof![
            Just(MessageKind::Text),
            Just(MessageKind::Image),
            Just(MessageKind::File)
        ]
    }

    fn arb_attachment() -> impl Strategy<Value = Option<Attachment>> {
        proptest::option::of(
            (
                arb_id(),
                arb_text(),
                any::<u64>(),
                proptest::option::of(any::<u32>()),
            )
                .prop_map(|(file_id, name, size, width)| Attachment {
                    file_id,
                    name,
                    size,
                    mime: "image/png".into(),
                    width,
                    height: width,
                }),
        )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            arb_conv(),
            any::<u64>(),
            arb_id(),
            arb_kind(),
            arb_text(),
            arb_attachment(),
            any::<u64>(),
            proptest::collection::vec(arb_id(), 0..3),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(conv, seq, from, kind, body, attachment, ts, mentions, reply_to)| Message {
                    conv,
                    seq: Seq(seq),
                    id: MessageId::new(format!("m-{seq}")),
                    from: UserId::new(from),
                    kind,
                    body,
                    attachment,
                    ts,
                    mentions: mentions.into_iter().map(UserId::new).collect(),
                    reply_to: reply_to.map(Seq),
                    mentioned: false,
                },
            )
    }

    fn arb_client() -> impl Strategy<Value = ClientFrame> {
        let rid = proptest::option::of(arb_id());
        prop_oneof![
            (
                rid.clone(),
                arb_id(),
                prop_oneof![
                    arb_id().prop_map(|u| Target::User(UserId::new(u))),
                    arb_id().prop_map(|g| Target::Group(GroupId::new(g)))
                ],
                arb_kind(),
                arb_text(),
                arb_attachment(),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(rid, client_msg_id, to, kind, body, attachment, reply)| {
                    ClientFrame::Send(SendFrame {
                        rid,
                        client_msg_id,
                        to,
                        kind,
                        body,
                        attachment,
                        mentions: vec![],
                        reply_to: reply.map(Seq),
                    })
                }),
            (
                rid.clone(),
                arb_conv(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u32>())
            )
                .prop_map(|(rid, conv, before, limit)| ClientFrame::History {
                    rid,
                    conv,
                    before_seq: before.map(Seq),
                    limit
                }),
            (
                rid.clone(),
                proptest::collection::btree_map(arb_conv(), any::<u64>().prop_map(Seq), 0..4)
            )
                .prop_map(|(rid, cursors)| ClientFrame::Sync {
                    rid,
                    cursors,
                    limit: None
                }),
            (rid.clone(), arb_conv(), any::<u64>()).prop_map(|(rid, conv, s)| ClientFrame::Read {
                rid,
                conv,
                seq: Seq(s)
            }),
            arb_conv().prop_map(|conv| ClientFrame::Typing { conv }),
            rid.clone().prop_map(|rid| ClientFrame::Ping { rid }),
            rid.prop_map(|rid| ClientFrame::Conversations { rid }),
        ]
    }

    fn arb_server() -> impl Strategy<Value = ServerFrame> {
        let rid = proptest::option::of(arb_id());
        prop_oneof![
            arb_message().prop_map(ServerFrame::Message),
            (
                rid.clone(),
                arb_conv(),
                proptest::collection::vec(arb_message(), 0..3),
                any::<bool>()
            )
                .prop_map(|(rid, conv, messages, has_more)| ServerFrame::History {
                    rid,
                    conv,
                    messages,
                    has_more,
                    min_seq: has_more.then_some(Seq(7)),
                }),
            (
                rid.clone(),
                arb_id(),
                arb_conv(),
                proptest::option::of(any::<u64>()),
                any::<bool>()
            )
                .prop_map(|(rid, c, conv, seq, duplicate)| ServerFrame::Ack {
                    rid,
                    client_msg_id: c,
                    conv,
                    seq: seq.map(Seq),
                    id: MessageId::new("x"),
                    ts: 5,
                    duplicate,
                    moderation: Some(ModerationNote {
                        action: "mask".into(),
                        category: Some("pii".into())
                    }),
                }),
            (rid.clone(), arb_text()).prop_map(|(rid, m)| ServerFrame::error(
                rid,
                ErrorCode::Forbidden,
                m
            )),
            (arb_conv(), arb_id()).prop_map(|(conv, u)| ServerFrame::Typing {
                conv,
                user: UserId::new(u)
            }),
            (arb_conv(), any::<u64>()).prop_map(|(conv, s)| ServerFrame::Event {
                event: EventKind::Recalled,
                conv: Some(conv),
                actor: None,
                user: None,
                seq: Some(Seq(s)),
                until: None,
                detail: None
            }),
            rid.prop_map(|rid| ServerFrame::Pong { rid }),
        ]
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(frame in arb_client()) {
            for codec in [Codec::Json, Codec::MsgPack] {
                let bytes = codec.encode(&frame);
                let back: ClientFrame = codec.decode(&bytes).map_err(|e| TestCaseError::fail(e.message))?;
                prop_assert_eq!(&back, &frame);
            }
        }

        #[test]
        fn server_frames_round_trip(frame in arb_server()) {
            for codec in [Codec::Json, Codec::MsgPack] {
                let bytes = codec.encode(&frame);
                let back: ServerFrame = codec.decode(&bytes).map_err(|e| TestCaseError::fail(e.message))?;
                prop_assert_eq!(&back, &frame);
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Codec::Json.decode::<ClientFrame>(&data);
            let _ = Codec::MsgPack.decode::<ClientFrame>(&data);
        }
    }

    /// `send` was a struct variant; as a newtype variant around [`SendFrame`] it must encode
    /// to the same bytes in both codecs, and decode the same.
    #[test]
    fn send_frame_wire_format_is_unchanged() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Before {
            Send {
                #[serde(default, skip_serializing_if = "Option::is_none")]
                rid: Option<Rid>,
                client_msg_id: String,
                to: Target,
                #[serde(default)]
                kind: MessageKind,
                #[serde(default)]
                body: String,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                attachment: Option<Attachment>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                mentions: Vec<UserId>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                reply_to: Option<Seq>,
            },
        }
        let attachment = Attachment {
            file_id: "f1".into(),
            name: "a.png".into(),
            size: 3,
            mime: "image/png".into(),
            width: Some(2),
            height: None,
        };
        for (rid, attachment, mentions, reply_to) in [
            (None, None, vec![], None),
            (
                Some("r1".to_string()),
                Some(attachment),
                vec![UserId::new("b")],
                Some(Seq(7)),
            ),
        ] {
            let now = ClientFrame::Send(SendFrame {
                rid: rid.clone(),
                client_msg_id: "c1".into(),
                to: Target::Group(GroupId::new("g1")),
                kind: MessageKind::Image,
                body: "hi".into(),
                attachment: attachment.clone(),
                mentions: mentions.clone(),
                reply_to,
            });
            let before = Before::Send {
                rid,
                client_msg_id: "c1".into(),
                to: Target::Group(GroupId::new("g1")),
                kind: MessageKind::Image,
                body: "hi".into(),
                attachment,
                mentions,
                reply_to,
            };
            for codec in [Codec::Json, Codec::MsgPack] {
                let (a, b) = (codec.encode(&now), codec.encode(&before));
                assert_eq!(a, b, "{codec:?}");
                assert_eq!(codec.decode::<ClientFrame>(&b).unwrap(), now);
            }
        }
    }

    /// [`ClientFrame::TYPES`] is exactly the set of `type` tags serde accepts, and
    /// `type_name` agrees with the encoded tag.
    #[test]
    fn client_frame_types_are_complete() {
        let err = Codec::Json
            .decode::<ClientFrame>(br#"{"type":"no_such_frame"}"#)
            .unwrap_err()
            .to_string();
        let mut accepted: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
        accepted.sort_unstable();
        let mut listed = ClientFrame::TYPES.to_vec();
        listed.sort_unstable();
        assert_eq!(accepted, listed, "serde error: {err}");
        let ping = ClientFrame::Ping { rid: None };
        let json = String::from_utf8(Codec::Json.encode(&ping).to_vec()).unwrap();
        assert!(json.contains(&format!("\"type\":\"{}\"", ping.type_name())));
    }

    #[test]
    fn event_builder_fills_only_what_it_is_given() {
        let f = ServerFrame::event(EventKind::Muted)
            .conv(ConvId::parse("group:g1").unwrap())
            .until(5)
            .build();
        assert_eq!(
            &Codec::Json.encode(&f)[..],
            br#"{"type":"event","event":"muted","conv":"group:g1","until":5}"#
        );
    }

    #[test]
    fn json_shape_matches_the_docs() {
        let f: ClientFrame = Codec::Json
            .decode(br#"{"type":"send","rid":"1","client_msg_id":"c1","to":{"group":"g1"},"body":"hi"}"#)
            .unwrap();
        assert_eq!(
            f,
            ClientFrame::Send(SendFrame {
                rid: Some("1".into()),
                client_msg_id: "c1".into(),
                to: Target::Group(GroupId::new("g1")),
                kind: MessageKind::Text,
                body: "hi".into(),
                attachment: None,
                mentions: vec![],
                reply_to: None
            })
        );
        let s = Codec::Json.encode(&ServerFrame::Pong { rid: None });
        assert_eq!(&s[..], br#"{"type":"pong"}"#);
        let mut cursors = BTreeMap::new();
        cursors.insert(ConvId::parse("group:g1").unwrap(), Seq(3));
        let sync = Codec::Json.encode(&ClientFrame::Sync {
            rid: None,
            cursors,
            limit: None,
        });
        assert_eq!(&sync[..], br#"{"type":"sync","cursors":{"group:g1":3}}"#);
    }

    #[test]
    fn bad_input_keeps_the_rid() {
        let e = Codec::Json
            .decode::<ClientFrame>(br#"{"type":"nope","rid":"r9"}"#)
            .unwrap_err();
        assert_eq!(e.rid.as_deref(), Some("r9"));
        let e = Codec::Json
            .decode::<ClientFrame>(br#"{"type":"send","rid":"r1"}"#)
            .unwrap_err();
        assert_eq!(e.rid.as_deref(), Some("r1"));
        assert!(e.message.contains("missing field"), "{}", e.message);
        let e = Codec::Json.decode::<ClientFrame>(b"{not json").unwrap_err();
        assert_eq!(e.rid, None);
        let e = Codec::Json
            .decode::<ClientFrame>(br#"{"type":"history","conv":"dm:b:a"}"#)
            .unwrap_err();
        assert!(
            e.message.contains("invalid conversation id"),
            "{}",
            e.message
        );
    }

    #[test]
    fn msgpack_is_a_map_with_named_fields() {
        let bytes = Codec::MsgPack.encode(&ClientFrame::Ping {
            rid: Some("7".into()),
        });
        let v: BTreeMap<String, String> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(v.get("type").map(String::as_str), Some("ping"));
        assert_eq!(v.get("rid").map(String::as_str), Some("7"));
    }
}
