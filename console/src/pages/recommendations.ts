// Recommendations: review recommended rules with their evidence (accept / reject / edit),
// see the draft against the active policy, simulate, provision, and roll back.

import { api, settings, type Attribution } from '../api';
import { confirmDialog, errorBox, fill, h, notice, table } from '../dom';
import type { Page } from '../page';
import { describeRule } from '../shaping';
import type { PolicyDiff, PolicyVersionInfo, Recommendation, Simulation } from '../types';

export function recommendationsPage(): Page {
  let status = 'pending';
  const reasons = new Map<string, string>();
  const editing = new Map<string, string>();
  let recs: Recommendation[] = [];

  const list = h('div', { class: 'rec-list', 'aria-live': 'polite' });
  const diffBox = h('div', { class: 'diff' });
  const simBox = h('div', { class: 'sim', 'aria-live': 'polite' });
  const provisionBox = h('div', { class: 'provision', 'aria-live': 'polite' });
  const versionsBox = h('div', { class: 'versions' });
  const actionError = h('div', { 'aria-live': 'assertive' });

  const who = (id: string, fallback: string): Attribution => ({
    actor: settings.actor,
    reason: reasons.get(id)?.trim() || fallback,
  });

  async function act(what: string, f: () => Promise<unknown>): Promise<void> {
    fill(actionError);
    try {
      await f();
      await page.refresh();
    } catch (e) {
      fill(actionError, errorBox(`${what}: ${(e as Error).message}`));
    }
  }

  function evidenceSummary(r: Recommendation): string {
    const ev = r.evidence as Record<string, unknown> | undefined;
    if (!ev || typeof ev !== 'object') return '';
    const parts: string[] = [];
    for (const k of ['flows', 'bytes', 'connections', 'sources', 'first_seen', 'last_seen', 'days']) {
      if (ev[k] !== undefined && typeof ev[k] !== 'object') parts.push(`${k.replace('_', ' ')}: ${ev[k]}`);
    }
    return parts.join(' · ');
  }

  function card(r: Recommendation): HTMLElement {
    const rule = r.rule ?? r;
    const title = describeRule(rule);
    const reason = h('input', {
      name: 'reason', placeholder: 'reason (recorded with your name)', value: reasons.get(r.id) ?? '',
      'aria-label': `Reason for ${title}`,
      oninput: (e: Event) => reasons.set(r.id, (e.target as HTMLInputElement).value),
    });
    const editor = editing.has(r.id)
      ? h('div', { class: 'editor' },
          h('label', { for: `edit-${r.id}` }, 'Rule (JSON)'),
          h('textarea', {
            id: `edit-${r.id}`, rows: 8, spellcheck: 'false',
            oninput: (e: Event) => editing.set(r.id, (e.target as HTMLTextAreaElement).value),
          }, editing.get(r.id) ?? ''),
          h('button', { type: 'button', onclick: () => saveEdit(r) }, 'Save edit'),
          h('button', { type: 'button', onclick: () => { editing.delete(r.id); render(); } }, 'Cancel'))
      : null;
    const pending = (r.status ?? status) === 'pending';
    return h('article', { class: 'rec', 'data-rec-id': r.id, 'aria-label': `Recommendation ${title}` },
      h('h3', {}, title),
      h('p', { class: 'meta' },
        r.confidence !== undefined ? `confidence ${Number(r.confidence).toFixed(2)} · ` : '',
        r.status ? `status ${r.status}` : '',
        evidenceSummary(r) ? ` · ${evidenceSummary(r)}` : ''),
      r.evidence !== undefined ? h('details', {}, h('summary', {}, 'Evidence'), h('pre', {}, JSON.stringify(r.evidence, null, 2))) : null,
      h('details', {}, h('summary', {}, 'Full recommendation'), h('pre', {}, JSON.stringify(r, null, 2))),
      pending
        ? h('div', { class: 'actions' }, reason,
            h('button', { type: 'button', class: 'primary', onclick: () => act('accept', () => api.accept(r.id, who(r.id, 'accepted in the console'))) }, 'Accept'),
            h('button', { type: 'button', onclick: () => act('reject', () => api.reject(r.id, who(r.id, 'rejected in the console'))) }, 'Reject'),
            h('button', { type: 'button', onclick: () => { editing.set(r.id, JSON.stringify(rule, null, 2)); render(); } }, 'Edit'))
        : null,
      editor);
  }

  async function saveEdit(r: Recommendation): Promise<void> {
    let rule: unknown;
    try {
      rule = JSON.parse(editing.get(r.id) ?? '');
    } catch (e) {
      fill(actionError, errorBox(`edit: the rule is not valid JSON: ${(e as Error).message}`));
      return;
    }
    await act('edit', async () => {
      await api.edit(r.id, who(r.id, 'edited in the console'), { rule });
      editing.delete(r.id);
    });
  }

  function render(): void {
    fill(list, recs.length ? recs.map(card) : notice(`No ${status} recommendations.`));
  }

  function renderDiff(diff: PolicyDiff): void {
    const section = (name: string, items: unknown[] | undefined, cls: string) =>
      h('div', { class: `diff-${cls}` }, h('h3', {}, `${name} (${items?.length ?? 0})`),
        items?.length ? h('ul', {}, items.map((i) => h('li', {}, describeRule(i)))) : h('p', {}, 'none'));
    fill(diffBox, section('Added', diff.added, 'added'), section('Removed', diff.removed, 'removed'), section('Changed', diff.changed, 'changed'));
  }

  function renderSimulation(sim: Simulation): void {
    const apps = sim.per_app ?? [];
    fill(simBox,
      h('h3', {}, 'Simulation result'),
      apps.length
        ? table('Effect of the draft per application', ['App', 'Newly blocked', 'Newly allowed', 'Examples'],
            apps.map((a) => [a.app, a.newly_blocked, a.newly_allowed, (a.examples ?? []).slice(0, 3).map((x) => typeof x === 'string' ? x : JSON.stringify(x)).join('; ')]))
        : notice('The draft changes no observed flow.'),
      sim.totals ? h('p', { class: 'totals' }, 'Totals: ', Object.entries(sim.totals).map(([k, v]) => `${k.replace(/_/g, ' ')} ${formatTotal(v)}`).join(', ')) : null);
  }

  function renderVersions(versions: PolicyVersionInfo[]): void {
    const sorted = [...versions].sort((a, b) => b.version - a.version);
    fill(versionsBox, sorted.length
      ? h('table', { class: 'results' },
          h('caption', {}, 'Provisioned versions (newest first)'),
          h('thead', {}, h('tr', {}, ['Version', 'Hash', 'When', 'By', ''].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, sorted.map((v, i) => h('tr', { 'data-version': String(v.version) },
            h('th', { scope: 'row' }, String(v.version)),
            h('td', {}, String(v.content_sha256 ?? '').slice(0, 12)),
            h('td', {}, versionTime(v)),
            h('td', {}, String(v.actor ?? v.provisioned_by ?? '')),
            h('td', {}, i === 0 ? 'current' : h('button', {
              type: 'button',
              onclick: async () => {
                if (await confirmDialog(`Roll back to version ${v.version}?`, 'Its rules become a new provisioned version on every enforcer.', 'Roll back')) {
                  await act('rollback', () => api.rollback(v.version, { actor: settings.actor, reason: `rollback to ${v.version} from the console` }));
                }
              },
            }, `Roll back to ${v.version}`))))))
      : notice('Nothing provisioned yet.'));
  }

  const simDays = h('input', { type: 'number', name: 'days', value: '1', min: '1', max: '90', 'aria-label': 'Days of flows to simulate against' });
  const page: Page = {
    title: 'Recommendations',
    mount(root) {
      root.append(
        actionError,
        h('section', { 'aria-labelledby': 'rec-h' },
          h('h2', { id: 'rec-h' }, 'Recommended rules'),
          h('label', {}, 'Show ', h('select', {
            name: 'status',
            onchange: (e: Event) => { status = (e.target as HTMLSelectElement).value; void page.refresh(); },
          }, ['pending', 'accepted', 'rejected'].map((s) => h('option', { value: s, selected: s === status }, s)))),
          list),
        h('section', { 'aria-labelledby': 'diff-h' }, h('h2', { id: 'diff-h' }, 'Draft vs active policy'), diffBox),
        h('section', { 'aria-labelledby': 'sim-h' },
          h('h2', { id: 'sim-h' }, 'Simulate and provision'),
          h('p', {}, 'Simulate replays recent flows against the draft; provisioning signs it and publishes it to every enforcer.'),
          h('div', { class: 'actions' },
            h('label', {}, 'Days ', simDays),
            h('button', { type: 'button', onclick: () => act('simulate', async () => renderSimulation(await api.simulate(Number(simDays.value) || 1))) }, 'Simulate'),
            h('button', {
              type: 'button', class: 'primary',
              onclick: async () => {
                if (await confirmDialog('Provision the draft?', 'The draft policy is signed and published to every enforcer.', 'Provision')) {
                  await act('provision', async () => {
                    const r = await api.provision({ actor: settings.actor, reason: 'provisioned from the console' });
                    fill(provisionBox, h('p', { class: 'ok', role: 'status' }, `Provisioned version ${r.version}${r.content_sha256 ? ` (sha256 ${r.content_sha256.slice(0, 12)}…)` : ''}.`));
                  });
                }
              },
            }, 'Provision')),
          simBox, provisionBox),
        h('section', { 'aria-labelledby': 'ver-h' }, h('h2', { id: 'ver-h' }, 'Version history'), versionsBox));
    },
    async refresh() {
      const [r, diff, versions] = await Promise.all([api.recommendations(status), api.diff(), api.versions()]);
      recs = r;
      // Do not redraw under a user who is typing in an editor.
      const active = document.activeElement;
      if (!(active instanceof HTMLTextAreaElement && list.contains(active)) && !(active instanceof HTMLInputElement && list.contains(active))) render();
      renderDiff(diff);
      renderVersions(versions);
    },
    unmount() {},
  };
  return page;
}

/** A simulation total: a number, or counts by decision (`{"allowed": 3, "blocked": 1}`). */
function formatTotal(v: unknown): string {
  if (v && typeof v === 'object') {
    return `(${Object.entries(v as Record<string, unknown>).map(([k, n]) => `${k.replace(/_/g, ' ')} ${String(n)}`).join(', ')})`;
  }
  return String(v);
}

/** When a version was provisioned: the API gives `created_unix_ns`. */
function versionTime(v: PolicyVersionInfo): string {
  const ns = v.created_unix_ns;
  if (typeof ns === 'number' && ns > 0) return new Date(ns / 1e6).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
  return String(v.provisioned_at ?? v.created_at ?? '');
}
