import { describe, expect, it } from 'vitest';
import {
  InputError,
  buildGraph,
  csvCell,
  describeRule,
  dominantDecision,
  edgeWidth,
  explorerRequest,
  groupId,
  parseFilter,
  parseLabelSet,
  parseServices,
  searchGraph,
  timeRange,
  toCsv,
} from '../src/shaping';
import type { MapResponse } from '../src/types';

// A map as /api/v1/map?group_by=app,env,role answers for the lab.
const LAB: MapResponse = {
  nodes: [
    { id: 'app=crm,env=prod,role=web', kind: 'group', labels: { app: 'crm', env: 'prod', role: 'web' }, workloads: 1 },
    { id: 'app=crm,env=prod,role=app', kind: 'group', labels: { app: 'crm', env: 'prod', role: 'app' }, workloads: 1 },
    { id: 'app=crm,env=prod,role=db', kind: 'group', labels: { app: 'crm', env: 'prod', role: 'db' }, workloads: 1 },
    { id: 'app=shop,env=prod,role=web', kind: 'group', labels: { app: 'shop', env: 'prod', role: 'web' }, workloads: 2 },
    { id: 'unlabeled:rogue', kind: 'unlabeled', labels: {}, workloads: 1 },
    { id: 'internet', kind: 'internet', labels: {} },
  ],
  edges: [
    { source: 'internet', target: 'app=crm,env=prod,role=web', port: 443, protocol: 'tcp', flows: 10, bytes: 1000, decisions: { allowed: 10 } },
    { source: 'app=crm,env=prod,role=web', target: 'app=crm,env=prod,role=app', port: 8080, protocol: 'tcp', flows: 5, bytes: 500, decisions: { allowed: 5 } },
    { source: 'app=crm,env=prod,role=app', target: 'app=crm,env=prod,role=db', port: 5432, protocol: 'tcp', flows: 5, bytes: 700, decisions: { allowed: 5 } },
    { source: 'unlabeled:rogue', target: 'app=crm,env=prod,role=db', port: 5432, protocol: 'tcp', flows: 3, bytes: 90, decisions: { potentially_blocked: 3 } },
    { source: 'unlabeled:rogue', target: 'app=crm,env=prod,role=db', port: 22, protocol: 'tcp', flows: 1, bytes: 60, decisions: { blocked: 1 } },
    { source: 'app=shop,env=prod,role=web', target: 'app=crm,env=prod,role=web', port: 443, protocol: 'tcp', flows: 2, bytes: 10, decisions: { potentially_blocked: 2 } },
  ],
};

describe('map grouping', () => {
  it('merges roles into one node per group of the chosen keys', () => {
    const g = buildGraph(LAB, ['app', 'env'], new Set());
    const ids = g.nodes.map((n) => n.id).sort();
    expect(ids).toEqual(['app=crm,env=prod', 'app=shop,env=prod', 'internet', 'unlabeled:rogue']);
    const crm = g.nodes.find((n) => n.id === 'app=crm,env=prod')!;
    expect(crm.workloads).toBe(3);
    expect(crm.label).toBe('crm · prod');
    // web→app and app→db collapse into a self-loop of the crm group, summed.
    const self = g.edges.find((e) => e.source === 'app=crm,env=prod' && e.target === 'app=crm,env=prod')!;
    expect(self.services).toEqual(['tcp/5432', 'tcp/8080']);
    expect(self.flows).toBe(10);
    expect(self.bytes).toBe(1200);
    expect(self.decision).toBe('allowed');
  });

  it('keeps unlabeled and internet nodes and colours an edge by its most restrictive decision', () => {
    const g = buildGraph(LAB, ['app'], new Set());
    expect(g.nodes.find((n) => n.id === 'internet')!.label).toBe('Internet');
    expect(g.nodes.find((n) => n.id === 'unlabeled:rogue')!.kind).toBe('unlabeled');
    const rogue = g.edges.find((e) => e.source === 'unlabeled:rogue')!;
    expect(rogue.target).toBe('app=crm');
    expect(rogue.services).toEqual(['tcp/22', 'tcp/5432']);
    expect(rogue.decisions).toEqual({ allowed: 0, potentially_blocked: 3, blocked: 1, unknown: 0 });
    expect(rogue.decision).toBe('blocked');
  });

  it('shows the roles of an expanded group as its children', () => {
    const g = buildGraph(LAB, ['app', 'env'], new Set(['app=crm,env=prod']));
    const children = g.nodes.filter((n) => n.parent === 'app=crm,env=prod').map((n) => n.label).sort();
    expect(children).toEqual(['app', 'db', 'web']);
    expect(g.nodes.find((n) => n.id === 'app=crm,env=prod')!.expanded).toBe(true);
    // The shop group is still collapsed; its edge now ends at crm's web role.
    const shop = g.edges.find((e) => e.source === 'app=shop,env=prod')!;
    expect(shop.target).toBe('app=crm,env=prod/role=web');
    expect(g.edges.some((e) => e.source === 'app=crm,env=prod/role=app' && e.target === 'app=crm,env=prod/role=db')).toBe(true);
  });

  it('adds nodes an edge names but the node list lacks', () => {
    const g = buildGraph({ nodes: [], edges: [{ ...LAB.edges[0], source: '203.0.113.9' }] }, ['app'], new Set());
    expect(g.nodes.map((n) => n.id).sort()).toEqual(['203.0.113.9', 'app=crm,env=prod,role=web']);
  });

  it('groups a few hundred groups quickly enough to redraw on every poll', () => {
    const nodes = Array.from({ length: 600 }, (_, i) => ({ id: `n${i}`, kind: 'group', labels: { app: `a${i % 300}`, env: 'prod', role: `r${i % 2}` }, workloads: 1 }));
    const edges = Array.from({ length: 3000 }, (_, i) => ({ source: `n${i % 600}`, target: `n${(i * 7) % 600}`, port: 443, protocol: 'tcp', flows: 1, bytes: 1, decisions: { allowed: 1 } }));
    const g = buildGraph({ nodes, edges }, ['app', 'env'], new Set());
    expect(g.nodes).toHaveLength(300);
    expect(g.edges.reduce((s, e) => s + e.flows, 0)).toBe(3000);
  });

  it('names groups by their key values, marking missing keys', () => {
    expect(groupId({ app: 'crm', env: 'prod' }, ['app', 'env'])).toBe('app=crm,env=prod');
    expect(groupId({ app: 'crm' }, ['app', 'loc'])).toBe('app=crm,loc=(none)');
  });

  it('decides colours and widths', () => {
    expect(dominantDecision({ allowed: 5, potentially_blocked: 1 })).toBe('potentially_blocked');
    expect(dominantDecision({})).toBe('unknown');
    expect(edgeWidth(0, 100)).toBe(1.5);
    expect(edgeWidth(100, 100)).toBeCloseTo(10);
    expect(edgeWidth(10, 100)).toBeGreaterThan(1.5);
    expect(edgeWidth(10, 100)).toBeLessThan(10);
  });
});

describe('search', () => {
  it('keeps matching nodes, their neighbours and the edges between', () => {
    const g = buildGraph(LAB, ['app', 'env'], new Set());
    const r = searchGraph(g, 'internet');
    expect([...r.nodes].sort()).toEqual(['app=crm,env=prod', 'internet']);
    expect([...r.edges]).toEqual(['internet->app=crm,env=prod']);
    expect(searchGraph(g, 'app=shop').nodes.has('app=crm,env=prod')).toBe(true);
    expect(searchGraph(g, '').nodes.size).toBe(g.nodes.length);
    expect(searchGraph(g, 'nothing-like-this').nodes.size).toBe(0);
  });
});

describe('explorer filters', () => {
  it('parses each kind of filter', () => {
    expect(parseFilter('app=crm', 'x')).toEqual({ label: 'app=crm' });
    expect(parseFilter(' 10.250.240.12 ', 'x')).toEqual({ ip: '10.250.240.12' });
    expect(parseFilter('10.0.0.0/8', 'x')).toEqual({ cidr: '10.0.0.0/8' });
    expect(parseFilter('fd00:250::/64', 'x')).toEqual({ cidr: 'fd00:250::/64' });
    expect(parseFilter('workload:db-crm', 'x')).toEqual({ workload: 'db-crm' });
  });

  it('names the field and the input it refuses', () => {
    expect(() => parseFilter('10.0.0.0/33', 'sources include')).toThrow(/sources include: "10.0.0.0\/33" is not a CIDR/);
    expect(() => parseFilter('300.1.1.1', 'dst')).toThrow(InputError);
    expect(() => parseFilter('crm', 'dst')).toThrow(/dst: "crm" is not a filter/);
    expect(() => parseFilter('workload:', 'src')).toThrow(/names no workload/);
  });

  it('parses services with tcp as the default protocol', () => {
    expect(parseServices('tcp/443, udp/53 8080 icmp 8000-8100')).toEqual(['tcp/443', 'udp/53', 'tcp/8080', 'icmp', 'tcp/8000-8100']);
    expect(() => parseServices('tcp/70000')).toThrow(/outside 1-65535/);
    expect(() => parseServices('http')).toThrow(/services: "http"/);
  });

  it('builds the request the API expects', () => {
    const now = new Date('2026-11-26T12:00:00Z');
    const r = explorerRequest({
      srcInclude: 'app=crm, 10.0.0.0/8', srcExclude: '', dstInclude: 'role=db', dstExclude: 'workload:db-shop',
      services: 'tcp/5432', range: '15m', decisions: ['potentially_blocked'], limit: 50,
    }, now);
    expect(r).toEqual({
      sources: { include: [{ label: 'app=crm' }, { cidr: '10.0.0.0/8' }], exclude: [] },
      destinations: { include: [{ label: 'role=db' }], exclude: [{ workload: 'db-shop' }] },
      services: ['tcp/5432'],
      from: '2026-11-26T11:45:00.000Z',
      to: '2026-11-26T12:00:00.000Z',
      decisions: ['potentially_blocked'],
      limit: 50,
    });
    expect(() => explorerRequest({ ...baseForm(), limit: 0 })).toThrow(/limit/);
  });

  it('falls back to the last hour for an unknown range', () => {
    const now = new Date('2026-11-26T12:00:00Z');
    expect(timeRange('bogus', now).from).toBe('2026-11-26T11:00:00.000Z');
  });
});

function baseForm() {
  return { srcInclude: '', srcExclude: '', dstInclude: '', dstExclude: '', services: '', range: '1h', decisions: [], limit: 10 };
}

describe('CSV', () => {
  it('quotes what needs quoting and keeps the rest as it is', () => {
    const csv = toCsv({
      columns: [{ name: 'src', type: 'Utf8' }, { name: 'note', type: 'Utf8' }, { name: 'bytes', type: 'Int64' }, { name: 'labels', type: 'Map' }],
      rows: [
        ['10.0.0.1', 'a, "b"', 12, { app: 'crm' }],
        ['10.0.0.2', null, -3, null],
        ['=cmd()', 'line\nbreak', 0, undefined],
      ],
    });
    expect(csv).toBe(
      'src,note,bytes,labels\r\n' +
        '10.0.0.1,"a, ""b""",12,"{""app"":""crm""}"\r\n' +
        '10.0.0.2,,-3,\r\n' +
        "'=cmd(),\"line\nbreak\",0,\r\n",
    );
    expect(csvCell(-1.5)).toBe('-1.5');
  });
});

describe('label edits', () => {
  it('parses key=value pairs and refuses the rest', () => {
    expect(parseLabelSet('app=crm role=db, env=prod')).toEqual({ app: 'crm', role: 'db', env: 'prod' });
    expect(() => parseLabelSet('app')).toThrow(/"app" is not key=value/);
    expect(() => parseLabelSet('App=x')).toThrow(/must start with a letter/);
  });
});

describe('describeRule', () => {
  it('reads rules and the diff entries that carry their ruleset', () => {
    const rule = { consumers: [{ labels: ['role=app'] }], providers: [{ labels: ['role=db'] }], services: ['tcp/5432'] };
    expect(describeRule(rule)).toBe('role=app → role=db on tcp/5432');
    expect(describeRule({ ruleset: 'crm-prod', rule })).toBe('crm-prod: role=app → role=db on tcp/5432');
    expect(describeRule({ consumers: [{ ip_list: 'internet' }], providers: [{ any: true }] })).toBe('ip list internet → any');
  });
});
