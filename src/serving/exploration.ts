/**
 * One exploration answer, the serving path of DESIGN.md §7: the user's history (c1, c2), the table's ranked novel
 * clusters for that pair, and each cluster grounded into items by the item policy. The HTTP route and the simulated
 * A/B both call `Explorer.explore`, so what the simulation measures is what the API serves.
 *
 * Fallbacks, always flagged in the answer:
 * - `cold-start`: the user has fewer than two distinct positive clusters. Answer: the most popular novel interests
 *   of the recent window (clusters users most often moved to as a new interest), minus the user's own cluster.
 * - `lookup-miss`: the live table has no row for the pair (a cluster newer than the table). Same answer, minus c1, c2.
 * - `no-table`: nothing is published yet. Same answer.
 *
 * @example
 * const explorer = new Explorer(catalog, users, () => grounding.current, new CoVisitationPolicy(() => grounding.current));
 * const answer = await explorer.explore({ userId: "u000123", lookup: tables.lookup(), n: 10, itemsPerCluster: 3 });
 */
import type { History } from "../domain/types.js";
import type { TableLookup } from "../tables/index.js";
import type { Catalog } from "./catalog.js";
import type { GroundingIndex, ItemPolicy } from "./grounding/index.js";
import { UserIndex, type UserState } from "./users.js";

export type ExplorationFallback = "cold-start" | "lookup-miss" | "no-table";

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

export class Explorer {
  constructor(
    private readonly catalog: Catalog,
    private readonly users: UserIndex,
    private readonly grounding: () => GroundingIndex,
    private readonly policy: ItemPolicy,
  ) {}

  async explore(request: ExploreRequest): Promise<ExplorationAnswer> {
    const { catalog } = this;
    const state = this.users.get(request.userId);
    const history = request.history !== undefined ? this.historyIndices(request.history) : (state?.history ?? null);
    const lookup = request.lookup;
    const clusters: number[] = [];
    const scores: number[] = [];
    let fallback: ExplorationFallback | null = null;
    if (history === null) fallback = "cold-start";
    else if (!lookup) fallback = "no-table";
    else {
      const answers = lookup.get(catalog.clusterIds[history.c1], catalog.clusterIds[history.c2]);
      if (answers === undefined) fallback = "lookup-miss";
      else {
        for (const a of answers) {
          if (clusters.length >= request.n) break;
          const c = catalog.clusterIndex.get(a.cluster);
          // A cluster the catalog does not know has no items to show; it is left out rather than served empty.
          if (c === undefined) continue;
          clusters.push(c);
          scores.push(a.score);
        }
      }
    }
    if (fallback !== null) this.coldStartAnswer(request.n, history, state, clusters, scores);

    const grounded = await this.policy.ground({
      userId: request.userId,
      clusters,
      n: request.itemsPerCluster,
      recent: state?.recent ?? EMPTY,
      isSeen: state ? (item) => UserIndex.hasSeen(state, item) : NEVER_SEEN,
    });
    const recommendations: Recommendation[] = clusters.map((c, k) => ({
      rank: k,
      cluster: catalog.clusterIds[c],
      description: catalog.descriptions[c],
      score: scores[k],
      items: (grounded[k] ?? []).map((g) => ({ itemId: catalog.itemIds[g.item], title: catalog.itemTitles[g.item], score: g.score, source: g.source })),
    }));
    return {
      userId: request.userId,
      history: history && { c1: catalog.clusterIds[history.c1], c2: catalog.clusterIds[history.c2] },
      coldStart: history === null,
      fallback,
      table: lookup ? { version: lookup.version, modelVersion: lookup.modelVersion } : null,
      recommendations,
    };
  }

  private historyIndices(history: History | null): { c1: number; c2: number } | null {
    if (history === null) return null;
    const c1 = this.catalog.clusterIndex.get(history.c1);
    const c2 = this.catalog.clusterIndex.get(history.c2);
    return c1 === undefined || c2 === undefined ? null : { c1, c2 };
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
