import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { dmConv, isClientFrame, isServerFrame, parseServerFrame, targetOf } from '../src/index.js';
import { ROOT } from './chatd.js';

/** The JSON example lines of a section of docs/PROTOCOL.md (lines with `...` placeholders inside arrays are skipped). */
function examples(section: string): unknown[] {
  const doc = readFileSync(join(ROOT, 'docs/PROTOCOL.md'), 'utf8');
  const start = doc.indexOf(section);
  expect(start).toBeGreaterThan(0);
  const block = /```json\n([\s\S]*?)```/.exec(doc.slice(start));
  expect(block).not.toBeNull();
  const out: unknown[] = [];
  for (const line of block![1]!.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // `"messages":[...]` is prose, not JSON.
    }
  }
  return out;
}

describe('frames match docs/PROTOCOL.md', () => {
  it('accepts every client example and round-trips it', () => {
    const frames = examples('### Client → server');
    expect(frames.length).toBeGreaterThanOrEqual(7);
    for (const f of frames) {
      expect(isClientFrame(f), JSON.stringify(f)).toBe(true);
      expect(JSON.parse(JSON.stringify(f))).toEqual(f);
    }
  });

  it('accepts every server example', () => {
    const frames = examples('### Server → client');
    expect(frames.length).toBeGreaterThanOrEqual(5);
    for (const f of frames) {
      expect(isServerFrame(f), JSON.stringify(f)).toBe(true);
      expect(parseServerFrame(JSON.stringify(f))).toEqual(f);
    }
  });

  it('refuses malformed and unknown frames without throwing', () => {
    expect(parseServerFrame('not json')).toBeNull();
    expect(parseServerFrame('{"type":"future_thing"}')).toBeNull();
    expect(parseServerFrame('{"type":"ack","conv":"dm:a:b"}')).toBeNull();
    expect(parseServerFrame('[1,2]')).toBeNull();
    // Unknown fields are ignored.
    expect(parseServerFrame('{"type":"pong","rid":"1","new_field":3}')).not.toBeNull();
  });

  it('names conversations like the server', () => {
    expect(dmConv('bob', 'alice')).toBe('dm:alice:bob');
    expect(targetOf('dm:alice:bob', 'alice')).toEqual({ user: 'bob' });
    expect(targetOf('dm:alice:bob', 'bob')).toEqual({ user: 'alice' });
    expect(targetOf('group:g1', 'bob')).toEqual({ group: 'g1' });
  });
});
