/**
 * The process model of a deployment (issue 19, item 2), as docs/deploying.md tells a user to run it: on one database
 * (store.url), two `freshrec serve` replicas under continuous exploration load and event intake, one `freshrec schedule
 * run` worker that runs a fine-tune and refreshes meanwhile and is then killed (kill -9) and replaced by a second worker
 * (the first one's lease ends with its database session), and `freshrec ingest` appending a file meanwhile. Every
 * process is the built CLI on loopback; the database is a throwaway PostgreSQL cluster.
 *
 * What it holds them to: no request fails; every answer comes from one table, whole (its clusters are the row of the
 * table version it names, for the history it names) and from a table the worker (or the operator before it) published;
 * a replica never answers from an older table once it has answered from a newer one; both replicas end on the worker's
 * last table (the second worker's); every event acknowledged by a replica or by ingest is stored exactly once.
 *
 * The worker runs live, on the system clock, so the synthetic history ends in the current month (its start is computed
 * from today): the refresh falls due every three seconds and the fine-tune once, as the worker starts, and both read
 * data from before their due time as they would in production.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { SystemClock } from "../../src/domain/clock.js";
import { PostgresTableStore, TableLookup } from "../../src/tables/index.js";
import { PostgresScheduleStore, type RunRecord } from "../../src/update/schedule/index.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { BIN, ROOT, runCli, serveCli, servingLive } from "./run.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();

/** A CLI process that the test does not wait on (spawnSync would stall the load clients of this same process). */
function startCli(args: string[]): { child: ChildProcess; exited: Promise<number | null>; output: { stdout: string; stderr: string } } {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT });
  const output = { stdout: "", stderr: "" };
  child.stdout!.on("data", (d) => (output.stdout += d));
  child.stderr!.on("data", (d) => (output.stderr += d));
  return { child, output, exited: new Promise((done) => child.on("exit", (code) => done(code))) };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Answer {
  readonly replica: number;
  readonly user: string;
  readonly version: string;
  /** The newest table version this replica had answered from when the request was sent. */
  readonly floor: string;
  readonly history: { c1: string; c2: string } | null;
  readonly fallback: string | null;
  readonly clusters: string[];
}

describe("a deployment: serve replicas, a schedule worker and ingest on one database", () => {
  it("serves every request whole from a published table while the worker refreshes and fine-tunes and events arrive, and stores every acknowledged event once", async () => {
    const url = await database();
    const root = tempDir("freshrec-deploy-");
    const config = join(root, "freshrec.config.json");
    const now = Date.now();
    const month = new Date(now);
    // Three calendar months ending with this one, so that the fine-tune's window and its test days before now hold data
    // (the events after now are never read: every job reads before its as-of time).
    const start = new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth() - 2, 1)).toISOString().slice(0, 10);
    const settings = {
      store: { url },
      synth: { start },
      model: { embedding: 32, layers: 1, heads: 2, feedForward: 64 },
      pretrain: { epochs: 1, windowDays: 45, heldOutDays: 7, maxSamples: 3000 },
      finetune: { epochs: 1, windowDays: 30, testDays: 7, maxSamples: 600, minExactMatchRate: 0.5, minTestRecall: 0 },
      rag: { minSupport: 1 },
      // Every table of the test stays readable, so each answer can be checked against the table it names.
      tables: { keep: 100 },
      // A refresh every three seconds; a due time that falls while a run goes on (refreshes take about two seconds here)
      // runs right after it instead of being skipped, or the one fine-tune could be skipped.
      schedule: { refreshCadence: "*/3 * * * * *", finetuneCadence: "0 0 1 1 *", overlap: "buffer-one" },
    };
    writeFileSync(config, JSON.stringify(settings));
    const on = (workspace: string) => ["--workspace", join(root, workspace), "--config", config, "--json"];
    const cli = (workspace: string, ...args: string[]) => runCli([...on(workspace), ...args], { timeoutMs: 600_000 });

    // Before the deployment serves: the worker host loads the history, trains the base model and publishes a table.
    // The base model learns up to two weeks ago: a fine-tune continues from where its data ends, so the fine-tune has
    // those two weeks to learn from.
    const pretrainAsOf = new Date(now - 14 * 86_400_000).toISOString();
    for (const args of [["synth", "--quick", "--users", "400", "--events", "40000", "--months", "3"], ["pretrain", "--as-of", pretrainAsOf], ["refresh"]]) {
      const r = cli("worker", ...args);
      expect(r.status, `${args[0]}: ${r.stderr}`).toBe(0);
    }
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    const tables = await PostgresTableStore.open(url, new SystemClock());
    try {
      const first = (await tables.live())!.version;
      const eventsBefore = Number((await db.query("SELECT count(*) AS n FROM events")).rows[0].n);
      const users = (await db.query<{ user_id: string }>("SELECT user_id FROM users ORDER BY user_key LIMIT 300")).rows.map((r) => r.user_id);
      const items = (await db.query<{ item_id: string }>("SELECT item_id FROM items ORDER BY item_key")).rows.map((r) => r.item_id);

      // The events that will arrive while serving, at whole seconds of the last three weeks (none is stored yet): the
      // first 600 through the replicas' intake, the rest by file, and 100 through both, so that two writers race on
      // the same events.
      const threeWeeksAgo = Math.floor((now - 21 * 86_400_000) / 1000) * 1000;
      const planned = Array.from({ length: 2600 }, (_, k) => ({
        userId: users[(k * 7) % users.length],
        itemId: items[(k * 131) % items.length],
        ts: new Date(threeWeeksAgo + ((k * 7919) % (20 * 86_400)) * 1000).toISOString(),
      }));
      const viaIntake = planned.slice(0, 600);
      const viaFile = planned.slice(500);
      const file = join(root, "events.csv");
      writeFileSync(file, ["user_id,item_id,ts", ...viaFile.map((e) => `${e.userId},${e.itemId},${e.ts}`)].join("\n") + "\n");
      const keyOf = (e: { userId: string; itemId: string; ts: string }) => `${e.userId}\u0000${e.itemId}\u0000${Date.parse(e.ts)}`;
      const distinct = new Set(planned.map(keyOf)).size;

      // Gives the fine-tune a state in the schedule from before the worker starts (why: where the worker starts).
      for (const verb of ["pause", "resume"]) {
        const r = cli("admin", "schedule", verb, "finetune");
        expect(r.status, r.stderr).toBe(0);
      }
      const replicas = [await serveCli(join(root, "host-a"), config), await serveCli(join(root, "host-b"), config)];
      let worker: ReturnType<typeof startCli> | null = null;
      let stop = false;
      const failures: string[] = [];
      const answers: Answer[] = [];
      const newest = replicas.map(() => first);
      let intakeAdded = 0;
      try {
        for (const r of replicas) expect(await servingLive(r.url, first)).toBe(first);

        // Exploration load: two clients per replica, each request checked once the run is over.
        const explore = async (client: number) => {
          const replica = client % replicas.length;
          for (let i = 0; !stop; i++) {
            const user = users[(client * 37 + i) % users.length];
            const floor = newest[replica];
            try {
              const response = await fetch(`${replicas[replica].url}/v1/users/${encodeURIComponent(user)}/exploration?n=5`);
              if (response.status !== 200) {
                failures.push(`exploration ${user} on replica ${replica}: ${response.status} ${await response.text()}`);
                continue;
              }
              const body = (await response.json()) as { table: { version: string } | null; history: Answer["history"]; fallback: string | null; recommendations: { cluster: string }[] };
              const version = body.table?.version ?? "none";
              if (version > newest[replica]) newest[replica] = version;
              answers.push({ replica, user, version, floor, history: body.history, fallback: body.fallback, clusters: body.recommendations.map((r) => r.cluster) });
            } catch (error) {
              failures.push(`exploration ${user} on replica ${replica}: ${String(error)}`);
            }
          }
        };
        // Intake: batches of 20 to alternate replicas; every fifth batch to both at once.
        const intake = async () => {
          for (let b = 0; b * 20 < viaIntake.length && !stop; b++) {
            const body = JSON.stringify({ events: viaIntake.slice(b * 20, b * 20 + 20) });
            const targets = b % 5 === 0 ? replicas : [replicas[b % 2]];
            await Promise.all(
              targets.map(async (r) => {
                try {
                  const response = await fetch(`${r.url}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body });
                  if (response.status !== 200) failures.push(`intake batch ${b}: ${response.status} ${await response.text()}`);
                  else intakeAdded += ((await response.json()) as { eventsAdded: number }).eventsAdded;
                } catch (error) {
                  failures.push(`intake batch ${b}: ${String(error)}`);
                }
              }),
            );
            await sleep(100);
          }
        };
        const load = [...Array.from({ length: 4 }, (_, k) => explore(k)), intake()];

        // The worker: refreshes every three seconds from its start, and one fine-tune, due now. A job the schedule has
        // never seen starts at the worker's start (nothing before it is due), so the pause and resume above gave the
        // fine-tune a state from before now: the worker catches its due time up as soon as it starts, however long it
        // takes to start.
        const finetuneDue = new Date(Date.now()).toISOString();
        const workerConfig = join(root, "worker.config.json");
        writeFileSync(workerConfig, JSON.stringify({ ...settings, schedule: { ...settings.schedule, finetuneCadence: `every 1 days from ${finetuneDue}` } }));
        const workerArgs = ["--workspace", join(root, "worker"), "--config", workerConfig, "--json", "schedule", "run"];
        worker = startCli(workerArgs);
        const ingest = startCli([...on("ingest-host"), "ingest", "--events", file]);

        const schedule = await PostgresScheduleStore.open(url);
        let runs: RunRecord[] = [];
        const until = async (what: string, done: (runs: RunRecord[]) => boolean) => {
          for (let waited = 0; ; waited += 250) {
            if (waited > 300_000) throw new Error(`not within 5 minutes: ${what}: ${JSON.stringify(runs)}\n${worker!.output.stderr}`);
            if (worker!.child.exitCode !== null) throw new Error(`the worker exited (${worker!.child.exitCode}) before ${what}: ${worker!.output.stderr}`);
            runs = await schedule.runs();
            if (done(runs)) return;
            await sleep(250);
          }
        };
        try {
          await until("the fine-tune, and two refreshes publishing tables after it (with the new model, if it went live)", (runs) => {
            const tuned = runs.find((r) => r.job === "finetune" && r.endedAt !== null);
            return tuned !== undefined && runs.filter((r) => r.job === "refresh" && r.status === "succeeded" && r.startedAt >= tuned.endedAt!).length >= 2;
          });
          // The worker dies (kill -9) amid its refreshes: its database session ends and with it the schedule's lease, so
          // a new worker starts at once (a lease still held would refuse it, exit 2) and runs the refreshes on.
          worker.child.kill("SIGKILL");
          await worker.exited;
          const killedAt = Date.now();
          worker = startCli(workerArgs);
          await until("a refresh by the worker started after the first was killed", (runs) => runs.some((r) => r.job === "refresh" && r.status === "succeeded" && r.startedAt >= killedAt));
        } finally {
          await schedule.close();
        }
        expect(await ingest.exited, ingest.output.stderr).toBe(0);
        worker.child.kill("SIGINT");
        expect(await worker.exited, worker.output.stderr).toBe(0);
        worker = null;

        // The workers' log, read after the second stopped: the fine-tune ran, and every refresh published its table.
        const log = await PostgresScheduleStore.open(url);
        try {
          runs = await log.runs();
        } finally {
          await log.close();
        }
        const finetune = runs.find((r) => r.job === "finetune")!;
        expect(finetune.status, finetune.error ?? "").toMatch(/^(succeeded|halted)$/);
        // kill -9 cut off the run then going on, if one was: the next worker marked it failed as interrupted. Ctrl-C
        // cancelled the one going on at the end. Neither's table was published; no other run failed.
        const cut = runs.filter((r) => r.status === "failed");
        expect(cut.length).toBeLessThanOrEqual(1);
        for (const r of cut) expect(r.error).toMatch(/^interrupted/);
        const refreshes = runs.filter((r) => r.job === "refresh" && !cut.includes(r) && !(r.status === "cancelled" && r === runs.at(-1)));
        expect(refreshes.length).toBeGreaterThanOrEqual(2);
        for (const r of refreshes) expect(r.status, r.error ?? "").toBe("succeeded");
        const published = [first, ...refreshes.map((r) => String(r.detail!.tableVersion))];
        const last = published.at(-1)!;
        expect((await tables.live())!.version).toBe(last);
        if (finetune.status === "succeeded" && finetune.detail!.modelStatus === "live") {
          expect((await tables.get(last)).modelVersion).toBe(finetune.detail!.modelVersion);
        }

        // Both replicas end on the worker's last table (heard through the database), then the load stops.
        for (const r of replicas) expect(await servingLive(r.url, last)).toBe(last);
        await sleep(300);
        stop = true;
        await Promise.all(load);
        const ingested = JSON.parse(ingest.output.stdout);

        expect(failures).toEqual([]);
        expect(answers.length).toBeGreaterThan(200);
        // Answers from the worker's tables, not only from the first one, on both replicas.
        for (const k of replicas.keys()) expect(new Set(answers.filter((a) => a.replica === k).map((a) => a.version)).size, `replica ${k}`).toBeGreaterThan(1);
        const live = new Set(published);
        const lookups = new Map<string, TableLookup>();
        for (const version of new Set([first, ...answers.map((a) => a.version)])) {
          expect(live.has(version), `answered from ${version}, which was never published`).toBe(true);
          lookups.set(version, TableLookup.fromPacked(await tables.packed(version)));
        }
        const row = (version: string, a: Answer) => (lookups.get(version)!.get(a.history!.c1, a.history!.c2) ?? []).slice(0, 5).map((s) => s.cluster).join();
        const fromTables = answers.filter((a) => a.history && !a.fallback);
        const mixed = fromTables.filter((a) => a.clusters.join() !== row(a.version, a));
        expect(mixed.slice(0, 5), `${mixed.length} answers are not the row of the table they name`).toEqual([]);
        // The tables differ where they were asked, or an answer from one labelled as another could not be told apart.
        expect(fromTables.filter((a) => a.version !== first && row(a.version, a) !== row(first, a)).length).toBeGreaterThan(20);
        const backwards = answers.filter((a) => a.version < a.floor);
        expect(backwards.slice(0, 5), `${backwards.length} answers from an older table than the replica had served`).toEqual([]);

        // Every acknowledged event once: what the writers say they added is what the database gained, and each
        // planned event (all of them acknowledged, none failed) is there exactly once.
        expect(ingested.events + ingested.skippedDuplicates).toBe(viaFile.length);
        const eventsAfter = Number((await db.query("SELECT count(*) AS n FROM events")).rows[0].n);
        expect(eventsAfter - eventsBefore).toBe(distinct);
        expect(ingested.events + intakeAdded).toBe(distinct);
        const stored = await db.query<{ n: string }>(
          `SELECT count(*) AS n FROM events e JOIN users u USING (user_key) JOIN items i USING (item_key)
           JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS p(user_id, item_id, ms) ON p.user_id = u.user_id AND p.item_id = i.item_id AND epoch_ms(e.ts) = p.ms
           GROUP BY p.user_id, p.item_id, p.ms`,
          [planned.map((e) => e.userId), planned.map((e) => e.itemId), planned.map((e) => Date.parse(e.ts))],
        );
        expect(stored.rows.length).toBe(distinct);
        expect(stored.rows.every((r) => Number(r.n) === 1)).toBe(true);
      } finally {
        stop = true;
        worker?.child.kill("SIGINT");
        for (const r of replicas) r.child.kill("SIGINT");
        for (const r of replicas) expect(await r.exited).toBe(0);
      }
    } finally {
      await tables.close();
      await db.end();
    }
  }, 600_000);
});
