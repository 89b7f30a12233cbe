/**
 * Hot reload under load: while concurrent clients ask for explorations, the live table flips between two versions
 * many times, from another process (a real `tables publish` path through SQLite WAL) and through the admin routes.
 * Every response must succeed and must be exactly the answer of the one version it names: no failed and no
 * mixed-version response.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SystemClock } from "../../src/domain/clock.js";
import { startServer, type RunningServer } from "../../src/serving/index.js";
import { SqliteTableStore, TableLookup, tableStorePath } from "../../src/tables/index.js";
import { servingWorkspace, TOKEN, type ServingWorkspace } from "./fixtures.js";

let ws: ServingWorkspace;
let server: RunningServer;

beforeAll(async () => {
  ws = await servingWorkspace();
  server = await startServer({ workspace: ws.dir, port: 0, adminToken: TOKEN, logLevel: "silent", reloadIntervalMs: 10 });
});

afterAll(async () => {
  await server?.close();
});

function runPublisher(file: string, a: string, b: string, times: number, gapMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fixtures/publisher.ts"), file, a, b, String(times), String(gapMs)], {
      cwd: join(import.meta.dirname, "../.."),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`publisher exited ${code}: ${stderr}`))));
  });
}

describe("hot reload", () => {
  it("swaps tables under concurrent requests with zero failed and zero mixed-version responses", async () => {
    const store = SqliteTableStore.open(tableStorePath(ws.dir), new SystemClock());
    const lookups = { [ws.plain]: TableLookup.load(store, ws.plain), [ws.rag]: TableLookup.load(store, ws.rag) };
    store.close();
    const users = Array.from({ length: 200 }, (_, k) => ws.world.userId(k)).filter((u) => server.state.users.get(u)?.history);
    const expected = (version: string, user: string) => {
      const h = server.state.users.get(user)!.history!;
      const ids = server.state.catalog.clusterIds;
      return lookups[version].get(ids[h.c1], ids[h.c2])!.slice(0, 5).map((a) => a.cluster);
    };
    // The two tables must answer differently, or a mixed response could not be told apart.
    expect(users.some((u) => expected(ws.plain, u).join() !== expected(ws.rag, u).join())).toBe(true);

    let stop = false;
    const versions = new Map<string, number>();
    const failures: string[] = [];
    let requests = 0;
    const client = async (k: number) => {
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
    const reloadsBefore = server.state.metrics.tableReloads;
    // Another process flips the pointer 16 times; meanwhile the admin routes publish and roll back too.
    const publisher = runPublisher(tableStorePath(ws.dir), ws.plain, ws.rag, 16, 60);
    for (let k = 0; k < 10; k++) {
      const r = await fetch(`${server.url}/v1/tables/${k % 2 === 0 ? ws.plain : ws.rag}/publish`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: "{}",
      });
      expect(r.status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, 45));
    }
    await publisher;
    await new Promise((resolve) => setTimeout(resolve, 100));
    stop = true;
    await Promise.all(clients);

    expect(failures).toEqual([]);
    expect(requests).toBeGreaterThan(200);
    expect(versions.get(ws.plain)).toBeGreaterThan(0);
    expect(versions.get(ws.rag)).toBeGreaterThan(0);
    expect(server.state.metrics.tableReloads - reloadsBefore).toBeGreaterThanOrEqual(6);
    expect(server.state.metrics.tableReloadErrors).toBe(0);
  });
});
