/**
 * The web app in headless Debian chromium (playwright-core, no browser download) against a
 * real chatd serving the embedded app: live chat between two browser contexts, an image and
 * a file, a masked message, a held message approved by an administrator, and a server
 * restart during which messages are sent (each then appears once, in order).
 * `SCREENSHOTS=1` also writes docs/screenshots/*.png.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { crc32, deflateSync } from 'node:zlib';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { launch } from './browser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, startNode, token, type Node } from '../../clients/ts/test/chatd';
import { Api } from '../../clients/ts/src/index';

const PASSWORD = 'Correct-horse-42';
const SHOTS = process.env.SCREENSHOTS === '1';
/** A 160×100 RGB gradient PNG, encoded here. */
const W = 160;
const H = 100;
const PNG = (() => {
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td) >>> 0);
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(W, 0);
  ihdr.writeUInt32BE(H, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const raw = Buffer.alloc(H * (1 + 3 * W));
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) raw.set([(x * 255) / W, (y * 255) / H, 200], y * (1 + 3 * W) + 1 + 3 * x);
  }
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
})();

let node: Node;
let browser: Browser;
const contexts: BrowserContext[] = [];
let admin: Api;
let listen: string;

async function shot(page: Page, name: string) {
  if (!SHOTS) return;
  const dir = join(ROOT, 'docs/screenshots');
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `${name}.png`) });
}

async function signIn(user: string, viaToken = false): Promise<Page> {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 680 }, locale: 'en-US', acceptDownloads: true });
  contexts.push(ctx);
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error(`[${user}] page error`, e));
  await page.goto(node.http + '/');
  if (viaToken) {
    await page.getByLabel('Development: sign in with a token').check();
    await page.getByLabel('Token', { exact: true }).fill(token(user));
  } else {
    await page.getByLabel('User ID').fill(user);
    await page.getByLabel('Password').fill(PASSWORD);
  }
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('[data-conn="open"]').waitFor({ timeout: 20_000 });
  return page;
}

/** The bodies of the messages shown in the open conversation, in order. */
async function bodies(page: Page): Promise<string[]> {
  return page.locator('.vlist .msg .body').allInnerTexts();
}

/**
 * Opens a conversation from the list. A conversation that has just been created appears when
 * the app hears of it (an `event`, then a fresh list); if it has not after 15 s, the page is
 * reloaded once (a fresh session lists it at once), so one missed refresh cannot fail a test
 * about something else.
 */
async function openConv(page: Page, conv: string) {
  const item = page.locator(`[data-conv="${conv}"]`);
  await item.waitFor({ timeout: 15_000 }).catch(async () => {
    await page.reload();
    await item.waitFor();
  });
  await item.click();
}

async function type(page: Page, text: string) {
  await page.locator('#composer-input').fill(text);
  await page.locator('#composer-input').press('Enter');
}

beforeAll(async () => {
  node = await startNode({ CHATD_AUTH__ADMINS: '["root"]' });
  listen = new URL(node.http).host;
  admin = new Api(node.http, token('root'));
  for (const [id, name] of [
    ['alice', 'Alice'],
    ['bob', 'Bob'],
    ['carol', 'Carol'],
  ]) {
    await admin.call('POST', '/v1/users', { id, name, password: PASSWORD });
  }
  browser = await launch();
});

afterAll(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
  await node?.dispose();
});

describe('web app in chromium', () => {
  let alice: Page;
  let bob: Page;

  it('serves the embedded app with the right headers', async () => {
    const index = await fetch(node.http + '/');
    expect(index.status).toBe(200);
    expect(index.headers.get('content-type')).toContain('text/html');
    expect(index.headers.get('cache-control')).toBe('no-cache');
    expect(index.headers.get('content-security-policy')).toContain("default-src 'self'");
    const html = await index.text();
    const js = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
    expect(js).toBeTruthy();
    const asset = await fetch(node.http + js);
    expect(asset.headers.get('content-type')).toContain('javascript');
    expect(asset.headers.get('cache-control')).toContain('immutable');
    const again = await fetch(node.http + '/', { headers: { 'If-None-Match': index.headers.get('etag')! } });
    expect(again.status).toBe(304);
    const missing = await fetch(node.http + '/assets/nope.js');
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { error: { code: string } }).error.code).toBe('not_found');
  });

  it('two users chat live: DM, unread count, typing, read receipt', async () => {
    alice = await signIn('alice');
    bob = await signIn('bob');
    await alice.getByRole('button', { name: '+ New direct message' }).click();
    await alice.getByLabel('User ID').fill('bob');
    await alice.getByRole('button', { name: 'Start' }).click();
    await type(alice, 'hello bob');
    await expect.poll(() => bodies(alice)).toEqual(['hello bob']);
    const conv = bob.locator('[data-conv="dm:alice:bob"]');
    await conv.waitFor();
    await expect.poll(() => conv.locator('.unread').innerText()).toBe('1');
    await openConv(bob, 'dm:alice:bob');
    await expect.poll(() => bodies(bob)).toEqual(['hello bob']);
    await expect.poll(() => alice.locator('.read-mark').count()).toBe(1);
    await bob.locator('#composer-input').pressSequentially('hi al');
    await alice.getByText('bob is typing…').waitFor();
    await bob.locator('#composer-input').press('Enter');
    await expect.poll(() => bodies(alice)).toEqual(['hello bob', 'hi al']);
  });

  it('sends an image (preview) and a file (download through the access checks)', async () => {
    await alice.locator('#composer-file').setInputFiles({ name: 'chart.png', mimeType: 'image/png', buffer: PNG });
    const img = bob.locator('img[alt="chart.png"]');
    await img.waitFor({ timeout: 15_000 });
    await expect.poll(() => img.evaluate((e) => (e as HTMLImageElement).naturalWidth)).toBe(W);
    await alice.locator('#composer-file').setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('minutes of the meeting') });
    const file = bob.locator('.vlist button.file', { hasText: 'notes.txt' });
    await file.waitFor();
    const [dl] = await Promise.all([bob.waitForEvent('download'), file.click()]);
    expect(dl.suggestedFilename()).toBe('notes.txt');
    const path = await dl.path();
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(path, 'utf8')).toBe('minutes of the meeting');
  });

  it('shows the sender that a message was masked', async () => {
    await type(alice, '电话 13812345678');
    await alice.getByText('Sent with parts masked').waitFor();
    await expect.poll(async () => (await bodies(bob)).at(-1)).toBe('电话 138****5678');
    await expect.poll(async () => (await bodies(alice)).at(-1)).toBe('电话 138****5678');
    await shot(bob, 'chat');
  });

  it('holds a message for review; an administrator approves it', async () => {
    const g = await new Api(node.http, token('alice')).createGroup({ name: 'market', members: ['bob', 'carol'] });
    const conv = `group:${g.id}`;
    await openConv(bob, conv);
    await type(bob, '便宜好货 加微信 abc123');
    await bob.locator('[data-status="held"]').waitFor();
    const root = await signIn('root', true);
    await root.locator('[data-view="admin"]').click();
    const held = root.locator('[data-held]');
    await held.waitFor({ timeout: 15_000 });
    await expect(held.innerText()).resolves.toContain('便宜好货');
    await shot(root, 'admin-review');
    await held.getByRole('button', { name: 'Approve' }).click();
    await bob.locator('[data-status="held"]').waitFor({ state: 'detached' });
    await expect.poll(async () => (await bodies(bob)).at(-1)).toBe('便宜好货 加微信 abc123');
    await openConv(alice, conv);
    await expect.poll(() => bodies(alice)).toEqual(['便宜好货 加微信 abc123']);
    // A mention picked from the autocomplete, then recalled.
    await alice.locator('#composer-input').pressSequentially('@b');
    await alice.getByRole('option', { name: '@bob' }).waitFor();
    await alice.locator('#composer-input').press('Tab');
    await alice.locator('#composer-input').pressSequentially('see this');
    await alice.locator('#composer-input').press('Enter');
    const mentioned = bob.locator('.msg.mentioned', { hasText: '@bob see this' });
    await mentioned.waitFor();
    await alice.locator('.vlist .msg', { hasText: '@bob see this' }).getByRole('button', { name: 'Recall' }).click();
    await bob.locator('.vlist .msg', { hasText: 'This message was recalled' }).waitFor();
    await expect.poll(() => bodies(bob)).toEqual(['便宜好货 加微信 abc123']);
    // The owner moderates from the same app: mute a member.
    await alice.locator('[data-view="admin"]').click();
    await alice.locator('[data-tab="group"]').click();
    const member = alice.locator('[data-member="bob"]');
    await member.getByRole('button', { name: 'Mute 1 h' }).click();
    await member.getByRole('button', { name: 'Unmute' }).waitFor();
    await shot(alice, 'admin-group');
    await openConv(bob, conv);
    await type(bob, 'can I talk?');
    await bob.locator('[data-status="muted"]').waitFor();
    await member.getByRole('button', { name: 'Unmute' }).click();
    await member.getByRole('button', { name: 'Mute 1 h' }).waitFor();
    await alice.locator('[data-view="chat"]').click();
    await root.locator('[data-tab="audit"]').click();
    await root.getByRole('cell', { name: 'review.approve' }).first().waitFor();
  });

  it('survives a server restart: messages sent meanwhile appear once, in order', async () => {
    await openConv(alice, 'dm:alice:bob');
    await openConv(bob, 'dm:alice:bob');
    const before = await bodies(alice);
    await node.stop();
    await bob.locator('[data-conn="open"]').waitFor({ state: 'detached' });
    for (const n of [1, 2, 3]) await type(bob, `offline ${n}`);
    await expect.poll(() => bob.locator('[data-status="sending"]').count()).toBe(3);
    node = await startNode({ CHATD_AUTH__ADMINS: '["root"]' }, { dataDir: node.dataDir, listen });
    const want = [...before, 'offline 1', 'offline 2', 'offline 3'];
    await expect.poll(() => bodies(alice), { timeout: 45_000 }).toEqual(want);
    await expect.poll(() => bodies(bob), { timeout: 45_000 }).toEqual(want);
    await expect.poll(() => bob.locator('[data-status="sending"]').count()).toBe(0);
  });

  it('deactivates a leaver and hands their group to a successor', async () => {
    await admin.call('POST', '/v1/users', { id: 'dan', name: 'Dan', password: PASSWORD });
    const g = await new Api(node.http, token('dan')).createGroup({ name: 'dan-team', members: ['carol'] });
    const root = await signIn('root', true);
    await root.locator('[data-view="admin"]').click();
    await root.locator('[data-tab="directory"]').click();
    const row = root.locator('[data-user="dan"]');
    await row.waitFor();
    // Without a successor the server refuses (dan owns a group) and says so.
    await row.getByRole('button', { name: 'Deactivate' }).click();
    await expect.poll(() => root.getByRole('alert').innerText()).toContain('owns 1 group');
    await row.getByRole('button', { name: 'Deactivate' }).waitFor();
    await root.getByLabel('Successor for the groups of a leaver').fill('carol');
    await row.getByRole('button', { name: 'Deactivate' }).click();
    // exact: a name match is otherwise a case-insensitive substring, and "Deactivate" contains it.
    await row.getByRole('button', { name: 'Activate', exact: true }).waitFor();
    const detail = await admin.call<{ members: { user: string; role: string }[] }>('GET', `/v1/groups/${g.id}`);
    expect(detail.members.find((m) => m.role === 'owner')?.user).toBe('carol');
  });

  it('speaks Chinese', async () => {
    await alice.getByLabel('Language').selectOption('zh');
    await alice.getByRole('button', { name: '退出登录' }).waitFor();
    await shot(alice, 'chat-zh');
    await alice.getByRole('button', { name: '退出登录' }).click();
    await alice.getByRole('button', { name: '登录' }).waitFor();
    await shot(alice, 'signin-zh');
  });
});
