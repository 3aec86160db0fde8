/**
 * `#/bench?n=10000`: the message list with n synthetic messages (the real row component),
 * and `window.chatdBench()`, which scrolls from the newest to the oldest message in steps
 * of one screen per animation frame and reports frame times (docs/BENCHMARKS.md).
 */
import type { Message } from '@chatd/client';
import { useMemo } from 'preact/hooks';
import { MessageRow } from './Chat';
import { VirtualList } from './VirtualList';

declare global {
  interface Window {
    chatdBench?: (step?: number) => Promise<{ frames: number; p50: number; p95: number; max: number; rowsInDom: number; total: number }>;
  }
}

export function Bench() {
  const n = Number(new URLSearchParams(location.hash.split('?')[1]).get('n') ?? 10_000);
  const items = useMemo(() => {
    const words = 'the quick brown fox jumps over the lazy dog 你好 世界 会议 十点 开始'.split(' ');
    const out: Message[] = [];
    for (let i = 1; i <= n; i++) {
      const len = 3 + ((i * 7919) % 60);
      const body = Array.from({ length: len }, (_, j) => words[(i + j) % words.length]).join(' ');
      out.push({ conv: 'group:bench', seq: i, id: `b${i}`, from: i % 3 ? 'bob' : 'alice', kind: 'text', body, ts: 1_764_331_200_000 + i * 1000 });
    }
    return out;
  }, [n]);
  window.chatdBench = async (step) => {
    const el = document.querySelector<HTMLElement>('.vlist')!;
    const times: number[] = [];
    let last = performance.now();
    const stride = step ?? el.clientHeight;
    el.scrollTop = el.scrollHeight;
    await new Promise((r) => requestAnimationFrame(r));
    while (el.scrollTop > 0) {
      el.scrollTop = Math.max(0, el.scrollTop - stride);
      el.dispatchEvent(new Event('scroll'));
      await new Promise((r) => requestAnimationFrame(r));
      const now = performance.now();
      times.push(now - last);
      last = now;
    }
    times.sort((a, b) => a - b);
    const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]!;
    return { frames: times.length, p50: q(0.5), p95: q(0.95), max: times[times.length - 1]!, rowsInDom: el.querySelectorAll('[data-vkey]').length, total: items.length };
  };
  return (
    <main class="pane bench" style={{ height: '100vh' }}>
      <VirtualList label="bench" items={items} itemKey={(m) => m.seq} render={(m) => <MessageRow m={m} />} />
    </main>
  );
}
