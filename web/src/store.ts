/**
 * The app's state: the SDK session, the conversation list, the loaded messages per
 * conversation, the user's pending sends (with their moderation outcome), read receipts
 * and typing. Components subscribe with `useStore`.
 */
import {
  Api,
  ChatClient,
  ChatError,
  targetOf,
  type AckFrame,
  type Attachment,
  type ConnState,
  type ConvSummary,
  type EventFrame,
  type Group,
  type Me,
  type Message,
} from '@chatd/client';
import { useEffect, useState } from 'preact/hooks';

/** A send the user made that is not (yet, or ever) a stored message in the list. */
export interface Outgoing {
  client_msg_id: string;
  conv: string;
  body: string;
  kind: 'text' | 'image' | 'file';
  attachment?: Attachment;
  status: 'sending' | 'held' | 'approval' | 'blocked' | 'muted' | 'rejected' | 'failed';
  note?: string;
}

/** The messages loaded for one conversation, ascending by seq, and paging state. */
export interface ConvMessages {
  list: Message[];
  hasMore: boolean;
  loading: boolean;
  loaded: boolean;
}

/** A moderation note shown under a message the user sent (masked, warned). */
export type SentNote = { action: string; category?: string };

export class Store {
  api: Api;
  client: ChatClient | null = null;
  me: Me | null = null;
  conn: ConnState = 'idle';
  convs: ConvSummary[] = [];
  groups = new Map<string, Group>();
  messages = new Map<string, ConvMessages>();
  outgoing: Outgoing[] = [];
  notes = new Map<string, SentNote>();
  reads = new Map<string, Map<string, number>>();
  typing = new Map<string, Map<string, number>>();
  active: string | null = null;
  view: 'chat' | 'admin' = 'chat';
  error: string | null = null;
  private listeners = new Set<() => void>();
  private scheduled = false;

  constructor() {
    this.api = new Api('', sessionStorage.getItem('chatd.token'));
  }

  /** Subscribes to changes (coalesced to one notification per microtask). */
  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      for (const fn of [...this.listeners]) fn();
    });
  }

  /** Signs in with a password or a token, then connects. */
  async signIn(user: string, password: string | null, token: string | null): Promise<void> {
    if (password !== null) await this.api.login(user, password);
    else this.api.token = token;
    this.me = await this.api.me();
    sessionStorage.setItem('chatd.token', this.api.token ?? '');
    this.start();
  }

  /** Resumes a session kept in this tab (after a reload). */
  async resume(): Promise<void> {
    if (!this.api.token) return;
    try {
      this.me = await this.api.me();
      this.start();
    } catch {
      this.signOut();
    }
  }

  signOut(): void {
    this.client?.close();
    this.client = null;
    this.me = null;
    this.api.token = null;
    sessionStorage.removeItem('chatd.token');
    this.convs = [];
    this.messages.clear();
    this.outgoing = [];
    this.active = null;
    this.changed();
  }

  private start(): void {
    const c = new ChatClient({
      url: this.api.wsUrl(),
      token: () => this.api.token ?? '',
      probe: (t) => this.api.probe(t),
      device: 'web',
    });
    this.client = c;
    c.on('state', (s) => {
      this.conn = s;
      this.changed();
    });
    c.on('signedOut', () => this.signOut());
    c.on('conversations', (list) => {
      this.convs = list;
      void this.loadGroups();
      this.changed();
    });
    c.on('message', (m) => this.onMessage(m));
    c.on('read', (r) => {
      let m = this.reads.get(r.conv);
      if (!m) this.reads.set(r.conv, (m = new Map()));
      m.set(r.user, Math.max(m.get(r.user) ?? 0, r.seq));
      this.changed();
    });
    c.on('typing', (x) => {
      if (x.user === this.me?.user) return;
      let m = this.typing.get(x.conv);
      if (!m) this.typing.set(x.conv, (m = new Map()));
      m.set(x.user, Date.now() + 4000);
      this.changed();
      setTimeout(() => this.changed(), 4100);
    });
    c.on('event', (e) => this.onEvent(e));
    c.on('hello', () => {
      // After a reconnect, the open conversation may have missed messages: the SDK's sync
      // delivers them; the list is refreshed by the SDK too.
      this.changed();
    });
    c.connect();
    this.changed();
  }

  async loadGroups(): Promise<void> {
    try {
      const gs = await this.api.groups();
      for (const g of gs) this.groups.set(g.id, { ...this.groups.get(g.id), ...g });
      this.changed();
    } catch {
      /* shown as ids */
    }
  }

  /** The full group (members, settings), refreshed. */
  async loadGroup(id: string): Promise<Group | null> {
    try {
      const g = await this.api.group(id);
      this.groups.set(id, { ...this.groups.get(id), ...g });
      this.changed();
      return g;
    } catch {
      return null;
    }
  }

  private onMessage(m: Message): void {
    const cm = this.conv(m.conv);
    insert(cm.list, m);
    const me = this.me?.user;
    let summary = this.convs.find((c) => c.conv === m.conv);
    if (!summary) {
      summary = { conv: m.conv, last_seq: m.seq, last_ts: m.ts, read_seq: 0, unread: 0 };
      this.convs.unshift(summary);
      if (m.conv.startsWith('group:')) void this.loadGroups();
    }
    if (m.seq >= summary.last_seq) {
      summary.last_seq = m.seq;
      summary.last_ts = m.ts;
      summary.last_message = m;
    }
    if (this.active === m.conv && document.visibilityState !== 'hidden') this.markRead(m.conv);
    else if (m.from !== me) {
      if (m.seq > summary.read_seq) {
        summary.unread += 1;
        if (m.mentioned) summary.mentioned = true;
      }
    }
    this.convs.sort((a, b) => b.last_ts - a.last_ts);
    this.changed();
  }

  private onEvent(e: EventFrame): void {
    if (e.event === 'recalled' && e.conv && e.seq !== undefined) {
      const cm = this.messages.get(e.conv);
      const m = cm?.list.find((x) => x.seq === e.seq);
      if (m) {
        m.kind = 'recalled';
        m.body = '';
        delete m.attachment;
        cm!.list = [...cm!.list];
      }
    }
    if ((e.event === 'review_approved' || e.event === 'review_rejected') && e.detail) {
      const o = this.outgoing.find((x) => x.client_msg_id === e.detail);
      if (o) {
        if (e.event === 'review_approved') this.outgoing = this.outgoing.filter((x) => x !== o);
        else o.status = 'rejected';
      }
    }
    if (e.event === 'announcement_reviewed' && e.detail?.startsWith('approved')) {
      this.outgoing = this.outgoing.filter((x) => x.status !== 'approval' || x.conv !== e.conv);
    }
    if (e.conv?.startsWith('group:')) {
      const id = e.conv.slice(6);
      if (this.groups.get(id)?.members) void this.loadGroup(id);
    }
    if (['member_joined', 'member_left', 'dissolved'].includes(e.event)) void this.client?.conversations().catch(() => {});
    this.changed();
  }

  conv(conv: string): ConvMessages {
    let cm = this.messages.get(conv);
    if (!cm) this.messages.set(conv, (cm = { list: [], hasMore: true, loading: false, loaded: false }));
    return cm;
  }

  /** Opens a conversation: loads its newest page and marks it read. */
  async open(conv: string): Promise<void> {
    this.active = conv;
    this.view = 'chat';
    const cm = this.conv(conv);
    this.changed();
    if (!cm.loaded) await this.older(conv);
    this.markRead(conv);
    if (conv.startsWith('group:')) void this.loadGroup(conv.slice(6));
  }

  /** Loads the page before the oldest loaded message. */
  async older(conv: string): Promise<void> {
    const cm = this.conv(conv);
    if (cm.loading || (cm.loaded && !cm.hasMore) || !this.client) return;
    cm.loading = true;
    this.changed();
    try {
      const before = cm.list[0]?.seq;
      const page = await this.client.history(conv, before, 100);
      for (const m of page.messages) insert(cm.list, m);
      cm.list = [...cm.list];
      cm.hasMore = page.has_more;
      cm.loaded = true;
      const newest = cm.list[cm.list.length - 1];
      if (newest) this.client.track(conv, newest.seq);
    } catch (e) {
      this.error = String((e as Error).message);
    } finally {
      cm.loading = false;
      this.changed();
    }
  }

  markRead(conv: string): void {
    const s = this.convs.find((c) => c.conv === conv);
    const last = this.messages.get(conv)?.list.at(-1)?.seq ?? s?.last_seq ?? 0;
    if (s) {
      s.unread = 0;
      s.mentioned = false;
      if (last > s.read_seq) {
        s.read_seq = last;
        this.client?.read(conv, last);
      }
    } else if (last > 0) this.client?.read(conv, last);
    this.changed();
  }

  /** Sends a message and tracks its outcome (held, blocked, masked...). */
  async send(conv: string, body: string, opts: { kind?: 'text' | 'image' | 'file'; attachment?: Attachment; mentions?: string[]; reply_to?: number } = {}): Promise<void> {
    const me = this.me?.user;
    if (!this.client || !me) return;
    const client_msg_id = crypto.randomUUID();
    const o: Outgoing = { client_msg_id, conv, body, kind: opts.kind ?? 'text', attachment: opts.attachment, status: 'sending' };
    this.outgoing = [...this.outgoing, o];
    this.changed();
    let ack: AckFrame;
    try {
      ack = await this.client.send({ client_msg_id, to: targetOf(conv, me), body, ...opts, mentions: opts.mentions?.length ? opts.mentions : undefined });
    } catch (e) {
      const err = e as ChatError;
      o.status = err.code === 'blocked' ? 'blocked' : err.code === 'muted' ? 'muted' : 'failed';
      o.note = err.message;
      this.outgoing = [...this.outgoing];
      this.changed();
      return;
    }
    if (ack.seq === undefined) {
      o.status = ack.moderation?.action === 'approval' ? 'approval' : 'held';
      o.note = ack.moderation?.category;
      this.outgoing = [...this.outgoing];
    } else {
      this.outgoing = this.outgoing.filter((x) => x !== o);
      if (ack.moderation) this.notes.set(`${ack.conv}#${ack.seq}`, ack.moderation);
    }
    this.changed();
  }

  dismiss(o: Outgoing): void {
    this.outgoing = this.outgoing.filter((x) => x !== o);
    this.changed();
  }

  /** Who is typing in a conversation now. */
  typers(conv: string): string[] {
    const m = this.typing.get(conv);
    if (!m) return [];
    const now = Date.now();
    return [...m.entries()].filter(([, until]) => until > now).map(([u]) => u);
  }

  /** A display name for a conversation. */
  title(conv: string): string {
    if (conv.startsWith('group:')) return this.groups.get(conv.slice(6))?.name ?? conv.slice(6);
    const [, a, b] = conv.split(':');
    return a === this.me?.user ? (b ?? '') : (a ?? '');
  }

  /** The type of a conversation (`dm` or the group's kind). */
  kind(conv: string): string {
    if (!conv.startsWith('group:')) return 'dm';
    return this.groups.get(conv.slice(6))?.kind ?? 'project';
  }

  /** The caller's role in a group conversation (company admins act as owners). */
  role(conv: string): 'owner' | 'admin' | 'member' | null {
    if (!conv.startsWith('group:')) return null;
    if (this.me?.company_admin) return 'owner';
    const g = this.groups.get(conv.slice(6));
    return g?.role ?? g?.members?.find((m) => m.user === this.me?.user)?.role ?? null;
  }
}

/** Inserts a message in a list sorted by seq (replacing the one with the same seq). */
export function insert(list: Message[], m: Message): void {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid]!.seq < m.seq) lo = mid + 1;
    else hi = mid;
  }
  if (list[lo]?.seq === m.seq) list[lo] = m;
  else list.splice(lo, 0, m);
}

/** The one store of the page. */
export const store = new Store();

/** Re-renders the component when the store changes. */
export function useStore(): Store {
  const [, setTick] = useState(0);
  useEffect(() => store.subscribe(() => setTick((n) => n + 1)), []);
  return store;
}
