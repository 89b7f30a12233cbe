/**
 * The grounding index: what the embedded item policies and the cold-start answer read, computed with DuckDB over
 * the most recent days of the event store and held in typed arrays.
 *
 * - **Co-visitation**: two positive events of one user at most `span` positive events apart co-visit their items;
 *   a pair's weight is the number of distinct users who co-visited it (symmetric). For each item and each
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
import type { EventStore } from "../../data/event-store.js";
import { DAY_MS } from "../../domain/clock.js";
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
  /** Items kept per cluster for popularity. @defaultValue 100 */
  readonly popularPerCluster?: number;
  /** Minimum engagement that counts as positive; null = every event. */
  readonly positiveMin: number | null;
}

export interface GroundingIndex {
  /** [from, to) of the events it was computed from (epoch ms); to is just after the newest event. */
  readonly window: { readonly from: number; readonly to: number };
  /** Neighbours of item i are entries neighborStart[i] .. neighborStart[i+1]-1, sorted by cluster, then weight. */
  readonly neighborStart: Int32Array;
  readonly neighborItem: Int32Array;
  readonly neighborCluster: Int32Array;
  readonly neighborWeight: Float32Array;
  /** Popular items of cluster c are entries popularStart[c] .. popularStart[c+1]-1, best first. */
  readonly popularStart: Int32Array;
  readonly popularItem: Int32Array;
  readonly popularWeight: Float32Array;
  /** Cluster indices, most popular novel interest first, with their share of novel transitions. */
  readonly coldStart: Int32Array;
  readonly coldStartScore: Float32Array;
  readonly pairs: number;
  readonly seconds: number;
}

export async function buildGroundingIndex(store: EventStore, catalog: Catalog, options: GroundingIndexOptions): Promise<GroundingIndex> {
  const started = process.hrtime.bigint();
  const windowDays = options.windowDays ?? 30;
  const span = options.span ?? 5;
  const perCluster = options.neighborsPerCluster ?? 20;
  const popularPerCluster = options.popularPerCluster ?? 100;
  const [last] = await store.query<{ t: number | null }>("SELECT epoch_ms(max(ts)) AS t FROM events");
  const to = last?.t === null || last?.t === undefined ? 0 : Number(last.t) + 1;
  const from = to - windowDays * DAY_MS;
  const positive = options.positiveMin === null ? "true" : "(e.engagement IS NULL OR e.engagement >= $positiveMin)";
  const params: Record<string, number | bigint> = { from: BigInt(from), to: BigInt(to) };
  if (options.positiveMin !== null) params.positiveMin = options.positiveMin;

  const covisits = await store.connection.runAndReadAll(
    `WITH pos AS (
       SELECT user_key, item_key, row_number() OVER (PARTITION BY user_key ORDER BY ts, item_key) AS r
       FROM events e WHERE e.ts >= epoch_ms($from::BIGINT) AND e.ts < epoch_ms($to::BIGINT) AND ${positive}
     ),
     pairs AS (
       SELECT least(a.item_key, b.item_key) AS i, greatest(a.item_key, b.item_key) AS j, count(DISTINCT a.user_key) AS users
       FROM pos a JOIN pos b ON a.user_key = b.user_key AND b.r > a.r AND b.r <= a.r + ${Math.floor(span)}
       WHERE a.item_key <> b.item_key GROUP BY ALL
     ),
     sym AS (SELECT i, j, users FROM pairs UNION ALL SELECT j AS i, i AS j, users FROM pairs),
     ranked AS (
       SELECT s.i, s.j, s.users, it.cluster_key AS cj,
              row_number() OVER (PARTITION BY s.i, it.cluster_key ORDER BY s.users DESC, s.j) AS k
       FROM sym s JOIN items it ON it.item_key = s.j
     )
     SELECT i, j, cj, users::INTEGER AS users FROM ranked WHERE k <= ${Math.floor(perCluster)} ORDER BY i, cj, users DESC, j`,
    params as never,
  );
  const n = covisits.currentRowCount;
  const [is, js, cjs, weights] = n ? (covisits.getColumns() as [number[], number[], number[], number[]]) : [[], [], [], []];
  const items = catalog.itemCount;
  const counts = new Int32Array(items + 1);
  const rows: number[] = [];
  for (let r = 0; r < n; r++) {
    const i = catalog.itemOfKey[is[r]];
    const j = catalog.itemOfKey[js[r]];
    if (i < 0 || j < 0) continue;
    counts[i + 1]++;
    rows.push(r);
  }
  const neighborStart = new Int32Array(items + 1);
  for (let i = 0; i < items; i++) neighborStart[i + 1] = neighborStart[i] + counts[i + 1];
  const total = neighborStart[items];
  const neighborItem = new Int32Array(total);
  const neighborCluster = new Int32Array(total);
  const neighborWeight = new Float32Array(total);
  // Rows come sorted by (item key, cluster key, weight desc); item keys and cluster keys map to indices in the same
  // order (the catalog is read ordered by key), so each item's slice stays sorted by cluster index.
  const fill = neighborStart.slice(0, items);
  for (const r of rows) {
    const i = catalog.itemOfKey[is[r]];
    const at = fill[i]++;
    neighborItem[at] = catalog.itemOfKey[js[r]];
    neighborCluster[at] = catalog.clusterOfKey[cjs[r]];
    neighborWeight[at] = weights[r];
  }

  const popular = await store.connection.runAndReadAll(
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
    params as never,
  );
  const m = popular.currentRowCount;
  const [pItems, pClusters, pUsers] = m ? (popular.getColumns() as [number[], number[], number[]]) : [[], [], []];
  const K = catalog.clusterCount;
  const popularStart = new Int32Array(K + 1);
  for (let r = 0; r < m; r++) popularStart[catalog.clusterOfKey[pClusters[r]] + 1]++;
  for (let c = 0; c < K; c++) popularStart[c + 1] += popularStart[c];
  const popularItem = new Int32Array(m);
  const popularWeight = new Float32Array(m);
  const pFill = popularStart.slice(0, K);
  const clusterUsers = new Float64Array(K);
  for (let r = 0; r < m; r++) {
    const c = catalog.clusterOfKey[pClusters[r]];
    const at = pFill[c]++;
    popularItem[at] = catalog.itemOfKey[pItems[r]];
    popularWeight[at] = pUsers[r];
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
    neighborItem,
    neighborCluster,
    neighborWeight,
    popularStart,
    popularItem,
    popularWeight,
    coldStart: Int32Array.from(order),
    coldStartScore: Float32Array.from(order, (c) => novel.get(catalog.clusterIds[c]) ?? 0),
    pairs: total,
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
  };
}
