/** The browser of the e2e tests: Debian's chromium, driven by playwright-core. */
import { chromium, type Browser } from 'playwright-core';

/** Launches the machine's chromium with the flags this environment needs. */
export async function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    // playwright gives every launch a fresh temporary --user-data-dir.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
