import { defineConfig } from 'vitest/config';

// Browser tests: headless Debian chromium driven by playwright-core against a real chatd.
export default defineConfig({
  test: {
    include: ['e2e/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: false,
  },
});
