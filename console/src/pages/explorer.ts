// Explorer: the flow query form (include/exclude sources and destinations, services, time
// range, decisions) with a results table and CSV export; a SQL tab for free queries.

import { api } from '../api';
import { download, errorBox, fill, h, notice, table } from '../dom';
import type { Page } from '../page';
import { InputError, TIME_RANGES, explorerRequest, toCsv, type ExplorerForm } from '../shaping';
import { DECISIONS, type QueryResult } from '../types';

export function explorerPage(): Page {
  let tab: 'flows' | 'sql' = 'flows';
  const results = h('section', { class: 'results-box', 'aria-live': 'polite', 'aria-label': 'Results' });
  let last: QueryResult | null = null;

  const field = (name: string, labelText: string, placeholder: string) =>
    h('label', {}, labelText, h('input', { name, placeholder, autocomplete: 'off' }));
  const initialNode = new URLSearchParams(location.hash.split('?')[1] ?? '').get('node');
  const flowsForm = h('form', { class: 'explorer-form', 'aria-label': 'Flow query' },
    h('fieldset', {}, h('legend', {}, 'Sources'),
      field('srcInclude', 'Include ', 'app=crm, 10.0.0.0/8, workload:web-1'),
      field('srcExclude', 'Exclude ', 'role=monitoring')),
    h('fieldset', {}, h('legend', {}, 'Destinations'),
      field('dstInclude', 'Include ', 'role=db'),
      field('dstExclude', 'Exclude ', '')),
    h('fieldset', {}, h('legend', {}, 'Services, time, decisions'),
      field('services', 'Services ', 'tcp/5432, udp/53'),
      h('label', {}, 'Time range ', h('select', { name: 'range' },
        TIME_RANGES.map((r) => h('option', { value: r.value, selected: r.value === '1h' }, r.label)))),
      h('span', { class: 'checks', role: 'group', 'aria-label': 'Decisions' },
        DECISIONS.map((d) => h('label', {}, h('input', { type: 'checkbox', name: 'decision', value: d, checked: true }), ` ${d.replace('_', ' ')}`))),
      h('label', {}, 'Limit ', h('input', { name: 'limit', type: 'number', value: '1000', min: '1', max: '100000' }))),
    h('button', { type: 'submit' }, 'Run query'));
  if (initialNode && initialNode.includes('=')) {
    (flowsForm.elements.namedItem('srcInclude') as HTMLInputElement).value = initialNode;
  }
  flowsForm.addEventListener('submit', (e) => {
    e.preventDefault();
    void runFlows();
  });

  const sqlForm = h('form', { class: 'sql-form', 'aria-label': 'SQL query' },
    h('label', { for: 'sql' }, 'SQL over the lake (tables: flows, edges, workloads, …)'),
    h('textarea', { id: 'sql', name: 'sql', rows: 6, spellcheck: 'false' },
      'SELECT src_ip, dst_ip, dst_port, process_name, count(*) AS flows, sum(bytes) AS bytes\nFROM flows\nGROUP BY 1, 2, 3, 4\nORDER BY bytes DESC\nLIMIT 100'),
    h('button', { type: 'submit' }, 'Run SQL'));
  sqlForm.addEventListener('submit', (e) => {
    e.preventDefault();
    void runSql();
  });

  function formValues(): ExplorerForm {
    const get = (n: string) => (flowsForm.elements.namedItem(n) as HTMLInputElement).value;
    return {
      srcInclude: get('srcInclude'),
      srcExclude: get('srcExclude'),
      dstInclude: get('dstInclude'),
      dstExclude: get('dstExclude'),
      services: get('services'),
      range: get('range'),
      decisions: [...flowsForm.querySelectorAll<HTMLInputElement>('input[name=decision]:checked')].map((b) => b.value as ExplorerForm['decisions'][number]),
      limit: Number(get('limit')),
    };
  }

  function show(result: QueryResult, what: string): void {
    last = result;
    const caption = `${result.rows.length} rows${result.truncated ? ' (truncated: raise the limit)' : ''}${result.elapsed_ms !== undefined ? ` in ${result.elapsed_ms} ms` : ''}`;
    fill(results,
      h('div', { class: 'result-actions' },
        h('button', { type: 'button', onclick: () => last && download(`bulkhead-${what}.csv`, toCsv(last)) }, 'Export CSV')),
      result.rows.length ? table(caption, result.columns.map((c) => c.name), result.rows) : notice('No rows match.'));
  }

  async function runFlows(): Promise<void> {
    let request;
    try {
      request = explorerRequest(formValues());
    } catch (e) {
      if (e instanceof InputError) {
        fill(results, errorBox(e.message));
        return;
      }
      throw e;
    }
    fill(results, notice('Running…'));
    try {
      show(await api.explorer(request), 'flows');
    } catch (e) {
      fill(results, errorBox((e as Error).message));
    }
  }

  async function runSql(): Promise<void> {
    const sql = (sqlForm.elements.namedItem('sql') as HTMLTextAreaElement).value.trim();
    if (!sql) {
      fill(results, errorBox('SQL: the query is empty'));
      return;
    }
    fill(results, notice('Running…'));
    try {
      show(await api.query(sql, 10000), 'query');
    } catch (e) {
      fill(results, errorBox((e as Error).message));
    }
  }

  const panels = h('div', {});
  const tabButton = (name: 'flows' | 'sql', text: string) =>
    h('button', { type: 'button', role: 'tab', id: `tab-${name}`, 'aria-controls': 'explorer-panel', onclick: () => select(name) }, text);
  const tabs = h('div', { role: 'tablist', 'aria-label': 'Query kind' }, tabButton('flows', 'Flows'), tabButton('sql', 'SQL'));
  tabs.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') select(tab === 'flows' ? 'sql' : 'flows', true);
  });

  function select(name: 'flows' | 'sql', focus = false): void {
    tab = name;
    for (const b of tabs.querySelectorAll<HTMLButtonElement>('[role=tab]')) {
      const on = b.id === `tab-${name}`;
      b.setAttribute('aria-selected', String(on));
      b.tabIndex = on ? 0 : -1;
      if (on && focus) b.focus();
    }
    fill(panels, h('div', { role: 'tabpanel', id: 'explorer-panel', 'aria-labelledby': `tab-${name}` }, name === 'flows' ? flowsForm : sqlForm));
  }

  return {
    title: 'Explorer',
    mount(root) {
      root.append(tabs, panels, results);
      select('flows');
    },
    // Queries run when asked; polling only checks the API is there.
    async refresh() {
      await api.health();
    },
    unmount() {},
  };
}
