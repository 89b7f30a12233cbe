/**
 * What the table store adapters share about a table version: its id ("t" and six digits of its sequence number),
 * its record as stored (the same columns in SQLite and PostgreSQL) read back as a `TableInfo`, and its packed pages
 * gathered into one `PackedTable`.
 */
import type { PackedPage, PackedTable, PackedTableHeader, TableFilter, TableInfo, TableStatus } from "./contract.js";
import { TableNotFoundError } from "./errors.js";

export function versionId(seq: number): string {
  return `t${String(seq).padStart(6, "0")}`;
}

/** The sequence number of a version id; an id no store can hold is a version that does not exist. */
export function parseVersion(version: string): number {
  const m = /^t(\d+)$/.exec(version);
  // Beyond a 32-bit integer no version exists: NOT_FOUND, where PostgreSQL's INTEGER cast would fail the query.
  if (!m || Number(m[1]) > 2_147_483_647) throw new TableNotFoundError(version);
  return Number(m[1]);
}

/** The columns of a version's record that both stores keep alike (each adds how it tracks its builder). */
export interface VersionColumns {
  seq: number;
  status: TableStatus;
  model_version: string;
  template_hash: string;
  rag_as_of: number | null;
  rag_window_days: number | null;
  rag_options: string | null;
  strategy: string | null;
  parent: string | null;
  stats: string | null;
  metrics: string | null;
  created_at: number;
  finished_at: number | null;
  failure: string | null;
  row_count: number;
  top_n: number;
}

/** Whether a version's record passes a `list` filter. */
export function matchesFilter(r: VersionColumns, filter: TableFilter): boolean {
  const statuses = filter.status === undefined ? undefined : ([] as TableStatus[]).concat(filter.status);
  return (
    (!statuses || statuses.includes(r.status)) &&
    (filter.modelVersion === undefined || r.model_version === filter.modelVersion) &&
    (filter.templateHash === undefined || r.template_hash === filter.templateHash) &&
    (filter.strategy === undefined || r.strategy === filter.strategy)
  );
}

export function tableInfoOf(r: VersionColumns): TableInfo {
  return {
    version: versionId(r.seq),
    status: r.status,
    modelVersion: r.model_version,
    templateHash: r.template_hash,
    ragAsOf: r.rag_as_of,
    ragWindowDays: r.rag_window_days,
    ragOptions: r.rag_options === null ? null : JSON.parse(r.rag_options),
    strategy: r.strategy,
    parent: r.parent,
    stats: r.stats === null ? null : JSON.parse(r.stats),
    metrics: r.metrics === null ? null : JSON.parse(r.metrics),
    createdAt: r.created_at,
    finishedAt: r.finished_at,
    failure: r.failure,
    rows: r.row_count,
    topN: r.top_n,
  };
}

/** Gathers a table's `packedPages`, in order, into one `PackedTable` (each adapter reads its pages its own way). */
export class PackedTableGatherer {
  private c1 = new Int32Array(0);
  private c2 = new Int32Array(0);
  private answerIds = new Int32Array(0);
  private scores = new Float32Array(0);
  /** Rows gathered so far. */
  gathered = 0;

  add(page: PackedPage): void {
    const { topN, rows } = page.header;
    if (this.gathered === 0) {
      this.c1 = new Int32Array(rows);
      this.c2 = new Int32Array(rows);
      this.answerIds = new Int32Array(rows * topN);
      this.scores = new Float32Array(rows * topN);
    }
    const i = this.gathered;
    this.c1.set(page.c1.subarray(0, page.count), i);
    this.c2.set(page.c2.subarray(0, page.count), i);
    this.answerIds.set(page.answerIds.subarray(0, page.count * topN), i * topN);
    this.scores.set(page.scores.subarray(0, page.count * topN), i * topN);
    this.gathered += page.count;
  }

  finish(header: PackedTableHeader): PackedTable {
    const { rows: _rows, ...rest } = header;
    return { ...rest, c1: this.c1, c2: this.c2, answerIds: this.answerIds, scores: this.scores };
  }
}

/**
 * `clusters` ordered by their index in a store's dictionary (`TableStore.clusterOrder`), those without one last in
 * their given order.
 */
export function orderByDictionary(clusters: readonly string[], index: ReadonlyMap<string, number>): string[] {
  const numbered = clusters.filter((c) => index.has(c)).sort((a, b) => index.get(a)! - index.get(b)!);
  return [...numbered, ...clusters.filter((c) => !index.has(c))];
}
