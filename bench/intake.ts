/**
 * `npm run bench -- intake`: POST /v1/events over HTTP on loopback (autocannon), against a server in its own
 * process serving a real workspace: the serve bench's synthetic platform (150k users, about 2.4M events, 300
 * clusters), once per event store:
 * - embedded: the workspace's DuckDB file (keys without a suffix);
 * - PostgreSQL: the same events in a throwaway cluster (test/data/postgres-cluster.ts: initdb in a temp folder; durable,
 *   as a deployment's database is: fsync, synchronous commit and full-page writes on, so an acknowledged batch has
 *   reached the disk as with DuckDB), the server's intake writing there and its user index loaded from there
 *   (`ServeOptions.intakeEvents`); keys end in `_postgres`. The embedded store is measured first, before the cluster
 *   starts; the cluster's load is vacuumed, analysed and checkpointed before its server starts. Serving does not run
 *   on `store.url` yet, so the catalog and grounding index still come from a copy of the embedded workspace.
 * - Every request carries new events: users drawn from the platform's users (1 in 20 a new user), items from the
 *   catalog, times just before the server's now and 1 in 10 late (anywhere in the platform's month, so it lands
 *   inside a user's history, not after it); engagement values around the platform's positive threshold.
 * - Per batch size (500 events, then 1 event) two loads of 8 s each:
 *   - saturation: a closed loop of N connections, each posting its next batch when the last is answered. Its rate
 *     is the capacity: intake_events_per_s (batches of 500, 4 connections) and intake_batches_per_s (batches of 1,
 *     16 connections).
 *   - at the target rate (40 batches/s of 500 = 20,000 events/s; 500 batches/s of 1), the latency clients see at
 *     that load: an open loop (`paced`) sending one request every 1/rate s on keep-alive connections, each request's
 *     latency counted from when it was due, so a late client or a queue in the server counts against it.
 *     intake_p99_ms is the worse p99 of the two batch sizes at their target rates (at saturation, latency is only
 *     connections / rate, by Little's law, and says nothing more). Not autocannon's overallRate: it lets each
 *     connection send its whole per-second budget back to back when each second starts (all 16 connections' batches
 *     of 500 queue at once), and its coordinated-omission correction assumes a 1 ms interval whatever the rate, adding
 *     a sample per millisecond of each slow answer; its p99 measured that burst, not the rate.
 * - 3 runs; the keys are the median run's rates and the worst run's p99 (the machine is shared and noisy: every
 *   run's numbers are printed and written as *_runN keys).
 * - Before each store's server starts, the host's pending writes reach the disk (`sync`): the bench's own set-up
 *   leaves the page cache full of unwritten pages (the DuckDB load and the workspace copy are plain file writes; the
 *   PostgreSQL load's own checkpoint writes its pages), which the kernel writes back in bursts about half a minute
 *   later, in the middle of the first runs. A commit ends in an fsync of a write-ahead log, and an fsync waits
 *   for the disk's cache flush, which waits for every write queued before it: each burst held one commit, and every
 *   batch behind it, far longer than any work of the server.
 *   A served workspace does not start in that state (its writers, ingest included, fsync what they write), so the set-up's
 *   writes are not part of what is measured; other processes' writes on a shared host still are, and how much the
 *   host wrote back during each load at the target rate is reported beside it (`intake_*_host_writeback_mib_runN`).
 * Targets (issue 19): intake_events_per_s >= 20,000, intake_batches_per_s >= 500, intake_p99_ms <= 50.
 * Checked too: no failed request, and every acknowledged event stored (the server's events-ingested counter).
 * Beside the rates, the server process's CPU time per batch (all threads): what the server costs whatever else the
 * shared machine runs at that moment, and so what one core of it would take. And at the target rates, what the server
 * itself saw (`ServerSide`): each request's time from its arrival to its reply, its garbage-collection pauses, and
 * the store's checkpoints (keys `intake_server_p99_ms`, `intake_gc_*`, `intake_checkpoints_at_target`, and per run),
 * and on the embedded store the checkpoints of its intake buffer's file (`intake_*_target_buffer_checkpoints_runN`),
 * the only ones an intake append waits for there.
 */
import autocannon from "autocannon";
import { execFileSync, fork } from "node:child_process";
import http from "node:http";
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { constants, PerformanceObserver, type PerformanceEntry } from "node:perf_hooks";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { EventStore } from "../src/data/event-store.js";
import { PostgresEventStore } from "../src/data/postgres-event-store.js";
import { seededRandom } from "../src/domain/random.js";
import { ingestSynthetic } from "../src/data/ingest/synthetic.js";
import { SyntheticWorld, SYNTHETIC_DEFAULTS } from "../src/data/synthetic/index.js";
import { startServer } from "../src/serving/index.js";
import { startPostgresCluster, type PostgresCluster } from "../test/data/postgres-cluster.js";
import type { BenchRow, BenchSuiteResult } from "./run.js";

const here = fileURLToPath(import.meta.url);
const RUNS = 3;
const SECONDS = 8;

interface Load {
  readonly batch: number;
  readonly connections: number;
  /** Batches per second the target names (the rate of the latency load). */
  readonly targetRate: number;
}
const LOADS: readonly Load[] = [
  { batch: 500, connections: 4, targetRate: 40 },
  { batch: 1, connections: 16, targetRate: 500 },
];

/** What the server process saw during one load, measured inside it (the host's other work cannot make these numbers). */
export interface ServerSide {
  /** POST /v1/events answered, and their times from the request's arrival at the server to its reply's end (ms). */
  readonly requests: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  /** Garbage-collection pauses of the main thread: count, total and longest (ms), and the young generation's share. */
  readonly gcCount: number;
  readonly gcMs: number;
  readonly gcMaxMs: number;
  readonly gcMinorMs: number;
  /** The process's CPU time (all its threads) during the load (ms). */
  readonly cpuMs: number;
  /**
   * On the embedded store, checkpoints the intake buffer's mover ran during the load: of the buffer's file (an intake
   * append waits while one runs) and of the event store's (none does); null on PostgreSQL.
   */
  readonly bufferCheckpoints: number | null;
  readonly moverStoreCheckpoints: number | null;
}

/** Percentile `q` of ascending `sorted`, to 0.1 ms; NaN when empty. */
function percentile(sorted: readonly number[], q: number): number {
  return sorted.length ? Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] * 10) / 10 : Number.NaN;
}

/**
 * Child process: serves the workspace (intake on PostgreSQL when given its URL); answers "metrics" with the
 * events-ingested counter, "cpu" with its CPU time, and "load-start" / "load-end" with what it saw in between
 * (`ServerSide`).
 */
async function serveChild(dir: string, postgresUrl: string | undefined): Promise<void> {
  const started = process.hrtime.bigint();
  const intakeEvents = postgresUrl ? await PostgresEventStore.open(postgresUrl) : undefined;
  const server = await startServer({ workspace: dir, port: 0, logLevel: "warn", ...(intakeEvents ? { intakeEvents } : {}) });
  const stored = (await (intakeEvents ?? server.state.events).counts()).events;
  // Before Fastify's own listener: the time runs from the request's arrival, its body's reading included.
  let latencies: number[] = [];
  server.app.server.prependListener("request", (request: http.IncomingMessage, response: http.ServerResponse) => {
    if (request.method !== "POST" || request.url !== "/v1/events") return;
    const arrived = performance.now();
    response.once("finish", () => latencies.push(performance.now() - arrived));
  });
  const gc = { count: 0, ms: 0, maxMs: 0, minorMs: 0 };
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      gc.count++;
      gc.ms += entry.duration;
      gc.maxMs = Math.max(gc.maxMs, entry.duration);
      if ((entry as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR) gc.minorMs += entry.duration;
    }
  }).observe({ entryTypes: ["gc"] });
  const cpuMs = () => {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1000;
  };
  let loadCpu = 0;
  const mover = () => server.state.intakeBuffer?.status() ?? null;
  let moverAtStart = mover();
  process.send!({ url: server.url, users: server.state.users.size, startSeconds: Number(process.hrtime.bigint() - started) / 1e9, stored });
  process.once("disconnect", () => process.exit(1));
  process.on("message", async (m) => {
    if (m === "metrics") {
      await server.state.queue.idle();
      process.send!({ eventsIngested: server.state.metrics.eventsIngested });
    }
    if (m === "cpu") process.send!({ cpuMs: cpuMs() });
    if (m === "load-start") {
      latencies = [];
      Object.assign(gc, { count: 0, ms: 0, maxMs: 0, minorMs: 0 });
      loadCpu = cpuMs();
      moverAtStart = mover();
      process.send!({});
    }
    if (m === "load-end") {
      const sorted = [...latencies].sort((a, b) => a - b);
      const round = (x: number) => Math.round(x * 10) / 10;
      const side: ServerSide = {
        requests: sorted.length,
        p50: percentile(sorted, 0.5),
        p99: percentile(sorted, 0.99),
        max: percentile(sorted, 1),
        gcCount: gc.count,
        gcMs: round(gc.ms),
        gcMaxMs: round(gc.maxMs),
        gcMinorMs: round(gc.minorMs),
        cpuMs: round(cpuMs() - loadCpu),
        bufferCheckpoints: moverAtStart ? mover()!.bufferCheckpoints - moverAtStart.bufferCheckpoints : null,
        moverStoreCheckpoints: moverAtStart ? mover()!.storeCheckpoints - moverAtStart.storeCheckpoints : null,
      };
      process.send!(side);
    }
    if (m === "stop") {
      await server.close();
      await intakeEvents?.close();
      process.exit(0);
    }
  });
}

/** Request bodies of new events; each call gives the next batch. */
export function batches(world: SyntheticWorld, items: readonly string[], size: number, seed: number): () => string {
  const next = seededRandom(seed >>> 0);
  // Live times: from an hour before now on, one millisecond apart, so no two events of the bench are the same event.
  let ts = Date.now() - 3_600_000 + seed * 60_000;
  const span = world.endMs - world.startMs;
  let newUsers = 0;
  return () => {
    const events = new Array<string>(size);
    for (let k = 0; k < size; k++) {
      const userId = next() < 0.05 ? `bench-new-${seed}-${newUsers++}` : world.userId(Math.floor(next() * world.userCount));
      const late = next() < 0.1;
      const at = late ? world.startMs + Math.floor(next() * span) : ts++;
      const engagement = Math.round(next() * 100) / 100;
      events[k] = `{"userId":${JSON.stringify(userId)},"itemId":${JSON.stringify(items[Math.floor(next() * items.length)])},"ts":${at},"engagement":${engagement}}`;
    }
    return `{"events":[${events.join(",")}]}`;
  };
}

async function post(url: string, body: () => string, connections: number, seconds: number): Promise<autocannon.Result> {
  return autocannon({
    url,
    connections,
    duration: seconds,
    requests: [{ method: "POST", path: "/v1/events", headers: { "content-type": "application/json" }, setupRequest: (request) => ({ ...request, body: body() }) }],
  });
}

function child<T>(args: string[]) {
  const p = fork(here, args, { execArgv: ["--import", "tsx"], stdio: ["ignore", 2, 2, "ipc"] });
  const exited = new Promise<void>((resolve) => p.once("exit", () => resolve()));
  return {
    first: new Promise<T>((resolve, reject) => {
      p.once("message", (m) => resolve(m as T));
      p.once("exit", (code) => reject(new Error(`bench child exited ${code}`)));
    }),
    ask: <R>(message: string) =>
      new Promise<R>((resolve) => {
        p.once("message", (m) => resolve(m as R));
        p.send(message);
      }),
    stop: () => {
      if (p.connected) p.send("stop");
      return exited;
    },
  };
}

/** What an open-loop load measured. */
interface PacedResult {
  /** Answered 2xx per second of the load. */
  readonly achieved: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly ok: number;
  readonly failed: number;
}

/**
 * Open loop: `rate` requests a second for `seconds`, each sent when it is due (on a free keep-alive connection, opened
 * as needed) whatever the earlier ones are doing; a request's latency runs from when it was due to its answer. The
 * bodies are made before the clock starts, so making them delays nothing.
 */
export async function paced(url: string, body: () => string, rate: number, seconds: number): Promise<PacedResult> {
  const { hostname, port } = new URL(url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 });
  const bodies = Array.from({ length: Math.round(rate * seconds) }, body);
  const latencies: number[] = [];
  let failed = 0;
  const send = (payload: string, due: number) =>
    new Promise<void>((resolve) => {
      const request = http.request(
        { agent, hostname, port, method: "POST", path: "/v1/events", headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } },
        (response) => {
          response.resume();
          response.on("end", () => {
            if (response.statusCode === 200) latencies.push(performance.now() - due);
            else failed++;
            resolve();
          });
        },
      );
      request.on("error", () => {
        failed++;
        resolve();
      });
      request.end(payload);
    });
  const started = performance.now() + 20;
  const sent: Promise<void>[] = [];
  for (let k = 0; k < bodies.length; k++) {
    const due = started + (k * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    sent.push(send(bodies[k], due));
  }
  await Promise.all(sent);
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const at = (q: number) => (latencies.length ? Math.round(latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] * 10) / 10 : Number.NaN);
  return { achieved: latencies.length / seconds, p50: at(0.5), p99: at(0.99), max: at(1), ok: latencies.length, failed };
}

/**
 * Counts the store's checkpoints while it runs: DuckDB's as the drops of its write-ahead log's size (a checkpoint
 * moves the log into the database file and empties it), PostgreSQL's from its own counters.
 */
export function checkpointCounter(dir: string, postgresUrl: string | undefined): () => Promise<{ stop: () => Promise<number> }> {
  if (postgresUrl) {
    const read = async () => {
      const client = new pg.Client(postgresUrl);
      await client.connect();
      try {
        const { rows } = await client.query<{ n: string }>("SELECT checkpoints_timed + checkpoints_req AS n FROM pg_stat_bgwriter");
        return Number(rows[0].n);
      } finally {
        await client.end();
      }
    };
    return async () => {
      const before = await read();
      return { stop: async () => (await read()) - before };
    };
  }
  const wal = join(dir, "events.duckdb.wal");
  const size = () => statSync(wal, { throwIfNoEntry: false })?.size ?? 0;
  return async () => {
    let last = size();
    let drops = 0;
    const timer = setInterval(() => {
      const now = size();
      if (now < last) drops++;
      last = now;
    }, 5);
    return {
      stop: async () => {
        clearInterval(timer);
        if (size() < last) drops++;
        return drops;
      },
    };
  };
}

/** The host's page cache not yet written to disk (Dirty + Writeback of /proc/meminfo), in MiB; null off Linux. */
export function hostUnwrittenMiB(): number | null {
  let meminfo: string;
  try {
    meminfo = readFileSync("/proc/meminfo", "utf8");
  } catch {
    return null;
  }
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(meminfo)?.[1] ?? Number.NaN);
  return (kib("Dirty") + kib("Writeback")) / 1024;
}

/**
 * Writes every pending write of the host to disk and waits for it (`sync`), so that the bench's set-up (the stores'
 * loads and copies) is not written back while a server is measured.
 * @returns the MiB that were waiting (null off Linux) and the seconds it took.
 */
export function flushHostWrites(): { unwrittenMiB: number | null; seconds: number } {
  const unwrittenMiB = hostUnwrittenMiB();
  const started = process.hrtime.bigint();
  execFileSync("sync");
  return { unwrittenMiB, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
}

/**
 * Starts counting how much the host writes back: the sum of the drops of its unwritten page cache, sampled every
 * 100 ms (a burst of writeback shows as a drop). Any process's writes count: on a shared machine this says whether a
 * slow run met the disk's queue rather than the server's work.
 * @returns `stop`, which ends the count and gives the MiB written back since the start.
 */
export function countHostWriteback(): { stop: () => number } {
  let last = hostUnwrittenMiB();
  let written = 0;
  const timer = setInterval(() => {
    const now = hostUnwrittenMiB();
    if (now !== null && last !== null && now < last) written += last - now;
    last = now;
  }, 100);
  return {
    stop: () => {
      clearInterval(timer);
      return Math.round(written);
    },
  };
}

interface RunResult {
  readonly saturated: autocannon.Result;
  readonly atTarget: PacedResult;
  /** What the server saw during the load at the target rate. */
  readonly server: ServerSide;
  /** The store's checkpoints during the load at the target rate. */
  readonly checkpoints: number;
  /** MiB the host wrote back from its page cache during the load at the target rate (any process's). */
  readonly hostWritebackMiB: number;
  /** The server process's CPU time (all its threads, DuckDB's included) per batch answered in the saturated load. */
  readonly cpuMsPerBatch: number;
}

type Store = "duckdb" | "postgres";

export async function run(): Promise<BenchSuiteResult> {
  const root = mkdtempSync(join(tmpdir(), "freshrec-bench-intake-"));
  let cluster: PostgresCluster | undefined;
  try {
    const world = new SyntheticWorld({ ...SYNTHETIC_DEFAULTS, clustersPerDomain: 25, months: 1, users: 150_000, targetEvents: 2_400_000 });
    const dirs = { duckdb: join(root, "duckdb"), postgres: join(root, "postgres") };
    const events = await EventStore.open(join(dirs.duckdb, "events.duckdb"));
    await ingestSynthetic(events, world);
    const items = (await events.query<{ item_id: string }>("SELECT item_id FROM items ORDER BY item_key")).map((r) => r.item_id);
    events.close();
    // The PostgreSQL server's other stores: a copy of the workspace as it is before the embedded server's writes.
    cpSync(dirs.duckdb, dirs.postgres, { recursive: true });
    // The embedded store first, before the PostgreSQL cluster exists: an idle cluster beside it still writes (its
    // writes after the load, 122-129 MiB, reached the disk in the middle of the embedded runs in 3 of 4 benches).
    const duckdb = await measure("duckdb", dirs.duckdb, undefined, world, items);
    cluster = await startPostgresCluster({ durable: true });
    const url = await cluster.createDatabase();
    const postgres = await PostgresEventStore.open(url);
    const loadStarted = process.hrtime.bigint();
    await ingestSynthetic(postgres, world);
    const postgresLoadSeconds = Number(process.hrtime.bigint() - loadStarted) / 1e9;
    // The load's upkeep done now, not at some moment of the runs: autovacuum's first pass over the loaded events and
    // their statistics, and the pages written out (a checkpoint).
    await postgres.query("VACUUM (ANALYZE)");
    await postgres.query("CHECKPOINT");
    await postgres.close();
    const pg = await measure("postgres", dirs.postgres, url, world, items);
    return {
      results: { ...duckdb.results, ...pg.results, intake_postgres_load_seconds: postgresLoadSeconds },
      rows: [...duckdb.rows, ...pg.rows, { metric: "PostgreSQL: loading the platform's events (ingestSynthetic)", value: postgresLoadSeconds, unit: "s" }],
    };
  } finally {
    await cluster?.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

/** The loads against one store's server; result keys end in `_postgres` for PostgreSQL. */
async function measure(store: Store, dir: string, postgresUrl: string | undefined, world: SyntheticWorld, items: readonly string[]): Promise<BenchSuiteResult> {
  const suffix = store === "postgres" ? "_postgres" : "";
  const label = store === "postgres" ? "PostgreSQL" : "DuckDB";
  let server: ReturnType<typeof child<{ url: string; users: number; startSeconds: number; stored: number }>> | undefined;
  try {
    const flushed = flushHostWrites();
    server = child<{ url: string; users: number; startSeconds: number; stored: number }>(["--serve-child", dir, ...(postgresUrl ? [postgresUrl] : [])]);
    const { url, users, startSeconds, stored } = await server.first;
    const checkpoints = checkpointCounter(dir, postgresUrl);
    let seed = 1;
    // Warm-up: JIT, the appender path, the first users' keys.
    for (const load of LOADS) await post(url, batches(world, items, load.batch, seed++), load.connections, 2);

    const runs = new Map<number, RunResult[]>(LOADS.map((l) => [l.batch, []]));
    let acknowledged = 0;
    let failed = 0;
    const count = (r: autocannon.Result, batch: number) => {
      acknowledged += r["2xx"] * batch;
      failed += r.errors + r.timeouts + r.non2xx;
    };
    for (let r = 0; r < RUNS; r++) {
      for (const load of LOADS) {
        const cpuBefore = (await server.ask<{ cpuMs: number }>("cpu")).cpuMs;
        const saturated = await post(url, batches(world, items, load.batch, seed++), load.connections, SECONDS);
        const cpuMsPerBatch = ((await server.ask<{ cpuMs: number }>("cpu")).cpuMs - cpuBefore) / Math.max(1, saturated["2xx"]);
        await server.ask("load-start");
        const counting = await checkpoints();
        const writingBack = countHostWriteback();
        const atTarget = await paced(url, batches(world, items, load.batch, seed++), load.targetRate, SECONDS);
        const hostWritebackMiB = writingBack.stop();
        const checkpointsAtTarget = await counting.stop();
        const serverSide = await server.ask<ServerSide>("load-end");
        count(saturated, load.batch);
        acknowledged += atTarget.ok * load.batch;
        failed += atTarget.failed;
        runs.get(load.batch)!.push({ saturated, atTarget, cpuMsPerBatch, server: serverSide, checkpoints: checkpointsAtTarget, hostWritebackMiB });
      }
    }
    // Warm-up requests were acknowledged too; the counter is compared with all 2xx answers since start.
    const { eventsIngested } = await server.ask<{ eventsIngested: number }>("metrics");
    await server.stop();

    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const big = runs.get(500)!;
    const single = runs.get(1)!;
    const eventsPerS = big.map((x) => x.saturated.requests.average * 500);
    const batchesPerS = single.map((x) => x.saturated.requests.average);
    const p99 = (list: RunResult[]) => list.map((x) => x.atTarget.p99);
    const worstP99 = Math.max(...p99(big), ...p99(single));
    const results: Record<string, number> = {
      intake_events_per_s: median(eventsPerS),
      intake_batches_per_s: median(batchesPerS),
      intake_p99_ms: worstP99,
      intake_p99_ms_batch500: Math.max(...p99(big)),
      intake_p99_ms_batch1: Math.max(...p99(single)),
      intake_failed_requests: failed,
      intake_server_cpu_ms_per_batch500: median(big.map((x) => x.cpuMsPerBatch)),
      intake_server_cpu_ms_per_batch1: median(single.map((x) => x.cpuMsPerBatch)),
      intake_server_p99_ms: Math.max(...[...big, ...single].map((x) => x.server.p99)),
      intake_server_p99_ms_batch500: Math.max(...big.map((x) => x.server.p99)),
      intake_server_p99_ms_batch1: Math.max(...single.map((x) => x.server.p99)),
      intake_gc_max_pause_ms: Math.max(...[...big, ...single].map((x) => x.server.gcMaxMs)),
      intake_gc_ms_per_s_batch500: median(big.map((x) => x.server.gcMs / SECONDS)),
      intake_checkpoints_at_target: [...big, ...single].reduce((sum, x) => sum + x.checkpoints, 0),
      intake_host_unwritten_mib_before_start: flushed.unwrittenMiB ?? Number.NaN,
      intake_host_flush_seconds: flushed.seconds,
      intake_host_writeback_mib_at_target: [...big, ...single].reduce((sum, x) => sum + x.hostWritebackMiB, 0),
      intake_store_events: stored,
      intake_server_users: users,
      intake_server_start_seconds: startSeconds,
      ...Object.fromEntries(
        [...runs].flatMap(([batch, list]) =>
          list.flatMap((x, k) => [
            [`intake_batch${batch}_saturated_batches_per_s_run${k + 1}`, x.saturated.requests.average],
            [`intake_batch${batch}_saturated_p99_ms_run${k + 1}`, x.saturated.latency.p99],
            [`intake_batch${batch}_server_cpu_ms_per_batch_run${k + 1}`, x.cpuMsPerBatch],
            [`intake_batch${batch}_target_batches_per_s_run${k + 1}`, x.atTarget.achieved],
            [`intake_batch${batch}_target_p50_ms_run${k + 1}`, x.atTarget.p50],
            [`intake_batch${batch}_target_p99_ms_run${k + 1}`, x.atTarget.p99],
            [`intake_batch${batch}_target_max_ms_run${k + 1}`, x.atTarget.max],
            [`intake_batch${batch}_target_server_p50_ms_run${k + 1}`, x.server.p50],
            [`intake_batch${batch}_target_server_p99_ms_run${k + 1}`, x.server.p99],
            [`intake_batch${batch}_target_server_max_ms_run${k + 1}`, x.server.max],
            [`intake_batch${batch}_target_server_cpu_ms_per_batch_run${k + 1}`, x.server.cpuMs / Math.max(1, x.server.requests)],
            [`intake_batch${batch}_target_gc_count_run${k + 1}`, x.server.gcCount],
            [`intake_batch${batch}_target_gc_ms_run${k + 1}`, x.server.gcMs],
            [`intake_batch${batch}_target_gc_minor_ms_run${k + 1}`, x.server.gcMinorMs],
            [`intake_batch${batch}_target_gc_max_pause_ms_run${k + 1}`, x.server.gcMaxMs],
            [`intake_batch${batch}_target_checkpoints_run${k + 1}`, x.checkpoints],
            ...(x.server.bufferCheckpoints === null ? [] : [[`intake_batch${batch}_target_buffer_checkpoints_run${k + 1}`, x.server.bufferCheckpoints] as [string, number]]),
            [`intake_batch${batch}_target_host_writeback_mib_run${k + 1}`, x.hostWritebackMiB],
          ]),
        ),
      ),
    };
    const rows: BenchRow[] = [
      { metric: `events/s, batches of 500, 4 connections, closed loop (median of ${RUNS} runs of ${SECONDS} s)`, value: results.intake_events_per_s, unit: "events/s", target: ">= 20000", met: results.intake_events_per_s >= 20_000 },
      ...big.map((x, k) => ({ metric: `  run ${k + 1} (p99 at saturation ${x.saturated.latency.p99} ms; server CPU ${x.cpuMsPerBatch.toFixed(2)} ms/batch)`, value: x.saturated.requests.average * 500, unit: "events/s" })),
      { metric: "  what one core of server CPU takes, batches of 500 (1000 / median server CPU ms per batch x 500)", value: (1000 / median(big.map((x) => x.cpuMsPerBatch))) * 500, unit: "events/s" },
      { metric: `batches/s, batches of 1, 16 connections, closed loop (median of ${RUNS} runs)`, value: results.intake_batches_per_s, unit: "batches/s", target: ">= 500", met: results.intake_batches_per_s >= 500 },
      ...single.map((x, k) => ({ metric: `  run ${k + 1} (p99 at saturation ${x.saturated.latency.p99} ms; server CPU ${x.cpuMsPerBatch.toFixed(2)} ms/batch)`, value: x.saturated.requests.average, unit: "batches/s" })),
      { metric: "  what one core of server CPU takes, batches of 1 (1000 / median server CPU ms per batch)", value: 1000 / median(single.map((x) => x.cpuMsPerBatch)), unit: "batches/s" },
      { metric: "latency p99 at the target rates, open loop (40 x 500 events/s; 500 x 1/s), worst run", value: worstP99, unit: "ms", target: "<= 50", met: worstP99 <= 50 },
      ...[...runs].flatMap(([batch, list]) =>
        list.map((x, k) => ({
          metric: `  batches of ${batch} at ${LOADS.find((l) => l.batch === batch)!.targetRate}/s (open loop), run ${k + 1}: achieved ${x.atTarget.achieved.toFixed(0)}/s, p50 ${x.atTarget.p50} ms, max ${x.atTarget.max} ms`,
          value: x.atTarget.p99,
          unit: "ms p99",
        })),
      ),
      {
        metric: "server-side p99 at the target rates (a request's arrival at the server to its reply; no client, no network), worst run",
        value: results.intake_server_p99_ms,
        unit: "ms",
      },
      ...[...runs].flatMap(([batch, list]) =>
        list.map((x, k) => ({
          metric:
            `  batches of ${batch}, run ${k + 1}: server p50 ${x.server.p50} ms, max ${x.server.max} ms; GC ${x.server.gcCount} pauses, ${x.server.gcMs} ms ` +
            `(young generation ${x.server.gcMinorMs} ms), longest ${x.server.gcMaxMs} ms; ${x.checkpoints} store checkpoints` +
            (x.server.bufferCheckpoints === null ? "" : ` (the mover's ${x.server.moverStoreCheckpoints}), ${x.server.bufferCheckpoints} intake buffer checkpoints`) +
            `; server CPU ${(x.server.cpuMs / Math.max(1, x.server.requests)).toFixed(2)} ms/batch; ` +
            `host wrote back ${x.hostWritebackMiB} MiB`,
          value: x.server.p99,
          unit: "ms p99",
        })),
      ),
      { metric: "failed requests (errors, timeouts, non-2xx)", value: failed, unit: "requests", target: "0", met: failed === 0 },
      { metric: "events the server stored / events acknowledged in measured runs (>= 1: warm-up and in-flight ones count too)", value: eventsIngested / acknowledged, unit: "ratio" },
      { metric: `store at start: ${stored} events, ${users} users in memory; server start-up`, value: startSeconds, unit: "s" },
      {
        metric: `host page cache not yet written when the server was about to start (the set-up's writes), written out by sync in ${flushed.seconds.toFixed(1)} s`,
        value: flushed.unwrittenMiB ?? Number.NaN,
        unit: "MiB",
      },
    ];
    return {
      results: Object.fromEntries(Object.entries(results).map(([key, value]) => [key + suffix, value])),
      rows: rows.map((row) => ({ ...row, metric: row.metric.startsWith("  ") ? row.metric : `${label}: ${row.metric}` })),
    };
  } finally {
    await server?.stop();
  }
}

if (process.argv[2] === "--serve-child") await serveChild(process.argv[3], process.argv[4]);
