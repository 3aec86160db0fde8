import { Emitter } from './emitter.js';
import { ChatError } from './errors.js';
import {
  Close,
  parseServerFrame,
  type AckFrame,
  type ClientFrame,
  type ConvId,
  type ConvSummary,
  type EventFrame,
  type HelloFrame,
  type Message,
  type SendFrame,
  type ServerFrame,
  type UserId,
} from './frames.js';

/** The part of the browser `WebSocket` the client uses (so tests can pass a mock). */
export interface SocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Connection states, in the order a session goes through them. */
export type ConnState = 'idle' | 'connecting' | 'open' | 'backoff' | 'signed_out' | 'stopped';

/** What made the client give up on its token. */
export type SignedOutReason = 'signed_out' | 'token_expired' | 'unauthorized';

/** Options of a {@link ChatClient}. */
export interface ClientOptions {
  /** The WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`; `token` is added as `?token=`. */
  url: string;
  /** The current token (called before every connect). */
  token: () => string | Promise<string>;
  /**
   * Called on close 4003 (token expired) and when an upgrade is refused with 401: returns a
   * fresh token, or null to give up (then the client stops with `signedOut`).
   */
  refreshToken?: () => Promise<string | null>;
  /**
   * Checks the token over HTTP when a connect fails before `hello` (browsers hide the
   * upgrade's status): resolves to the HTTP status of `GET /v1/me`.
   */
  probe?: (token: string) => Promise<number>;
  /** Creates the socket (default: the global `WebSocket`). */
  socket?: (url: string) => SocketLike;
  /** The device name shown in the user's session list. */
  device?: string;
  /** Reconnect backoff: first delay, cap (ms). Full jitter is applied. */
  backoff?: { initialMs: number; maxMs: number };
  /** How long a request waits for its reply before it fails with `timeout` (ms). */
  requestTimeoutMs?: number;
  /** Messages per conversation asked for in one `sync` (the server clamps it). */
  syncLimit?: number;
  /** The least wait before reconnecting after close 4002 (rate limited), ms. */
  rateLimitedDelayMs?: number;
  /**
   * How many times a request answered `rate_limited` (over the session's request budget) is
   * sent again, after 250 ms × 2^attempt with jitter, before it rejects (default 4).
   */
  rateLimitedRetries?: number;
  /** Random source in [0, 1) (tests make it deterministic). */
  random?: () => number;
}

/** Events of a {@link ChatClient}. */
export interface ClientEvents extends Record<string, unknown> {
  /** The connection state changed. */
  state: ConnState;
  /** A session started (every reconnect too). */
  hello: HelloFrame;
  /** A message, in (conv, seq) order per conversation, each once. */
  message: Message;
  /** Someone read up to `seq`. */
  read: { conv: ConvId; user: UserId; seq: number };
  /** Someone is typing. */
  typing: { conv: ConvId; user: UserId };
  /** A group or moderation event. */
  event: EventFrame;
  /** The conversation list as last received (after every (re)connect too). */
  conversations: ConvSummary[];
  /** The client stopped because its token is no longer good. */
  signedOut: SignedOutReason;
  /** A frame the server sent that the client could not use, or a close it cannot recover from. */
  problem: string;
}

interface Pending {
  resolve: (f: ServerFrame) => void;
  reject: (e: ChatError) => void;
  timer: ReturnType<typeof setTimeout>;
  frame: ClientFrame;
}

interface Outbox {
  frame: SendFrame;
  resolve: (a: AckFrame) => void;
  reject: (e: ChatError) => void;
  attempts: number;
}

const OPEN = 1;

/**
 * A chatd session that survives network drops: it reconnects with exponential backoff and
 * full jitter, resends unacknowledged sends with their `client_msg_id` (the server stores
 * each once), keeps a cursor per conversation and `sync`s after every reconnect, delivers
 * messages once each in `seq` order (filling gaps with `sync`), and follows the close
 * codes of docs/PROTOCOL.md. Requests return promises; pushes are events.
 */
export class ChatClient extends Emitter<ClientEvents> {
  private readonly opts: Required<
    Pick<
      ClientOptions,
      'backoff' | 'requestTimeoutMs' | 'syncLimit' | 'random' | 'rateLimitedDelayMs' | 'rateLimitedRetries'
    >
  > &
    ClientOptions;
  private ws: SocketLike | null = null;
  private _state: ConnState = 'idle';
  private attempt = 0;
  private rid = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setTimeout> | null = null;
  private lastInbound = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly outbox = new Map<string, Outbox>();
  private readonly cursors = new Map<ConvId, number>();
  private readonly filling = new Set<ConvId>();
  private hello: HelloFrame | null = null;
  private refreshed = false;
  private minDelayMs = 0;

  constructor(options: ClientOptions) {
    super();
    this.opts = {
      backoff: { initialMs: 500, maxMs: 30_000 },
      requestTimeoutMs: 15_000,
      syncLimit: 200,
      rateLimitedDelayMs: 5_000,
      rateLimitedRetries: 4,
      random: Math.random,
      ...options,
    };
  }

  /** The connection state. */
  get state(): ConnState {
    return this._state;
  }

  /** The signed-in user (after the first `hello`). */
  get user(): UserId | null {
    return this.hello?.user ?? null;
  }

  /** The newest seq delivered per conversation. */
  cursor(conv: ConvId): number | undefined {
    return this.cursors.get(conv);
  }

  /**
   * Sets the newest seq the application already has for a conversation (e.g. after loading
   * its history), so later deliveries continue from there.
   */
  track(conv: ConvId, seq: number): void {
    const c = this.cursors.get(conv);
    if (c === undefined || seq > c) this.cursors.set(conv, seq);
  }

  /** Starts connecting (and keeps reconnecting until {@link close}). */
  connect(): void {
    if (this._state !== 'idle' && this._state !== 'stopped' && this._state !== 'signed_out') return;
    this.refreshed = false;
    void this.open();
  }

  /** Closes the session for good; pending requests and sends fail with `disconnected`. */
  close(): void {
    this.stop('stopped');
  }

  /**
   * Sends a message. Resolves with the `ack` (held messages: no `seq`, see `moderation`);
   * rejects with the server's error (`blocked`, `muted`, `forbidden`, ...). While offline the
   * send waits and goes out after the reconnect, with the same `client_msg_id`.
   */
  send(frame: Omit<SendFrame, 'type' | 'client_msg_id' | 'rid'> & { client_msg_id?: string }): Promise<AckFrame> {
    const full: SendFrame = {
      type: 'send',
      ...frame,
      client_msg_id: frame.client_msg_id ?? newId(),
    };
    return new Promise((resolve, reject) => {
      const item: Outbox = { frame: full, resolve, reject, attempts: 0 };
      this.outbox.set(full.client_msg_id, item);
      if (this._state === 'open') this.transmit(item);
    });
  }

  /** The sends not acknowledged yet (waiting for a connection or an ack). */
  get unacked(): number {
    return this.outbox.size;
  }

  /** One page of history, newest first. */
  async history(conv: ConvId, beforeSeq?: number, limit = 50): Promise<{ messages: Message[]; has_more: boolean }> {
    const f = await this.request({ type: 'history', conv, before_seq: beforeSeq, limit });
    if (f.type !== 'history') throw unexpected(f);
    return { messages: f.messages, has_more: f.has_more };
  }

  /** The conversation list (also emitted as `conversations`). */
  async conversations(): Promise<ConvSummary[]> {
    const f = await this.request({ type: 'conversations' });
    if (f.type !== 'conversations') throw unexpected(f);
    for (const c of f.conversations) if (!this.cursors.has(c.conv)) this.cursors.set(c.conv, c.last_seq);
    this.emit('conversations', f.conversations);
    return f.conversations;
  }

  /** Recalls a message. */
  async recall(conv: ConvId, seq: number): Promise<void> {
    const f = await this.request({ type: 'recall', conv, seq });
    if (f.type !== 'recalled') throw unexpected(f);
  }

  /** Marks everything up to `seq` read (fire and forget; coalesced by the server). */
  read(conv: ConvId, seq: number): void {
    this.fire({ type: 'read', conv, seq });
  }

  /** Says the user is typing (the server forwards at most one every few seconds). */
  typing(conv: ConvId): void {
    this.fire({ type: 'typing', conv });
  }

  /** A round trip to the server. */
  async ping(): Promise<void> {
    await this.request({ type: 'ping' });
  }

  /**
   * Sends a request frame and resolves with its reply (an `error` reply rejects). A
   * `rate_limited` reply is retried with exponential backoff and jitter (see
   * `rateLimitedRetries`): the server refuses requests over the session's budget without
   * closing it, and every request here is safe to repeat.
   */
  async request(frame: Exclude<ClientFrame, SendFrame>): Promise<ServerFrame> {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.requestOnce(frame);
      } catch (e) {
        const again =
          e instanceof ChatError && e.code === 'rate_limited' && attempt < this.opts.rateLimitedRetries;
        if (!again) throw e;
        const wait = 250 * 2 ** attempt * (0.5 + this.opts.random());
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  private requestOnce(frame: Exclude<ClientFrame, SendFrame>): Promise<ServerFrame> {
    return new Promise((resolve, reject) => {
      if (this._state !== 'open' || !this.ws) {
        reject(new ChatError('disconnected', 'not connected', true));
        return;
      }
      const rid = this.nextRid();
      const withRid = { ...frame, rid } as ClientFrame;
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        reject(new ChatError('timeout', `no reply to ${frame.type} in time`, true));
      }, this.opts.requestTimeoutMs);
      this.pending.set(rid, { resolve, reject, timer, frame: withRid });
      this.write(withRid);
    });
  }

  // ---- connection -------------------------------------------------------------------

  private setState(s: ConnState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit('state', s);
  }

  private async open(): Promise<void> {
    this.setState('connecting');
    let token: string;
    try {
      token = await this.opts.token();
    } catch {
      this.stop('signed_out', 'unauthorized');
      return;
    }
    if (this._state !== 'connecting') return;
    const url = new URL(this.opts.url);
    url.searchParams.set('token', token);
    if (this.opts.device) url.searchParams.set('device', this.opts.device);
    const make = this.opts.socket ?? ((u: string) => new WebSocket(u) as unknown as SocketLike);
    let ws: SocketLike;
    try {
      ws = make(url.toString());
    } catch (e) {
      this.emit('problem', `cannot open a WebSocket: ${String(e)}`);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    let greeted = false;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastInbound = Date.now();
      if (typeof ev.data !== 'string') return;
      const f = parseServerFrame(ev.data);
      if (!f) {
        this.emit('problem', `ignored a frame: ${ev.data.slice(0, 200)}`);
        return;
      }
      if (f.type === 'hello') greeted = true;
      this.onFrame(f);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      void this.onClose(ev.code, greeted, token);
    };
    ws.onerror = () => {
      /* onclose follows */
    };
  }

  private async onClose(code: number, greeted: boolean, token: string): Promise<void> {
    this.clearHeartbeat();
    this.failRequests(new ChatError('disconnected', `connection closed (${code})`, true));
    if (this._state === 'stopped' || this._state === 'signed_out') return;
    for (const item of this.outbox.values()) item.attempts = 0;
    this.minDelayMs = 0;
    switch (code) {
      case Close.SignedOut:
        this.stop('signed_out', 'signed_out');
        return;
      case Close.TokenExpired:
        if (await this.tryRefresh()) return;
        this.stop('signed_out', 'token_expired');
        return;
      case Close.RateLimited:
        this.minDelayMs = this.opts.rateLimitedDelayMs;
        break;
      case Close.ProtocolError:
      case Close.InvalidPayload:
        this.emit('problem', `closed with ${code}: the client sent something invalid`);
        break;
      default:
        break;
    }
    if (!greeted && this.opts.probe) {
      const status = await this.opts.probe(token).catch(() => 0);
      if (status === 401) {
        if (await this.tryRefresh()) return;
        this.stop('signed_out', 'unauthorized');
        return;
      }
    }
    this.scheduleReconnect();
  }

  private async tryRefresh(): Promise<boolean> {
    if (!this.opts.refreshToken || this.refreshed) return false;
    this.refreshed = true;
    const fresh = await this.opts.refreshToken().catch(() => null);
    if (!fresh) return false;
    this.attempt = 0;
    this.scheduleReconnect(0);
    return true;
  }

  private scheduleReconnect(fixed?: number): void {
    this.setState('backoff');
    const { initialMs, maxMs } = this.opts.backoff;
    const cap = Math.min(maxMs, initialMs * 2 ** Math.min(this.attempt, 16));
    const delay = fixed ?? Math.max(this.minDelayMs, Math.floor(this.opts.random() * cap));
    this.attempt += 1;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this._state === 'backoff') void this.open();
    }, delay);
  }

  private stop(state: 'stopped' | 'signed_out', reason?: SignedOutReason): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.clearHeartbeat();
    const ws = this.ws;
    this.ws = null;
    this.setState(state);
    if (ws && ws.readyState <= OPEN) ws.close(1000, 'bye');
    const err =
      state === 'signed_out'
        ? new ChatError('signed_out', `signed out (${reason})`, false)
        : new ChatError('disconnected', 'client closed', false);
    this.failRequests(err);
    for (const item of this.outbox.values()) item.reject(err);
    this.outbox.clear();
    if (reason) this.emit('signedOut', reason);
  }

  private failRequests(err: ChatError): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
  }

  private heartbeat(): void {
    this.clearHeartbeat();
    const every = this.hello?.heartbeat_ms ?? 30_000;
    // The first beat is jittered so a restarted node does not get every ping at once.
    const delay = Math.floor(every * (0.5 + this.opts.random() * 0.5));
    this.heartbeatTimer = setTimeout(() => {
      if (this._state !== 'open') return;
      if (Date.now() - this.lastInbound > every * 2.5) {
        // Nothing heard for too long: the connection is dead even if the socket says open.
        this.ws?.close(4004, 'no reply');
        return;
      }
      this.fire({ type: 'ping' });
      this.heartbeat();
    }, delay);
  }

  private clearHeartbeat(): void {
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  // ---- frames -----------------------------------------------------------------------

  private onFrame(f: ServerFrame): void {
    switch (f.type) {
      case 'hello':
        this.hello = f;
        this.attempt = 0;
        this.refreshed = false;
        this.setState('open');
        this.emit('hello', f);
        this.heartbeat();
        void this.resume();
        return;
      case 'message': {
        const { type: _t, ...m } = f;
        this.ingest(m);
        return;
      }
      case 'read':
        this.emit('read', { conv: f.conv, user: f.user, seq: f.seq });
        return;
      case 'typing':
        this.emit('typing', { conv: f.conv, user: f.user });
        return;
      case 'event':
        this.emit('event', f);
        return;
      default:
        break;
    }
    const rid = 'rid' in f ? f.rid : undefined;
    if (f.type === 'ack' || (f.type === 'error' && rid?.startsWith('s'))) {
      this.onSendReply(f);
      return;
    }
    if (rid === undefined) return;
    const p = this.pending.get(rid);
    if (!p) return;
    this.pending.delete(rid);
    clearTimeout(p.timer);
    if (f.type === 'error') p.reject(new ChatError(f.code, f.message, f.retry));
    else p.resolve(f);
  }

  /** After `hello`: resend what was not acknowledged, catch up, refresh the list. */
  private async resume(): Promise<void> {
    for (const item of this.outbox.values()) this.transmit(item);
    try {
      const known = [...this.cursors.keys()];
      await Promise.all([known.length > 0 ? this.syncAll(known) : null, this.conversations()]);
    } catch (e) {
      if (e instanceof ChatError && e.code !== 'disconnected') this.emit('problem', `catch-up failed: ${e.message}`);
    }
  }

  /** `sync`s the given conversations from their cursors until nothing is left. */
  private async syncAll(convs: ConvId[]): Promise<void> {
    let todo = convs;
    while (todo.length > 0 && this._state === 'open') {
      const batch = todo.slice(0, 100);
      const cursors: Record<ConvId, number> = {};
      for (const c of batch) cursors[c] = this.cursors.get(c) ?? 0;
      const f = await this.request({ type: 'sync', cursors, limit: this.opts.syncLimit });
      if (f.type !== 'synced') throw unexpected(f);
      const again: ConvId[] = [];
      for (const entry of f.conversations) {
        for (const m of entry.messages) this.deliver(m);
        if (entry.has_more) again.push(entry.conv);
      }
      todo = [...again, ...todo.slice(100)];
    }
  }

  /** A message from a push or an ack: delivered if next, dropped if seen, gap-filled if ahead. */
  private ingest(m: Message): void {
    const c = this.cursors.get(m.conv);
    if (c === undefined || m.seq === c + 1) {
      this.deliver(m);
    } else if (m.seq > c + 1) {
      void this.fill(m.conv);
    }
  }

  private deliver(m: Message): void {
    const c = this.cursors.get(m.conv);
    if (c !== undefined && m.seq <= c) return;
    this.cursors.set(m.conv, m.seq);
    this.emit('message', m);
  }

  private async fill(conv: ConvId): Promise<void> {
    if (this.filling.has(conv)) return;
    this.filling.add(conv);
    try {
      await this.syncAll([conv]);
    } catch (e) {
      if (e instanceof ChatError && e.code !== 'disconnected') this.emit('problem', `gap fill failed: ${e.message}`);
    } finally {
      this.filling.delete(conv);
    }
  }

  private onSendReply(f: ServerFrame): void {
    const id = f.type === 'ack' ? f.client_msg_id : null;
    let item: Outbox | undefined;
    if (id) item = this.outbox.get(id);
    else {
      const rid = 'rid' in f ? f.rid : undefined;
      item = [...this.outbox.values()].find((o) => o.frame.rid === rid);
    }
    if (!item) return;
    if (f.type === 'error') {
      if (f.retry && item.attempts < 5) {
        const wait = 250 * 2 ** item.attempts * (0.5 + this.opts.random());
        setTimeout(() => {
          if (this.outbox.has(item.frame.client_msg_id) && this._state === 'open') this.transmit(item);
        }, wait);
        return;
      }
      this.outbox.delete(item.frame.client_msg_id);
      item.reject(new ChatError(f.code, f.message, f.retry));
      return;
    }
    if (f.type !== 'ack') return;
    this.outbox.delete(item.frame.client_msg_id);
    item.resolve(f);
    if (f.seq === undefined) return;
    if (f.moderation || f.duplicate) {
      // The stored copy may differ from what was sent (masked): take it from the server.
      const c = this.cursors.get(f.conv);
      if (c === undefined || f.seq > c) void this.fill(f.conv);
      return;
    }
    const sent = item.frame;
    const m: Message = {
      conv: f.conv,
      seq: f.seq,
      id: f.id,
      from: this.hello?.user ?? '',
      kind: sent.kind ?? 'text',
      body: sent.body,
      ts: f.ts,
    };
    if (sent.attachment) m.attachment = sent.attachment;
    if (sent.mentions?.length) m.mentions = sent.mentions;
    if (sent.reply_to !== undefined) m.reply_to = sent.reply_to;
    this.ingest(m);
  }

  private transmit(item: Outbox): void {
    item.attempts += 1;
    item.frame = { ...item.frame, rid: `s${this.nextRid()}` };
    const max = this.hello?.max_frame_bytes;
    const text = JSON.stringify(item.frame);
    if (max && new TextEncoder().encode(text).length > max) {
      this.outbox.delete(item.frame.client_msg_id);
      item.reject(new ChatError('too_large', `the message is larger than ${max} bytes`, false));
      return;
    }
    this.ws?.send(text);
  }

  private fire(frame: ClientFrame): void {
    if (this._state === 'open') this.write(frame);
  }

  private write(frame: ClientFrame): void {
    this.ws?.send(JSON.stringify(frame));
  }

  private nextRid(): string {
    this.rid += 1;
    return String(this.rid);
  }
}

function unexpected(f: ServerFrame): ChatError {
  return new ChatError('internal', `unexpected reply ${f.type}`, false);
}

/** A fresh random id (for `client_msg_id`). */
export function newId(): string {
  const c = globalThis.crypto;
  if (c && 'randomUUID' in c) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}
