/**
 * The embedded workspace's process model (issue 19, item 2): `freshrec serve` owns the workspace's event store while
 * it runs (DuckDB opens a file in one process at a time), so another process that writes the events is refused naming
 * the holder, while the commands that read only the SQLite stores (tables, models, schedule) work beside it, and
 * `analyze drift`, `doctor` (its integrity check of the events included) and `experiment analyze` read the event store
 * through the server (src/data/event-store-share.ts).
 * test/serving/cli.test.ts covers the other way round: experiment commands reach a running server with --server.
 */
import { spawn } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { shareFilePath } from "../../src/data/event-store-share.js";
import { SystemClock } from "../../src/domain/clock.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { trainTinyModel } from "../llm/tiny-model.js";
import { servingWorkspace, type ServingWorkspace } from "../serving/fixtures.js";
import { ROOT, runCli, serveCli } from "./run.js";

let ws: ServingWorkspace;
let config: string;
beforeAll(async () => {
  ws = await servingWorkspace({ users: 200, events: 15_000 });
  config = join(ws.dir, "freshrec.config.json");
}, 120_000);

describe("the embedded workspace while freshrec serve runs", () => {
  it("tables list, models list and schedule status read it; a command that needs the events is refused naming the server's pid", async () => {
    const config = join(ws.dir, "freshrec.config.json");
    writeFileSync(config, "{}");
    const cli = (...args: string[]) => runCli(["--workspace", ws.dir, "--config", config, "--json", ...args]);
    const events = join(ws.dir, "more-events.csv");
    writeFileSync(events, `user_id,item_id,ts\n${ws.world.userId(1)},x,2025-01-01T00:00:00Z\n`);
    const server = await serveCli(ws.dir, config);
    try {
      const tables = cli("tables", "list");
      expect(tables.status, tables.stderr).toBe(0);
      expect(tables.json.live).toBe(ws.rag);
      const models = cli("models", "list");
      expect(models.status, models.stderr).toBe(0);
      expect(models.json).toMatchObject({ live: null, models: [] });
      const schedule = cli("schedule", "status");
      expect(schedule.status, schedule.stderr).toBe(0);
      expect(schedule.json.driver).toBeNull();

      // A second writer of the events: refused before it reads its file, naming the file and the server holding it.
      const refused = cli("ingest", "--events", events);
      expect(refused.status).toBe(2);
      expect(refused.json.error.message).toContain(join(ws.dir, "events.duckdb"));
      expect(refused.json.error.message).toContain(`PID ${server.child.pid}`);
      // ...and says what to do instead.
      expect(refused.json.error.message).toMatch(/serve --schedule.*POST \/v1\/events.*store\.url/);
    } finally {
      server.child.kill("SIGINT");
    }
    expect(await server.exited).toBe(0);
  }, 120_000);

  it("analyze drift reads the events through serve while it runs: the same analysis as without it, then with the events posted to it", async () => {
    const { cli, drift } = commands();
    const before = cli(...drift);
    expect(before.status, before.stderr).toBe(0);
    expect(before.json.readThrough).toBeNull();
    expect(before.json.pairsCompared).toBeGreaterThan(0);
    const server = await serveCli(ws.dir, config);
    try {
      const beside = cli(...drift);
      expect(beside.status, beside.stderr).toBe(0);
      expect(beside.json.readThrough).toEqual({ pid: server.child.pid, command: "freshrec serve" });
      expect(analysis(beside.json)).toEqual(analysis(before.json));
      const text = runCli(["--workspace", ws.dir, "--config", config, ...drift]);
      expect(text.status, text.stderr).toBe(0);
      expect(text.stdout).toContain(`${before.json.events} events read through freshrec serve (PID ${server.child.pid})`);

      // What intake acknowledged is what a reader reads next.
      const posted = await post(server.url, newEvents(0, 6));
      expect(posted).toMatchObject({ eventsAdded: 6, skippedDuplicates: 0 });
      const after = cli(...drift);
      expect(after.status, after.stderr).toBe(0);
      expect(after.json.events).toBe(before.json.events + 6);

      // ...while a writer is still refused, naming the server.
      const refused = cli("ingest", "--events", join(ws.dir, "more-events.csv"));
      expect(refused.status).toBe(2);
      expect(refused.json.error.message).toContain(`PID ${server.child.pid}`);
    } finally {
      server.child.kill("SIGINT");
    }
    expect(await server.exited).toBe(0);
    expect(existsSync(shareFilePath(join(ws.dir, "events.duckdb")))).toBe(false);
    // Without the server, the file itself: the events it stored are there.
    const alone = cli(...drift);
    expect(alone.json).toMatchObject({ events: before.json.events + 6, readThrough: null });
  }, 120_000);

  it("a process that holds the store without sharing it refuses analyze, naming it, even beside a killed server's share file", async () => {
    const { cli, drift } = commands();
    const server = await serveCli(ws.dir, config);
    server.child.kill("SIGKILL");
    await server.exited;
    const store = join(ws.dir, "events.duckdb");
    expect(existsSync(shareFilePath(store))).toBe(true);
    const holder = spawn(
      process.execPath,
      ["--input-type=module", "-e", `const { EventStore } = await import(${JSON.stringify(join(ROOT, "dist/data/event-store.js"))}); await EventStore.open(${JSON.stringify(store)}); console.log("holding"); setInterval(() => {}, 1000);`],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    const exited = new Promise((done) => holder.on("exit", done));
    try {
      await new Promise<void>((resolve) => holder.stdout!.once("data", () => resolve()));
      const refused = cli(...drift);
      expect(refused.status).toBe(2);
      expect(refused.json.error.message).toContain(`the event store ${store} is in use by another process (PID ${holder.pid}`);
    } finally {
      holder.kill("SIGKILL");
    }
    await exited;
    // With nobody holding it, the killed server's share file is not used either: the file is read.
    const read = cli(...drift);
    expect(read.status, read.stderr).toBe(0);
    expect(read.json.readThrough).toBeNull();
  }, 120_000);

  it("stores each acknowledged event once when serve is killed (SIGKILL) and started again", async () => {
    const { cli, drift } = commands();
    const stored = (cli(...drift).json as { events: number }).events;
    const events = newEvents(100, 8);
    const first = await serveCli(ws.dir, config);
    const posted = await post(first.url, events);
    expect(posted).toMatchObject({ eventsAdded: 8, skippedDuplicates: 0 });
    first.child.kill("SIGKILL");
    await first.exited;

    const second = await serveCli(ws.dir, config);
    try {
      // The restarted server loaded them from the store: sent again, they are duplicates.
      const again = await post(second.url, events);
      expect(again).toMatchObject({ eventsAdded: 0, skippedDuplicates: 8 });
      expect((cli(...drift).json as { events: number }).events).toBe(stored + 8);
    } finally {
      second.child.kill("SIGINT");
    }
    expect(await second.exited).toBe(0);
    const store = await EventStore.openReadOnly(join(ws.dir, "events.duckdb"));
    try {
      const [twice] = await store.query<{ n: bigint }>("SELECT count(*) AS n FROM (SELECT user_key, item_key, ts FROM events GROUP BY ALL HAVING count(*) > 1)");
      expect(twice.n).toBe(0n);
      expect((await store.counts()).events).toBe(stored + 8);
    } finally {
      store.close();
    }
  }, 120_000);

  it("doctor and experiment analyze read through serve while it runs: every check passes, the analysis is the one made after it stops", async () => {
    const { cli } = commands();
    // A live model for the doctor's backend checks: any model of the engine answers, with its own clusters.
    const registry = new ModelRegistry(ws.dir, new SystemClock());
    try {
      registry.makeLive((await registry.register({ kind: "base", filePath: await trainTinyModel(ws.dir) })).version, "test");
    } finally {
      registry.close();
    }
    const created = cli("experiment", "create", "beside-serve", "--arm", `control=${ws.plain}`, "--arm", "treatment=live");
    expect(created.status, created.stderr).toBe(0);
    const server = await serveCli(ws.dir, config);
    let beside: Record<string, any>;
    try {
      // Exposures for 12 users, then an engagement of each with the first cluster shown: the intake writes the
      // exposures and attributes these events to them as outcomes, in the server's store.
      const engaged = [];
      for (let k = 0; k < 12; k++) {
        const answer = (await (await fetch(`${server.url}/v1/users/${ws.world.userId(k)}/exploration?n=3`)).json()) as any;
        const itemId = answer.recommendations[0].items[0]?.itemId;
        if (itemId) engaged.push({ userId: ws.world.userId(k), itemId, ts: Date.now(), engagement: 1 });
      }
      expect(engaged.length).toBeGreaterThan(0);
      expect(await post(server.url, engaged)).toMatchObject({ eventsAdded: engaged.length });

      const doctor = cli("doctor");
      expect(doctor.status, JSON.stringify(doctor.json)).toBe(0);
      expect(doctor.json.passed).toBe(true);
      const events = doctor.json.checks.find((c: { name: string }) => c.name === "events.duckdb");
      expect(events).toMatchObject({ ok: true, detail: expect.stringContaining(`every table read back through freshrec serve (PID ${server.child.pid}), which holds it`) });
      expect(events.warning).toBeUndefined();

      const analyzed = cli("experiment", "analyze", "beside-serve");
      expect(analyzed.status, analyzed.stderr).toBe(0);
      expect(analyzed.json.readThrough).toEqual({ pid: server.child.pid, command: "freshrec serve" });
      expect(analyzed.json.users).toBe(12);
      const arms = Object.values(analyzed.json.arms as Record<string, { exposures: number; satisfied: number }>);
      expect(arms.reduce((n, a) => n + a.exposures, 0)).toBe(12);
      expect(arms.reduce((n, a) => n + a.satisfied, 0)).toBe(engaged.length);
      beside = analyzed.json;
      const text = runCli(["--workspace", ws.dir, "--config", config, "experiment", "analyze", "beside-serve"]);
      expect(text.status, text.stderr).toBe(0);
      expect(text.stdout).toContain(`read through freshrec serve (PID ${server.child.pid}), which holds the event store`);
    } finally {
      server.child.kill("SIGINT");
    }
    expect(await server.exited).toBe(0);
    // Without the server, the file itself holds the same log.
    const alone = cli("experiment", "analyze", "beside-serve");
    expect(alone.status, alone.stderr).toBe(0);
    expect(alone.json.readThrough).toBeNull();
    expect(analysis(alone.json)).toEqual(analysis(beside));
  }, 180_000);
});

/** The workspace's CLI with the test's config, and the drift analysis the tests run. */
function commands() {
  writeFileSync(config, "{}");
  const cli = (...args: string[]) => runCli(["--workspace", ws.dir, "--config", config, "--json", ...args]);
  return { cli, drift: ["analyze", "drift", "--min-support", "3"] };
}

/** An analysis's result without where it was read and where its reports went. */
function analysis(result: Record<string, unknown>) {
  const { reports: _reports, readThrough: _readThrough, ...rest } = result;
  return rest;
}

/** `count` events the store does not hold (odd milliseconds before the world's end), from `from` on. */
function newEvents(from: number, count: number) {
  return Array.from({ length: count }, (_, k) => ({ userId: ws.world.userId(from + k), itemId: ws.world.itemId((from + k) * 7), ts: ws.world.endMs - 60_000 * (from + k + 1) - 7 }));
}

async function post(url: string, events: readonly object[]): Promise<Record<string, unknown>> {
  const response = await fetch(`${url}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ events }) });
  expect(response.status, await response.clone().text()).toBe(200);
  return (await response.json()) as Record<string, unknown>;
}
