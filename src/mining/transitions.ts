/**
 * Histories and novel-interest transitions, mined with DuckDB SQL over the event store.
 *
 * Per user, positively engaged events in time order (ties broken by item) are mapped to clusters and
 * consecutive repeats are collapsed, so A A B A becomes A B A. A history is the last two distinct clusters
 * (c1, c2); a transition is (c1, c2) -> next with next not in {c1, c2}. A transition belongs to the window
 * that holds the event of `next`; its history may come from earlier, but nothing at or after the window's end
 * is ever read: the `ts < to` filter sits in the innermost scan, before any window function.
 *
 * @example
 * const counts = await countTransitions(store, { from: Date.parse("2025-03-01"), to: Date.parse("2025-04-01") });
 */
import { listValue } from "@duckdb/node-api";
import type { EventStore } from "../data/event-store.js";
import type { History, TimeWindow, TransitionCount } from "../domain/types.js";

export interface MiningOptions {
  /**
   * Minimum engagement that counts as positive; events without an engagement value always count.
   * @defaultValue null (every event counts)
   */
  readonly positiveMin?: number | null;
}

/** The collapsed cluster sequence of every user from events before `to`, as SQL (a CTE body named `seq`). */
function sequenceSql(options: MiningOptions): string {
  const positive = options.positiveMin === null || options.positiveMin === undefined ? "" : "AND (e.engagement IS NULL OR e.engagement >= $positiveMin)";
  return `
    pos AS (
      SELECT e.user_key, e.ts, e.item_key, i.cluster_key
      FROM events e JOIN items i USING (item_key)
      WHERE e.ts < epoch_ms($to::BIGINT) ${positive}
    ),
    runs AS (
      SELECT user_key, ts, item_key, cluster_key,
             cluster_key IS DISTINCT FROM lag(cluster_key) OVER (PARTITION BY user_key ORDER BY ts, item_key) AS starts
      FROM pos
    ),
    seq AS (SELECT user_key, ts, item_key, cluster_key FROM runs WHERE starts)`;
}

function params(window: Partial<TimeWindow> & { to: number }, options: MiningOptions): Record<string, number | bigint> {
  const p: Record<string, number | bigint> = { to: BigInt(Math.round(window.to)) };
  if (window.from !== undefined) p.from = BigInt(Math.round(window.from));
  if (options.positiveMin !== null && options.positiveMin !== undefined) p.positiveMin = options.positiveMin;
  return p;
}

/**
 * Counts novel transitions whose `next` event lies in [from, to), each user counted at most once per triple.
 * Sorted by pair, then users descending, then cluster id, so results are deterministic.
 */
export async function countTransitions(store: EventStore, window: TimeWindow, options: MiningOptions = {}): Promise<TransitionCount[]> {
  const rows = await store.query<{ c1: string; c2: string; next: string; users: bigint }>(
    `WITH ${sequenceSql(options)},
     trip AS (
       SELECT user_key, ts,
              lag(cluster_key, 2) OVER w AS c1, lag(cluster_key, 1) OVER w AS c2, cluster_key AS cn
       FROM seq WINDOW w AS (PARTITION BY user_key ORDER BY ts, item_key)
     ),
     counted AS (
       SELECT c1, c2, cn, count(DISTINCT user_key) AS users FROM trip
       WHERE c1 IS NOT NULL AND cn <> c1 AND ts >= epoch_ms($from::BIGINT)
       GROUP BY c1, c2, cn
     )
     SELECT k1.cluster_id AS c1, k2.cluster_id AS c2, kn.cluster_id AS next, users
     FROM counted
     JOIN clusters k1 ON k1.cluster_key = counted.c1
     JOIN clusters k2 ON k2.cluster_key = counted.c2
     JOIN clusters kn ON kn.cluster_key = counted.cn
     ORDER BY c1, c2, users DESC, next`,
    params(window, options),
  );
  return rows.map((r) => ({ c1: r.c1, c2: r.c2, next: r.next, users: Number(r.users) }));
}

/** Transition counts per calendar month (UTC) of the `next` event, for drift analysis. */
export async function countTransitionsByMonth(
  store: EventStore,
  window: TimeWindow,
  options: MiningOptions = {},
): Promise<Map<string, TransitionCount[]>> {
  const rows = await store.query<{ month: string; c1: string; c2: string; next: string; users: bigint }>(
    `WITH ${sequenceSql(options)},
     trip AS (
       SELECT user_key, ts,
              lag(cluster_key, 2) OVER w AS c1, lag(cluster_key, 1) OVER w AS c2, cluster_key AS cn
       FROM seq WINDOW w AS (PARTITION BY user_key ORDER BY ts, item_key)
     ),
     counted AS (
       SELECT strftime(date_trunc('month', ts), '%Y-%m') AS month, c1, c2, cn, count(DISTINCT user_key) AS users FROM trip
       WHERE c1 IS NOT NULL AND cn <> c1 AND ts >= epoch_ms($from::BIGINT)
       GROUP BY ALL
     )
     SELECT month, k1.cluster_id AS c1, k2.cluster_id AS c2, kn.cluster_id AS next, users
     FROM counted
     JOIN clusters k1 ON k1.cluster_key = counted.c1
     JOIN clusters k2 ON k2.cluster_key = counted.c2
     JOIN clusters kn ON kn.cluster_key = counted.cn
     ORDER BY month, c1, c2, users DESC, next`,
    params(window, options),
  );
  const byMonth = new Map<string, TransitionCount[]>();
  for (const r of rows) {
    let list = byMonth.get(r.month);
    if (!list) byMonth.set(r.month, (list = []));
    list.push({ c1: r.c1, c2: r.c2, next: r.next, users: Number(r.users) });
  }
  return byMonth;
}

/**
 * Each user's history as of `asOf`: their last two distinct positively engaged clusters before that time.
 * Users with fewer than two distinct clusters are left out. With `userIds`, only those users.
 */
export async function historiesAsOf(
  store: EventStore,
  asOf: number,
  options: MiningOptions & { userIds?: readonly string[] } = {},
): Promise<Map<string, History>> {
  const only = options.userIds ? "AND user_key IN (SELECT user_key FROM users WHERE list_contains($userIds::VARCHAR[], user_id))" : "";
  const p: Record<string, unknown> = params({ to: asOf }, options);
  if (options.userIds) p.userIds = listValue([...options.userIds]);
  const rows = await store.query<{ user_id: string; c1: string; c2: string }>(
    `WITH ${sequenceSql(options)},
     ranked AS (
       SELECT user_key, cluster_key, row_number() OVER (PARTITION BY user_key ORDER BY ts DESC, item_key DESC) AS back
       FROM seq WHERE true ${only}
     ),
     pairs AS (
       SELECT user_key, max(cluster_key) FILTER (WHERE back = 2) AS c1, max(cluster_key) FILTER (WHERE back = 1) AS c2
       FROM ranked WHERE back <= 2 GROUP BY user_key
     )
     SELECT u.user_id, k1.cluster_id AS c1, k2.cluster_id AS c2
     FROM pairs JOIN users u USING (user_key)
     JOIN clusters k1 ON k1.cluster_key = pairs.c1 JOIN clusters k2 ON k2.cluster_key = pairs.c2`,
    p as Record<string, never>,
  );
  return new Map(rows.map((r) => [r.user_id, { c1: r.c1, c2: r.c2 }]));
}
