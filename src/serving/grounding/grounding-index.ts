/**
 * The grounding index: what the embedded item policies and the cold-start answer read, computed with DuckDB over
 * the most recent days of the event store and held in typed arrays.
 *
 * - **Co-visitation**: two positive events of one user at most `span` positive events apart co-visit their items;
 *   a pair's weight is the number of distinct users who co-visited it (symmetric), kept from `minCovisitUsers` up. For each item and each
 *   cluster, the `neighborsPerCluster` heaviest neighbours in that cluster are kept, so restricting to a cluster is a
 *   binary search, not a scan.
 * - **Popularity**: per cluster, the `popularPerCluster` items with the most distinct positive users in the window
 *   (ties: all-time users, then catalog order). Every item of the catalog can appear, so a cluster with items always
 *   grounds.
 * - **Cold start**: clusters ranked by how many users moved to them as a *novel* interest in the window (the
 *   `popular-novel` baseline's ranking), ties by positive users in the window.
 *
 * "Recent" is relative to the newest event in the store, so an old dataset still has a recent window.
 *
 * @example
 * const index = await buildGroundingIndex(events, catalog, { windowDays: 30, positiveMin: 0.5 });
 * index.coldStart; // cluster indices, most popular novel interest first
 */
import type { EventStoreContract } from "../../data/event-store.js";
import { DAY_MS } from "../../domain/clock.js";
import { SERVE_DEFAULTS } from "../defaults.js";
import { countTransitions } from "../../mining/transitions.js";
import { novelPopularity } from "../../update/baselines.js";
import type { Catalog } from "../catalog.js";

export interface GroundingIndexOptions {
  /** Days of events before the newest one. @defaultValue 30 */
  readonly windowDays?: number;
  /** Positive events apart that still co-visit. @defaultValue 5 */
  readonly span?: number;
  /** Neighbours kept per (item, cluster). @defaultValue 20 */
  readonly neighborsPerCluster?: number;
  /**
   * Distinct users a pair needs to count as co-visited: one user's co-visit says more about that user's session
   * than about the items, and dropping those keeps the index small. @defaultValue 2
   */
  readonly minCovisitUsers?: number;
  /** Items kept per cluster for popularity. @defaultValue 100 */
  readonly popularPerCluster?: number;
  /** Minimum engagement that counts as positive; null = every event. */
  readonly positiveMin: number | null;
}

export interface GroundingIndex {
  /** [from, to) of the events it was computed from (epoch ms); to is just after the newest event. */
  readonly window: { readonly from: number; readonly to: number };
  /**
   * Neighbours of item i are entries neighborStart[i] .. neighborStart[i+1]-1, sorted by cluster, then weight (their
   * clusters are in the runs below).
   */
  readonly neighborStart: Int32Array;
  /**
   * Neighbour entry p, side by side: its item at neighbors[2p], its weight at neighborWeights[2p + 1] (a Float32Array
   * over the same buffer), so the entries of a run a request reads are one or two cache lines, not twice that.
   */
  readonly neighbors: Int32Array;
  readonly neighborWeights: Float32Array;
  /**
   * The neighbours of one item in one cluster form a run: item i's runs are k = itemRuns[i] .. itemRuns[i+1]-1, run
   * k holds the entries runOffset[k] .. runOffset[k+1]-1, all of cluster runCluster[k]. A request restricted to a
   * few clusters reads only their runs (an item has neighbours in dozens of clusters, of which a request's few are
   * one or two).
   */
  readonly itemRuns: Int32Array;
  readonly runCluster: Int32Array;
  /**
   * Which clusters item i has a run in, as a bit set: words itemClusterBits[i * clusterWords ..] (cluster c is bit
   * c & 31 of word c >> 5). A request tests its few clusters here (one cache line per recent item) instead of
   * scanning the item's runs (dozens of them, several lines); the run of cluster c is item i's run number "bits set
   * below c's".
   */
  readonly itemClusterBits: Int32Array;
  readonly clusterWords: number;
  readonly runOffset: Int32Array;
  /** Popular items of cluster c are entries popularStart[c] .. popularStart[c+1]-1, best first. */
  readonly popularStart: Int32Array;
  readonly popularItem: Int32Array;
  readonly popularWeight: Float32Array;
  /**
   * The same entries side by side, what a request reads: entry p's item at popularEntries[2p], its weight at
   * popularEntryWeights[2p + 1] (a Float32Array over the same buffer), so an entry is one cache line, not two.
   */
  readonly popularEntries: Int32Array;
  readonly popularEntryWeights: Float32Array;
  /** Cluster indices, most popular novel interest first, with their share of novel transitions. */
  readonly coldStart: Int32Array;
  readonly coldStartScore: Float32Array;
  readonly pairs: number;
  readonly seconds: number;
}

export async function buildGroundingIndex(store: EventStoreContract, catalog: Catalog, options: GroundingIndexOptions): Promise<GroundingIndex> {
  const started = process.hrtime.bigint();
  const windowDays = options.windowDays ?? SERVE_DEFAULTS.groundingWindowDays;
  const span = options.span ?? SERVE_DEFAULTS.covisitationSpan;
  const perCluster = options.neighborsPerCluster ?? 20;
  const popularPerCluster = options.popularPerCluster ?? 100;
  const minUsers = options.minCovisitUsers ?? 2;
  const [last] = await store.query<{ t: number | null }>("SELECT epoch_ms(max(ts)) AS t FROM events");
  const to = last?.t === null || last?.t === undefined ? 0 : Number(last.t) + 1;
  const from = to - windowDays * DAY_MS;
  const positive = options.positiveMin === null ? "true" : "(e.engagement IS NULL OR e.engagement >= $positiveMin)";
  const params: Record<string, number | bigint> = { from: BigInt(from), to: BigInt(to) };
  if (options.positiveMin !== null) params.positiveMin = options.positiveMin;

  // SQL counts the pairs; ranking per (item, cluster) is done below in typed arrays, which is several times faster
  // than a window function over both directions of every pair.
  // Plain SQL that DuckDB and PostgreSQL read alike (GROUP BY positions, not DuckDB's GROUP BY ALL): the index is the
  // same whichever store holds the events.
  const covisits = await store.queryColumns(
    `WITH pos AS (
       SELECT user_key, item_key, row_number() OVER (PARTITION BY user_key ORDER BY ts, item_key) AS r
       FROM events e WHERE e.ts >= epoch_ms($from::BIGINT) AND e.ts < epoch_ms($to::BIGINT) AND ${positive}
     )
     SELECT least(a.item_key, b.item_key) AS i, greatest(a.item_key, b.item_key) AS j, count(DISTINCT a.user_key)::INTEGER AS users
     FROM pos a JOIN pos b ON a.user_key = b.user_key AND b.r > a.r AND b.r <= a.r + ${Math.floor(span)}
     WHERE a.item_key <> b.item_key GROUP BY 1, 2 HAVING count(DISTINCT a.user_key) >= ${Math.floor(minUsers)}`,
    params,
  );
  const n = covisits.rowCount;
  const [is, js, weights] = n ? (covisits.columns as [number[], number[], number[]]) : [[], [], []];
  const { neighborStart, neighbors, neighborWeights, itemRuns, runCluster, runOffset, itemClusterBits, clusterWords } = rankNeighbors(catalog, is, js, weights, perCluster);
  const total = neighbors.length / 2;

  const popular = await store.queryColumns(
    `WITH recent AS (
       SELECT item_key, count(DISTINCT user_key) AS users FROM events e
       WHERE e.ts >= epoch_ms($from::BIGINT) AND e.ts < epoch_ms($to::BIGINT) AND ${positive} GROUP BY item_key
     ),
     alltime AS (SELECT item_key, count(DISTINCT user_key) AS users FROM events e WHERE ${positive} GROUP BY item_key),
     ranked AS (
       SELECT it.item_key, it.cluster_key, coalesce(r.users, 0)::INTEGER AS recent_users,
              row_number() OVER (PARTITION BY it.cluster_key ORDER BY coalesce(r.users, 0) DESC, coalesce(a.users, 0) DESC, it.item_key) AS k
       FROM items it LEFT JOIN recent r USING (item_key) LEFT JOIN alltime a USING (item_key)
     )
     SELECT item_key, cluster_key, recent_users FROM ranked WHERE k <= ${Math.floor(popularPerCluster)} ORDER BY cluster_key, k`,
    params,
  );
  const read = popular.rowCount;
  const [readItems, readClusters, readUsers] = read ? (popular.columns as [number[], number[], number[]]) : [[], [], []];
  // Items (and clusters) a shared store gained after the catalog was read are left out until the catalog has them.
  const known = Array.from({ length: read }, (_, r) => r).filter((r) => (catalog.itemOfKey[readItems[r]] ?? -1) >= 0 && (catalog.clusterOfKey[readClusters[r]] ?? -1) >= 0);
  const [pItems, pClusters, pUsers] = [known.map((r) => readItems[r]), known.map((r) => readClusters[r]), known.map((r) => readUsers[r])];
  const m = known.length;
  const K = catalog.clusterCount;
  const popularStart = new Int32Array(K + 1);
  for (let r = 0; r < m; r++) popularStart[catalog.clusterOfKey[pClusters[r]] + 1]++;
  for (let c = 0; c < K; c++) popularStart[c + 1] += popularStart[c];
  const popularItem = new Int32Array(m);
  const popularWeight = new Float32Array(m);
  const popularEntries = new Int32Array(2 * m);
  const popularEntryWeights = new Float32Array(popularEntries.buffer);
  const pFill = popularStart.slice(0, K);
  const clusterUsers = new Float64Array(K);
  for (let r = 0; r < m; r++) {
    const c = catalog.clusterOfKey[pClusters[r]];
    const at = pFill[c]++;
    popularItem[at] = catalog.itemOfKey[pItems[r]];
    popularWeight[at] = pUsers[r];
    popularEntries[2 * at] = popularItem[at];
    popularEntryWeights[2 * at + 1] = pUsers[r];
    clusterUsers[c] += pUsers[r];
  }

  const transitions = await countTransitions(store, { from, to }, { positiveMin: options.positiveMin });
  const novel = new Map(novelPopularity(transitions, catalog.clusterIds).map((s) => [s.cluster, s.score]));
  const order = Array.from({ length: K }, (_, c) => c).sort(
    (a, b) => (novel.get(catalog.clusterIds[b]) ?? 0) - (novel.get(catalog.clusterIds[a]) ?? 0) || clusterUsers[b] - clusterUsers[a] || a - b,
  );
  return {
    window: { from, to },
    neighborStart,
    neighbors,
    neighborWeights,
    itemRuns,
    runCluster,
    itemClusterBits,
    clusterWords,
    runOffset,
    popularStart,
    popularItem,
    popularWeight,
    popularEntries,
    popularEntryWeights,
    coldStart: Int32Array.from(order),
    coldStartScore: Float32Array.from(order, (c) => novel.get(catalog.clusterIds[c]) ?? 0),
    pairs: total,
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
  };
}

/**
 * Both directions of every co-visited pair, grouped by item, each item's neighbours sorted by (cluster, weight desc,
 * item) and cut to `perCluster` per cluster.
 */
function rankNeighbors(catalog: Catalog, is: readonly number[], js: readonly number[], weights: readonly number[], perCluster: number) {
  const items = catalog.itemCount;
  const degree = new Int32Array(items + 1);
  for (let r = 0; r < is.length; r++) {
    const i = catalog.itemOfKey[is[r]] ?? -1;
    const j = catalog.itemOfKey[js[r]] ?? -1;
    if (i < 0 || j < 0) continue;
    degree[i + 1]++;
    degree[j + 1]++;
  }
  const start = new Int32Array(items + 1);
  for (let i = 0; i < items; i++) start[i + 1] = start[i] + degree[i + 1];
  const all = start[items];
  const nItem = new Int32Array(all);
  const nWeight = new Float32Array(all);
  const fill = start.slice(0, items);
  for (let r = 0; r < is.length; r++) {
    const i = catalog.itemOfKey[is[r]] ?? -1;
    const j = catalog.itemOfKey[js[r]] ?? -1;
    if (i < 0 || j < 0) continue;
    nItem[fill[i]] = j;
    nWeight[fill[i]++] = weights[r];
    nItem[fill[j]] = i;
    nWeight[fill[j]++] = weights[r];
  }
  const cluster = catalog.itemCluster;
  const keep = new Int32Array(items + 1);
  const order: number[] = [];
  const kept: number[] = [];
  for (let i = 0; i < items; i++) {
    order.length = 0;
    for (let p = start[i]; p < start[i + 1]; p++) order.push(p);
    order.sort((a, b) => cluster[nItem[a]] - cluster[nItem[b]] || nWeight[b] - nWeight[a] || nItem[a] - nItem[b]);
    let run = 0;
    for (let k = 0; k < order.length; k++) {
      run = k > 0 && cluster[nItem[order[k]]] === cluster[nItem[order[k - 1]]] ? run + 1 : 0;
      if (run < perCluster) kept.push(order[k]);
    }
    keep[i + 1] = kept.length;
  }
  const neighbors = new Int32Array(2 * kept.length);
  const neighborWeights = new Float32Array(neighbors.buffer);
  kept.forEach((p, k) => {
    neighbors[2 * k] = nItem[p];
    neighborWeights[2 * k + 1] = nWeight[p];
  });
  // Runs: a new one at each item's first entry and wherever the cluster changes within an item.
  const itemRuns = new Int32Array(items + 1);
  const runStarts: number[] = [];
  for (let i = 0; i < items; i++) {
    for (let k = keep[i]; k < keep[i + 1]; k++) {
      if (k === keep[i] || cluster[neighbors[2 * k]] !== cluster[neighbors[2 * k - 2]]) runStarts.push(k);
    }
    itemRuns[i + 1] = runStarts.length;
  }
  const runOffset = Int32Array.from([...runStarts, kept.length]);
  const runCluster = Int32Array.from(runStarts, (k) => cluster[neighbors[2 * k]]);
  const clusterWords = Math.max(1, Math.ceil(catalog.clusterCount / 32));
  const itemClusterBits = new Int32Array(items * clusterWords);
  for (let i = 0; i < items; i++) {
    for (let q = itemRuns[i]; q < itemRuns[i + 1]; q++) itemClusterBits[i * clusterWords + (runCluster[q] >> 5)] |= 1 << (runCluster[q] & 31);
  }
  return { neighborStart: keep, neighbors, neighborWeights, itemRuns, runCluster, runOffset, itemClusterBits, clusterWords };
}
