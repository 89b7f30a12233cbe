/**
 * In-memory tables for serving: dense typed arrays keyed by cluster index, and a holder that swaps the live one.
 *
 * A `TableLookup` is immutable once built. Its clusters get local indices 0..K-1; row (i1, i2) occupies slots
 * [(i1*K + i2) * topN, ... + topN) of `answerIds` (local cluster indices, -1 padding) and `scores`. For 300
 * clusters and top-10 that is 900,000 slots, 5.4 MB (a 16-bit answer index and a 32-bit score per slot), and a lookup
 * is two Map probes and an array read.
 *
 * `LiveTable` holds the current lookup in one field. Publishing a new table swaps that single reference, so a
 * reader that took `live.lookup` keeps reading one complete version, however many swaps happen meanwhile, and no
 * reader ever sees rows of two versions mixed.
 *
 * @example
 * const live = new LiveTable();
 * live.reload(store); // loads the store's live table when it changed
 * const table = live.lookup; // take it once per request, then read it as often as needed
 * const answers = table?.get("baking", "running"); // [{ cluster: "hiking", score: 0.31 }, ...]
 */
import { FreshrecError } from "../domain/errors.js";
import type { ScoredCluster, TableRow } from "../domain/types.js";
import type { PackedPage, PackedTable, PackedTableHeader, TableStore } from "./contract.js";

export interface TableLookupOptions {
  /**
   * Most answer slots (clusters^2 x topN) a lookup may allocate; each slot costs 6 bytes. The dense layout suits
   * hundreds of clusters, not tens of thousands: refusing early beats an out-of-memory crash while serving.
   * @defaultValue 50_000_000
   */
  readonly maxSlots?: number;
}

/** Caller-owned buffers for `TableLookup.read`, so a hot path allocates nothing per request. */
export interface AnswerBuffer {
  readonly clusters: string[];
  readonly scores: Float64Array | number[];
}

export class TableLookup {
  /** Number of rows (history pairs) the table has. */
  readonly size: number;

  private constructor(
    readonly version: string,
    readonly modelVersion: string,
    /** Answer slots per row. */
    readonly topN: number,
    /** Cluster ids by local index. */
    readonly clusters: readonly string[],
    private readonly index: ReadonlyMap<string, number>,
    /** Answers per row; -1 where the table has no row for the pair. */
    private readonly counts: Int16Array,
    /** Local answer indices: 16 bits suffice, since maxSlots caps K far below 32767 for any topN. */
    private readonly answerIds: Int16Array,
    private readonly scores: Float32Array,
  ) {
    let size = 0;
    for (let i = 0; i < counts.length; i++) if (counts[i] >= 0) size++;
    this.size = size;
  }

  /** Builds a lookup from a table version of a store. */
  static load(store: TableStore, version: string, options: TableLookupOptions = {}): TableLookup {
    return TableLookup.fromPacked(store.packed(version), options);
  }

  static fromPacked(table: PackedTable, options: TableLookupOptions = {}): TableLookup {
    const { topN } = table;
    const n = table.c1.length;
    // Local indices over the clusters this table uses, in dictionary order, so K is this table's cluster count and
    // not the store's (whose dictionary also remembers clusters of older tables).
    const used = new Uint8Array(table.clusters.length);
    for (let r = 0; r < n; r++) used[table.c1[r]] = used[table.c2[r]] = 1;
    for (const id of table.answerIds) if (id >= 0) used[id] = 1;
    const toLocal = new Int32Array(table.clusters.length).fill(-1);
    const clusters: string[] = [];
    for (let g = 0; g < used.length; g++) if (used[g]) toLocal[g] = clusters.push(table.clusters[g]) - 1;
    const k = clusters.length;
    const slots = k * k * topN;
    const maxSlots = options.maxSlots ?? 50_000_000;
    if (slots > maxSlots) {
      throw new FreshrecError("BAD_INPUT", `tables: ${table.version} needs ${slots} lookup slots (${k} clusters, top-${topN}), over maxSlots ${maxSlots}`);
    }
    if (k > 0x7fff) throw new FreshrecError("BAD_INPUT", `tables: ${table.version} has ${k} clusters, at most 32767 fit a lookup`);
    if (topN > 0x7fff) throw new FreshrecError("BAD_INPUT", `tables: ${table.version} has ${topN} answers per row, at most 32767 fit a lookup`);
    const counts = new Int16Array(k * k).fill(-1);
    const answerIds = new Int16Array(slots).fill(-1);
    const scores = new Float32Array(slots);
    for (let r = 0; r < n; r++) {
      const cell = toLocal[table.c1[r]] * k + toLocal[table.c2[r]];
      let m = 0;
      for (let a = 0; a < topN; a++) {
        const g = table.answerIds[r * topN + a];
        if (g < 0) break;
        answerIds[cell * topN + a] = toLocal[g];
        scores[cell * topN + a] = table.scores[r * topN + a];
        m++;
      }
      counts[cell] = m;
    }
    return new TableLookup(table.version, table.modelVersion, topN, clusters, new Map(clusters.map((c, i) => [c, i])), counts, answerIds, scores);
  }

  /**
   * Starts a lookup that is filled page by page (`TableStore.packedPages`): rows are decoded straight into the
   * dense arrays, so loading holds no second copy of the table (a 1,000-cluster table's packed columns are 88 MB,
   * more than its lookup, and the allocator kept much of that after they were freed). The arrays are laid out over
   * the store's whole cluster dictionary; `finish` narrows them to the clusters the table uses when that is fewer
   * (a dictionary that remembers clusters of older tables), which is what `fromPacked` builds directly.
   * @returns undefined when the dictionary-wide arrays would exceed `maxSlots`: use `fromPacked` then.
   */
  static builder(header: PackedTableHeader, options: TableLookupOptions = {}): TableLookupBuilder | undefined {
    const g = header.clusters.length;
    const slots = g * g * header.topN;
    if (slots > (options.maxSlots ?? 50_000_000) || g > 0x7fff || header.topN > 0x7fff) return undefined;
    return new TableLookupBuilder(header, options);
  }

  /** @internal The constructor, for the builder. */
  static assemble(
    header: PackedTableHeader,
    clusters: readonly string[],
    counts: Int16Array,
    answerIds: Int16Array,
    scores: Float32Array,
  ): TableLookup {
    return new TableLookup(header.version, header.modelVersion, header.topN, clusters, new Map(clusters.map((c, i) => [c, i])), counts, answerIds, scores);
  }

  /** Builds a lookup from plain rows (other adapters, tests). Scores are kept as 32-bit floats, as stores do. */
  static fromRows(meta: { readonly version: string; readonly modelVersion: string }, rows: Iterable<TableRow>, options: TableLookupOptions = {}): TableLookup {
    const list = [...rows];
    const dictionary = new Map<string, number>();
    const idOf = (c: string) => {
      let i = dictionary.get(c);
      if (i === undefined) dictionary.set(c, (i = dictionary.size));
      return i;
    };
    const topN = list.reduce((m, r) => Math.max(m, r.answers.length), 0);
    const c1 = new Int32Array(list.length);
    const c2 = new Int32Array(list.length);
    const answerIds = new Int32Array(list.length * topN).fill(-1);
    const scores = new Float32Array(list.length * topN);
    list.forEach((row, r) => {
      c1[r] = idOf(row.c1);
      c2[r] = idOf(row.c2);
      row.answers.forEach((a, k) => {
        answerIds[r * topN + k] = idOf(a.cluster);
        scores[r * topN + k] = a.score;
      });
    });
    return TableLookup.fromPacked({ ...meta, topN, clusters: [...dictionary.keys()], c1, c2, answerIds, scores }, options);
  }

  /** Local index of a cluster, or -1 when the table does not know it. */
  clusterIndex(cluster: string): number {
    return this.index.get(cluster) ?? -1;
  }

  has(c1: string, c2: string): boolean {
    return this.countAt(this.clusterIndex(c1), this.clusterIndex(c2)) >= 0;
  }

  /** Number of answers of row (i1, i2) by local indices, or -1 when there is no such row. */
  countAt(i1: number, i2: number): number {
    const k = this.clusters.length;
    if (i1 < 0 || i2 < 0 || i1 >= k || i2 >= k) return -1;
    return this.counts[i1 * k + i2];
  }

  /** The ranked answers of a history pair, or undefined when the table has no row for it. */
  get(c1: string, c2: string): ScoredCluster[] | undefined {
    const i1 = this.clusterIndex(c1);
    const i2 = this.clusterIndex(c2);
    const m = this.countAt(i1, i2);
    if (m < 0) return undefined;
    const base = (i1 * this.clusters.length + i2) * this.topN;
    const answers = new Array<ScoredCluster>(m);
    for (let a = 0; a < m; a++) answers[a] = { cluster: this.clusters[this.answerIds[base + a]], score: this.scores[base + a] };
    return answers;
  }

  /**
   * Copies up to `limit` ranked answers of a pair into caller-owned buffers without allocating.
   * @returns the number of answers copied, or -1 when the table has no row for the pair.
   */
  read(c1: string, c2: string, into: AnswerBuffer, limit = this.topN): number {
    const i1 = this.clusterIndex(c1);
    const i2 = this.clusterIndex(c2);
    const m = this.countAt(i1, i2);
    if (m < 0) return -1;
    const base = (i1 * this.clusters.length + i2) * this.topN;
    const n = Math.min(m, limit);
    for (let a = 0; a < n; a++) {
      into.clusters[a] = this.clusters[this.answerIds[base + a]];
      into.scores[a] = this.scores[base + a];
    }
    return n;
  }

  /**
   * `read` by local indices (`clusterIndex`): copies up to `limit` answers' local cluster indices and scores into
   * caller-owned arrays, for callers that map clusters to their own indices once per table instead of by id.
   * @returns the number of answers copied, or -1 when there is no such row (also for an index of -1).
   */
  readAt(i1: number, i2: number, ids: Int32Array, scores: Float64Array, limit = this.topN): number {
    const m = this.countAt(i1, i2);
    if (m < 0) return -1;
    const base = (i1 * this.clusters.length + i2) * this.topN;
    const n = Math.min(m, limit, ids.length, scores.length);
    for (let a = 0; a < n; a++) {
      ids[a] = this.answerIds[base + a];
      scores[a] = this.scores[base + a];
    }
    return n;
  }

  /** Every row, ordered by local cluster index (for export and tests; serving uses `get`/`read`). */
  *rows(): IterableIterator<TableRow> {
    const k = this.clusters.length;
    for (let i1 = 0; i1 < k; i1++) {
      for (let i2 = 0; i2 < k; i2++) {
        if (this.counts[i1 * k + i2] >= 0) yield { c1: this.clusters[i1], c2: this.clusters[i2], answers: this.get(this.clusters[i1], this.clusters[i2])! };
      }
    }
  }
}

/** Fills a lookup page by page (`TableLookup.builder`). */
export class TableLookupBuilder {
  private readonly g: number;
  private readonly counts: Int16Array;
  private readonly answerIds: Int16Array;
  private readonly scores: Float32Array;
  private readonly used: Uint8Array;

  constructor(
    private readonly header: PackedTableHeader,
    private readonly options: TableLookupOptions,
  ) {
    const g = header.clusters.length;
    this.g = g;
    this.counts = new Int16Array(g * g).fill(-1);
    this.answerIds = new Int16Array(g * g * header.topN).fill(-1);
    this.scores = new Float32Array(g * g * header.topN);
    this.used = new Uint8Array(g);
  }

  /** Copies one page's rows in (a page's columns are reused by the store: nothing of it is kept). */
  add(page: PackedPage): void {
    const { g, counts, answerIds, scores, used } = this;
    const topN = this.header.topN;
    for (let r = 0; r < page.count; r++) {
      const c1 = page.c1[r];
      const c2 = page.c2[r];
      if (!(c1 >= 0 && c1 < g && c2 >= 0 && c2 < g)) throw new FreshrecError("INTERNAL", `tables: ${this.header.version} has a row outside its cluster dictionary`);
      used[c1] = used[c2] = 1;
      const cell = c1 * g + c2;
      let m = 0;
      for (let a = 0; a < topN; a++) {
        const id = page.answerIds[r * topN + a];
        if (id < 0) break;
        if (id >= g) throw new FreshrecError("INTERNAL", `tables: ${this.header.version} has an answer outside its cluster dictionary`);
        used[id] = 1;
        answerIds[cell * topN + a] = id;
        scores[cell * topN + a] = page.scores[r * topN + a];
        m++;
      }
      counts[cell] = m;
    }
  }

  /** The lookup, over the clusters the table uses (dictionary order), as `fromPacked` would build it. */
  finish(): TableLookup {
    const { g, used, header } = this;
    const topN = header.topN;
    const clusters: string[] = [];
    const toLocal = new Int32Array(g).fill(-1);
    for (let c = 0; c < g; c++) if (used[c]) toLocal[c] = clusters.push(header.clusters[c]) - 1;
    const k = clusters.length;
    if (k === g) return TableLookup.assemble(header, clusters, this.counts, this.answerIds, this.scores);
    // The dictionary holds clusters this table does not use: move the rows to the narrower layout.
    const slots = k * k * topN;
    const maxSlots = this.options.maxSlots ?? 50_000_000;
    if (slots > maxSlots) throw new FreshrecError("BAD_INPUT", `tables: ${header.version} needs ${slots} lookup slots (${k} clusters, top-${topN}), over maxSlots ${maxSlots}`);
    const counts = new Int16Array(k * k).fill(-1);
    const answerIds = new Int16Array(slots).fill(-1);
    const scores = new Float32Array(slots);
    for (let c1 = 0; c1 < g; c1++) {
      if (toLocal[c1] < 0) continue;
      for (let c2 = 0; c2 < g; c2++) {
        const m = this.counts[c1 * g + c2];
        if (m < 0) continue;
        const from = (c1 * g + c2) * topN;
        const cell = toLocal[c1] * k + toLocal[c2];
        for (let a = 0; a < m; a++) {
          answerIds[cell * topN + a] = toLocal[this.answerIds[from + a]];
          scores[cell * topN + a] = this.scores[from + a];
        }
        counts[cell] = m;
      }
    }
    return TableLookup.assemble(header, clusters, counts, answerIds, scores);
  }
}

/**
 * The table serving reads right now. One field, swapped whole: JavaScript runs one reader or one swap at a time,
 * so a reference swap is atomic, and readers holding the old lookup keep a consistent (old) view.
 */
export class LiveTable {
  private current: TableLookup | undefined;

  constructor(initial?: TableLookup) {
    this.current = initial;
  }

  /** The current lookup. Take it once per request and read only that object, so the request sees one version. */
  get lookup(): TableLookup | undefined {
    return this.current;
  }

  get version(): string | undefined {
    return this.current?.version;
  }

  /** Installs `next` as the live lookup; returns the one it replaced. */
  swap(next: TableLookup | undefined): TableLookup | undefined {
    const previous = this.current;
    this.current = next;
    return previous;
  }

  /** Shorthand for one read: `lookup?.get(c1, c2)`. */
  get(c1: string, c2: string): ScoredCluster[] | undefined {
    return this.current?.get(c1, c2);
  }

  /**
   * Follows the store's live pointer: loads and swaps in its live table when that is not the one held (after a
   * publish or rollback, possibly by another process). The new lookup is built completely before the swap.
   * @returns true when the lookup changed.
   */
  reload(store: TableStore, options: TableLookupOptions = {}): boolean {
    const live = store.live();
    if (live?.version === this.current?.version) return false;
    this.swap(live ? TableLookup.load(store, live.version, options) : undefined);
    return true;
  }
}
