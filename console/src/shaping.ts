// Pure data shaping for the pages: map grouping, filters, CSV. No DOM; unit-tested.

import type {
  Decision,
  ExplorerRequest,
  Filter,
  Labels,
  MapNode,
  MapResponse,
  QueryResult,
} from './types';

// ---------- Map ----------

/** A node of the drawn graph: a group (possibly expanded into its roles) or a role inside one. */
export interface GraphNode {
  id: string;
  label: string;
  kind: string;
  labels: Labels;
  workloads: number;
  /** The enclosing group when this node is a role inside an expanded group. */
  parent?: string;
  expanded?: boolean;
}

/** All traffic between two drawn nodes, every service summed. */
export interface GraphEdge {
  id: string;
  source: string;
  target: string;
  services: string[];
  flows: number;
  bytes: number;
  decisions: Record<Decision, number>;
  /** The decision that colours the edge: the most restrictive one seen. */
  decision: Decision;
}

export interface Graph {
  nodes: GraphNode[];
  edges: GraphEdge[];
}

/** The id of the group a labelled node falls in under `keys` (e.g. `app=crm,env=prod`). */
export function groupId(labels: Labels, keys: string[]): string {
  return keys.map((k) => `${k}=${labels[k] ?? '(none)'}`).join(',');
}

function isLabelled(node: MapNode): boolean {
  return node.kind === 'group' && Object.keys(node.labels ?? {}).length > 0;
}

function nodeLabel(node: MapNode, keys: string[]): string {
  if (node.kind === 'internet') return 'Internet';
  if (node.kind === 'unlabeled') return node.id.startsWith('unlabeled') ? 'Unlabeled' : `Unlabeled ${node.id}`;
  if (node.kind === 'ip') return node.id;
  const values = keys.map((k) => node.labels?.[k]).filter((v): v is string => !!v);
  return values.length ? values.join(' · ') : node.id;
}

/** The most restrictive decision with a non-zero count. */
export function dominantDecision(d: Partial<Record<Decision, number>>): Decision {
  if ((d.blocked ?? 0) > 0) return 'blocked';
  if ((d.potentially_blocked ?? 0) > 0) return 'potentially_blocked';
  if ((d.allowed ?? 0) > 0) return 'allowed';
  return 'unknown';
}

export const DECISION_COLOURS: Record<Decision, string> = {
  allowed: '#2e7d32',
  potentially_blocked: '#ef6c00',
  blocked: '#c62828',
  unknown: '#757575',
};

/** Edge width in pixels: logarithmic in bytes, 1.5 to 10 over the graph's range. */
export function edgeWidth(bytes: number, maxBytes: number): number {
  if (maxBytes <= 0 || bytes <= 0) return 1.5;
  return 1.5 + 8.5 * (Math.log1p(bytes) / Math.log1p(maxBytes));
}

/**
 * Builds the drawn graph from a map fetched grouped by `keys` + `role`: nodes of groups
 * not in `expanded` are merged into one node per group; expanded groups show their roles
 * as children. Unlabeled, internet and IP nodes stay as they are. Edges are summed per
 * pair of drawn nodes (self-loops inside a collapsed group kept: intra-app traffic).
 */
export function buildGraph(map: MapResponse, keys: string[], expanded: Set<string>): Graph {
  const drawnOf = new Map<string, string>();
  const nodes = new Map<string, GraphNode>();
  for (const n of map.nodes) {
    if (!isLabelled(n)) {
      drawnOf.set(n.id, n.id);
      nodes.set(n.id, {
        id: n.id,
        label: nodeLabel(n, keys),
        kind: n.kind,
        labels: n.labels ?? {},
        workloads: n.workloads ?? 0,
      });
      continue;
    }
    const group = groupId(n.labels, keys);
    const groupLabels: Labels = {};
    for (const k of keys) if (n.labels[k] !== undefined) groupLabels[k] = n.labels[k];
    let g = nodes.get(group);
    if (!g) {
      g = {
        id: group,
        label: nodeLabel({ id: group, kind: 'group', labels: groupLabels }, keys),
        kind: 'group',
        labels: groupLabels,
        workloads: 0,
        expanded: expanded.has(group),
      };
      nodes.set(group, g);
    }
    g.workloads += n.workloads ?? 0;
    if (expanded.has(group)) {
      const role = n.labels.role ?? '(no role)';
      const id = `${group}/role=${role}`;
      const existing = nodes.get(id);
      if (existing) existing.workloads += n.workloads ?? 0;
      else
        nodes.set(id, {
          id,
          label: role,
          kind: 'role',
          labels: { ...n.labels },
          workloads: n.workloads ?? 0,
          parent: group,
        });
      drawnOf.set(n.id, id);
    } else {
      drawnOf.set(n.id, group);
    }
  }
  const edges = new Map<string, GraphEdge>();
  for (const e of map.edges) {
    const source = drawnOf.get(e.source) ?? e.source;
    const target = drawnOf.get(e.target) ?? e.target;
    for (const end of [source, target]) {
      if (!nodes.has(end)) nodes.set(end, { id: end, label: end, kind: 'ip', labels: {}, workloads: 0 });
    }
    const id = `${source}->${target}`;
    let edge = edges.get(id);
    if (!edge) {
      edge = {
        id,
        source,
        target,
        services: [],
        flows: 0,
        bytes: 0,
        decisions: { allowed: 0, potentially_blocked: 0, blocked: 0, unknown: 0 },
        decision: 'unknown',
      };
      edges.set(id, edge);
    }
    const service = `${e.protocol}/${e.port}`;
    if (!edge.services.includes(service)) edge.services.push(service);
    edge.flows += e.flows ?? 0;
    edge.bytes += e.bytes ?? 0;
    for (const [d, count] of Object.entries(e.decisions ?? {}) as [Decision, number][]) {
      if (d in edge.decisions) edge.decisions[d] += count ?? 0;
    }
  }
  for (const edge of edges.values()) {
    edge.services.sort(compareServices);
    edge.decision = dominantDecision(edge.decisions);
  }
  return { nodes: [...nodes.values()], edges: [...edges.values()] };
}

function compareServices(a: string, b: string): number {
  const [pa, na] = a.split('/');
  const [pb, nb] = b.split('/');
  return pa === pb ? Number(na) - Number(nb) : pa.localeCompare(pb);
}

/** Whether a node matches the search text (id, label, any label key=value or value). */
export function nodeMatches(node: GraphNode, query: string): boolean {
  const q = query.trim().toLowerCase();
  if (!q) return true;
  const hay = [node.id, node.label, node.kind, ...Object.entries(node.labels).map(([k, v]) => `${k}=${v}`)];
  return q
    .split(/\s+/)
    .every((term) => hay.some((h) => h.toLowerCase().includes(term)));
}

/** The nodes and edges a search keeps: matching nodes, their neighbours and the edges between. */
export function searchGraph(graph: Graph, query: string): { nodes: Set<string>; edges: Set<string> } {
  if (!query.trim()) {
    return { nodes: new Set(graph.nodes.map((n) => n.id)), edges: new Set(graph.edges.map((e) => e.id)) };
  }
  const hits = new Set(graph.nodes.filter((n) => nodeMatches(n, query)).map((n) => n.id));
  // A hit that is an expanded group also keeps its roles, and a role keeps its group.
  for (const n of graph.nodes) {
    if (n.parent && hits.has(n.parent)) hits.add(n.id);
  }
  const nodes = new Set(hits);
  const edges = new Set<string>();
  for (const e of graph.edges) {
    if (hits.has(e.source) || hits.has(e.target)) {
      edges.add(e.id);
      nodes.add(e.source);
      nodes.add(e.target);
    }
  }
  for (const n of graph.nodes) if (n.parent && nodes.has(n.id)) nodes.add(n.parent);
  return { nodes, edges };
}

// ---------- Time ranges ----------

export const TIME_RANGES: { value: string; label: string; seconds: number }[] = [
  { value: '15m', label: 'Last 15 minutes', seconds: 900 },
  { value: '1h', label: 'Last hour', seconds: 3600 },
  { value: '6h', label: 'Last 6 hours', seconds: 6 * 3600 },
  { value: '24h', label: 'Last 24 hours', seconds: 86400 },
  { value: '7d', label: 'Last 7 days', seconds: 7 * 86400 },
];

/** `{from, to}` in RFC 3339 for a named range ending at `now`. */
export function timeRange(value: string, now: Date = new Date()): { from: string; to: string } {
  const range = TIME_RANGES.find((r) => r.value === value) ?? TIME_RANGES[1];
  return { from: new Date(now.getTime() - range.seconds * 1000).toISOString(), to: now.toISOString() };
}

// ---------- Explorer filters ----------

export class InputError extends Error {}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function isIp(text: string): boolean {
  const m = IPV4.exec(text);
  if (m) return m.slice(1).every((o) => Number(o) <= 255);
  return text.includes(':') && /^[0-9a-fA-F:.]+$/.test(text);
}

/**
 * One filter as an analyst types it: `app=crm` (label), `10.0.0.1` (ip), `10.0.0.0/8`
 * (cidr), `workload:web-1` (workload id). `field` names the input in errors.
 */
export function parseFilter(text: string, field: string): Filter {
  const t = text.trim();
  if (t.startsWith('workload:')) {
    const id = t.slice('workload:'.length).trim();
    if (!id) throw new InputError(`${field}: "${t}" names no workload (workload:<host id>)`);
    return { workload: id };
  }
  if (t.includes('/')) {
    const [addr, bits] = t.split('/');
    const max = addr.includes(':') ? 128 : 32;
    if (!isIp(addr) || !/^\d+$/.test(bits) || Number(bits) > max) {
      throw new InputError(`${field}: "${t}" is not a CIDR (e.g. 10.0.0.0/8)`);
    }
    return { cidr: t };
  }
  if (isIp(t)) return { ip: t };
  const eq = t.indexOf('=');
  if (eq > 0 && eq < t.length - 1 && !/\s/.test(t)) return { label: t };
  throw new InputError(
    `${field}: "${t}" is not a filter: use a label (app=crm), an IP, a CIDR or workload:<id>`,
  );
}

/** A comma- or newline-separated list of filters. */
export function parseFilters(text: string, field: string): Filter[] {
  return text
    .split(/[,\n]/)
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => parseFilter(s, field));
}

/** `tcp/443, udp/53, 8080` → ["tcp/443", "udp/53", "tcp/8080"]. */
export function parseServices(text: string): string[] {
  return text
    .split(/[,\s]+/)
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean)
    .map((s) => {
      const m = /^(?:(tcp|udp|icmp)\/)?(\d{1,5})(?:-(\d{1,5}))?$/.exec(s);
      if (s === 'icmp') return s;
      if (!m) throw new InputError(`services: "${s}" is not a service (tcp/443, udp/53, 8080)`);
      const [lo, hi] = [Number(m[2]), m[3] ? Number(m[3]) : undefined];
      if (lo < 1 || lo > 65535 || (hi !== undefined && (hi < lo || hi > 65535))) {
        throw new InputError(`services: "${s}" has a port outside 1-65535`);
      }
      return `${m[1] ?? 'tcp'}/${m[2]}${m[3] ? `-${m[3]}` : ''}`;
    });
}

export interface ExplorerForm {
  srcInclude: string;
  srcExclude: string;
  dstInclude: string;
  dstExclude: string;
  services: string;
  range: string;
  decisions: Decision[];
  limit: number;
}

/** The explorer request for a form; throws InputError naming the field in trouble. */
export function explorerRequest(form: ExplorerForm, now: Date = new Date()): ExplorerRequest {
  if (!Number.isInteger(form.limit) || form.limit < 1 || form.limit > 100000) {
    throw new InputError(`limit: ${form.limit} must be a whole number from 1 to 100000`);
  }
  return {
    sources: {
      include: parseFilters(form.srcInclude, 'sources include'),
      exclude: parseFilters(form.srcExclude, 'sources exclude'),
    },
    destinations: {
      include: parseFilters(form.dstInclude, 'destinations include'),
      exclude: parseFilters(form.dstExclude, 'destinations exclude'),
    },
    services: parseServices(form.services),
    ...timeRange(form.range, now),
    decisions: form.decisions,
    limit: form.limit,
  };
}

// ---------- CSV ----------

/** A CSV cell (RFC 4180): quoted when it holds a comma, quote or line break. */
export function csvCell(value: unknown): string {
  if (value === null || value === undefined) return '';
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  // Cells that a spreadsheet would run as a formula are prefixed with a quote.
  const safe = /^[=+\-@\t\r]/.test(text) && !/^-?\d/.test(text) ? `'${text}` : text;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

export function toCsv(result: QueryResult): string {
  const lines = [result.columns.map((c) => csvCell(c.name)).join(',')];
  for (const row of result.rows) lines.push(row.map(csvCell).join(','));
  return lines.join('\r\n') + '\r\n';
}

// ---------- Display helpers ----------

export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function formatLabels(labels: Labels | undefined): string {
  const entries = Object.entries(labels ?? {}).sort(([a], [b]) => a.localeCompare(b));
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(', ') : '(unlabeled)';
}

/** Parses `key=value` label edits: "app=crm, role=db" → {app:"crm", role:"db"}. */
export function parseLabelSet(text: string): Labels {
  const out: Labels = {};
  for (const part of text.split(/[,\s]+/).filter(Boolean)) {
    const eq = part.indexOf('=');
    if (eq <= 0 || eq === part.length - 1) {
      throw new InputError(`labels: "${part}" is not key=value (e.g. role=db)`);
    }
    const key = part.slice(0, eq);
    if (!/^[a-z][a-z0-9_.-]*$/.test(key)) {
      throw new InputError(`labels: key "${key}" must start with a letter (a-z, 0-9, _ . -)`);
    }
    out[key] = part.slice(eq + 1);
  }
  return out;
}

/** A one-line description of a policy rule or recommendation, whatever its exact shape. */
export function describeRule(rule: unknown): string {
  if (rule === null || rule === undefined) return '';
  if (typeof rule !== 'object') return String(rule);
  const r = rule as Record<string, unknown>;
  // A diff entry (GET /api/v1/policy/diff): the rule with the ruleset it belongs to.
  if (typeof r.ruleset === 'string' && r.rule && typeof r.rule === 'object') {
    return `${r.ruleset}: ${describeRule(r.rule)}`;
  }
  const actors = (v: unknown): string => {
    if (!Array.isArray(v)) return v === undefined ? '?' : describeActor(v);
    return v.map(describeActor).join(' | ');
  };
  if ('consumers' in r || 'providers' in r) {
    const services = Array.isArray(r.services) ? r.services.map((s) => (typeof s === 'string' ? s : JSON.stringify(s))).join(', ') : '';
    const scope = Array.isArray(r.scope) ? `[${r.scope.join(', ')}] ` : '';
    return `${scope}${actors(r.consumers)} → ${actors(r.providers)}${services ? ` on ${services}` : ''}`;
  }
  return JSON.stringify(rule);
}

function describeActor(a: unknown): string {
  if (typeof a === 'string') return a;
  if (a && typeof a === 'object') {
    const o = a as Record<string, unknown>;
    if (o.any) return 'any';
    if (Array.isArray(o.labels)) return o.labels.join('+');
    if (typeof o.ip_list === 'string') return `ip list ${o.ip_list}`;
    if (typeof o.workload === 'string') return `workload ${o.workload}`;
  }
  return JSON.stringify(a);
}
