/**
 * Speed and size of the web app (docs/BENCHMARKS.md): the gzipped first load as served by
 * chatd, and scrolling a conversation of 10,000 messages (virtualized list) in chromium.
 */
import { get } from 'node:http';
import { gzipSync } from 'node:zlib';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNode, type Node } from '../../clients/ts/test/chatd';
import { launch } from './browser';

let node: Node;
let browser: Browser;

beforeAll(async () => {
  node = await startNode();
  browser = await launch();
});
afterAll(async () => {
  await browser?.close();
  await node?.dispose();
});

describe('web app speed and size', () => {
  it('first load is small', async () => {
    const html = await (await fetch(node.http + '/')).text();
    const urls = ['/', ...[...html.matchAll(/(?:src|href)="(\/[^"]+)"/g)].map((m) => m[1]!)];
    let raw = 0;
    let gz = 0;
    let served = 0;
    for (const u of new Set(urls)) {
      const body = Buffer.from(await (await fetch(node.http + u)).arrayBuffer());
      raw += body.length;
      gz += gzipSync(body, { level: 9 }).length;
      // What chatd sends to a browser (Accept-Encoding: gzip), bytes on the wire.
      served += await new Promise<number>((ok, fail) => {
        get(node.http + u, { headers: { 'Accept-Encoding': 'gzip' } }, (res) => {
          let n = 0;
          res.on('data', (c: Buffer) => (n += c.length));
          res.on('end', () => ok(n));
        }).on('error', fail);
      });
    }
    console.log(
      `first load: ${urls.length} files, ${(raw / 1024).toFixed(1)} KiB, gzip -9 ${(gz / 1024).toFixed(1)} KiB, served gzipped by chatd ${(served / 1024).toFixed(1)} KiB`,
    );
    expect(gz).toBeLessThan(300 * 1024);
    expect(served).toBeLessThan(raw);
  });

  it('scrolls 10,000 messages with a bounded DOM', async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    await page.goto(node.http + '/#/bench?n=10000');
    await page.locator('[data-vkey]').first().waitFor();
    const r = await page.evaluate(() => window.chatdBench!());
    console.log(`10k scroll: ${r.frames} scrolls (300 one-screen steps, 21 jumps), scroll-to-frame p50 ${r.p50.toFixed(1)} ms, p95 ${r.p95.toFixed(1)} ms, max ${r.max.toFixed(1)} ms, ${r.rowsInDom} rows in the DOM of ${r.total}`);
    expect(r.total).toBe(10_000);
    expect(r.rowsInDom).toBeLessThan(200);
    // Orders of magnitude only (a loaded 2-core machine): a frame well under a tenth of a second.
    expect(r.p50).toBeLessThan(100);
    await page.close();
  });
});
