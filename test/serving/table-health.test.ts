/**
 * What the server says about the tables it serves from: readiness follows a failing reload (503 naming the table and
 * the reason, while the last good table keeps answering), and an answer for a history naming a cluster the table
 * does not know says so (fallback "unknown-cluster"), each metered.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import { SystemClock } from "../../src/domain/clock.js";
import { errorResponseSchema, explorationResponseSchema, healthResponseSchema, startServer, type RunningServer } from "../../src/serving/index.js";
import { SqliteTableStore, tableStorePath } from "../../src/tables/index.js";
import { setFirstAnswers } from "../tables/fixtures/blocks.js";
import { STATS, tableRows } from "../tables/fixtures/rows.js";
import { servingWorkspace, type ServingWorkspace } from "./fixtures.js";

let ws: ServingWorkspace;
let server: RunningServer;
const NEW_CLUSTER = "brand-new-cluster";

async function get(path: string) {
  const response = await fetch(`${server.url}${path}`);
  return { status: response.status, body: (await response.json()) as any };
}
const metrics = async () => (await fetch(`${server.url}/metrics`)).text();

beforeAll(async () => {
  ws = await servingWorkspace({ users: 120, events: 10_000 });
  // A cluster newer than every table, and a user whose history ends in it.
  const events = await EventStore.open(join(ws.dir, "events.duckdb"));
  await events.append({ clusters: [{ id: NEW_CLUSTER, description: "something nobody had before" }], items: [{ id: "new-item-1", clusterId: NEW_CLUSTER }] });
  const t = ws.world.endMs - 60_000;
  await events.append({
    events: eventBatchFromEvents([
      { userId: "moved-on", itemId: ws.world.itemId(3), ts: t, engagement: 0.9 },
      { userId: "moved-on", itemId: "new-item-1", ts: t + 1000, engagement: 0.9 },
    ]),
  });
  events.close();
  // The timer stays out of the way: each test polls the stores itself.
  server = await startServer({ workspace: ws.dir, port: 0, logLevel: "silent", validateResponses: true, reloadIntervalMs: 3_600_000 });
});

afterAll(async () => {
  await server?.close();
});

describe("readiness follows table reloads", () => {
  it("answers 503 naming the table and the reason while the live table fails to load; the last good table keeps serving", async () => {
    expect((await get("/readyz")).status).toBe(200);
    const store = SqliteTableStore.open(tableStorePath(ws.dir), new SystemClock());
    let broken: string;
    try {
      const build = store.beginBuild({ modelVersion: "successor", templateHash: "baseline" });
      build.append(tableRows(ws.clusters, 3));
      broken = build.finish(STATS).version;
      // Its answers name a cluster index no dictionary has: the table cannot be loaded.
      expect(setFirstAnswers(tableStorePath(ws.dir), broken, 30_000)).toBeGreaterThan(0);
      store.publish(broken);
      await server.state.tables.poll();

      const ready = await get("/readyz");
      expect(ready.status).toBe(503);
      errorResponseSchema.parse(ready.body);
      expect(ready.body.error.code).toBe("NOT_READY");
      expect(ready.body.error.message).toContain(broken);
      expect(ready.body.error.message).toContain(`still serving ${ws.rag}`);
      expect(ready.body.error.message).toMatch(/outside its cluster dictionary/);
      const health = await get("/healthz");
      expect(health.status).toBe(200);
      healthResponseSchema.parse(health.body);
      expect(health.body).toMatchObject({
        ready: false,
        table: { version: ws.rag },
        reloadFailures: [{ binding: "live", version: broken, error: expect.stringMatching(/outside its cluster dictionary/), attempts: 1 }],
      });
      const warm = [...Array(50).keys()].map((k) => ws.world.userId(k)).find((u) => server.state.users.get(u)?.history)!;
      const explored = await get(`/v1/users/${warm}/exploration?n=3`);
      expect(explored.status).toBe(200);
      expect(explored.body.table.version).toBe(ws.rag);
      const text = await metrics();
      expect(text).toContain('freshrec_table_reload_failing{binding="live"} 1');
      expect(text).toMatch(/^freshrec_table_reload_errors_total [1-9]\d*$/m);

      // Back to a table that loads: ready again.
      store.rollback({ actor: "test" });
      await server.state.tables.poll();
      expect((await get("/readyz")).status).toBe(200);
      expect((await get("/healthz")).body).toMatchObject({ ready: true, reloadFailures: [] });
      expect(await metrics()).toContain('freshrec_table_reload_failing{binding="live"} 0');
    } finally {
      store.close();
    }
  });
});

describe("a history naming a cluster the table does not know", () => {
  it("is answered with fallback unknown-cluster (not a cold start, not a lookup miss) and metered", async () => {
    const before = await metrics();
    const count = (text: string, name: string) => Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)?.[1] ?? "NaN");
    const { status, body } = await get("/v1/users/moved-on/exploration?n=3&items=0");
    expect(status).toBe(200);
    explorationResponseSchema.parse(body);
    expect(body).toMatchObject({ coldStart: false, fallback: "unknown-cluster", history: { c2: NEW_CLUSTER }, table: { version: ws.rag } });
    expect(body.recommendations.length).toBe(3);
    const after = await metrics();
    expect(count(after, "freshrec_unknown_cluster_fallbacks_total") - count(before, "freshrec_unknown_cluster_fallbacks_total")).toBe(1);
    expect(count(after, "freshrec_cold_starts_total")).toBe(count(before, "freshrec_cold_starts_total"));
    expect(count(after, "freshrec_table_lookup_misses_total")).toBe(count(before, "freshrec_table_lookup_misses_total"));
  });

  it("is labelled the same for a history given by the caller with a cluster the catalog does not know (the simulated A/B)", async () => {
    const known = ws.clusters[0];
    const answer = await server.state.explorer.explore({ userId: "simulated", lookup: server.state.tables.lookup(), n: 3, itemsPerCluster: 0, history: { c1: known, c2: "not-in-any-catalog" } });
    expect(answer).toMatchObject({ coldStart: false, fallback: "unknown-cluster" });
    expect(answer.recommendations.map((r) => r.cluster)).not.toContain(known);
  });
});
