/**
 * One exploration answer, the serving path of docs/architecture.md ("Data flow"): the user's history (c1, c2), the table's ranked novel
 * clusters for that pair, and each cluster grounded into items by the item policy. The HTTP route and the simulated
 * A/B both call `Explorer.explore`, so what the simulation measures is what the API serves.
 *
 * Fallbacks, always flagged in the answer:
 * - `cold-start`: the user has fewer than two distinct positive clusters. Answer: the most popular novel interests
 *   of the recent window (clusters users most often moved to as a new interest), minus the user's own cluster.
 * - `unknown-cluster`: the history names a cluster the table does not know (one newer than the table), or, for a
 *   history the caller gives, one the catalog does not know. Same answer, minus the history's clusters. Told apart
 *   from a cold start (the user has a history) and from a lookup miss (the table is too old, not short of a row).
 * - `lookup-miss`: the table knows both clusters but has no row for the pair. Same answer, minus c1, c2.
 * - `no-table`: nothing is published yet. Same answer.
 *
 * @example
 * const explorer = new Explorer(catalog, users, () => grounding.current, new CoVisitationPolicy(() => grounding.current));
 * const answer = await explorer.explore({ userId: "u000123", lookup: tables.lookup(), n: 10, itemsPerCluster: 3 });
 */
import type { History } from "../domain/types.js";
import type { TableLookup } from "../tables/index.js";
import type { Catalog } from "./catalog.js";
import type { GroundedItem, GroundingIndex, ItemPolicy } from "./grounding/index.js";
import { UserIndex, type UserState } from "./users.js";

export type ExplorationFallback = "cold-start" | "unknown-cluster" | "lookup-miss" | "no-table";

export interface RecommendedItem {
  readonly itemId: string;
  readonly title: string | null;
  readonly score: number;
  readonly source: string;
}

export interface Recommendation {
  readonly rank: number;
  readonly cluster: string;
  readonly description: string;
  readonly score: number;
  readonly items: RecommendedItem[];
}

export interface ExplorationAnswer {
  readonly userId: string;
  /** The history the answer was looked up for; null for a cold start. */
  readonly history: History | null;
  /** True when the user has fewer than two distinct positive clusters. */
  readonly coldStart: boolean;
  /** Why the answer did not come from the table row of the history; null when it did. */
  readonly fallback: ExplorationFallback | null;
  readonly table: { readonly version: string; readonly modelVersion: string } | null;
  readonly recommendations: Recommendation[];
}

export interface ExploreRequest {
  readonly userId: string;
  /** The table to answer from (taken once by the caller). */
  readonly lookup: TableLookup | undefined;
  /** Clusters wanted. */
  readonly n: number;
  readonly itemsPerCluster: number;
  /** A history known to the caller (the simulation's observed history); default: the user index's. */
  readonly history?: History | null;
}

/**
 * An answer in catalog indices, before ids and titles are attached: what `Explorer.present` turns into an
 * `ExplorationAnswer` and what the HTTP route writes as JSON directly (./exploration-json.ts).
 */
export interface IndexedExplorationAnswer {
  readonly userId: string;
  /** Cluster indices of the history; null for a cold start, or a given history naming a cluster the catalog lacks. */
  readonly history: { readonly c1: number; readonly c2: number } | null;
  readonly coldStart: boolean;
  readonly fallback: ExplorationFallback | null;
  readonly table: { readonly version: string; readonly modelVersion: string } | null;
  /** Cluster indices, in rank order, with their scores. */
  readonly clusters: readonly number[];
  readonly scores: readonly number[];
  /** Per cluster (same order), its items as the item policy chose them. */
  readonly items: readonly (readonly GroundedItem[])[];
}

export class Explorer {
  /** Per table: its local cluster index -> catalog index, and catalog index -> local (-1: not in the table). */
  private readonly tableIndices = new WeakMap<TableLookup, { readonly toCatalog: Int32Array; readonly toLocal: Int32Array }>();
  /**
   * Per table: the `table` of its answers, one object per table, so that what writes answers can tell a table it
   * wrote before by identity (./exploration-json.ts keeps its JSON).
   */
  private readonly tableRefs = new WeakMap<TableLookup, { readonly version: string; readonly modelVersion: string }>();
  /** Scratch for one table row (requests run one at a time on the event loop). */
  private rowIds = new Int32Array(0);
  private rowScores = new Float64Array(0);

  constructor(
    private readonly catalog: Catalog,
    private readonly users: UserIndex,
    private readonly grounding: () => GroundingIndex,
    private readonly policy: ItemPolicy,
  ) {}

  async explore(request: ExploreRequest): Promise<ExplorationAnswer> {
    return this.present(await this.exploreIndexed(request));
  }

  /** The catalog this explorer answers from (its ids, descriptions and titles name the answer's indices). */
  get answerCatalog(): Catalog {
    return this.catalog;
  }

  /** `explore`, in catalog indices. */
  async exploreIndexed(request: ExploreRequest): Promise<IndexedExplorationAnswer> {
    return this.answer(request);
  }

  /**
   * `exploreIndexed`, answered at once when the item policy grounds synchronously (the embedded ones do): the HTTP
   * route's turn batch then answers its requests one after another with no promise each; a promise only for a policy
   * that returns one.
   */
  answer(request: ExploreRequest): IndexedExplorationAnswer | Promise<IndexedExplorationAnswer> {
    const state = this.users.get(request.userId);
    const lookup = request.lookup;
    const clusters: number[] = [];
    const scores: number[] = [];
    let history: { c1: number; c2: number } | null;
    // Catalog indices of the history's clusters, -1 for one the catalog lacks: excluded from a fallback answer.
    let own: { c1: number; c2: number } | null;
    let fallback: ExplorationFallback | null = null;
    if (request.history !== undefined && request.history !== null) {
      own = { c1: this.catalog.clusterIndex.get(request.history.c1) ?? -1, c2: this.catalog.clusterIndex.get(request.history.c2) ?? -1 };
      history = own.c1 >= 0 && own.c2 >= 0 ? own : null;
      if (history === null) fallback = "unknown-cluster";
    } else {
      history = request.history === null ? null : (state?.history ?? null);
      own = history;
    }
    if (fallback === null) {
      if (history === null) fallback = "cold-start";
      else if (!lookup) fallback = "no-table";
      else fallback = this.readRow(lookup, history, request.n, clusters, scores);
    }
    if (fallback !== null) this.coldStartAnswer(request.n, own, state, clusters, scores);

    const grounded = this.policy.ground({
      userId: request.userId,
      clusters,
      n: request.itemsPerCluster,
      recent: state?.recent ?? EMPTY,
      isSeen: state ? (item) => UserIndex.hasSeen(state, item) : NEVER_SEEN,
    });
    const table = lookup ? this.tableRef(lookup) : null;
    const answer = (items: readonly (readonly GroundedItem[])[]): IndexedExplorationAnswer => ({
      userId: request.userId,
      history,
      coldStart: fallback === "cold-start",
      fallback,
      table,
      clusters,
      scores,
      items,
    });
    return Array.isArray(grounded) ? answer(grounded) : grounded.then(answer);
  }

  /** Ids, descriptions and titles for an indexed answer. */
  present(answer: IndexedExplorationAnswer): ExplorationAnswer {
    const { catalog } = this;
    const recommendations: Recommendation[] = answer.clusters.map((c, k) => ({
      rank: k,
      cluster: catalog.clusterIds[c],
      description: catalog.descriptions[c],
      score: answer.scores[k],
      items: (answer.items[k] ?? []).map((g) => ({ itemId: catalog.itemIds[g.item], title: catalog.itemTitles[g.item], score: g.score, source: g.source })),
    }));
    const history = answer.history;
    return {
      userId: answer.userId,
      history: history && { c1: catalog.clusterIds[history.c1], c2: catalog.clusterIds[history.c2] },
      coldStart: answer.coldStart,
      fallback: answer.fallback,
      table: answer.table,
      recommendations,
    };
  }

  /**
   * Appends the table row of a history (catalog indices) to `clusters`/`scores`, at most n answers.
   * @returns null when it did; otherwise why there is no row: a cluster the table does not know, or a missing row.
   */
  private readRow(lookup: TableLookup, history: { c1: number; c2: number }, n: number, clusters: number[], scores: number[]): "unknown-cluster" | "lookup-miss" | null {
    const { toCatalog, toLocal } = this.indicesOf(lookup);
    if (toLocal[history.c1] < 0 || toLocal[history.c2] < 0) return "unknown-cluster";
    if (this.rowIds.length < lookup.topN) {
      this.rowIds = new Int32Array(lookup.topN);
      this.rowScores = new Float64Array(lookup.topN);
    }
    const m = lookup.readAt(toLocal[history.c1], toLocal[history.c2], this.rowIds, this.rowScores, lookup.topN);
    if (m < 0) return "lookup-miss";
    for (let a = 0; a < m && clusters.length < n; a++) {
      const c = toCatalog[this.rowIds[a]];
      // A cluster the catalog does not know has no items to show; it is left out rather than served empty.
      if (c < 0) continue;
      clusters.push(c);
      scores.push(this.rowScores[a]);
    }
    return null;
  }

  private tableRef(lookup: TableLookup): { readonly version: string; readonly modelVersion: string } {
    let ref = this.tableRefs.get(lookup);
    if (ref === undefined) this.tableRefs.set(lookup, (ref = { version: lookup.version, modelVersion: lookup.modelVersion }));
    return ref;
  }

  /** Index maps between a table's clusters and the catalog's, made once per table (a lookup never changes). */
  private indicesOf(lookup: TableLookup): { readonly toCatalog: Int32Array; readonly toLocal: Int32Array } {
    let known = this.tableIndices.get(lookup);
    // Made again when the catalog has grown (a shared store's follower adds clusters): a table may know the new ones.
    if (known === undefined || known.toLocal.length !== this.catalog.clusterCount) {
      const toCatalog = Int32Array.from(lookup.clusters, (id) => this.catalog.clusterIndex.get(id) ?? -1);
      const toLocal = new Int32Array(this.catalog.clusterCount).fill(-1);
      toCatalog.forEach((c, local) => {
        if (c >= 0) toLocal[c] = local;
      });
      this.tableIndices.set(lookup, (known = { toCatalog, toLocal }));
    }
    return known;
  }

  /** The most popular novel interests, minus the clusters the user is in. */
  private coldStartAnswer(n: number, history: { c1: number; c2: number } | null, state: UserState | undefined, clusters: number[], scores: number[]): void {
    const index = this.grounding();
    const own1 = history?.c1 ?? state?.lastCluster ?? -1;
    const own2 = history?.c2 ?? -1;
    for (let k = 0; k < index.coldStart.length && clusters.length < n; k++) {
      const c = index.coldStart[k];
      if (c === own1 || c === own2) continue;
      clusters.push(c);
      scores.push(index.coldStartScore[k]);
    }
  }
}

const EMPTY = new Int32Array(0);
const NEVER_SEEN = () => false;
