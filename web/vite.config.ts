import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

// The app is built into web/dist, which chatd embeds (crates/gateway/src/api/web.rs) and
// which is committed, so chatd builds without Node. Preact's JSX through esbuild (no plugin).
export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  base: '/',
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  resolve: {
    alias: { '@chatd/client': fileURLToPath(new URL('../clients/ts/src/index.ts', import.meta.url)) },
  },
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2022',
    reportCompressedSize: true,
  },
});
