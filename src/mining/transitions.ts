/**
 * Histories and novel-interest transitions, mined with SQL in whichever store holds the events (DuckDB or
 * PostgreSQL: the same query where the dialects agree, a per-dialect fragment where not; the results are the same,
 * test/data/event-store-conformance.ts checks it).
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
import type { EventStoreContract, SqlParam } from "../data/event-store.js";
import type { History, TimeWindow, Transition, TransitionCount } from "../domain/types.js";

export interface MiningOptions {
  /**
   * Minimum engagement that counts as positive; events without an engagement value always count.
   * @defaultValue null (every event counts)
   */
  readonly positiveMin?: number | null;
}

/**
 * Events are ordered by (ts, item) so that equal timestamps still give one order. Sorting one packed integer is
 * about 20% faster in DuckDB than sorting the pair, so the pair is packed into a BIGINT (ms << 20 | item key)
 * while the catalog's keys fit in 20 bits, and into a HUGEINT beyond that; both orders are the same.
 */
async function orderKeySql(store: EventStoreContract): Promise<string> {
  const [row] = await store.query<{ k: number | null }>("SELECT max(item_key) AS k FROM items");
  if ((row?.k ?? 0) < 2 ** 20) return "epoch_ms(e.ts) * 1048576 + e.item_key";
  return store.dialect === "postgres" ? "epoch_ms(e.ts)::NUMERIC * 4294967296 + e.item_key" : "epoch_ms(e.ts)::HUGEINT * 4294967296 + e.item_key";
}

/**
 * The positive-engagement filter on events `e` (with a leading AND), or "" when every event counts. The threshold
 * is compared as a DOUBLE on both stores: PostgreSQL would otherwise read the parameter as REAL, the column's type,
 * and round it before comparing.
 */
export function positiveFilterSql(store: EventStoreContract, options: MiningOptions): string {
  if (options.positiveMin === null || options.positiveMin === undefined) return "";
  return store.dialect === "postgres" ? "AND (e.engagement IS NULL OR e.engagement >= $positiveMin::FLOAT8)" : "AND (e.engagement IS NULL OR e.engagement >= $positiveMin)";
}

/** `ORDER BY` text of a string column: PostgreSQL sorts by the database's collation, DuckDB (and JS) by code point. */
function byCodePoint(store: EventStoreContract, column: string): string {
  return store.dialect === "postgres" ? `${column} COLLATE "C"` : column;
}

/** The collapsed cluster sequence of every user from events before `to`, as SQL (a CTE body named `seq`). */
function sequenceSql(store: EventStoreContract, options: MiningOptions, orderKey: string): string {
  const positive = positiveFilterSql(store, options);
  return `
    pos AS (
      SELECT e.user_key, e.ts, ${orderKey} AS order_key, i.cluster_key
      FROM events e JOIN items i USING (item_key)
      WHERE e.ts < epoch_ms($to::BIGINT) ${positive}
    ),
    runs AS (
      SELECT user_key, ts, order_key, cluster_key,
             cluster_key IS DISTINCT FROM lag(cluster_key) OVER (PARTITION BY user_key ORDER BY order_key) AS starts
      FROM pos
    ),
    seq AS (SELECT user_key, ts, order_key, cluster_key FROM runs WHERE starts)`;
}

function params(window: Partial<TimeWindow> & { to: number }, options: MiningOptions): Record<string, SqlParam> {
  const p: Record<string, SqlParam> = { to: BigInt(Math.round(window.to)) };
  if (window.from !== undefined) p.from = BigInt(Math.round(window.from));
  if (options.positiveMin !== null && options.positiveMin !== undefined) p.positiveMin = options.positiveMin;
  return p;
}

/**
 * Counts novel transitions whose `next` event lies in [from, to), each user counted at most once per triple.
 * Sorted by pair, then users descending, then cluster id, so results are deterministic.
 */
export async function countTransitions(store: EventStoreContract, window: TimeWindow, options: MiningOptions = {}): Promise<TransitionCount[]> {
  const byMonth = await countTriples(store, window, options, { kind: "none" });
  return byMonth.get("") ?? [];
}

/**
 * `countTransitions` of many windows of one length in one query: for each end T in `ends`, the window
 * [T - windowMs, T), keyed by T, each exactly what `countTransitions` returns for it (a transition belongs to every
 * window that holds its `next` event; its history only depends on earlier events). Windows may overlap, as the
 * 7-day windows of refreshes every 2 days do. Windows without transitions are absent.
 */
export async function countTransitionsForWindows(
  store: EventStoreContract,
  ends: readonly number[],
  windowMs: number,
  options: MiningOptions = {},
): Promise<Map<number, TransitionCount[]>> {
  const list = [...new Set(ends.map((e) => Math.round(e)))].sort((a, b) => a - b);
  if (list.length === 0) return new Map();
  const byEnd = await countTriples(store, { from: list[0] - windowMs, to: list.at(-1)! }, options, { kind: "windows", ends: list, windowMs: Math.round(windowMs) });
  return new Map([...byEnd].map(([k, v]) => [Number(k), v]));
}

/** Transition counts per calendar month (UTC) of the `next` event, for drift analysis. */
export async function countTransitionsByMonth(
  store: EventStoreContract,
  window: TimeWindow,
  options: MiningOptions = {},
): Promise<Map<string, TransitionCount[]>> {
  return countTriples(store, window, options, { kind: "month" });
}

type Bucket = { kind: "none" } | { kind: "month" } | { kind: "windows"; ends: readonly number[]; windowMs: number };

/**
 * The one transition query. Results come back as integer columns (cluster keys) and are mapped to cluster
 * ids here: building JS objects row by row from DuckDB costs more than the query itself at 10M events.
 */
async function countTriples(store: EventStoreContract, window: TimeWindow, options: MiningOptions, bucket: Bucket): Promise<Map<string, TransitionCount[]>> {
  const postgres = store.dialect === "postgres";
  const month =
    bucket.kind === "month"
      ? postgres
        ? "to_char(ts, 'YYYY-MM')"
        : "strftime(date_trunc('month', ts), '%Y-%m')"
      : bucket.kind === "windows"
        ? "window_end::VARCHAR"
        : "''";
  // Windows: each transition joins every window end T with T - windowMs <= ts < T (a range join DuckDB runs as one
  // pass over the sorted ends), so overlapping windows cost one scan of the history, not one each.
  const windows =
    bucket.kind === "windows"
      ? `JOIN (SELECT unnest(${postgres ? "ARRAY" : ""}[${bucket.ends.map((e) => `${Math.round(e)}`).join(",")}]::BIGINT[]) AS window_end) w
           ON epoch_ms(trip.ts) >= w.window_end - ${bucket.windowMs} AND epoch_ms(trip.ts) < w.window_end`
      : "";
  const result = await store.queryColumns(
    `WITH ${sequenceSql(store, options, await orderKeySql(store))},
     trip AS (
       SELECT user_key, ts,
              lag(cluster_key, 2) OVER w AS c1, lag(cluster_key, 1) OVER w AS c2, cluster_key AS cn
       FROM seq WINDOW w AS (PARTITION BY user_key ORDER BY order_key)
     )
     SELECT ${month} AS month, c1, c2, cn, count(DISTINCT user_key)::INTEGER AS users FROM trip ${windows}
     WHERE c1 IS NOT NULL AND cn <> c1 AND ts >= epoch_ms($from::BIGINT)
     ${postgres ? "GROUP BY 1, 2, 3, 4" : "GROUP BY ALL"}`,
    params(window, options),
  );
  if (result.rowCount === 0) return new Map();
  const ids = new Map((await store.query<{ k: number; id: string }>("SELECT cluster_key AS k, cluster_id AS id FROM clusters")).map((r) => [r.k, r.id]));
  const [months, c1s, c2s, cns, users] = result.columns as [string[], number[], number[], number[], number[]];
  const order = Array.from(months.keys()).map((k) => ({
    month: months[k],
    c1: ids.get(c1s[k])!,
    c2: ids.get(c2s[k])!,
    next: ids.get(cns[k])!,
    users: users[k],
  }));
  const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  order.sort((a, b) => cmp(a.month, b.month) || cmp(a.c1, b.c1) || cmp(a.c2, b.c2) || b.users - a.users || cmp(a.next, b.next));
  const byMonth = new Map<string, TransitionCount[]>();
  for (const r of order) {
    let list = byMonth.get(r.month);
    if (!list) byMonth.set(r.month, (list = []));
    list.push({ c1: r.c1, c2: r.c2, next: r.next, users: r.users });
  }
  return byMonth;
}

/**
 * Each user's history as of `asOf`: their last two distinct positively engaged clusters before that time.
 * Users with fewer than two distinct clusters are left out. With `userIds`, only those users.
 */
export async function historiesAsOf(
  store: EventStoreContract,
  asOf: number,
  options: MiningOptions & { userIds?: readonly string[] } = {},
): Promise<Map<string, History>> {
  const member = store.dialect === "postgres" ? "user_id = ANY($userIds::TEXT[])" : "list_contains($userIds::VARCHAR[], user_id)";
  const only = options.userIds ? `AND user_key IN (SELECT user_key FROM users WHERE ${member})` : "";
  const p: Record<string, SqlParam> = params({ to: asOf }, options);
  if (options.userIds) p.userIds = [...options.userIds];
  const rows = await store.query<{ user_id: string; c1: string; c2: string }>(
    `WITH ${sequenceSql(store, options, await orderKeySql(store))},
     ranked AS (
       SELECT user_key, cluster_key, row_number() OVER (PARTITION BY user_key ORDER BY order_key DESC) AS back
       FROM seq WHERE true ${only}
     ),
     pairs AS (
       SELECT user_key, max(cluster_key) FILTER (WHERE back = 2) AS c1, max(cluster_key) FILTER (WHERE back = 1) AS c2
       FROM ranked WHERE back <= 2 GROUP BY user_key
     )
     SELECT u.user_id, k1.cluster_id AS c1, k2.cluster_id AS c2
     FROM pairs JOIN users u USING (user_key)
     JOIN clusters k1 ON k1.cluster_key = pairs.c1 JOIN clusters k2 ON k2.cluster_key = pairs.c2`,
    p,
  );
  return new Map(rows.map((r) => [r.user_id, { c1: r.c1, c2: r.c2 }]));
}

/** A held-out user: their history when the window's first novel transition happened, and what they did next. */
export interface FutureExample extends History {
  readonly userId: string;
  /** Distinct clusters the user engaged with positively from that transition on, inside the window. */
  readonly later: readonly string[];
}

/**
 * For each user with a novel transition in [from, to): the history (c1, c2) of their first one, and the clusters
 * they went on to engage with inside the window. This is what test recall scores a table's answer against.
 */
export async function futureExamples(store: EventStoreContract, window: TimeWindow, options: MiningOptions = {}): Promise<FutureExample[]> {
  const postgres = store.dialect === "postgres";
  // PostgreSQL has no arg_min or list: the first of an ordered array_agg is the same value.
  const atFirst = (column: string) => (postgres ? `(array_agg(${column} ORDER BY order_key))[1]` : `arg_min(${column}, order_key)`);
  const later = postgres ? `array_agg(DISTINCT k.cluster_id COLLATE "C" ORDER BY k.cluster_id COLLATE "C")` : "list(DISTINCT k.cluster_id ORDER BY k.cluster_id)";
  const rows = await store.query<{ user_id: string; c1: string; c2: string; later: string[] }>(
    `WITH ${sequenceSql(store, options, await orderKeySql(store))},
     trip AS (
       SELECT user_key, ts, order_key,
              lag(cluster_key, 2) OVER w AS c1, lag(cluster_key, 1) OVER w AS c2, cluster_key AS cn
       FROM seq WINDOW w AS (PARTITION BY user_key ORDER BY order_key)
     ),
     first_novel AS (
       SELECT user_key, ${atFirst("c1")} AS c1, ${atFirst("c2")} AS c2, min(order_key) AS start_key
       FROM trip WHERE c1 IS NOT NULL AND cn <> c1 AND ts >= epoch_ms($from::BIGINT)
       GROUP BY user_key
     ),
     later AS (
       SELECT f.user_key, ${later} AS later
       FROM first_novel f JOIN seq s ON s.user_key = f.user_key AND s.order_key >= f.start_key
       JOIN clusters k ON k.cluster_key = s.cluster_key
       GROUP BY f.user_key
     )
     SELECT u.user_id, k1.cluster_id AS c1, k2.cluster_id AS c2, later.later
     FROM first_novel f JOIN later USING (user_key) JOIN users u USING (user_key)
     JOIN clusters k1 ON k1.cluster_key = f.c1 JOIN clusters k2 ON k2.cluster_key = f.c2
     ORDER BY ${byCodePoint(store, "u.user_id")}`,
    params(window, options),
  );
  return rows.map((r) => ({ userId: r.user_id, c1: r.c1, c2: r.c2, later: r.later }));
}

/** One user's novel transition with its time and the clusters that followed it (for replay scoring). */
export interface TimedTransition extends Transition {
  readonly userId: string;
  readonly ts: number;
  /** The next `horizon` distinct-run clusters from this transition on (the first is `next`). */
  readonly horizon: readonly string[];
}

/**
 * Every novel transition whose `next` event lies in [from, to), with the user's following clusters up to
 * `horizon` runs, read only from events before `to`. Not deduplicated per user: replay scores each real
 * transition against the table that was live at its moment. In time order, ties by user id, then by the sequence's
 * own order, on both stores: the same log gives the same list every time, so a model trained on it repeats.
 */
export async function timedTransitions(
  store: EventStoreContract,
  window: TimeWindow,
  options: MiningOptions & { horizon?: number } = {},
): Promise<TimedTransition[]> {
  const horizon = options.horizon ?? 5;
  const leads = Array.from({ length: horizon - 1 }, (_, k) => `lead(cluster_key, ${k + 1}) OVER w AS h${k + 1}`).join(", ");
  const result = await store.queryColumns(
    `WITH ${sequenceSql(store, options, await orderKeySql(store))},
     trip AS (
       SELECT user_key, ts, order_key, lag(cluster_key, 2) OVER w AS c1, lag(cluster_key, 1) OVER w AS c2, cluster_key AS cn${leads ? `, ${leads}` : ""}
       FROM seq WINDOW w AS (PARTITION BY user_key ORDER BY order_key)
     )
     SELECT u.user_id, epoch_ms(trip.ts) AS ts, c1, c2, cn${Array.from({ length: horizon - 1 }, (_, k) => `, h${k + 1}`).join("")}
     FROM trip JOIN users u USING (user_key)
     WHERE c1 IS NOT NULL AND cn <> c1 AND trip.ts >= epoch_ms($from::BIGINT)
     ORDER BY trip.ts, ${byCodePoint(store, "u.user_id")}, trip.order_key`,
    params(window, options),
  );
  const ids = new Map((await store.query<{ k: number; id: string }>("SELECT cluster_key AS k, cluster_id AS id FROM clusters")).map((r) => [r.k, r.id]));
  const columns = result.columns;
  const out: TimedTransition[] = [];
  for (let r = 0; r < result.rowCount; r++) {
    const after: string[] = [ids.get(columns[4][r] as number)!];
    for (let k = 0; k < horizon - 1; k++) {
      const key = columns[5 + k][r];
      if (key === null) break;
      after.push(ids.get(key as number)!);
    }
    out.push({
      userId: columns[0][r] as string,
      ts: Number(columns[1][r]),
      c1: ids.get(columns[2][r] as number)!,
      c2: ids.get(columns[3][r] as number)!,
      next: after[0],
      horizon: after,
    });
  }
  return out;
}

/** Every novel transition of a window in columnar form, in time order (ties by user key, then the sequence's order): what `EvidenceLog` holds. */
export interface TransitionColumns {
  readonly users: Int32Array;
  readonly ts: Float64Array;
  /** Cluster ids, indexes into `clusters`. */
  readonly c1: Int32Array;
  readonly c2: Int32Array;
  readonly next: Int32Array;
  readonly clusters: readonly string[];
}

/**
 * The novel transitions whose `next` event lies in [from, to), one row per occurrence (not deduplicated), as
 * integer columns: the raw material every window count of a refresh is cut from, read in one query. Nothing at or
 * after `to` is read.
 */
export async function transitionColumns(store: EventStoreContract, window: TimeWindow, options: MiningOptions = {}): Promise<TransitionColumns> {
  // Ties of (time, user) in the sequence's own order on both stores, so that the same log gives the same rows in the
  // same order every time (a model trained on them repeats; DuckDB's parallel sort alone does not).
  const result = await store.queryColumns(
    `WITH ${sequenceSql(store, options, await orderKeySql(store))},
     trip AS (
       SELECT user_key, ts, order_key, lag(cluster_key, 2) OVER w AS c1, lag(cluster_key, 1) OVER w AS c2, cluster_key AS cn
       FROM seq WINDOW w AS (PARTITION BY user_key ORDER BY order_key)
     )
     SELECT user_key, epoch_ms(ts) AS ts, c1, c2, cn FROM trip
     WHERE c1 IS NOT NULL AND cn <> c1 AND ts >= epoch_ms($from::BIGINT)
     ORDER BY trip.ts, user_key, order_key`,
    params(window, options),
  );
  const rows = result.rowCount;
  const clusterRows = await store.query<{ k: number; id: string }>("SELECT cluster_key AS k, cluster_id AS id FROM clusters ORDER BY cluster_key");
  const index = new Map(clusterRows.map((r, i) => [r.k, i]));
  const out = {
    users: new Int32Array(rows),
    ts: new Float64Array(rows),
    c1: new Int32Array(rows),
    c2: new Int32Array(rows),
    next: new Int32Array(rows),
    clusters: clusterRows.map((r) => r.id),
  };
  if (rows === 0) return out;
  const [u, t, a, b, n] = result.columns as [number[], (number | bigint)[], number[], number[], number[]];
  for (let r = 0; r < rows; r++) {
    out.users[r] = u[r];
    out.ts[r] = Number(t[r]);
    out.c1[r] = index.get(a[r])!;
    out.c2[r] = index.get(b[r])!;
    out.next[r] = index.get(n[r])!;
  }
  return out;
}
