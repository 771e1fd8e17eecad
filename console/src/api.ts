// The HTTP API client: one place for the base path, the bearer token and error handling.

import type {
  ExplorerRequest,
  LabelSuggestion,
  MapResponse,
  PolicyDiff,
  PolicyVersionInfo,
  QueryResult,
  Recommendation,
  Simulation,
  Workload,
} from './types';

/** An API call that failed: the server's message, or why the server could not be reached. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly path: string,
  ) {
    super(message);
  }
}

const TOKEN_KEY = 'bulkhead.token';
const ACTOR_KEY = 'bulkhead.actor';

export const settings = {
  get token(): string {
    return localStorage.getItem(TOKEN_KEY) ?? '';
  },
  set token(v: string) {
    if (v) localStorage.setItem(TOKEN_KEY, v);
    else localStorage.removeItem(TOKEN_KEY);
  },
  get actor(): string {
    return localStorage.getItem(ACTOR_KEY) ?? 'analyst';
  },
  set actor(v: string) {
    localStorage.setItem(ACTOR_KEY, v || 'analyst');
  },
};

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (settings.token) headers.Authorization = `Bearer ${settings.token}`;
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(`cannot reach the Bulkhead API (${path}): ${(e as Error).message}`, 0, path);
  }
  const text = await response.text();
  let json: unknown = undefined;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      if (response.ok) throw new ApiError(`${method} ${path}: the answer is not JSON`, response.status, path);
    }
  }
  if (!response.ok) {
    const message =
      json && typeof json === 'object' && 'error' in json
        ? String((json as { error: unknown }).error)
        : text.trim().slice(0, 300) || response.statusText;
    const hint = response.status === 401 ? ' (set the API token under Settings)' : '';
    throw new ApiError(`${method} ${path} → ${response.status}: ${message}${hint}`, response.status, path);
  }
  return json as T;
}

const V1 = '/api/v1';
const q = (params: Record<string, string | undefined>): string => {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') s.set(k, v);
  const text = s.toString();
  return text ? `?${text}` : '';
};

/** Mutations carry who and why (they become control events). */
export interface Attribution {
  actor: string;
  reason: string;
}

export const api = {
  health: () => call<unknown>('GET', '/healthz'),
  map: (groupBy: string[], from: string, to: string) =>
    call<MapResponse>('GET', `${V1}/map${q({ group_by: groupBy.join(','), from, to })}`),
  query: (sql: string, limit: number) => call<QueryResult>('POST', `${V1}/query`, { sql, limit }),
  explorer: (request: ExplorerRequest) => call<QueryResult>('POST', `${V1}/explorer`, request),
  workloads: () => call<Workload[]>('GET', `${V1}/workloads`),
  recommendations: (status: string) =>
    call<Recommendation[] | { recommendations: Recommendation[] }>('GET', `${V1}/recommendations${q({ status })}`).then(
      (r) => (Array.isArray(r) ? r : (r?.recommendations ?? [])),
    ),
  accept: (id: string, a: Attribution) =>
    call<unknown>('POST', `${V1}/recommendations/${encodeURIComponent(id)}/accept`, a),
  reject: (id: string, a: Attribution) =>
    call<unknown>('POST', `${V1}/recommendations/${encodeURIComponent(id)}/reject`, a),
  edit: (id: string, a: Attribution, changes: Record<string, unknown>) =>
    call<unknown>('PUT', `${V1}/recommendations/${encodeURIComponent(id)}`, { ...a, ...changes }),
  draft: () => call<unknown>('GET', `${V1}/policy/draft`),
  active: () => call<unknown>('GET', `${V1}/policy/active`),
  diff: () => call<PolicyDiff>('GET', `${V1}/policy/diff`),
  // Simulation changes nothing, so it carries no attribution (docs/http-api.md: `{"days":1}`).
  simulate: (days: number) => call<Simulation>('POST', `${V1}/policy/simulate`, { days }),
  provision: (a: Attribution) =>
    call<{ version: number; content_sha256?: string }>('POST', `${V1}/policy/provision`, a),
  versions: () =>
    call<PolicyVersionInfo[] | { versions: PolicyVersionInfo[] }>('GET', `${V1}/policy/versions`).then((r) =>
      Array.isArray(r) ? r : (r?.versions ?? []),
    ),
  rollback: (version: number, a: Attribution) => call<unknown>('POST', `${V1}/policy/rollback`, { version, ...a }),
  suggestions: () =>
    call<LabelSuggestion[] | { suggestions: LabelSuggestion[] }>('GET', `${V1}/labels/suggestions`).then((r) =>
      Array.isArray(r) ? r : (r?.suggestions ?? []),
    ),
  setLabels: (id: string, a: Attribution, set: Record<string, string>, remove: string[]) =>
    call<unknown>('POST', `${V1}/workloads/${encodeURIComponent(id)}/labels`, { ...a, set, remove }),
  setMode: (id: string, a: Attribution, mode: string) =>
    call<unknown>('POST', `${V1}/workloads/${encodeURIComponent(id)}/mode`, { ...a, mode }),
  quarantine: (id: string, a: Attribution, on: boolean) =>
    call<unknown>('POST', `${V1}/workloads/${encodeURIComponent(id)}/quarantine`, { ...a, on }),
};
