/**
 * A copy of an event store, through the store contract, for the commands that work on a scratch copy of a
 * deployment's or a workspace's events (`experiment simulate`, `schedule run --simulate`): the source may be
 * PostgreSQL, the workspace's file, or the file read through the process that holds it, and is only read.
 */
import { FreshrecError } from "../domain/errors.js";
import type { EventBatch, EventChunk, EventStore, EventStoreContract } from "./event-store.js";

/** Users per page when copying events: one page of their events is read and staged at a time. */
const COPY_USERS_PER_PAGE = 5_000;

/**
 * Copies `source`'s catalog, users, events and dataset facts into the empty `target` in one append (whole or not at
 * all), in `source`'s key order, so that the copy numbers clusters, items and users as `source` does. The source may
 * be appended to meanwhile (a deployment's intake): the copy holds the users and items read first and only their
 * events, so an event is never attributed to another user or item; an event appended during the copy may or may not be in it.
 */
export async function copyEvents(source: EventStoreContract, target: EventStore): Promise<void> {
  const clusters = await source.clusters();
  const items = await source.query<{ item_key: number; item_id: string; cluster_id: string; title: string | null }>(
    "SELECT i.item_key, i.item_id, c.cluster_id, i.title FROM items i JOIN clusters c USING (cluster_key) ORDER BY i.item_key",
  );
  const users = await source.query<{ user_key: number; user_id: string }>("SELECT user_key, user_id FROM users ORDER BY user_key");
  const meta = await source.query<{ key: string; value: string }>("SELECT key, value FROM meta ORDER BY key");
  const itemIndex = new Map(items.map((row, k) => [Number(row.item_key), k]));
  const userIndex = new Map(users.map((row, k) => [Number(row.user_key), k]));
  const lastUser = users.length ? Number(users[users.length - 1].user_key) : 0;
  const lastItem = items.length ? Number(items[items.length - 1].item_key) : 0;
  const indexOf = (index: Map<number, number>, key: unknown, what: string): number => {
    const found = index.get(Number(key));
    if (found === undefined) throw new FreshrecError("INTERNAL", `copying ${source.location}: an event names ${what} key ${String(key)}, which the copy did not read`);
    return found;
  };
  async function* chunks(): AsyncIterable<EventChunk> {
    for (let after = 0; after < lastUser; after += COPY_USERS_PER_PAGE) {
      const { rowCount, columns } = await source.queryColumns(
        "SELECT user_key, item_key, epoch_ms(ts) AS ts, engagement FROM events WHERE user_key > $after AND user_key <= $upto AND item_key <= $lastItem ORDER BY user_key, ts, item_key",
        { after, upto: Math.min(after + COPY_USERS_PER_PAGE, lastUser), lastItem },
      );
      if (rowCount === 0) continue;
      const [u, i, ts, engagement] = columns;
      const chunk = { length: rowCount, userIndex: new Int32Array(rowCount), itemIndex: new Int32Array(rowCount), ts: new Float64Array(rowCount), engagement: new Float32Array(rowCount) };
      for (let k = 0; k < rowCount; k++) {
        chunk.userIndex[k] = indexOf(userIndex, u[k], "user");
        chunk.itemIndex[k] = indexOf(itemIndex, i[k], "item");
        chunk.ts[k] = Number(ts[k]);
        chunk.engagement[k] = engagement[k] === null ? Number.NaN : Number(engagement[k]);
      }
      yield chunk;
    }
  }
  const batch: EventBatch = { userIds: users.map((row) => row.user_id), itemIds: items.map((row) => row.item_id), chunks: chunks() };
  await target.append({
    clusters,
    items: items.map((row) => ({ id: row.item_id, clusterId: row.cluster_id, ...(row.title === null ? {} : { title: row.title }) })),
    events: batch,
    meta: Object.fromEntries(meta.map((row) => [row.key, row.value])),
  });
}
