import { afterEach, describe, expect, it } from 'vitest';
import { ChatClient, type ClientFrame, type Message, type ServerFrame, type SocketLike } from '../src/index.js';

/** A socket the test plays the server of. */
class MockSocket implements SocketLike {
  readyState = 0;
  onopen: SocketLike['onopen'] = null;
  onclose: SocketLike['onclose'] = null;
  onmessage: SocketLike['onmessage'] = null;
  onerror: SocketLike['onerror'] = null;
  sent: ClientFrame[] = [];
  constructor(readonly url: string) {}
  send(data: string) {
    this.sent.push(JSON.parse(data) as ClientFrame);
  }
  close(code = 1000) {
    this.drop(code);
  }
  /** Server side: push a frame. */
  push(f: ServerFrame) {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
  /** Server side: close with a code. */
  drop(code: number) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }
  hello(user = 'alice') {
    this.readyState = 1;
    this.push({ type: 'hello', session_id: 's', user, heartbeat_ms: 30_000, protocol: 1, max_frame_bytes: 65_536 });
  }
  /** The last sent frame of a type. */
  last<T extends ClientFrame['type']>(type: T): Extract<ClientFrame, { type: T }> {
    const f = [...this.sent].reverse().find((x) => x.type === type);
    if (!f) throw new Error(`no ${type} sent; sent: ${JSON.stringify(this.sent)}`);
    return f as Extract<ClientFrame, { type: T }>;
  }
  /** Answers the `conversations` request with an empty list. */
  answerConversations() {
    this.push({ type: 'conversations', rid: this.last('conversations').rid, conversations: [] });
  }
}

async function until(cond: () => boolean, ms = 3000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const msg = (seq: number, conv = 'dm:alice:bob'): ServerFrame => ({
  type: 'message', conv, seq, id: `m${seq}`, from: 'bob', kind: 'text', body: `b${seq}`, ts: seq,
});

let clients: ChatClient[] = [];
afterEach(() => {
  for (const c of clients) c.close();
  clients = [];
});

function setup(extra: Partial<ConstructorParameters<typeof ChatClient>[0]> = {}) {
  const sockets: MockSocket[] = [];
  let tok = 't1';
  const client = new ChatClient({
    url: 'ws://chat.test/ws',
    token: () => tok,
    socket: (u) => {
      const s = new MockSocket(u);
      sockets.push(s);
      return s;
    },
    backoff: { initialMs: 5, maxMs: 20 },
    rateLimitedDelayMs: 200,
    ...extra,
  });
  clients.push(client);
  const messages: Message[] = [];
  client.on('message', (m) => messages.push(m));
  return { client, sockets, messages, setToken: (t: string) => (tok = t) };
}

async function connected(s: ReturnType<typeof setup>, index = 0) {
  await until(() => s.sockets.length > index);
  const sock = s.sockets[index]!;
  sock.hello();
  await until(() => sock.sent.some((f) => f.type === 'conversations'));
  return sock;
}

describe('ChatClient against a mock socket', () => {
  it('connects with the token and device, and lists conversations after hello', async () => {
    const s = setup({ device: 'web' });
    s.client.connect();
    const sock = await connected(s);
    expect(sock.url).toContain('token=t1');
    expect(sock.url).toContain('device=web');
    expect(s.client.state).toBe('open');
    sock.push({
      type: 'conversations', rid: sock.last('conversations').rid,
      conversations: [{ conv: 'dm:alice:bob', last_seq: 7, last_ts: 1, read_seq: 7, unread: 0 }],
    });
    await until(() => s.client.cursor('dm:alice:bob') === 7);
  });

  it('delivers each message once, in seq order, and fills a gap with sync', async () => {
    const s = setup();
    s.client.track('dm:alice:bob', 0);
    s.client.connect();
    const sock = await connected(s);
    for (const n of [1, 2, 2, 1]) sock.push(msg(n));
    expect(s.messages.map((m) => m.seq)).toEqual([1, 2]);
    sock.push(msg(5)); // 3 and 4 were missed
    await until(() => sock.sent.filter((f) => f.type === 'sync').length >= 2);
    const sync = sock.last('sync');
    expect(sync.cursors).toEqual({ 'dm:alice:bob': 2 });
    const strip = (f: ServerFrame) => { const { type: _t, ...m } = f as Message & { type: string }; return m as Message; };
    sock.push({ type: 'synced', rid: sync.rid, conversations: [{ conv: 'dm:alice:bob', messages: [3, 4, 5].map((n) => strip(msg(n))), has_more: false }] });
    await until(() => s.messages.length === 5);
    sock.push(msg(4));
    expect(s.messages.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5]);
  });

  it('resolves a send with its ack and emits the own message', async () => {
    const s = setup();
    s.client.connect();
    const sock = await connected(s);
    const p = s.client.send({ to: { user: 'bob' }, body: 'hi' });
    const sent = sock.last('send');
    sock.push({ type: 'ack', rid: sent.rid, client_msg_id: sent.client_msg_id, conv: 'dm:alice:bob', seq: 1, id: 'x', ts: 5 });
    const ack = await p;
    expect(ack.seq).toBe(1);
    expect(s.messages).toEqual([{ conv: 'dm:alice:bob', seq: 1, id: 'x', from: 'alice', kind: 'text', body: 'hi', ts: 5 }]);
  });

  it('rejects a blocked send with the server error', async () => {
    const s = setup();
    s.client.connect();
    const sock = await connected(s);
    const p = s.client.send({ to: { user: 'bob' }, body: 'bad' });
    const sent = sock.last('send');
    sock.push({ type: 'error', rid: sent.rid, code: 'blocked', message: 'category illegal', retry: false });
    await expect(p).rejects.toMatchObject({ code: 'blocked' });
  });

  it('resends unacked sends with the same client_msg_id after a drop, then syncs', async () => {
    const s = setup();
    s.client.track('group:g1', 3);
    s.client.connect();
    const first = await connected(s);
    const p = s.client.send({ to: { group: 'g1' }, body: 'during the drop' });
    const id = first.last('send').client_msg_id;
    first.drop(1006);
    expect(s.client.state).toBe('backoff');
    const second = await connected(s, 1);
    const resent = second.last('send');
    expect(resent.client_msg_id).toBe(id);
    expect(second.last('sync').cursors).toEqual({ 'group:g1': 3 });
    second.push({ type: 'ack', rid: resent.rid, client_msg_id: id, conv: 'group:g1', seq: 4, id: 'y', ts: 1, duplicate: true });
    expect((await p).seq).toBe(4);
  });

  it('stops on 4001 and reports signedOut; pending sends fail', async () => {
    const s = setup();
    let reason = '';
    s.client.on('signedOut', (r) => (reason = r));
    s.client.connect();
    const sock = await connected(s);
    const p = s.client.send({ to: { user: 'bob' }, body: 'x' });
    sock.drop(4001);
    await expect(p).rejects.toMatchObject({ code: 'signed_out' });
    expect(reason).toBe('signed_out');
    expect(s.client.state).toBe('signed_out');
    await new Promise((r) => setTimeout(r, 60));
    expect(s.sockets.length).toBe(1);
  });

  it('refreshes the token on 4003 and reconnects with it', async () => {
    const s = setup({ refreshToken: async () => { s.setToken('t2'); return 't2'; } });
    s.client.connect();
    const sock = await connected(s);
    sock.drop(4003);
    await until(() => s.sockets.length === 2);
    expect(s.sockets[1]!.url).toContain('token=t2');
  });

  it('gives up on 4003 without a way to refresh', async () => {
    const s = setup();
    let reason = '';
    s.client.on('signedOut', (r) => (reason = r));
    s.client.connect();
    (await connected(s)).drop(4003);
    await until(() => reason === 'token_expired');
  });

  it('backs off longer after 4002', async () => {
    const s = setup();
    s.client.connect();
    const sock = await connected(s);
    const t0 = Date.now();
    sock.drop(4002);
    await until(() => s.sockets.length === 2);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
  });

  it('reconnects after 4000, 4004, 1001, 1009 and 1011', async () => {
    const s = setup();
    s.client.connect();
    let n = 0;
    for (const code of [4000, 4004, 1001, 1009, 1011]) {
      const sock = await connected(s, n);
      sock.drop(code);
      n += 1;
      await until(() => s.sockets.length > n);
    }
  });

  it('treats a refused upgrade with a revoked token as signed out', async () => {
    const s = setup({ probe: async () => 401 });
    let reason = '';
    s.client.on('signedOut', (r) => (reason = r));
    s.client.connect();
    await until(() => s.sockets.length === 1);
    s.sockets[0]!.drop(1006);
    await until(() => reason === 'unauthorized');
  });

  it('rejects a request answered with an error, and keeps working', async () => {
    const s = setup();
    s.client.connect();
    const sock = await connected(s);
    const h = s.client.history('group:nope');
    sock.push({ type: 'error', rid: sock.last('history').rid, code: 'forbidden', message: 'not a member', retry: false });
    await expect(h).rejects.toMatchObject({ code: 'forbidden', retry: false });
    const ping = s.client.ping();
    sock.push({ type: 'pong', rid: sock.last('ping').rid });
    await ping;
  });

  it('retries a request answered rate_limited with backoff, then gives up after the set retries', async () => {
    const s = setup({ random: () => 0, rateLimitedRetries: 2 });
    s.client.connect();
    const sock = await connected(s);
    const limited = (rid: string | undefined): ServerFrame => ({
      type: 'error', rid, code: 'rate_limited', message: 'too many requests', retry: true,
    });
    const histories = () => sock.sent.filter((f) => f.type === 'history');
    const h = s.client.history('dm:alice:bob');
    sock.push(limited(sock.last('history').rid));
    // Sent again (a fresh rid) after the back-off, and the second answer is the reply.
    await until(() => histories().length === 2);
    expect(histories()[1]!.rid).not.toBe(histories()[0]!.rid);
    sock.push({ type: 'history', rid: sock.last('history').rid, conv: 'dm:alice:bob', messages: [], has_more: false });
    await expect(h).resolves.toMatchObject({ has_more: false });
    // Refused three times in a row: two retries, then the error reaches the caller.
    const p = s.client.ping();
    for (let n = 1; n <= 3; n += 1) {
      await until(() => sock.sent.filter((f) => f.type === 'ping').length === n);
      sock.push(limited(sock.last('ping').rid));
    }
    await expect(p).rejects.toMatchObject({ code: 'rate_limited', retry: true });
  });

  it('refuses a send larger than max_frame_bytes locally', async () => {
    const s = setup();
    s.client.connect();
    await connected(s);
    await expect(s.client.send({ to: { user: 'bob' }, body: 'x'.repeat(70_000) })).rejects.toMatchObject({ code: 'too_large' });
  });
});
