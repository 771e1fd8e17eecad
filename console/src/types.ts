// The HTTP API's shapes (HTTP-API.md). Fields the contract leaves open are optional, and
// pages render what is there.

export type Decision = 'allowed' | 'potentially_blocked' | 'blocked' | 'unknown';
export const DECISIONS: Decision[] = ['allowed', 'potentially_blocked', 'blocked', 'unknown'];

export type Labels = Record<string, string>;

export interface MapNode {
  id: string;
  kind: 'group' | 'unlabeled' | 'internet' | 'ip' | string;
  labels: Labels;
  workloads?: number;
}

export interface MapEdge {
  source: string;
  target: string;
  port: number;
  protocol: string;
  flows: number;
  bytes: number;
  decisions: Partial<Record<Decision, number>>;
}

export interface MapResponse {
  nodes: MapNode[];
  edges: MapEdge[];
}

export interface Column {
  name: string;
  type: string;
}

export interface QueryResult {
  columns: Column[];
  rows: unknown[][];
  truncated?: boolean;
  elapsed_ms?: number;
}

export type Filter = { label: string } | { ip: string } | { cidr: string } | { workload: string };

export interface ExplorerRequest {
  sources: { include: Filter[]; exclude: Filter[] };
  destinations: { include: Filter[]; exclude: Filter[] };
  services: string[];
  from?: string;
  to?: string;
  decisions: Decision[];
  limit: number;
}

/** A workload entry of a policy document (GET /api/v1/policy/draft|active). */
export interface DraftWorkload {
  workload_id: string;
  labels?: Labels;
  mode?: string;
  quarantined?: boolean;
}

/** The parts of a policy document the console reads. */
export interface PolicyDocument {
  workloads?: DraftWorkload[];
  [key: string]: unknown;
}

export interface EnforcerStatus {
  last_heartbeat?: string | null;
  heartbeat_age_s?: number | null;
  applied_version?: number | null;
  rule_count?: number | null;
  last_error?: string | null;
  /** The mode the enforcer runs. */
  mode?: string | null;
}

export interface Workload {
  id: string;
  hostname?: string;
  ips?: string[];
  labels?: Labels;
  mode?: string;
  quarantined?: boolean;
  enforcer?: EnforcerStatus | null;
}

export interface Recommendation {
  id: string;
  status?: string;
  confidence?: number;
  rule?: unknown;
  evidence?: unknown;
  [key: string]: unknown;
}

export interface PolicyDiff {
  added?: unknown[];
  removed?: unknown[];
  changed?: unknown[];
}

export interface SimulationApp {
  app: string;
  newly_blocked: number;
  newly_allowed: number;
  examples?: unknown[];
}

export interface Simulation {
  per_app?: SimulationApp[];
  totals?: Record<string, unknown>;
}

export interface PolicyVersionInfo {
  version: number;
  content_sha256?: string;
  [key: string]: unknown;
}

export interface LabelSuggestion {
  workload?: string;
  workload_id?: string;
  labels?: Labels;
  set?: Labels;
  reason?: string;
  confidence?: number;
  [key: string]: unknown;
}
