// Workloads: labels (edit, accept suggestions), enforcement mode, enforcer status, and
// quarantine with a confirmation.

import { api, settings } from '../api';
import { confirmDialog, errorBox, fill, h, notice } from '../dom';
import type { Page } from '../page';
import { InputError, formatLabels, parseLabelSet } from '../shaping';
import type { DraftWorkload, LabelSuggestion, PolicyDocument, Workload } from '../types';

const MODES = ['idle', 'visibility_only', 'selective', 'full'];
/** A heartbeat older than this many seconds is shown as stale. */
const STALE_S = 60;

export function workloadsPage(): Page {
  let workloads: Workload[] = [];
  let suggestions: LabelSuggestion[] = [];
  /** What the draft policy says of each workload (mode, quarantine): a mode set here
   *  takes effect when the draft is provisioned, so the select shows the draft's. */
  let drafted = new Map<string, DraftWorkload>();
  let filter = '';
  const drafts = new Map<string, string>();
  const body = h('div', { class: 'workloads' });
  const suggestionsBox = h('div', { class: 'suggestions' });
  const actionError = h('div', { 'aria-live': 'assertive' });
  const who = (reason: string) => ({ actor: settings.actor, reason });

  async function act(what: string, f: () => Promise<unknown>): Promise<void> {
    fill(actionError);
    try {
      await f();
      await page.refresh();
    } catch (e) {
      fill(actionError, errorBox(`${what}: ${(e as Error).message}`));
    }
  }

  const name = (w: Workload) => w.hostname || w.id;

  function statusCell(w: Workload): HTMLElement {
    const s = w.enforcer;
    if (!s) return h('span', { class: 'muted' }, 'no enforcer status yet');
    const age = s.heartbeat_age_s;
    const stale = age === null || age === undefined || age > STALE_S;
    return h('div', { class: 'status' },
      h('span', { class: stale ? 'bad' : 'ok' }, age === null || age === undefined ? 'no heartbeat' : `heartbeat ${age} s ago`),
      h('br'), `policy v${s.applied_version ?? '—'}, ${s.rule_count ?? 0} rules`,
      s.last_error ? h('div', { class: 'bad', role: 'note' }, `error: ${s.last_error}`) : null);
  }

  function row(w: Workload): HTMLElement {
    const labels = Object.entries(w.labels ?? {}).sort(([a], [b]) => a.localeCompare(b));
    const input = h('input', {
      name: 'labels', placeholder: 'app=crm role=db', size: 14, value: drafts.get(w.id) ?? '',
      'aria-label': `Labels to set on ${name(w)}`,
      oninput: (e: Event) => drafts.set(w.id, (e.target as HTMLInputElement).value),
    });
    const addLabels = () => {
      let set;
      try {
        set = parseLabelSet(drafts.get(w.id) ?? '');
      } catch (e) {
        if (e instanceof InputError) return fill(actionError, errorBox(`${name(w)}: ${e.message}`));
        throw e;
      }
      if (!Object.keys(set).length) return fill(actionError, errorBox(`${name(w)}: type labels as key=value first`));
      void act('set labels', async () => {
        await api.setLabels(w.id, who('labels set in the console'), set, []);
        drafts.delete(w.id);
      });
    };
    const quarantined = Boolean(drafted.get(w.id)?.quarantined ?? w.quarantined);
    const running = w.enforcer?.mode ?? w.mode ?? 'visibility_only';
    const wanted = drafted.get(w.id)?.mode ?? running;
    return h('tr', { 'data-workload': w.id },
      h('th', { scope: 'row' }, name(w), w.hostname && w.hostname !== w.id ? h('div', { class: 'muted' }, w.id) : null),
      h('td', {}, (w.ips ?? []).join(', ')),
      h('td', {},
        h('ul', { class: 'chips', 'aria-label': `Labels of ${name(w)}` },
          labels.length ? labels.map(([k, v]) => h('li', {}, `${k}=${v} `,
            h('button', {
              type: 'button', class: 'chip-x', 'aria-label': `Remove label ${k} from ${name(w)}`,
              onclick: () => act('remove label', () => api.setLabels(w.id, who(`label ${k} removed in the console`), {}, [k])),
            }, '×'))) : h('li', { class: 'muted' }, 'unlabeled')),
        h('form', { class: 'inline', onsubmit: (e: Event) => { e.preventDefault(); addLabels(); } }, input, h('button', { type: 'submit' }, 'Set'))),
      h('td', {}, h('select', {
        name: 'mode', 'aria-label': `Enforcement mode of ${name(w)}`,
        onchange: (e: Event) => act('set mode', () => api.setMode(w.id, who('mode set in the console'), (e.target as HTMLSelectElement).value)),
      }, MODES.map((m) => h('option', { value: m, selected: m === wanted }, m.replace('_', ' ')))),
        wanted !== running ? h('div', { class: 'muted', role: 'note' }, `runs ${running.replace('_', ' ')} until provisioned`) : null),
      h('td', {}, statusCell(w)),
      h('td', {}, h('button', {
        type: 'button', class: quarantined ? '' : 'danger', 'aria-pressed': String(quarantined),
        onclick: async () => {
          const title = quarantined ? `Release ${name(w)} from quarantine?` : `Quarantine ${name(w)}?`;
          const text = quarantined
            ? 'Its normal policy applies again.'
            : 'It will be cut off from everything but the control plane, live connections included.';
          if (await confirmDialog(title, text, quarantined ? 'Release' : 'Quarantine')) {
            await act('quarantine', () => api.quarantine(w.id, who(quarantined ? 'released in the console' : 'quarantined in the console'), !quarantined));
          }
        },
      }, quarantined ? 'Release' : 'Quarantine')));
  }

  function render(): void {
    const f = filter.trim().toLowerCase();
    const shown = workloads.filter((w) => !f || [w.id, w.hostname ?? '', ...(w.ips ?? []), formatLabels(w.labels)].some((x) => x.toLowerCase().includes(f)));
    const active = document.activeElement;
    if (active instanceof HTMLInputElement && body.contains(active)) return; // typing
    fill(body, shown.length
      ? h('table', { class: 'results' },
          h('caption', {}, `${shown.length} of ${workloads.length} workloads`),
          h('thead', {}, h('tr', {}, ['Workload', 'Addresses', 'Labels', 'Mode', 'Enforcer', 'Quarantine'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, shown.map(row)))
      : notice(workloads.length ? 'No workload matches the filter.' : 'No workloads have reported yet.'));
  }

  function renderSuggestions(): void {
    fill(suggestionsBox, suggestions.length
      ? h('ul', {}, suggestions.map((s, i) => {
          const id = s.workload_id ?? s.workload ?? '';
          const set = s.set ?? s.labels ?? {};
          const w = workloads.find((x) => x.id === id);
          return h('li', { 'data-suggestion': String(i) },
            `${w ? name(w) : id}: ${formatLabels(set)}`,
            s.reason ? h('span', { class: 'muted' }, ` — ${s.reason}`) : null,
            s.confidence !== undefined ? h('span', { class: 'muted' }, ` (confidence ${Number(s.confidence).toFixed(2)})`) : null, ' ',
            h('button', { type: 'button', onclick: () => act('accept suggestion', () => api.setLabels(id, who('label suggestion accepted in the console'), set, [])) }, 'Accept'));
        }))
      : notice('No label suggestions.'));
  }

  const page: Page = {
    title: 'Workloads',
    mount(root) {
      root.append(actionError,
        h('label', {}, 'Filter ', h('input', { type: 'search', name: 'filter', placeholder: 'name, address or label',
          oninput: (e: Event) => { filter = (e.target as HTMLInputElement).value; fill(body); render(); } })),
        body,
        h('section', { 'aria-labelledby': 'sug-h' }, h('h2', { id: 'sug-h' }, 'Label suggestions'), suggestionsBox));
    },
    async refresh() {
      const [w, s, draft] = await Promise.all([
        api.workloads(),
        api.suggestions().catch(() => [] as LabelSuggestion[]),
        // A server without the policy engine (serve --no-policy) has no draft.
        api.draft().catch(() => null),
      ]);
      workloads = [...w].sort((a, b) => name(a).localeCompare(name(b)));
      drafted = new Map(((draft as PolicyDocument | null)?.workloads ?? []).map((d) => [d.workload_id, d]));
      suggestions = s;
      render();
      renderSuggestions();
    },
    unmount() {},
  };
  return page;
}
