/**
 * Serving on a PostgreSQL store (store.url, issue 19): two servers on one real database (a throwaway cluster) answer
 * exactly what a server over the embedded workspace answers for the same data and tables, a publish or rollback by
 * any process reaches both through the database, the registry's live model comes from it too, and experiments say
 * plainly that they do not run there.
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { PostgresModelRegistry } from "../../src/llm/postgres-registry.js";
import { startServer, type RunningServer } from "../../src/serving/index.js";
import { PostgresTableStore, TableLookup } from "../../src/tables/index.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { seedPostgres, servingWorkspace, TOKEN, type ServingWorkspace } from "./fixtures.js";

const database = usePostgresCluster();
let ws: ServingWorkspace;
let url: string;
let embedded: RunningServer;
let replicas: RunningServer[] = [];

beforeAll(async () => {
  ws = await servingWorkspace();
  url = await database();
  await seedPostgres(url, ws);
  const common = { port: 0, adminToken: TOKEN, logLevel: "silent", reloadIntervalMs: 3_600_000 } as const;
  embedded = await startServer({ ...common, workspace: ws.dir });
  // Replicas: their own workspace folders (only models/ is read there), one database.
  replicas = [
    await startServer({ ...common, workspace: join(ws.dir, "replica-a"), storeUrl: url }),
    await startServer({ ...common, workspace: join(ws.dir, "replica-b"), storeUrl: url }),
  ];
}, 300_000);

afterAll(async () => {
  for (const s of [embedded, ...replicas]) await s?.close();
});

async function explore(server: RunningServer, user: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${server.url}/v1/users/${encodeURIComponent(user)}/exploration?n=5`);
  const body = (await res.json()) as Record<string, unknown>;
  // Per request, not per answer.
  delete body.requestId;
  return { status: res.status, body };
}

describe("serve on a PostgreSQL store", () => {
  it("answers every user exactly as the embedded workspace does (histories, grounding, table)", async () => {
    const users = Array.from({ length: 60 }, (_, k) => ws.world.userId(k));
    expect(replicas[0].state.users.size).toBe(embedded.state.users.size);
    let withHistory = 0;
    for (const user of users) {
      const expected = await explore(embedded, user);
      expect(expected.status).toBe(200);
      if (expected.body.fallback === null && (expected.body.recommendations as unknown[]).length) withHistory++;
      for (const replica of replicas) expect(await explore(replica, user)).toEqual(expected);
    }
    // The comparison means something only if most users were answered from the table.
    expect(withHistory).toBeGreaterThan(users.length / 2);
    expect(replicas[0].state.grounding.pairs).toBe(embedded.state.grounding.pairs);
  });

  it("a publish or rollback by any process reaches every replica through the database", async () => {
    const other = await PostgresTableStore.open(url, new VirtualClock(ws.world.endMs));
    try {
      expect(replicas.map((r) => r.state.tables.lookup()?.version)).toEqual([ws.rag, ws.rag]);
      await other.publish(ws.plain, { actor: "worker" });
      // The servers' timers are an hour apart here: each poll below is what the timer does.
      for (const r of replicas) await r.state.tables.poll();
      expect(replicas.map((r) => r.state.tables.lookup()?.version)).toEqual([ws.plain, ws.plain]);
      const user = ws.world.userId(3);
      const [a, b] = [await explore(replicas[0], user), await explore(replicas[1], user)];
      expect((a.body.table as { version: string }).version).toBe(ws.plain);
      expect(b).toEqual(a);

      // Through one replica's admin route: the other follows from the database.
      const rollback = await fetch(`${replicas[0].url}/v1/tables/rollback`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ reason: "back" }),
      });
      expect(rollback.status).toBe(200);
      expect(await rollback.json()).toMatchObject({ live: ws.rag, previous: ws.plain, serving: ws.rag });
      await replicas[1].state.tables.poll();
      expect(replicas[1].state.tables.lookup()?.version).toBe(ws.rag);
      const listed = (await (await fetch(`${replicas[1].url}/v1/tables`)).json()) as { live: string; tables: { version: string }[] };
      expect(listed.live).toBe(ws.rag);
      expect(listed.tables.map((t) => t.version)).toEqual([ws.plain, ws.rag, ws.fusion]);
    } finally {
      await other.close();
    }
  });

  it("follows the live model of the shared registry, and reviews through the API land in it", async () => {
    const registry = await PostgresModelRegistry.open(url, join(ws.dir, "worker"), new VirtualClock(ws.world.endMs));
    try {
      mkdirSync(join(registry.modelsDir, "m000001"), { recursive: true });
      const file = join(registry.modelsDir, "m000001", "model.gguf");
      writeFileSync(file, "weights");
      const base = await registry.register({ kind: "base", filePath: file });
      await registry.makeLive(base.version, "first");
      const candidate = await registry.register({ kind: "fine-tuned", parent: base.version, filePath: file, status: "halted" });
      for (const r of replicas) await r.state.tables.poll();
      expect(replicas.map((r) => r.state.tables.liveModelVersion)).toEqual([base.version, base.version]);

      const approve = await fetch(`${replicas[1].url}/v1/models/${candidate.version}/approve`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ reason: "looked at it" }),
      });
      expect(approve.status).toBe(200);
      expect((await registry.live())?.version).toBe(candidate.version);
      await replicas[0].state.tables.poll();
      expect(replicas[0].state.tables.liveModelVersion).toBe(candidate.version);
    } finally {
      await registry.close();
    }
  });

  it("hears a publish and a review as they commit (LISTEN/NOTIFY): replicas whose poll is an hour away follow at once", async () => {
    const other = await PostgresTableStore.open(url, new VirtualClock(ws.world.endMs));
    const registry = await PostgresModelRegistry.open(url, join(ws.dir, "worker"), new VirtualClock(ws.world.endMs));
    try {
      const before = replicas[0].state.tables.lookup()?.version;
      const next = before === ws.fusion ? ws.rag : ws.fusion;
      await other.publish(next, { actor: "worker" });
      const file = join(registry.modelsDir, "notified.gguf");
      writeFileSync(file, "other weights");
      const candidate = await registry.register({ kind: "base", filePath: file });
      await registry.makeLive(candidate.version, "gates passed");
      // No poll is called here and the servers' timers are an hour apart: only the notifications can do this. The
      // loop is bounded by the test's timeout, not by a time it asserts.
      const settled = () => replicas.every((r) => r.state.tables.lookup()?.version === next && r.state.tables.liveModelVersion === candidate.version);
      while (!settled()) await new Promise((r) => setTimeout(r, 20));
      expect(replicas.map((r) => [r.state.tables.lookup()?.version, r.state.tables.liveModelVersion])).toEqual([
        [next, candidate.version],
        [next, candidate.version],
      ]);
    } finally {
      await other.close();
      await registry.close();
    }
  }, 60_000);

  it("under load, flips published by another process and through the admin routes: zero failed and zero mixed-version answers on both replicas", async () => {
    const store = await PostgresTableStore.open(url, new VirtualClock(ws.world.endMs));
    const lookups = { [ws.plain]: TableLookup.fromPacked(await store.packed(ws.plain)), [ws.rag]: TableLookup.fromPacked(await store.packed(ws.rag)) };
    const state = replicas[0].state;
    const users = Array.from({ length: 200 }, (_, k) => ws.world.userId(k)).filter((u) => state.users.get(u)?.history);
    const expected = (version: string, user: string) => {
      const h = state.users.get(user)!.history!;
      const ids = state.catalog.clusterIds;
      return lookups[version].get(ids[h.c1], ids[h.c2])!.slice(0, 5).map((a) => a.cluster);
    };
    // The two tables must answer differently, or a mixed answer could not be told apart.
    expect(users.some((u) => expected(ws.plain, u).join() !== expected(ws.rag, u).join())).toBe(true);
    await store.publish(ws.rag);
    // Earlier tests left another table live: start once both replicas heard this publish.
    while (!replicas.every((r) => r.state.tables.lookup()?.version === ws.rag)) await new Promise((r) => setTimeout(r, 20));

    let stop = false;
    const versions = new Map<string, number>();
    const failures: string[] = [];
    let requests = 0;
    const client = async (k: number) => {
      const server = replicas[k % 2];
      for (let i = 0; !stop; i++) {
        const user = users[(k * 31 + i) % users.length];
        try {
          const response = await fetch(`${server.url}/v1/users/${user}/exploration?n=5&items=1`);
          requests++;
          if (response.status !== 200) {
            failures.push(`status ${response.status}`);
            continue;
          }
          const body = (await response.json()) as { table: { version: string }; recommendations: { cluster: string }[] };
          versions.set(body.table.version, (versions.get(body.table.version) ?? 0) + 1);
          const got = body.recommendations.map((r) => r.cluster).join();
          if (got !== expected(body.table.version, user).join()) failures.push(`${user}: ${got} is not ${body.table.version}'s answer`);
        } catch (error) {
          failures.push(String(error));
        }
      }
    };
    const clients = Array.from({ length: 8 }, (_, k) => client(k));
    const reloadsBefore = replicas.map((r) => r.state.metrics.tableReloads);
    const publisher = new Promise<void>((resolve, reject) => {
      const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fixtures/publisher.ts"), url, ws.plain, ws.rag, "16", "60"], {
        cwd: join(import.meta.dirname, "../.."),
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stderr = "";
      child.stderr.on("data", (d) => (stderr += d));
      child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`publisher exited ${code}: ${stderr}`))));
    });
    for (let k = 0; k < 10; k++) {
      const r = await fetch(`${replicas[k % 2].url}/v1/tables/${k % 2 === 0 ? ws.plain : ws.rag}/publish`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: "{}",
      });
      expect(r.status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, 45));
    }
    await publisher;
    // Both replicas end on what the database says is live (heard through the notifications; bounded by the timeout).
    const final = (await store.live())!.version;
    while (!replicas.every((r) => r.state.tables.lookup()?.version === final)) await new Promise((r) => setTimeout(r, 20));
    stop = true;
    await Promise.all(clients);
    await store.close();

    expect(failures).toEqual([]);
    expect(requests).toBeGreaterThan(200);
    expect(versions.get(ws.plain)).toBeGreaterThan(0);
    expect(versions.get(ws.rag)).toBeGreaterThan(0);
    for (const [k, r] of replicas.entries()) {
      expect(r.state.metrics.tableReloads - reloadsBefore[k]).toBeGreaterThanOrEqual(6);
      expect(r.state.metrics.tableReloadErrors).toBe(0);
    }
  }, 120_000);

  it("an experiment started through one replica is served by both (same arms), their exposures analysed together, and stopped everywhere", async () => {
    const admin = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" };
    const created = await fetch(`${replicas[0].url}/v1/experiments`, {
      method: "POST",
      headers: admin,
      body: JSON.stringify({ definition: { name: "pg-ab", arms: [{ name: "control", table: ws.plain }, { name: "treatment", table: "live" }] } }),
    });
    expect(created.status).toBe(200);
    // The other replica hears it from the database (bounded by the test's timeout).
    while (replicas[1].state.experiment?.experiment.name !== "pg-ab") await new Promise((r) => setTimeout(r, 20));

    const users = Array.from({ length: 30 }, (_, k) => ws.world.userId(k));
    for (const [k, user] of users.entries()) {
      const [a, b] = [await explore(replicas[k % 2], user), await explore(replicas[(k + 1) % 2], user)];
      const armA = (a.body.experiment as { arm: string }).arm;
      expect((b.body.experiment as { arm: string }).arm).toBe(armA);
      expect((a.body.table as { version: string }).version).toBe(armA === "control" ? ws.plain : replicas[0].state.tables.lookup()?.version);
    }
    for (const r of replicas) await r.state.flushExposures();
    const analysis = await fetch(`${replicas[1].url}/v1/experiments/pg-ab/analysis`, { headers: admin });
    expect(analysis.status).toBe(200);
    const body = (await analysis.json()) as { users: number; arms: Record<string, { exposures: number }> };
    // Every user was served twice, once by each replica: both replicas' exposures are in the one analysis.
    expect(body.users).toBe(users.length);
    expect(Object.values(body.arms).reduce((n, a) => n + a.exposures, 0)).toBe(2 * users.length);

    const stopped = await fetch(`${replicas[1].url}/v1/experiments/pg-ab/stop`, { method: "POST", headers: { authorization: admin.authorization } });
    expect(stopped.status).toBe(200);
    while (replicas[0].state.experiment !== null) await new Promise((r) => setTimeout(r, 20));
    expect((await explore(replicas[0], users[0])).body.experiment).toBeNull();
  }, 60_000);
});
