/**
 * `#/bench?n=10000`: the message list with n synthetic messages (the real row component),
 * and `window.chatdBench(frames)`, which flings up from the newest message one screen per
 * animation frame, then jumps to 20 places and the top, and reports the time from each
 * scroll to the next frame (docs/BENCHMARKS.md).
 */
import type { Message } from '@chatd/client';
import { useMemo } from 'preact/hooks';
import { MessageRow } from './Chat';
import { VirtualList } from './VirtualList';

declare global {
  interface Window {
    chatdBench?: (frames?: number) => Promise<{ frames: number; p50: number; p95: number; max: number; rowsInDom: number; total: number }>;
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
  window.chatdBench = async (frames = 300) => {
    const el = document.querySelector<HTMLElement>('.vlist')!;
    const times: number[] = [];
    const frame = () => new Promise((r) => requestAnimationFrame(r));
    const timed = async (move: () => void) => {
      const t0 = performance.now();
      move();
      await frame();
      times.push(performance.now() - t0);
    };
    el.scrollTop = el.scrollHeight;
    await frame();
    await frame();
    // A fling upwards from the newest message: one screen per frame.
    for (let i = 0; i < frames && el.scrollTop > 0; i++) await timed(() => (el.scrollTop = Math.max(0, el.scrollTop - el.clientHeight)));
    // Jumps anywhere in the 10,000 (dragging the scroll bar), then to the very top.
    for (let i = 1; i <= 20; i++) await timed(() => (el.scrollTop = ((i * 7919) % 20) * (el.scrollHeight / 20)));
    await timed(() => (el.scrollTop = 0));
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
