import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DAY_MS, SystemClock, VirtualClock, type Clock } from "../../../src/domain/clock.js";
import { FreshrecError } from "../../../src/domain/errors.js";
import {
  DEFAULT_FINETUNE_CADENCE,
  DEFAULT_REFRESH_CADENCE,
  Scheduler,
  ScheduleUsageError,
  SqliteScheduleStore,
  UnknownJobError,
  hybridJobs,
  readScheduleStatus,
  scheduleStorePath,
  type JobContext,
  type JobDefinition,
  type JobOutcome,
  type SchedulerOptions,
  type ScheduleStoreContract,
} from "../../../src/update/schedule/index.js";
import { tempDir } from "../../temp-dir.js";

const t = (iso: string) => Date.parse(iso);
const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);

/** Every call a job received, with the clock it saw: the test's view of what ran when. */
interface Call {
  job: string;
  asOf: number;
  now: number;
  trigger: string;
}

function job(
  name: string,
  cadence: string,
  calls: Call[],
  outcome: (ctx: JobContext) => JobOutcome | Promise<JobOutcome> = () => ({ status: "succeeded" }),
): JobDefinition {
  return {
    name,
    cadence,
    run: async (ctx) => {
      calls.push({ job: name, asOf: ctx.asOf, now: ctx.clock.now(), trigger: ctx.trigger });
      return outcome(ctx);
    },
  };
}

const stores: ScheduleStoreContract[] = [];
afterEach(async () => {
  for (const store of stores.splice(0)) await store.close();
});

function memoryStore(): ScheduleStoreContract {
  const store = SqliteScheduleStore.open(":memory:");
  stores.push(store);
  return store;
}

function scheduler(jobs: JobDefinition[], clock: Clock, store = memoryStore(), options: SchedulerOptions = {}) {
  return new Scheduler({ jobs, store, clock, ...options });
}

const asOfs = (calls: Call[], name: string) => calls.filter((c) => c.job === name).map((c) => day(c.asOf));

describe("simulate: cadence", () => {
  it("monthly fine-tune and refresh every 2 days over three months give exactly the expected as-of times", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(t("2025-01-01"));
    const s = scheduler(
      [job("finetune", DEFAULT_FINETUNE_CADENCE, calls), job("refresh", "every 2 days from 2025-01-01", calls)],
      clock,
    );
    const result = await s.simulate({ from: t("2025-01-01"), to: t("2025-04-01") });

    expect(asOfs(calls, "finetune")).toEqual(["2025-01-01", "2025-02-01", "2025-03-01"]);
    const refreshes = asOfs(calls, "refresh");
    expect(refreshes).toHaveLength(45);
    expect(refreshes.slice(0, 3)).toEqual(["2025-01-01", "2025-01-03", "2025-01-05"]);
    expect(refreshes.at(-1)).toBe("2025-03-30");
    // Same-instant due times are one batch in definition order: the refresh uses the fresh fine-tune.
    expect(calls.slice(0, 2).map((c) => c.job)).toEqual(["finetune", "refresh"]);
    // In simulation a run starts exactly at its due time, and never sees an as-of ahead of the clock.
    for (const call of calls) expect(call.asOf).toBe(call.now);
    expect(clock.now()).toBe(t("2025-04-01"));
    expect(result.runs).toHaveLength(48);
    expect(result.runs.every((r) => r.status === "succeeded" && r.trigger === "scheduled")).toBe(true);
    const [finetune, refresh] = result.status.jobs;
    expect(finetune.counters).toMatchObject({ runs: 3, succeeded: 3, skipped: 0, missed: 0 });
    expect(refresh.counters).toMatchObject({ runs: 45, succeeded: 45 });
    expect(finetune.nextDue).toBe(t("2025-04-01"));
    expect(refresh.nextDue).toBe(t("2025-04-01"));
  });

  it("hybridJobs gives the paper's defaults: monthly fine-tune, refresh every 2 (epoch) days", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(t("2025-01-01"));
    const jobs = hybridJobs({
      finetune: job("finetune", "unused", calls).run,
      refresh: job("refresh", "unused", calls).run,
    });
    expect(jobs.map((j) => [j.name, j.cadence])).toEqual([
      ["finetune", DEFAULT_FINETUNE_CADENCE],
      ["refresh", DEFAULT_REFRESH_CADENCE],
    ]);
    await scheduler(jobs, clock).simulate({ from: t("2025-01-01"), to: t("2025-02-08") });
    expect(asOfs(calls, "finetune")).toEqual(["2025-01-01", "2025-02-01"]);
    expect(asOfs(calls, "refresh").slice(0, 3)).toEqual(["2025-01-02", "2025-01-04", "2025-01-06"]);
    expect(asOfs(calls, "refresh")).toHaveLength(19);
  });

  it("consecutive windows give the same runs as one window (due times at `to` wait for the next window)", async () => {
    const one: Call[] = [];
    const two: Call[] = [];
    const jobs = (calls: Call[]) => [job("finetune", DEFAULT_FINETUNE_CADENCE, calls), job("refresh", "every 2 days from 2025-01-01", calls)];
    await scheduler(jobs(one), new VirtualClock(0)).simulate({ from: t("2025-01-01"), to: t("2025-04-01") });
    const clock = new VirtualClock(0);
    const s = scheduler(jobs(two), clock);
    await s.simulate({ from: t("2025-01-01"), to: t("2025-02-01") });
    expect(asOfs(two, "finetune")).toEqual(["2025-01-01"]);
    await s.simulate({ from: t("2025-02-01"), to: t("2025-04-01") });
    expect(two.map((c) => [c.job, c.asOf])).toEqual(one.map((c) => [c.job, c.asOf]));
    expect((await s.status()).jobs[0].counters.missed).toBe(0);
  });

  it("refuses a clock that is not virtual, a reversed window and a clock already past from", async () => {
    const calls: Call[] = [];
    await expect(scheduler([job("r", "every 1 day", calls)], new SystemClock()).simulate({ from: 0, to: 1 })).rejects.toBeInstanceOf(
      ScheduleUsageError,
    );
    const clock = new VirtualClock(t("2025-02-01"));
    const s = scheduler([job("r", "every 1 day", calls)], clock);
    await expect(s.simulate({ from: t("2025-03-01"), to: t("2025-02-01") })).rejects.toThrow(/from <= to/);
    await expect(s.simulate({ from: t("2025-01-01"), to: t("2025-02-01") })).rejects.toThrow(/already past/);
    expect(() => scheduler([job("r", "every 1 day", calls), job("r", "every 2 days", calls)], clock)).toThrow(/twice/);
    await expect(s.pause("nope")).rejects.toThrow(UnknownJobError);
    expect(calls).toEqual([]);
  });
});

describe("simulate: pause on halt and on failures", () => {
  it("a halted fine-tune pauses fine-tuning only; refresh goes on; resume brings fine-tuning back", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(t("2025-01-01"));
    const s = scheduler(
      [
        job("finetune", DEFAULT_FINETUNE_CADENCE, calls, ({ asOf }) =>
          asOf === t("2025-02-01")
            ? { status: "halted", error: "exact-match rate 0.82 < 0.90", detail: { modelVersion: "m-2" } }
            : { status: "succeeded" },
        ),
        job("refresh", "every 2 days from 2025-01-01", calls),
      ],
      clock,
    );
    await s.simulate({ from: t("2025-01-01"), to: t("2025-04-01") });
    expect(asOfs(calls, "finetune")).toEqual(["2025-01-01", "2025-02-01"]);
    expect(asOfs(calls, "refresh")).toHaveLength(45);

    let [finetune] = (await s.status()).jobs;
    expect(finetune.paused).toBe(true);
    expect(finetune.pauseReason).toMatch(/halted by run \d+: exact-match rate 0.82 < 0.90/);
    expect(finetune.pausedAt).toBe(t("2025-02-01"));
    expect(finetune.nextDue).toBeNull();
    expect(finetune.counters).toMatchObject({ runs: 2, succeeded: 1, halted: 1, skippedWhilePaused: 1 });
    expect(finetune.lastRun).toMatchObject({ status: "halted", due: t("2025-02-01"), detail: { modelVersion: "m-2" } });

    await s.resume("finetune");
    [finetune] = (await s.status()).jobs;
    expect(finetune.paused).toBe(false);
    expect(finetune.nextDue).toBe(t("2025-04-01"));
    await s.simulate({ from: t("2025-04-01"), to: t("2025-06-01") });
    // March (paused) is not caught up; April and May run again.
    expect(asOfs(calls, "finetune")).toEqual(["2025-01-01", "2025-02-01", "2025-04-01", "2025-05-01"]);
  });

  it("a job throwing a GATE_FAILED error is halted too", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(0);
    const s = scheduler(
      [
        job("finetune", "every 1 day from 2025-01-01", calls, () => {
          throw new FreshrecError("GATE_FAILED", "test recall 0.9% < 1.5%");
        }),
      ],
      clock,
    );
    const { runs, status } = await s.simulate({ from: t("2025-01-01"), to: t("2025-01-05") });
    expect(runs.map((r) => [r.status, r.error])).toEqual([["halted", "test recall 0.9% < 1.5%"]]);
    expect(status.jobs[0].paused).toBe(true);
    expect(status.jobs[0].counters.skippedWhilePaused).toBe(3);
  });

  it("failures are counted; N in a row pause the job, a success resets the streak", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(0);
    // Fails on days 2 and 3, succeeds on day 4, then fails for good.
    const failing = new Set([2, 3, 5, 6, 7, 8, 9]);
    const s = scheduler(
      [
        job("refresh", "every 1 day from 2025-01-01", calls, ({ asOf }) => {
          const n = (asOf - t("2025-01-01")) / DAY_MS + 1;
          if (n === 6) throw new Error("disk full");
          return failing.has(n) ? { status: "failed", error: `day ${n} failed` } : { status: "succeeded" };
        }),
        job("other", "every 1 day from 2025-01-01", calls),
      ],
      clock,
      memoryStore(),
      { maxConsecutiveFailures: 3 },
    );
    await s.simulate({ from: t("2025-01-01"), to: t("2025-01-15") });
    // Days 1..7 run; 5, 6, 7 are three failures in a row, so the job pauses after day 7.
    expect(asOfs(calls, "refresh")).toEqual(["2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04", "2025-01-05", "2025-01-06", "2025-01-07"]);
    expect(asOfs(calls, "other")).toHaveLength(14);
    const [refresh] = (await s.status()).jobs;
    expect(refresh.counters).toMatchObject({ runs: 7, succeeded: 2, failed: 5, skippedWhilePaused: 7 });
    expect(refresh.consecutiveFailures).toBe(3);
    expect(refresh.paused).toBe(true);
    expect(refresh.pauseReason).toMatch(/failed 3 times in a row \(last, run \d+: day 7 failed\)/);
    const thrown = (await s.status()).jobs[0];
    expect(thrown.lastRun?.error).toBe("day 7 failed");
    const log = await stores[0].runs({ job: "refresh", dueFrom: t("2025-01-06"), dueTo: t("2025-01-07") });
    expect(log.map((r) => [r.status, r.error])).toEqual([["failed", "disk full"]]);
  });

  it("pause by hand stops a job until resumed; the other job is untouched", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(0);
    const s = scheduler([job("a", "every 1 day from 2025-01-01", calls), job("b", "every 1 day from 2025-01-01", calls)], clock);
    await s.simulate({ from: t("2025-01-01"), to: t("2025-01-03") });
    await s.pause("a", "maintenance");
    expect((await s.status()).jobs[0]).toMatchObject({ paused: true, pauseReason: "maintenance", nextDue: null });
    await s.simulate({ from: t("2025-01-03"), to: t("2025-01-06") });
    await s.resume("a");
    await s.simulate({ from: t("2025-01-06"), to: t("2025-01-08") });
    expect(asOfs(calls, "a")).toEqual(["2025-01-01", "2025-01-02", "2025-01-06", "2025-01-07"]);
    expect(asOfs(calls, "b")).toHaveLength(7);
    expect((await s.status()).jobs[0].counters.skippedWhilePaused).toBe(3);
  });
});

describe("simulate: overlap with simulated durations", () => {
  it("a fine-tune that takes 3 virtual days makes the refreshes due meanwhile skip (skip policy)", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(0);
    const s = scheduler(
      [
        job("finetune", DEFAULT_FINETUNE_CADENCE, calls, () => ({ status: "succeeded", simulatedMs: 3 * DAY_MS })),
        job("refresh", "every 1 day from 2025-01-01", calls, () => ({ status: "succeeded", simulatedMs: 60_000 })),
      ],
      clock,
    );
    await s.simulate({ from: t("2025-01-01"), to: t("2025-01-10") });
    // 01-01 refresh shares the batch with the fine-tune (runs after it, at 01-04, with as-of 01-01);
    // 01-02, 01-03 and 01-04 fell due during the batch and are skipped.
    expect(calls.map((c) => [c.job, day(c.asOf), day(c.now)])).toEqual([
      ["finetune", "2025-01-01", "2025-01-01"],
      ["refresh", "2025-01-01", "2025-01-04"],
      ...["05", "06", "07", "08", "09"].map((d) => ["refresh", `2025-01-${d}`, `2025-01-${d}`]),
    ]);
    const [, refresh] = (await s.status()).jobs;
    expect(refresh.counters).toMatchObject({ runs: 6, skipped: 3, missed: 0 });
    for (const call of calls) expect(call.asOf).toBeLessThanOrEqual(call.now);
  });

  it("buffer-one runs the latest overlapped due time right after, with its own as-of", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(0);
    const s = scheduler(
      [
        job("finetune", DEFAULT_FINETUNE_CADENCE, calls, () => ({ status: "succeeded", simulatedMs: 2.5 * DAY_MS })),
        job("refresh", "every 1 day from 2025-01-01", calls),
      ],
      clock,
      memoryStore(),
      { overlap: "buffer-one" },
    );
    await s.simulate({ from: t("2025-01-01"), to: t("2025-01-05") });
    expect(calls.map((c) => [c.job, c.trigger, c.asOf, c.now])).toEqual([
      ["finetune", "scheduled", t("2025-01-01"), t("2025-01-01")],
      ["refresh", "scheduled", t("2025-01-01"), t("2025-01-03T12:00:00Z")],
      ["refresh", "buffered", t("2025-01-03"), t("2025-01-03T12:00:00Z")],
      ["refresh", "scheduled", t("2025-01-04"), t("2025-01-04")],
    ]);
    expect((await s.status()).jobs[1].counters.skipped).toBe(1); // 01-02, older than the buffered 01-03
  });
});

describe("catch-up and persistence", () => {
  it("after a gap, the latest missed due time runs once (coalesced) and the older ones count as missed", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(0);
    const s = scheduler(
      [job("finetune", DEFAULT_FINETUNE_CADENCE, calls), job("refresh", "every 2 days from 2025-01-01", calls)],
      clock,
    );
    await s.simulate({ from: t("2025-01-01"), to: t("2025-01-10") });
    calls.length = 0;
    // The scheduler was away from 01-10 to 03-15T12:00 (the clock jumped).
    const { runs } = await s.simulate({ from: t("2025-03-15T12:00:00Z"), to: t("2025-03-20") });
    expect(runs.slice(0, 2).map((r) => [r.job, r.trigger, day(r.due), r.startedAt])).toEqual([
      ["finetune", "catch-up", "2025-03-01", t("2025-03-15T12:00:00Z")],
      ["refresh", "catch-up", "2025-03-14", t("2025-03-15T12:00:00Z")],
    ]);
    expect(asOfs(calls, "refresh")).toEqual(["2025-03-14", "2025-03-16", "2025-03-18"]);
    const [finetune, refresh] = (await s.status()).jobs;
    expect(finetune.counters).toMatchObject({ runs: 2, missed: 1 }); // 02-01 missed, 03-01 caught up
    // Refreshes due 01-11 .. 03-12 (every other day) are missed: 31 of them.
    expect(refresh.counters).toMatchObject({ runs: 5 + 3, missed: 31 });
    for (const call of calls) expect(call.asOf).toBeLessThanOrEqual(call.now);
  });

  it("due times older than the catch-up window are all missed", async () => {
    const calls: Call[] = [];
    const clock = new VirtualClock(0);
    const s = scheduler(
      [job("finetune", DEFAULT_FINETUNE_CADENCE, calls), job("refresh", "every 2 days from 2025-01-01", calls)],
      clock,
      memoryStore(),
      { catchupWindowMs: 3 * DAY_MS },
    );
    await s.simulate({ from: t("2025-01-01"), to: t("2025-01-02") });
    calls.length = 0;
    const { runs } = await s.simulate({ from: t("2025-03-15T12:00:00Z"), to: t("2025-03-16") });
    // Fine-tune 03-01 is 14.5 days late: missed with 02-01. Refresh 03-14 is 1.5 days late: caught up.
    expect(runs.map((r) => [r.job, r.trigger, day(r.due)])).toEqual([["refresh", "catch-up", "2025-03-14"]]);
    const [finetune, refresh] = (await s.status()).jobs;
    expect(finetune.counters).toMatchObject({ runs: 1, missed: 2 });
    expect(finetune.nextDue).toBe(t("2025-04-01"));
    expect(refresh.counters).toMatchObject({ runs: 2, missed: 35 }); // 01-03 .. 03-12
  });

  it("state and run log survive closing and reopening the SQLite file; a restarted schedule continues", async () => {
    const dir = tempDir("freshrec-schedule-");
    const path = scheduleStorePath(dir);
    expect(path).toBe(join(dir, "schedule.sqlite"));
    const calls: Call[] = [];
    const jobs = [
      job("finetune", DEFAULT_FINETUNE_CADENCE, calls, ({ asOf }) =>
        asOf === t("2025-02-01") ? { status: "halted", error: "gate" } : { status: "succeeded", cost: { tokensTrained: 1000 } },
      ),
      job("refresh", "every 2 days from 2025-01-01", calls, () => ({
        status: "succeeded",
        cost: { promptsScored: 42 },
        detail: { tableVersion: "t-1" },
      })),
    ];

    let store = SqliteScheduleStore.open(path);
    await new Scheduler({ jobs, store, clock: new VirtualClock(0) }).simulate({ from: t("2025-01-01"), to: t("2025-02-15") });
    const before = await readScheduleStatus(store, jobs, t("2025-02-15"));
    await store.close();

    // A new process: new store handle, new scheduler, a clock that starts where the last one stopped.
    store = SqliteScheduleStore.open(path);
    stores.push(store);
    expect(await readScheduleStatus(store, jobs, t("2025-02-15"))).toEqual(before);
    const s = new Scheduler({ jobs, store, clock: new VirtualClock(0) });
    expect((await s.status()).jobs[0]).toMatchObject({ paused: true, counters: { halted: 1 } });
    await s.simulate({ from: t("2025-02-15"), to: t("2025-04-01") });

    expect(asOfs(calls, "finetune")).toEqual(["2025-01-01", "2025-02-01"]); // still paused
    expect(asOfs(calls, "refresh")).toHaveLength(45); // no refresh twice, none lost
    expect(new Set(asOfs(calls, "refresh")).size).toBe(45);
    const log = await store.runs();
    expect(log).toHaveLength(47);
    expect(log.every((r) => r.status !== "running" && r.durationSeconds !== null && r.durationSeconds >= 0)).toBe(true);
    const refreshRun = (await store.runs({ job: "refresh", limit: 1 }))[0];
    expect(refreshRun).toMatchObject({ due: t("2025-03-30"), status: "succeeded", detail: { tableVersion: "t-1" } });
    expect(refreshRun.cost).toMatchObject({ promptsScored: 42 });
    expect(typeof refreshRun.cost?.cpuSeconds).toBe("number");
    expect((await store.runs({ job: "finetune" }))[0].cost).toMatchObject({ tokensTrained: 1000 });
  });

  it("a run left running by a crash is failed as interrupted on the next start and not run again", async () => {
    const store = memoryStore();
    const calls: Call[] = [];
    const jobs = [job("refresh", "every 1 day from 2025-01-01", calls)];
    const first = new Scheduler({ jobs, store, clock: new VirtualClock(0) });
    await first.simulate({ from: t("2025-01-01"), to: t("2025-01-02") });
    // What a crash mid-run leaves behind: the begin of the 01-02 run and its advanced cursor, no end.
    const id = await store.begin({ job: "refresh", due: t("2025-01-02"), trigger: "scheduled", startedAt: t("2025-01-02") });
    await store.saveJobState({ ...(await store.jobState("refresh"))!, cursor: t("2025-01-02"), lastRunId: id });

    const second = new Scheduler({ jobs, store, clock: new VirtualClock(0) });
    await second.simulate({ from: t("2025-01-02T06:00:00Z"), to: t("2025-01-04") });
    expect(await store.run(id)).toMatchObject({ status: "failed", endedAt: null, error: expect.stringMatching(/interrupted/) });
    expect(asOfs(calls, "refresh")).toEqual(["2025-01-01", "2025-01-03"]);
    expect((await second.status()).jobs[0].counters).toMatchObject({ failed: 1, succeeded: 2 });
  });
});
