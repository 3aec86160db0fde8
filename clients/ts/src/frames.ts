/**
 * The frames of chatd protocol v1 (docs/PROTOCOL.md, crates/protocol/src/frames.rs), as
 * TypeScript types plus a runtime check of what the server sends. Optional fields are
 * omitted (never null); unknown fields are kept and ignored, as the protocol asks.
 */

/** A user id: 1–64 characters of `[A-Za-z0-9_.@-]`. */
export type UserId = string;
/** A conversation id: `dm:<a>:<b>` (sorted) or `group:<group id>`. */
export type ConvId = string;
/** Milliseconds since the Unix epoch. */
export type Millis = number;

/** The kind of a message; `recalled` replaces a recalled message's kind. */
export type MessageKind = 'text' | 'image' | 'file' | 'recalled';

/** Where a `send` goes. */
export type Target = { user: UserId } | { group: string };

/** A file attached to an image or file message (from `POST /v1/files`). */
export interface Attachment {
  file_id: string;
  name: string;
  size: number;
  mime: string;
  width?: number;
  height?: number;
}

/** A stored message, as pushed, in `history` and in `synced`. */
export interface Message {
  conv: ConvId;
  seq: number;
  id: string;
  from: UserId;
  kind: MessageKind;
  body: string;
  attachment?: Attachment;
  ts: Millis;
  mentions?: UserId[];
  reply_to?: number;
  /** True on the copy delivered to a user it mentions. */
  mentioned?: boolean;
}

/** The moderation verdict carried by an `ack` (`mask`, `warn`, `review`, `approval`). */
export interface ModerationNote {
  action: string;
  category?: string;
}

/** One conversation of a `synced` reply. */
export interface SyncedConv {
  conv: ConvId;
  messages: Message[];
  has_more: boolean;
  /** Set when retention deleted older messages: every seq from it up is there (PROTOCOL.md). */
  min_seq?: number;
}

/** One entry of the conversation list. */
export interface ConvSummary {
  conv: ConvId;
  last_seq: number;
  last_ts: Millis;
  read_seq: number;
  unread: number;
  last_message?: Message;
  mentioned?: boolean;
}

/** Every `event` kind of the event table. */
export type EventKind =
  | 'member_joined'
  | 'member_left'
  | 'group_changed'
  | 'recalled'
  | 'muted'
  | 'unmuted'
  | 'review_approved'
  | 'review_rejected'
  | 'warned'
  | 'role_changed'
  | 'pinned'
  | 'announcement'
  | 'announcement_reviewed'
  | 'archived'
  | 'dissolved';

/** The stable error codes. */
export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'too_large'
  | 'rate_limited'
  | 'blocked'
  | 'muted'
  | 'unavailable'
  | 'timeout'
  | 'internal';

/** The body of a `send`. */
export interface SendFrame {
  type: 'send';
  rid?: string;
  client_msg_id: string;
  to: Target;
  kind?: 'text' | 'image' | 'file';
  body: string;
  attachment?: Attachment;
  mentions?: UserId[];
  reply_to?: number;
}

/** A frame the client sends. */
export type ClientFrame =
  | SendFrame
  | { type: 'history'; rid?: string; conv: ConvId; before_seq?: number; limit?: number }
  | { type: 'sync'; rid?: string; cursors: Record<ConvId, number>; limit?: number }
  | { type: 'conversations'; rid?: string }
  | { type: 'read'; rid?: string; conv: ConvId; seq: number }
  | { type: 'typing'; conv: ConvId }
  | { type: 'recall'; rid?: string; conv: ConvId; seq: number }
  | { type: 'ping'; rid?: string };

/** `hello`: the first frame of every session. */
export interface HelloFrame {
  type: 'hello';
  session_id: string;
  user: UserId;
  heartbeat_ms: number;
  protocol: number;
  max_frame_bytes: number;
}

/** `ack`: a send was stored (with `seq`) or held (without). */
export interface AckFrame {
  type: 'ack';
  rid?: string;
  client_msg_id: string;
  conv: ConvId;
  seq?: number;
  id: string;
  ts: Millis;
  duplicate?: boolean;
  moderation?: ModerationNote;
}

/** `message`: a pushed delivery. */
export type MessageFrame = { type: 'message' } & Message;

/** `event`: something happened in a group or to the user. */
export interface EventFrame {
  type: 'event';
  event: EventKind;
  conv?: ConvId;
  actor?: UserId;
  user?: UserId;
  seq?: number;
  until?: Millis;
  detail?: string;
}

/** `error`: a request failed; the connection stays usable. */
export interface ErrorFrame {
  type: 'error';
  rid?: string;
  code: ErrorCode;
  message: string;
  retry: boolean;
}

/** A frame the server sends. */
export type ServerFrame =
  | HelloFrame
  | AckFrame
  | MessageFrame
  | { type: 'recalled'; rid?: string; conv: ConvId; seq: number }
  | { type: 'history'; rid?: string; conv: ConvId; messages: Message[]; has_more: boolean; min_seq?: number }
  | { type: 'synced'; rid?: string; conversations: SyncedConv[] }
  | { type: 'conversations'; rid?: string; conversations: ConvSummary[] }
  | { type: 'read'; conv: ConvId; user: UserId; seq: number }
  | { type: 'typing'; conv: ConvId; user: UserId }
  | EventFrame
  | ErrorFrame
  | { type: 'pong'; rid?: string };

/** The `type` of every server frame. */
export type ServerFrameType = ServerFrame['type'];

/** Close codes of docs/PROTOCOL.md, by name. */
export const Close = {
  GoingAway: 1001,
  ProtocolError: 1002,
  InvalidPayload: 1007,
  Policy: 1008,
  TooBig: 1009,
  ServerError: 1011,
  SlowConsumer: 4000,
  SignedOut: 4001,
  RateLimited: 4002,
  TokenExpired: 4003,
  Idle: 4004,
} as const;

type Check = (v: unknown) => boolean;
const str: Check = (v) => typeof v === 'string';
const num: Check = (v) => typeof v === 'number' && Number.isFinite(v);
const bool: Check = (v) => typeof v === 'boolean';
const obj: Check = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
const arr =
  (item: Check): Check =>
  (v) =>
    Array.isArray(v) && v.every(item);
const opt =
  (c: Check): Check =>
  (v) =>
    v === undefined || c(v);
const shape =
  (fields: Record<string, Check>): Check =>
  (v) =>
    obj(v) && Object.entries(fields).every(([k, c]) => c((v as Record<string, unknown>)[k]));

const attachment = shape({
  file_id: str,
  name: str,
  size: num,
  mime: str,
  width: opt(num),
  height: opt(num),
});
const messageFields = {
  conv: str,
  seq: num,
  id: str,
  from: str,
  kind: str,
  body: str,
  attachment: opt(attachment),
  ts: num,
  mentions: opt(arr(str)),
  reply_to: opt(num),
  mentioned: opt(bool),
};
const message = shape(messageFields);

const serverShapes: Record<ServerFrameType, Check> = {
  hello: shape({
    session_id: str,
    user: str,
    heartbeat_ms: num,
    protocol: num,
    max_frame_bytes: num,
  }),
  ack: shape({
    rid: opt(str),
    client_msg_id: str,
    conv: str,
    seq: opt(num),
    id: str,
    ts: num,
    duplicate: opt(bool),
    moderation: opt(shape({ action: str, category: opt(str) })),
  }),
  message: shape(messageFields),
  recalled: shape({ rid: opt(str), conv: str, seq: num }),
  history: shape({ rid: opt(str), conv: str, messages: arr(message), has_more: bool }),
  synced: shape({
    rid: opt(str),
    conversations: arr(shape({ conv: str, messages: arr(message), has_more: bool })),
  }),
  conversations: shape({
    rid: opt(str),
    conversations: arr(
      shape({
        conv: str,
        last_seq: num,
        last_ts: num,
        read_seq: num,
        unread: num,
        last_message: opt(message),
        mentioned: opt(bool),
      }),
    ),
  }),
  read: shape({ conv: str, user: str, seq: num }),
  typing: shape({ conv: str, user: str }),
  event: shape({
    event: str,
    conv: opt(str),
    actor: opt(str),
    user: opt(str),
    seq: opt(num),
    until: opt(num),
    detail: opt(str),
  }),
  error: shape({ rid: opt(str), code: str, message: str, retry: bool }),
  pong: shape({ rid: opt(str) }),
};

/**
 * Parses and checks one frame from the server. Returns `null` for a frame that is not a
 * known, well-formed server frame (a newer server's frame type is ignored, not fatal).
 */
export function parseServerFrame(text: string): ServerFrame | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  return isServerFrame(v) ? v : null;
}

/** Whether a decoded value is a well-formed server frame of a known type. */
export function isServerFrame(v: unknown): v is ServerFrame {
  if (!obj(v)) return false;
  const t = (v as { type?: unknown }).type;
  if (typeof t !== 'string' || !(t in serverShapes)) return false;
  return serverShapes[t as ServerFrameType](v);
}

const clientShapes: Record<ClientFrame['type'], Check> = {
  send: shape({
    rid: opt(str),
    client_msg_id: str,
    to: (v) => shape({ user: str })(v) || shape({ group: str })(v),
    kind: opt(str),
    body: str,
    attachment: opt(attachment),
    mentions: opt(arr(str)),
    reply_to: opt(num),
  }),
  history: shape({ rid: opt(str), conv: str, before_seq: opt(num), limit: opt(num) }),
  sync: shape({ rid: opt(str), cursors: obj, limit: opt(num) }),
  conversations: shape({ rid: opt(str) }),
  read: shape({ rid: opt(str), conv: str, seq: num }),
  typing: shape({ conv: str }),
  recall: shape({ rid: opt(str), conv: str, seq: num }),
  ping: shape({ rid: opt(str) }),
};

/** Whether a decoded value is a well-formed client frame (used by tests and mocks). */
export function isClientFrame(v: unknown): v is ClientFrame {
  if (!obj(v)) return false;
  const t = (v as { type?: unknown }).type;
  if (typeof t !== 'string' || !(t in clientShapes)) return false;
  return clientShapes[t as ClientFrame['type']](v);
}

/** The conversation id of a DM between two users (ids sorted, as the server does). */
export function dmConv(a: UserId, b: UserId): ConvId {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}

/** The conversation id of a group. */
export function groupConv(group: string): ConvId {
  return `group:${group}`;
}

/** Where a `send` to a conversation goes, from the point of view of `me`. */
export function targetOf(conv: ConvId, me: UserId): Target {
  if (conv.startsWith('group:')) return { group: conv.slice('group:'.length) };
  const [, a, b] = conv.split(':');
  return { user: a === me ? (b ?? a) : (a ?? '') };
}
