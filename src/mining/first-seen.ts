/**
 * When each cluster (or user) first appears in the log: its first positive event. Replay segments call a cluster
 * "new" by it, and a fusion refresh tells by it which clusters a model's training data could hold (those first
 * seen before the model's data ends). The minimum over the whole store reveals nothing later than any time it is
 * compared with: a first event at or before T is an event at or before T.
 *
 * @example
 * const first = await firstSeen(store, "cluster", { positiveMin });
 * const launchedAfter = [...first].filter(([, ts]) => ts >= model.dataAsOf);
 */
import type { EventStoreContract } from "../data/event-store.js";
import { positiveFilterSql, type MiningOptions } from "./transitions.js";

/** First positive event time (ms) per cluster id or user id; ids without a positive event are absent. */
export async function firstSeen(events: EventStoreContract, by: "cluster" | "user", options: MiningOptions = {}): Promise<Map<string, number>> {
  const everyEvent = options.positiveMin === null || options.positiveMin === undefined;
  // The same filter as mining's, with WHERE for its leading AND.
  const where = everyEvent ? "" : `WHERE true ${positiveFilterSql(events, options)}`;
  const params: Record<string, number> = everyEvent ? {} : { positiveMin: options.positiveMin! };
  const sql =
    by === "cluster"
      ? `SELECT c.cluster_id AS id, epoch_ms(min(e.ts)) AS first FROM events e JOIN items i USING (item_key) JOIN clusters c USING (cluster_key) ${where} GROUP BY 1`
      : `SELECT u.user_id AS id, epoch_ms(min(e.ts)) AS first FROM events e JOIN users u USING (user_key) ${where} GROUP BY 1`;
  const rows = await events.query<{ id: string; first: number | bigint }>(sql, params);
  return new Map(rows.map((r) => [r.id, Number(r.first)]));
}
