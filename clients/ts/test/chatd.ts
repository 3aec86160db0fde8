/**
 * Starts the real `chatd` binary for JS tests (as tests/src/lib.rs does for Rust): embedded
 * mode, a fresh data directory, port 0, the repository's moderation rules, a known secret.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The secret every test node signs with. */
export const SECRET = 'js-test-secret-not-for-production';
/** The repository root. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

function bin(): string {
  return process.env.CHATD_BIN ?? join(ROOT, 'target/debug/chatd');
}

/** A running node. */
export interface Node {
  /** `http://127.0.0.1:<port>` */
  http: string;
  /** `ws://127.0.0.1:<port>/ws` */
  ws: string;
  /** The data directory (kept across {@link restart}). */
  dataDir: string;
  /** Stops the node (SIGTERM, then SIGKILL) and keeps the data directory. */
  stop(): Promise<void>;
  /** Stops and removes the data directory. */
  dispose(): Promise<void>;
}

/** Starts a node; `env` adds `CHATD_*` settings; `listen` pins the address (for restarts). */
export async function startNode(
  env: Record<string, string> = {},
  opts: { dataDir?: string; listen?: string } = {},
): Promise<Node> {
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'chatd-js-'));
  const child: ChildProcess = spawn(
    bin(),
    ['serve', '--listen', opts.listen ?? '127.0.0.1:0', '--data-dir', dataDir],
    {
      env: {
        ...process.env,
        CHATD_AUTH__JWT_SECRET: SECRET,
        CHATD_LOG: 'info',
        CHATD_MODERATION__RULES_DIR: join(ROOT, 'config/moderation'),
        ...env,
      },
      stdio: ['ignore', 'pipe', process.env.E2E_VERBOSE ? 'inherit' : 'ignore'],
    },
  );
  const addr = await new Promise<string>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('chatd did not report its address in 30 s')), 30_000);
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      if (process.env.E2E_VERBOSE) console.error('[chatd]', line);
      const m = /listening.*addr=(\S+)/.exec(line);
      if (m?.[1]) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
    child.once('exit', (code) => fail(new Error(`chatd exited with ${code}`)));
  });
  const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(t);
  };
  return {
    http: `http://${addr}`,
    ws: `ws://${addr}/ws`,
    dataDir,
    stop,
    dispose: async () => {
      await stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

/** A token for `user` signed with the test secret (as `chatd token` mints). */
export function token(user: string, ttlSecs = 3600): string {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = b64url(JSON.stringify({ sub: user, iat: now - 2, exp: now + ttlSecs }));
  const sig = createHmac('sha256', SECRET).update(`${head}.${claims}`).digest('base64url');
  return `${head}.${claims}.${sig}`;
}
