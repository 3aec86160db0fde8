/** The SDK against a real chatd (target/debug/chatd): live chat, errors, a restart. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { Api, ChatClient, dmConv, type Message, type SocketLike } from '../src/index.js';
import { startNode, token, type Node } from './chatd.js';

let node: Node;
const clients: ChatClient[] = [];

beforeAll(async () => {
  node = await startNode({ CHATD_AUTH__ADMINS: '["root"]' });
});
afterAll(async () => {
  for (const c of clients) c.close();
  await node?.dispose();
});

function client(user: string, url = node.ws) {
  const api = new Api(node.http, token(user));
  const c = new ChatClient({
    url,
    token: () => token(user),
    socket: (u) => new WebSocket(u) as unknown as SocketLike,
    probe: (t) => api.probe(t),
    backoff: { initialMs: 100, maxMs: 1000 },
  });
  clients.push(c);
  const got: Message[] = [];
  c.on('message', (m) => got.push(m));
  c.connect();
  return { c, got, api };
}

async function until(cond: () => boolean, ms = 15_000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('SDK against a real chatd', () => {
  it('chats live, lists conversations, reports errors', async () => {
    const alice = client('alice');
    const bob = client('bob');
    await until(() => alice.c.state === 'open' && bob.c.state === 'open');
    const ack = await alice.c.send({ to: { user: 'bob' }, body: 'hello bob' });
    expect(ack.conv).toBe(dmConv('alice', 'bob'));
    expect(ack.seq).toBe(1);
    await until(() => bob.got.length === 1);
    expect(bob.got[0]).toMatchObject({ from: 'alice', body: 'hello bob', seq: 1 });
    expect(alice.got.map((m) => m.body)).toEqual(['hello bob']);
    const list = await bob.c.conversations();
    expect(list[0]).toMatchObject({ conv: 'dm:alice:bob', unread: 1 });
    const page = await bob.c.history('dm:alice:bob');
    expect(page.messages.map((m) => m.seq)).toEqual([1]);
    await expect(bob.c.history('group:nope')).rejects.toMatchObject({ code: expect.stringMatching(/forbidden|not_found/) });
    // A masked message: the sender's own copy is the stored (masked) one.
    const masked = await alice.c.send({ to: { user: 'bob' }, body: '电话 13812345678' });
    expect(masked.moderation?.action).toBe('mask');
    await until(() => alice.got.length === 2 && bob.got.length === 2);
    expect(alice.got[1]!.body).toContain('138****5678');
    expect(bob.got[1]!.body).toContain('138****5678');
  });

  it('survives a server restart: sends made while down arrive once, in order', async () => {
    const carol = client('carol');
    const dave = client('dave');
    await until(() => carol.c.state === 'open' && dave.c.state === 'open');
    await carol.c.send({ to: { user: 'dave' }, body: 'm0' });
    await until(() => dave.got.length === 1);
    const listen = new URL(node.http).host;
    await node.stop();
    await until(() => carol.c.state !== 'open' && dave.c.state !== 'open');
    const sends = [1, 2, 3, 4, 5].map((n) => carol.c.send({ to: { user: 'dave' }, body: `m${n}` }));
    expect(carol.c.unacked).toBe(5);
    node = await startNode({ CHATD_AUTH__ADMINS: '["root"]' }, { dataDir: node.dataDir, listen });
    const acks = await Promise.all(sends);
    expect(acks.map((a) => a.seq)).toEqual([2, 3, 4, 5, 6]);
    await until(() => dave.got.length === 6);
    expect(dave.got.map((m) => m.body)).toEqual(['m0', 'm1', 'm2', 'm3', 'm4', 'm5']);
    expect(carol.got.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('stops for good when the account is signed out everywhere (4001)', async () => {
    const erin = client('erin');
    let reason = '';
    erin.c.on('signedOut', (r) => (reason = r));
    await until(() => erin.c.state === 'open');
    const admin = new Api(node.http, token('root'));
    await admin.call('POST', '/v1/admin/users/erin/disconnect', undefined, { revoke: true });
    await until(() => reason === 'signed_out');
    expect(erin.c.state).toBe('signed_out');
  });
});
