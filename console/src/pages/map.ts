// Map: the application-dependency graph (Cytoscape.js, fcose layout), grouped by chosen
// label keys; a click on a group shows its roles. Tables below carry the same data for
// keyboard and screen-reader users.

import cytoscape from 'cytoscape';
import type { Core, ElementDefinition } from 'cytoscape';
import fcose from 'cytoscape-fcose';
import { api } from '../api';
import { fill, h, notice } from '../dom';
import type { Page } from '../page';
import {
  DECISION_COLOURS,
  TIME_RANGES,
  buildGraph,
  edgeWidth,
  formatBytes,
  formatLabels,
  searchGraph,
  timeRange,
  type Graph,
  type GraphEdge,
} from '../shaping';
import type { Decision, MapResponse } from '../types';

cytoscape.use(fcose);

const GROUP_KEYS = ['app', 'env', 'loc', 'role'];
const KIND_COLOURS: Record<string, string> = {
  group: '#1565c0',
  role: '#42a5f5',
  unlabeled: '#8d6e63',
  internet: '#6a1b9a',
  ip: '#9e9e9e',
};
const DECISION_NAMES: Record<Decision, string> = {
  allowed: 'allowed',
  potentially_blocked: 'potentially blocked',
  blocked: 'blocked',
  unknown: 'unknown',
};

export function mapPage(): Page {
  let keys = ['app', 'env'];
  let range = '1h';
  let search = '';
  const expanded = new Set<string>();
  let map: MapResponse | null = null;
  let graph: Graph = { nodes: [], edges: [] };
  let cy: Core | null = null;
  let drawnShape = '';

  const graphBox = h('div', { class: 'graph', role: 'img', 'aria-label': 'Application dependency map' });
  const details = h('section', { class: 'details', 'aria-live': 'polite', 'aria-label': 'Selection' },
    h('p', {}, 'Select a group or a connection to see its details. Click a group to show its roles.'));
  const summary = h('p', { class: 'summary', role: 'status' });
  const tables = h('div', { class: 'map-tables' });

  function redraw(): void {
    if (!map) return;
    graph = buildGraph(map, keys, expanded);
    const visible = searchGraph(graph, search);
    const maxBytes = Math.max(0, ...graph.edges.map((e) => e.bytes));
    const elements: ElementDefinition[] = [
      ...graph.nodes.map((n) => ({
        group: 'nodes' as const,
        data: {
          id: n.id,
          label: n.workloads ? `${n.label} (${n.workloads})` : n.label,
          kind: n.kind,
          parent: n.parent,
          colour: KIND_COLOURS[n.kind] ?? KIND_COLOURS.ip,
        },
        classes: [n.kind, visible.nodes.has(n.id) ? '' : 'faded', n.expanded ? 'expanded' : ''].join(' ').trim(),
      })),
      ...graph.edges.map((e) => ({
        group: 'edges' as const,
        data: {
          id: e.id,
          source: e.source,
          target: e.target,
          colour: DECISION_COLOURS[e.decision],
          width: edgeWidth(e.bytes, maxBytes),
          label: e.services.length > 3 ? `${e.services.slice(0, 3).join(', ')} +${e.services.length - 3}` : e.services.join(', '),
        },
        classes: [e.decision, visible.edges.has(e.id) ? '' : 'faded', graph.edges.length > 120 ? 'nolabel' : ''].join(' ').trim(),
      })),
    ];
    const shape = graph.nodes.map((n) => `${n.id}|${n.parent ?? ''}`).sort().join('\n') + '#' +
      graph.edges.map((e) => e.id).sort().join('\n');
    if (!cy) {
      cy = cytoscape({
        container: graphBox,
        elements,
        wheelSensitivity: 0.3,
        style: [
          { selector: 'node', style: { 'background-color': 'data(colour)', label: 'data(label)', color: '#212121', 'font-size': 11, 'text-valign': 'bottom', 'text-margin-y': 4, width: 26, height: 26, 'min-zoomed-font-size': 7 } },
          { selector: 'node.internet', style: { shape: 'diamond', width: 34, height: 34 } },
          { selector: 'node.unlabeled', style: { shape: 'triangle' } },
          { selector: 'node.ip', style: { shape: 'round-rectangle', width: 18, height: 18 } },
          { selector: ':parent', style: { 'background-opacity': 0.08, 'border-color': '#1565c0', 'border-width': 2, 'text-valign': 'top', shape: 'round-rectangle' } },
          { selector: 'edge', style: { width: 'data(width)', 'line-color': 'data(colour)', 'target-arrow-color': 'data(colour)', 'target-arrow-shape': 'triangle', 'curve-style': 'bezier', 'arrow-scale': 0.8, label: 'data(label)', 'font-size': 9, 'text-rotation': 'autorotate', color: '#424242', 'text-background-color': '#fff', 'text-background-opacity': 0.7, 'min-zoomed-font-size': 8 } },
          // Past a hundred or so connections the service labels are noise: details on click.
          { selector: 'edge.nolabel', style: { label: '' } },
          { selector: 'edge.potentially_blocked', style: { 'line-style': 'dashed' } },
          { selector: 'edge.blocked', style: { 'line-style': 'dotted' } },
          { selector: '.faded', style: { opacity: 0.12 } },
          { selector: ':selected', style: { 'border-width': 3, 'border-color': '#ffb300', 'line-color': '#ffb300' } },
        ],
      });
      cy.on('tap', 'node', (evt) => {
        const id = evt.target.id() as string;
        const node = graph.nodes.find((n) => n.id === id);
        if (node?.kind === 'group') toggle(id);
        else if (node?.parent) toggle(node.parent);
        showNode(id);
      });
      cy.on('tap', 'edge', (evt) => showEdge(evt.target.id() as string));
      drawnShape = '';
    }
    if (shape !== drawnShape) {
      cy.elements().remove();
      cy.add(elements);
      cy.layout({
        name: 'fcose',
        animate: false,
        randomize: true,
        quality: graph.nodes.length > 300 ? 'draft' : 'default',
        nodeRepulsion: () => 9000,
        idealEdgeLength: () => 110,
        nodeSeparation: 90,
        packComponents: true,
      } as cytoscape.LayoutOptions).run();
      drawnShape = shape;
    } else {
      // Same nodes and edges: update counts and colours in place, keep the layout.
      cy.batch(() => {
        for (const el of elements) {
          const existing = cy!.getElementById(el.data.id as string);
          existing.data(el.data);
          existing.classes(el.classes as string);
        }
      });
    }
    const hiddenHint = search ? ` Search "${search}" keeps ${visible.nodes.size} of them.` : '';
    summary.textContent = `${graph.nodes.length} nodes and ${graph.edges.length} connections.${hiddenHint}`;
    graphBox.setAttribute('aria-label', `Application dependency map: ${graph.nodes.length} nodes and ${graph.edges.length} connections, listed in the tables below`);
    renderTables(visible);
  }

  function toggle(group: string): void {
    if (expanded.has(group)) expanded.delete(group);
    else expanded.add(group);
    redraw();
  }

  function showNode(id: string): void {
    const n = graph.nodes.find((x) => x.id === id);
    if (!n) return;
    const out = graph.edges.filter((e) => e.source === id);
    const inbound = graph.edges.filter((e) => e.target === id);
    fill(details,
      h('h2', {}, n.label),
      h('dl', {},
        h('dt', {}, 'Kind'), h('dd', {}, n.kind),
        h('dt', {}, 'Labels'), h('dd', {}, formatLabels(n.labels)),
        h('dt', {}, 'Workloads'), h('dd', {}, String(n.workloads)),
        h('dt', {}, 'Connections'), h('dd', {}, `${inbound.length} in, ${out.length} out`)),
      n.kind === 'group' ? h('button', { type: 'button', onclick: () => toggle(n.id) }, expanded.has(n.id) ? 'Hide roles' : 'Show roles') : null,
      h('p', {}, h('a', { href: `#/explorer?node=${encodeURIComponent(n.id)}` }, 'Explore these flows')));
  }

  function showEdge(id: string): void {
    const e = graph.edges.find((x) => x.id === id);
    if (!e) return;
    fill(details,
      h('h2', {}, `${label(e.source)} → ${label(e.target)}`),
      h('dl', {},
        h('dt', {}, 'Services'), h('dd', {}, e.services.join(', ')),
        h('dt', {}, 'Flows'), h('dd', {}, String(e.flows)),
        h('dt', {}, 'Bytes'), h('dd', {}, formatBytes(e.bytes)),
        h('dt', {}, 'Decision'), h('dd', {}, decisionText(e))));
  }

  const label = (id: string): string => {
    const n = graph.nodes.find((x) => x.id === id);
    if (!n) return id;
    return n.parent ? `${label(n.parent)} / ${n.label}` : n.label;
  };

  function decisionText(e: GraphEdge): string {
    return (Object.entries(e.decisions) as [Decision, number][])
      .filter(([, n]) => n > 0)
      .map(([d, n]) => `${DECISION_NAMES[d]}: ${n}`)
      .join(', ') || 'unknown';
  }

  function renderTables(visible: { nodes: Set<string>; edges: Set<string> }): void {
    const nodes = graph.nodes.filter((n) => visible.nodes.has(n.id));
    const edges = graph.edges.filter((e) => visible.edges.has(e.id)).sort((a, b) => b.bytes - a.bytes);
    fill(tables,
      h('table', { class: 'results', id: 'map-nodes' },
        h('caption', {}, 'Groups and hosts'),
        h('thead', {}, h('tr', {}, ['Name', 'Kind', 'Labels', 'Workloads', ''].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, nodes.map((n) => h('tr', { 'data-node': n.id, 'data-kind': n.kind },
          h('th', { scope: 'row' }, label(n.id)),
          h('td', {}, n.kind), h('td', {}, formatLabels(n.labels)), h('td', {}, String(n.workloads)),
          h('td', {}, n.kind === 'group'
            ? h('button', { type: 'button', 'aria-expanded': String(expanded.has(n.id)), onclick: () => toggle(n.id) }, expanded.has(n.id) ? 'Hide roles' : 'Show roles')
            : ''))))),
      h('table', { class: 'results', id: 'map-edges' },
        h('caption', {}, 'Connections (most traffic first)'),
        h('thead', {}, h('tr', {}, ['From', 'To', 'Services', 'Flows', 'Bytes', 'Decision'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, edges.map((e) => h('tr', { 'data-edge': e.id, 'data-decision': e.decision },
          h('td', {}, label(e.source)), h('td', {}, label(e.target)), h('td', {}, e.services.join(', ')),
          h('td', {}, String(e.flows)), h('td', {}, formatBytes(e.bytes)),
          h('td', {}, h('span', { class: `decision ${e.decision}` }, decisionText(e))))))));
  }

  const form = h('form', { class: 'controls', onsubmit: (e: Event) => e.preventDefault() },
    h('fieldset', {}, h('legend', {}, 'Group by'),
      GROUP_KEYS.map((k) => h('label', {}, h('input', {
        type: 'checkbox', name: 'group', value: k, checked: keys.includes(k),
        onchange: (e: Event) => {
          const box = e.target as HTMLInputElement;
          keys = box.checked ? [...keys, k] : keys.filter((x) => x !== k);
          keys = GROUP_KEYS.filter((x) => keys.includes(x));
          if (!keys.length) keys = ['app'];
          expanded.clear();
          void page.refresh();
        },
      }), ` ${k}`))),
    h('label', {}, 'Time range ', h('select', {
      name: 'range',
      onchange: (e: Event) => { range = (e.target as HTMLSelectElement).value; void page.refresh(); },
    }, TIME_RANGES.map((r) => h('option', { value: r.value, selected: r.value === range }, r.label)))),
    h('label', {}, 'Search ', h('input', {
      type: 'search', name: 'search', placeholder: 'app=crm, 10.250…, internet',
      oninput: (e: Event) => { search = (e.target as HTMLInputElement).value; redraw(); },
    })),
    h('button', { type: 'button', onclick: () => { drawnShape = ''; redraw(); } }, 'Re-layout'));

  const legend = h('ul', { class: 'legend', 'aria-label': 'Legend' },
    (Object.keys(DECISION_COLOURS) as Decision[]).map((d) => h('li', {},
      h('span', { class: 'swatch', style: `background:${DECISION_COLOURS[d]}` }), DECISION_NAMES[d])),
    h('li', {}, '◆ internet'), h('li', {}, '▲ unlabeled'), h('li', {}, 'line width: bytes (log)'));

  const page: Page = {
    title: 'Map',
    mount(root) {
      root.append(form, legend, summary, h('div', { class: 'map-layout' }, graphBox, details), tables);
    },
    async refresh() {
      const { from, to } = timeRange(range);
      const groupBy = keys.includes('role') ? keys : [...keys, 'role'];
      try {
        map = await api.map(groupBy, from, to);
      } catch (e) {
        if (!map) fill(tables, notice('No map yet: the API did not answer (see the message above).'));
        throw e;
      }
      redraw();
    },
    unmount() {
      cy?.destroy();
      cy = null;
    },
  };
  return page;
}
