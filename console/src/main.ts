// The console shell: hash routing between pages, settings, live polling, API error banner.

import './style.css';
import { ApiError, settings } from './api';
import { fill, h } from './dom';
import type { Page } from './page';
import { mapPage } from './pages/map';
import { explorerPage } from './pages/explorer';
import { recommendationsPage } from './pages/recommendations';
import { workloadsPage } from './pages/workloads';

const PAGES: Record<string, () => Page> = {
  map: mapPage,
  explorer: explorerPage,
  recommendations: recommendationsPage,
  workloads: workloadsPage,
};
const POLL_MS = 5000;

const main = document.getElementById('main') as HTMLElement;
const banner = document.getElementById('api-status') as HTMLElement;
const live = document.getElementById('live') as HTMLElement;
let current: { name: string; page: Page } | null = null;
let polling = false;

function showApiError(e: unknown): void {
  const message = e instanceof ApiError ? e.message : `unexpected error: ${(e as Error)?.message ?? e}`;
  fill(banner, h('div', { class: 'error' }, h('strong', {}, 'The API is not answering as expected. '), message,
    ' — the page keeps retrying every 5 s.'));
  live.textContent = 'stale';
  live.className = 'live stale';
}

function clearApiError(): void {
  if (banner.firstChild) fill(banner);
  live.textContent = `updated ${new Date().toLocaleTimeString()}`;
  live.className = 'live ok';
}

async function refresh(): Promise<void> {
  if (!current || polling) return;
  polling = true;
  const page = current.page;
  try {
    await page.refresh();
    if (current?.page === page) clearApiError();
  } catch (e) {
    if (current?.page === page) showApiError(e);
  } finally {
    polling = false;
  }
}

function route(): void {
  const name = location.hash.replace(/^#\/?/, '').split('?')[0] || 'map';
  const make = PAGES[name] ?? PAGES.map;
  current?.page.unmount();
  const page = make();
  current = { name, page };
  document.title = `${page.title} — Bulkhead`;
  for (const a of document.querySelectorAll<HTMLAnchorElement>('nav a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  main.replaceChildren();
  main.append(h('h1', {}, page.title));
  const root = h('div', { class: `page page-${name}` });
  main.append(root);
  page.mount(root);
  main.focus({ preventScroll: true });
  void refresh();
}

function setupSettings(): void {
  const actor = document.getElementById('actor') as HTMLInputElement;
  const token = document.getElementById('token') as HTMLInputElement;
  actor.value = settings.actor;
  token.value = settings.token;
  actor.addEventListener('change', () => (settings.actor = actor.value.trim()));
  token.addEventListener('change', () => {
    settings.token = token.value.trim();
    void refresh();
  });
}

setupSettings();
window.addEventListener('hashchange', route);
route();
setInterval(() => {
  if (!document.hidden) void refresh();
}, POLL_MS);
