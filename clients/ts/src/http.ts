import { ChatError } from './errors.js';
import type { Attachment, ConvSummary, UserId } from './frames.js';

/** A directory account (`GET /v1/users/{id}`). */
export interface Account {
  id: UserId;
  name: string;
  department?: string;
  title?: string;
  status: string;
  external: boolean;
}

/** A member of a group. */
export interface Member {
  user: UserId;
  role: 'owner' | 'admin' | 'member';
  joined_at: number;
}

/** A group's settings. */
export interface GroupSettings {
  muted_all: boolean;
  mutes: Record<UserId, number>;
  banned: UserId[];
  pinned: number[];
  announcement?: string;
  approval_required: boolean;
  lifecycle: string;
  department?: string;
}

/** A group (`GET /v1/groups/{id}`; `members`/`settings` on the detail, `role` in the list). */
export interface Group {
  id: string;
  name: string;
  kind: 'company' | 'department' | 'project' | 'study' | 'external';
  owner?: UserId;
  members?: Member[];
  settings?: GroupSettings;
  role?: Member['role'];
  [k: string]: unknown;
}

/** `GET /v1/me`. */
export interface Me {
  user: UserId;
  account?: Account;
  company_admin: boolean;
  reviewer: boolean;
}

/** A message held for review (`GET /v1/review`). */
export interface HeldMessage {
  id: string;
  conv: string;
  from: UserId;
  client_msg_id: string;
  kind: string;
  body: string;
  ts: number;
  category?: string;
  rule?: string;
  [k: string]: unknown;
}

/** A post awaiting approval (`GET /v1/posts`). */
export interface Post {
  id: string;
  group: string;
  author: UserId;
  kind: 'message' | 'announcement';
  body: string;
  state: 'pending' | 'approved' | 'rejected';
  created_at: number;
  reviewer?: UserId;
  reason?: string;
}

/** An audit log entry. */
export interface AuditEntry {
  ts: number;
  actor: UserId;
  action: string;
  conv?: string;
  target?: string;
  message?: string;
  rule?: string;
  category?: string;
  detail?: string;
}

/** A department. */
export interface Department {
  id: string;
  name: string;
  parent?: string;
}

type Query = Record<string, string | number | boolean | undefined>;

/**
 * The chatd HTTP API (docs/PROTOCOL.md "HTTP API"): every error is thrown as a
 * {@link ChatError} carrying the server's code, message, retry flag and status.
 */
export class Api {
  /** The base URL, e.g. `http://127.0.0.1:8080` (empty: the page's own origin). */
  readonly base: string;
  /** The bearer token used for every call but `login`. */
  token: string | null;
  private readonly fetchFn: typeof fetch;

  constructor(base = '', token: string | null = null, fetchFn: typeof fetch = (...a) => fetch(...a)) {
    this.base = base.replace(/\/$/, '');
    this.token = token;
    this.fetchFn = fetchFn;
  }

  /** The WebSocket URL of the same node. */
  wsUrl(): string {
    const origin = this.base || globalThis.location?.origin || 'http://127.0.0.1:8080';
    return origin.replace(/^http/, 'ws') + '/ws';
  }

  /** Sends one request and decodes the JSON answer (204: undefined). */
  async call<T>(method: string, path: string, body?: unknown, query?: Query): Promise<T> {
    const res = await this.raw(method, path, body === undefined ? undefined : JSON.stringify(body), query, {
      'Content-Type': 'application/json',
    });
    if (res.status === 204) return undefined as T;
    return (await res.json()) as T;
  }

  /** Sends one request and returns the response (errors thrown as {@link ChatError}). */
  async raw(
    method: string,
    path: string,
    body?: BodyInit,
    query?: Query,
    headers: Record<string, string> = {},
  ): Promise<Response> {
    let url = this.base + path;
    if (query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== '') q.set(k, String(v));
      const s = q.toString();
      if (s) url += `?${s}`;
    }
    const h: Record<string, string> = { ...headers };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    let res: Response;
    try {
      res = await this.fetchFn(url, { method, headers: h, body });
    } catch (e) {
      throw new ChatError('unavailable', `network error: ${String(e)}`, true);
    }
    if (!res.ok) {
      let err: { code?: string; message?: string; retry?: boolean } = {};
      try {
        err = ((await res.json()) as { error?: typeof err }).error ?? {};
      } catch {
        /* not JSON */
      }
      throw new ChatError(
        (err.code ?? 'internal') as ChatError['code'],
        err.message ?? res.statusText,
        err.retry ?? res.status >= 500,
        res.status,
      );
    }
    return res;
  }

  /** Signs in with the directory password; keeps the token. */
  async login(user: UserId, password: string): Promise<{ token: string; expires_at: number }> {
    const r = await this.call<{ token: string; expires_at: number }>('POST', '/v1/login', { user, password });
    this.token = r.token;
    return r;
  }

  /** The status of `GET /v1/me` with a token (for the client's `probe`). */
  async probe(token: string): Promise<number> {
    try {
      const r = await this.fetchFn(`${this.base}/v1/me`, { headers: { Authorization: `Bearer ${token}` } });
      return r.status;
    } catch {
      return 0;
    }
  }

  /** Who the token belongs to and what they may administer. */
  me(): Promise<Me> {
    return this.call('GET', '/v1/me');
  }

  /** Searches the directory. */
  users(q?: string, opts: { department?: string; include_deactivated?: boolean; limit?: number } = {}): Promise<Account[]> {
    return this.call('GET', '/v1/users', undefined, { q, ...opts });
  }

  /** The caller's conversation list. */
  conversations(): Promise<ConvSummary[]> {
    return this.call('GET', '/v1/conversations');
  }

  /** The caller's groups with their role. */
  groups(): Promise<Group[]> {
    return this.call('GET', '/v1/groups');
  }

  /** A group with its members and settings. */
  group(id: string): Promise<Group> {
    return this.call('GET', `/v1/groups/${encodeURIComponent(id)}`);
  }

  /** Creates a group; the caller owns it. */
  createGroup(body: { name: string; kind?: Group['kind']; members?: UserId[]; department?: string; approval_required?: boolean }): Promise<Group> {
    return this.call('POST', '/v1/groups', body);
  }

  /** Uploads a file; the answer is the attachment to put in a message. */
  async upload(file: Blob, name: string): Promise<Attachment> {
    const res = await this.raw('POST', '/v1/files', file, { name }, { 'Content-Type': file.type || 'application/octet-stream' });
    return (await res.json()) as Attachment;
  }

  /** Downloads a file through the access checks (the token goes in a header, not the URL). */
  async download(fileId: string): Promise<Blob> {
    const res = await this.raw('GET', `/v1/files/${encodeURIComponent(fileId)}`);
    return res.blob();
  }

  /** Messages held for review in a conversation. */
  review(conv: string): Promise<HeldMessage[]> {
    return this.call('GET', '/v1/review', undefined, { conv });
  }

  /** Approves or rejects a held message. */
  decide(conv: string, id: string, approve: boolean): Promise<unknown> {
    return this.call('POST', approve ? '/v1/review/approve' : '/v1/review/reject', { conv, id });
  }

  /** Posts awaiting approval. */
  posts(state?: Post['state'], group?: string): Promise<Post[]> {
    return this.call('GET', '/v1/posts', undefined, { state, group });
  }

  /** Approves or rejects a post. */
  decidePost(id: string, approve: boolean, reason?: string): Promise<Post> {
    return approve
      ? this.call('POST', `/v1/posts/${encodeURIComponent(id)}/approve`)
      : this.call('POST', `/v1/posts/${encodeURIComponent(id)}/reject`, reason ? { reason } : {});
  }

  /** The audit log, newest first. */
  audit(q: { user?: string; conv?: string; group?: string; category?: string; since?: number; until?: number; limit?: number }): Promise<AuditEntry[]> {
    return this.call('GET', '/v1/audit', undefined, q);
  }

  /** Every department. */
  departments(): Promise<Department[]> {
    return this.call('GET', '/v1/departments');
  }
}
