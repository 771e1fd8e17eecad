// Browser test of the console on the running demo (Playwright with Debian's Chromium):
// the map shows the lab's apps and their edges; accepting the recommendations, simulating
// and provisioning through the UI marks the rogue host's attempts potentially blocked while
// the hosts are in visibility only, and blocks them once the hosts are in full enforcement;
// quarantine from the UI cuts a host off. Blocking is checked by real connection attempts
// from the lab's network namespaces, not by the UI. Screenshots of every page go to the
// artefact directory.
//
//   BULKHEAD_CONSOLE_URL   the console (e.g. http://127.0.0.1:8080/), required
//   BULKHEAD_LAB_DIR       the lab's state directory (default /var/lib/bulkhead/demo/lab,
//                          where `bulkhead demo` keeps it)
//   BULKHEAD_TOKEN         API token, when `serve` wants one
//   BULKHEAD_ARTIFACTS     screenshot directory (default console/test-artifacts)
//   CHROMIUM               browser (default /usr/bin/chromium)
//
// Needs root (ip netns exec). Prints "N passed, N failed" and exits non-zero on failure.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.BULKHEAD_CONSOLE_URL;
const LAB_DIR = process.env.BULKHEAD_LAB_DIR ?? '/var/lib/bulkhead/demo/lab';
const ARTIFACTS = resolve(process.env.BULKHEAD_ARTIFACTS ?? join(here, '..', 'test-artifacts'));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** How long enforcement may take to reach the hosts before the test calls it "never". */
const SETTLE_MS = 90_000;

function die(message) {
  console.error(`\n*** demo browser test cannot run: ${message}\n`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

if (!BASE) die('BULKHEAD_CONSOLE_URL is not set (the URL `bulkhead demo` prints, e.g. http://127.0.0.1:8080/)');
const base = BASE.endsWith('/') ? BASE : `${BASE}/`;
if (!existsSync(CHROMIUM)) die(`no browser at ${CHROMIUM} (apt-get install chromium; dev/setup does it)`);
if (process.getuid?.() !== 0) die('not root: the connection checks run inside the lab namespaces (ip netns exec)');
try {
  const r = await fetch(new URL('healthz', base), { signal: AbortSignal.timeout(5000) });
  if (!r.ok) die(`${base}healthz answered ${r.status}: is this a bulkhead serve?`);
} catch (e) {
  die(`no Bulkhead server at ${base} (${e.cause?.code ?? e.message}): start the demo (bulkhead demo) or point BULKHEAD_CONSOLE_URL at it`);
}
const labFile = join(LAB_DIR, 'lab.json');
if (!existsSync(labFile)) die(`no lab state at ${labFile}: the lab is not up (bulkhead lab up)`);
const lab = JSON.parse(readFileSync(labFile, 'utf8'));
const host = (name) => {
  const h = lab.hosts.find((x) => x.name === name);
  if (!h) die(`the lab has no host ${name}`);
  return h;
};
mkdirSync(ARTIFACTS, { recursive: true });

/** A real TCP connection attempt from a lab host's namespace. */
function connects(from, to, port) {
  const r = spawnSync('ip', ['netns', 'exec', host(from).ns, 'timeout', '2', 'bash', '-c', `exec 3<>/dev/tcp/${host(to).ip}/${port}`], { stdio: 'ignore' });
  return r.status === 0;
}

async function eventually(what, f, within = SETTLE_MS) {
  const deadline = Date.now() + within;
  for (;;) {
    if (await f()) return;
    if (Date.now() > deadline) throw new Error(`${what}: still not so after ${within / 1000} s`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--headless', '--no-sandbox'] });
const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
if (process.env.BULKHEAD_TOKEN) {
  await context.addInitScript((t) => localStorage.setItem('bulkhead.token', t), process.env.BULKHEAD_TOKEN);
}
await context.addInitScript(() => localStorage.setItem('bulkhead.actor', 'playwright'));
const page = await context.newPage();
const consoleErrors = [];
page.on('pageerror', (e) => consoleErrors.push(String(e)));

let passed = 0;
let failed = 0;
async function test(name, f) {
  const started = Date.now();
  try {
    await f();
    passed++;
    console.log(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.message}`);
    await page.screenshot({ path: join(ARTIFACTS, `failed-${name.replace(/\W+/g, '-')}.png`), fullPage: true }).catch(() => {});
  }
}
const shot = (name) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
async function open(route) {
  await page.goto(`${base}#/${route}`);
  await page.locator('h1').waitFor();
}
async function noApiError() {
  const banner = await page.locator('#api-status').innerText();
  check(!banner.trim(), `the console shows an API error: ${banner}`);
}

await test('map shows the lab apps and their edges', async () => {
  await open('map');
  const nodes = page.locator('#map-nodes tbody tr');
  await eventually('the map lists groups for app crm and app shop', async () => {
    const text = (await nodes.allInnerTexts().catch(() => [])).join('\n');
    return text.includes('crm') && text.includes('shop');
  }, 120_000);
  await noApiError();
  const edges = await page.locator('#map-edges tbody tr').allInnerTexts();
  check(edges.some((e) => /crm/.test(e)), `no edge touches crm: ${edges.join(' | ')}`);
  check(await page.locator('.graph canvas').count() > 0, 'the graph was not drawn');
  await shot('map');
  // A click on a group shows its roles.
  await page.locator('#map-nodes tr', { hasText: 'crm' }).first().getByRole('button', { name: 'Show roles' }).click();
  await eventually('crm roles appear', async () => {
    const text = (await nodes.allInnerTexts()).join('\n');
    return ['web', 'app', 'db'].every((r) => new RegExp(`crm.*/ ${r}\\b`).test(text));
  }, 10_000);
  await shot('map-crm-roles');
});

await test('explorer runs a flow query and SQL', async () => {
  await open('explorer');
  await page.getByLabel('Include').last().fill('app=crm');
  await page.getByRole('button', { name: 'Run query' }).click();
  await page.locator('.results-box table, .results-box .notice:not(:has-text("Running"))').first().waitFor({ timeout: 30_000 });
  check(await page.locator('.results-box .error').count() === 0, await page.locator('.results-box').innerText());
  await shot('explorer');
  await page.getByRole('tab', { name: 'SQL' }).click();
  await page.getByRole('button', { name: 'Run SQL' }).click();
  await page.locator('.results-box table, .results-box .notice:not(:has-text("Running"))').first().waitFor({ timeout: 30_000 });
  check(await page.locator('.results-box .error').count() === 0, await page.locator('.results-box').innerText());
  await shot('explorer-sql');
});

await test('before any policy the rogue host reaches the crm database', async () => {
  check(connects('rogue', 'db-crm', 5432), 'rogue → db-crm:5432 does not connect even before policy: is the lab up?');
  check(connects('app-crm', 'db-crm', 5432), 'app-crm → db-crm:5432 does not connect');
});

/** The decisions the lake holds for flows from `from` to `to`:`port`, through the Explorer's SQL tab. */
async function decisions(from, to, port) {
  await open('explorer');
  await page.getByRole('tab', { name: 'SQL' }).click();
  await page.locator('#sql').fill(
    `SELECT policy_decision, count(*) AS flows FROM flows WHERE src_ip = '${host(from).ip}' AND dst_ip = '${host(to).ip}' AND dst_port = ${port} GROUP BY policy_decision ORDER BY policy_decision`,
  );
  await page.getByRole('button', { name: 'Run SQL' }).click();
  await page.locator('.results-box table, .results-box .notice:not(:has-text("Running"))').first().waitFor({ timeout: 30_000 });
  check(await page.locator('.results-box .error').count() === 0, await page.locator('.results-box').innerText());
  return page.locator('.results-box').innerText();
}

/** Sets every labelled estate host's mode on the Workloads page. */
async function setModes(estate, mode) {
  await open('workloads');
  for (const h of estate) {
    await page.locator(`tr[data-workload="${h.name}"] select[name=mode]`).selectOption(mode);
    await page.waitForTimeout(200);
  }
  await eventually(`modes show ${mode}`, async () => {
    const modes = await page.locator('tr[data-workload] select[name=mode]').evaluateAll((s) => s.map((x) => x.value));
    return modes.filter((m) => m === mode).length >= estate.length;
  }, 30_000);
  check(await page.locator('.error').count() === 0, await page.locator('.error').first().innerText().catch(() => ''));
}

async function provision() {
  await open('recommendations');
  await page.getByRole('button', { name: 'Provision' }).click();
  await page.locator('dialog').getByRole('button', { name: 'Provision' }).click();
  await page.locator('.provision .ok').waitFor({ timeout: 30_000 });
}

const estate = lab.hosts.filter((h) => h.agent && Object.keys(h.labels).length > 0);

await test('workloads: every estate host reports, in visibility only', async () => {
  await open('workloads');
  await eventually('every labelled lab host is listed', async () => {
    const ids = await page.locator('tr[data-workload]').evaluateAll((rows) => rows.map((r) => r.dataset.workload));
    return estate.every((h) => ids.includes(h.name));
  }, 60_000);
  await noApiError();
  const modes = await page.locator('tr[data-workload] select[name=mode]').evaluateAll((s) => s.map((x) => x.value));
  check(modes.filter((m) => m === 'visibility_only').length >= estate.length, `modes: ${modes.join(', ')}`);
  await shot('workloads');
});

await test('accepting recommendations, simulating and provisioning: the rogue host is potentially blocked', async () => {
  await open('recommendations');
  const rogue = host('rogue');
  await eventually('pending recommendations arrive', async () => (await page.locator('article.rec').count()) > 0, 180_000);
  await shot('recommendations');
  // Review every pending recommendation: reject what involves the rogue (unlabeled) host.
  for (let i = 0; i < 200; i++) {
    const card = page.locator('article.rec').first();
    if (!(await card.count())) break;
    const text = await card.innerText();
    const full = await card.locator('pre').last().textContent();
    const rogueRule = [text, full].some((t) => t.includes(rogue.ip) || /rogue|unlabeled/i.test(t));
    // Suspicious patterns are findings to review, never rules to accept.
    const suspicious = /"kind": "suspicious"/.test(full ?? '');
    const id = await card.getAttribute('data-rec-id');
    await card.getByRole('button', { name: rogueRule || suspicious ? 'Reject' : 'Accept' }).click();
    await page.waitForFunction((id) => !document.querySelector(`article.rec[data-rec-id="${id}"]`), id, { timeout: 15_000 });
  }
  check(await page.locator('[aria-live=assertive] .error').count() === 0, await page.locator('.error').first().innerText().catch(() => ''));
  const added = await page.locator('.diff-added li').count();
  check(added > 0, 'the draft adds no rule after accepting the recommendations');
  await page.getByRole('button', { name: 'Simulate' }).click();
  await page.locator('.sim h3').waitFor({ timeout: 60_000 });
  await shot('simulate');
  await page.getByRole('button', { name: 'Provision' }).click();
  await page.locator('dialog').getByRole('button', { name: 'Provision' }).click();
  await page.locator('.provision .ok').waitFor({ timeout: 30_000 });
  await shot('provisioned');
  // Visibility only: the policy is known, nothing is dropped yet.
  await eventually('the rogue host\'s attempts on db-crm:5432 show as potentially blocked', async () =>
    (await decisions('rogue', 'db-crm', 5432)).includes('potentially_blocked'));
  await shot('explorer-potentially-blocked');
  check(connects('rogue', 'db-crm', 5432), 'rogue → db-crm:5432 was dropped in visibility only');
});

await test('full enforcement blocks the rogue host and keeps the app working', async () => {
  await setModes(estate, 'full');
  await shot('workloads-full');
  await provision();
  await eventually('rogue → db-crm:5432 is blocked', () => !connects('rogue', 'db-crm', 5432));
  check(connects('app-crm', 'db-crm', 5432), 'app-crm → db-crm:5432 was blocked too: the accepted rules do not allow it');
  check(connects('web-crm', 'app-crm', 8080), 'web-crm → app-crm:8080 was blocked too');
  check(connects('web-shop', 'app-shop', 8080), 'web-shop → app-shop:8080 was blocked too');
  await eventually('the rogue host\'s attempts show as blocked', async () =>
    /(^|\s)blocked/.test(await decisions('rogue', 'db-crm', 5432)));
  await shot('explorer-blocked');
  await open('recommendations');
  await page.locator('tr[data-version]').first().waitFor({ timeout: 20_000 });
  check(await page.locator('tr[data-version]').count() >= 2, 'the version history does not list both provisioned versions');
  await shot('versions');
});

await test('quarantine from the UI cuts a host off', async () => {
  check(connects('web-shop', 'app-shop', 8080), 'web-shop → app-shop:8080 does not connect before quarantine');
  await open('workloads');
  const row = page.locator('tr[data-workload="app-shop"]');
  await row.getByRole('button', { name: 'Quarantine' }).click();
  await page.locator('dialog').getByRole('button', { name: 'Quarantine' }).click();
  await row.getByRole('button', { name: 'Release' }).waitFor({ timeout: 30_000 }).catch(() => {});
  await shot('quarantine');
  try {
    await eventually('app-shop is cut off', () => !connects('web-shop', 'app-shop', 8080), 45_000);
  } catch {
    // The policy engine may carry quarantine in the next provisioned version.
    console.log('     quarantine did not apply by itself within 45 s; provisioning it from the UI');
    await provision();
    await eventually('app-shop is cut off after provisioning', () => !connects('web-shop', 'app-shop', 8080));
  }
  check(!connects('app-shop', 'db-shop', 3306), 'quarantined app-shop still reaches db-shop:3306');
  check(connects('web-crm', 'app-crm', 8080), 'quarantining app-shop cut off crm too');
});

await test('no script errors in the page', async () => {
  check(consoleErrors.length === 0, consoleErrors.join('\n'));
});

await browser.close();
console.log(`\nscreenshots: ${ARTIFACTS}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
