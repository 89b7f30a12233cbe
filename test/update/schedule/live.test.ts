/**
 * The live driver under vitest fake timers: real setTimeout calls, virtual time, no sleeping. SystemClock reads
 * Date.now(), which the fake timers control, so jobs and scheduler see the same time.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { DAY_MS, SystemClock } from "../../../src/domain/clock.js";
import {
  DEFAULT_FINETUNE_CADENCE,
  Scheduler,
  SqliteScheduleStore,
  type JobContext,
  type JobDefinition,
  type JobOutcome,
  type SchedulerOptions,
  type ScheduleStoreContract,
} from "../../../src/update/schedule/index.js";

const t = (iso: string) => Date.parse(iso);
const HOUR = 3_600_000;

interface Call {
  job: string;
  asOf: number;
  startedAt: number;
  endedAt?: number;
  trigger: string;
}

/** A job that takes `ms` of (fake) time, the way a long fine-tune holds the machine. */
function job(name: string, cadence: string, calls: Call[], ms = 0, outcome: JobOutcome = { status: "succeeded" }): JobDefinition {
  return {
    name,
    cadence,
    run: async (ctx: JobContext) => {
      const call: Call = { job: name, asOf: ctx.asOf, startedAt: ctx.clock.now(), trigger: ctx.trigger };
      calls.push(call);
      if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
      call.endedAt = ctx.clock.now();
      return outcome;
    },
  };
}

let stores: ScheduleStoreContract[] = [];
let running: Scheduler[] = [];

beforeEach(() => {
  vi.useFakeTimers({ now: t("2024-12-31T23:00:00Z") });
});

afterEach(async () => {
  for (const s of running.splice(0)) await s.stop();
  vi.useRealTimers();
  for (const store of stores.splice(0)) await store.close();
});

function live(jobs: JobDefinition[], options: SchedulerOptions = {}, store?: ScheduleStoreContract) {
  const own = store ?? SqliteScheduleStore.open(":memory:");
  if (store === undefined) stores.push(own);
  const scheduler = new Scheduler({ jobs, store: own, clock: new SystemClock(), recheckMs: HOUR, ...options });
  running.push(scheduler);
  const done = scheduler.start();
  return { scheduler, done, store: own };
}

describe("live driver (fake timers)", () => {
  it("a long fine-tune makes the refresh due meanwhile skip, counted; later refreshes run on time", async () => {
    const calls: Call[] = [];
    const { scheduler, done } = live([
      job("finetune", DEFAULT_FINETUNE_CADENCE, calls, 28 * HOUR),
      job("refresh", "every 1 day from 2025-01-01T06:00:00Z", calls),
    ]);
    await vi.advanceTimersByTimeAsync(3 * DAY_MS);
    expect(calls.map((c) => [c.job, c.trigger, new Date(c.asOf).toISOString(), new Date(c.startedAt).toISOString()])).toEqual([
      ["finetune", "scheduled", "2025-01-01T00:00:00.000Z", "2025-01-01T00:00:00.000Z"],
      ["refresh", "scheduled", "2025-01-02T06:00:00.000Z", "2025-01-02T06:00:00.000Z"],
      ["refresh", "scheduled", "2025-01-03T06:00:00.000Z", "2025-01-03T06:00:00.000Z"],
    ]);
    expect(calls[0].endedAt).toBe(t("2025-01-02T04:00:00Z"));
    const [finetune, refresh] = (await scheduler.status()).jobs;
    expect(refresh.counters).toMatchObject({ runs: 2, skipped: 1, missed: 0 });
    expect(finetune.counters).toMatchObject({ runs: 1, succeeded: 1 });
    expect(finetune.lastRun).toMatchObject({ startedAt: t("2025-01-01"), endedAt: t("2025-01-02T04:00:00Z"), status: "succeeded" });
    expect(refresh.nextDue).toBe(t("2025-01-04T06:00:00Z"));
    for (const call of calls) expect(call.asOf).toBeLessThanOrEqual(call.startedAt);
    await scheduler.stop();
    await expect(done).resolves.toBeUndefined();
  });

  it("while a job runs, status shows it; no scheduler timer is armed beside the job's own", async () => {
    const calls: Call[] = [];
    const { scheduler } = live([job("finetune", DEFAULT_FINETUNE_CADENCE, calls, 10 * HOUR)]);
    await vi.advanceTimersByTimeAsync(2 * HOUR);
    expect((await scheduler.status()).running).toEqual({ job: "finetune", due: t("2025-01-01"), startedAt: t("2025-01-01") });
    expect(vi.getTimerCount()).toBe(1); // the job's 10-hour sleep
    await vi.advanceTimersByTimeAsync(10 * HOUR);
    expect((await scheduler.status()).running).toBeNull();
    expect(vi.getTimerCount()).toBe(1); // the scheduler's one timer
  });

  it("buffer-one runs the overlapped refresh right after the fine-tune, with its due time as as-of", async () => {
    const calls: Call[] = [];
    const { scheduler } = live(
      [job("finetune", DEFAULT_FINETUNE_CADENCE, calls, 28 * HOUR), job("refresh", "every 1 day from 2025-01-01T06:00:00Z", calls)],
      { overlap: "buffer-one" },
    );
    await vi.advanceTimersByTimeAsync(2 * DAY_MS);
    expect(calls.map((c) => [c.job, c.trigger, c.asOf, c.startedAt])).toEqual([
      ["finetune", "scheduled", t("2025-01-01"), t("2025-01-01")],
      ["refresh", "buffered", t("2025-01-01T06:00:00Z"), t("2025-01-02T04:00:00Z")],
      ["refresh", "scheduled", t("2025-01-02T06:00:00Z"), t("2025-01-02T06:00:00Z")],
    ]);
    expect((await scheduler.status()).jobs[1].counters.skipped).toBe(0);
  });

  it("stop() aborts the running job's signal, records it cancelled and leaves no timer", async () => {
    const seen: string[] = [];
    const store = SqliteScheduleStore.open(":memory:");
    stores.push(store);
    const { scheduler, done } = live(
      [
        {
          name: "finetune",
          cadence: DEFAULT_FINETUNE_CADENCE,
          run: ({ signal }) =>
            new Promise<JobOutcome>((_, reject) => {
              seen.push("started");
              signal.addEventListener("abort", () => reject(signal.reason));
            }),
        },
      ],
      {},
      store,
    );
    await vi.advanceTimersByTimeAsync(2 * HOUR);
    expect(seen).toEqual(["started"]);
    await scheduler.stop();
    await expect(done).resolves.toBeUndefined();
    expect(vi.getTimerCount()).toBe(0);
    expect(await store.runs()).toMatchObject([{ job: "finetune", status: "cancelled", error: "the scheduler is stopping" }]);
    expect((await scheduler.status()).jobs[0].counters).toMatchObject({ runs: 1, cancelled: 1, failed: 0 });
  });

  it("a restart after a gap catches up once (coalesced) and counts the older due times as missed", async () => {
    const calls: Call[] = [];
    const store = SqliteScheduleStore.open(":memory:");
    stores.push(store);
    const jobs = [job("refresh", "every 1 day from 2025-01-01", calls)];
    const first = live(jobs, {}, store);
    await vi.advanceTimersByTimeAsync(2 * DAY_MS); // runs 01-01 and 01-02
    await first.scheduler.stop();
    vi.setSystemTime(t("2025-01-10T12:00:00Z")); // the machine was off
    const second = live(jobs, {}, store);
    await vi.advanceTimersByTimeAsync(0);
    expect(calls.map((c) => [c.trigger, c.asOf, c.startedAt])).toEqual([
      ["scheduled", t("2025-01-01"), t("2025-01-01")],
      ["scheduled", t("2025-01-02"), t("2025-01-02")],
      ["catch-up", t("2025-01-10"), t("2025-01-10T12:00:00Z")],
    ]);
    expect((await second.scheduler.status()).jobs[0].counters).toMatchObject({ runs: 3, missed: 7 }); // 01-03 .. 01-09
    await vi.advanceTimersByTimeAsync(DAY_MS);
    expect(calls.at(-1)).toMatchObject({ trigger: "scheduled", asOf: t("2025-01-11"), startedAt: t("2025-01-11") });
  });

  it("sleeps longer than setTimeout's limit (monthly) in pieces and still fires exactly on the due time", async () => {
    const calls: Call[] = [];
    live([job("finetune", DEFAULT_FINETUNE_CADENCE, calls)], { recheckMs: 40 * DAY_MS });
    await vi.advanceTimersByTimeAsync(91 * DAY_MS);
    expect(calls.map((c) => [c.asOf, c.startedAt])).toEqual(
      ["2025-01-01", "2025-02-01", "2025-03-01", "2025-04-01"].map((d) => [t(d), t(d)]),
    );
  });

  it("a halt pauses only that job; resume from the same process wakes the sleeping scheduler", async () => {
    const calls: Call[] = [];
    const { scheduler } = live(
      [
        job("finetune", "every 1 day from 2025-01-01", calls, 0, { status: "halted", error: "gate" }),
        job("refresh", "every 1 day from 2025-01-01T12:00:00Z", calls),
      ],
      { recheckMs: 30 * DAY_MS },
    );
    await vi.advanceTimersByTimeAsync(3 * DAY_MS); // until 01-03T23:00
    expect(calls.filter((c) => c.job === "finetune")).toHaveLength(1);
    expect(calls.filter((c) => c.job === "refresh")).toHaveLength(3);
    expect((await scheduler.status()).jobs[0]).toMatchObject({ paused: true, counters: { halted: 1, skippedWhilePaused: 2 } });
    await scheduler.resume("finetune");
    await vi.advanceTimersByTimeAsync(HOUR + 1);
    expect(calls.at(-1)).toMatchObject({ job: "finetune", asOf: t("2025-01-04"), startedAt: t("2025-01-04") });
  });

  it("with the default one-minute recheck, runs still start exactly on their due times", async () => {
    const calls: Call[] = [];
    live([job("refresh", "every 1 day from 2025-01-01T12:00:30Z", calls)], { recheckMs: undefined });
    await vi.advanceTimersByTimeAsync(2 * DAY_MS);
    expect(calls.map((c) => [c.asOf, c.startedAt])).toEqual(
      ["2025-01-01T12:00:30Z", "2025-01-02T12:00:30Z"].map((d) => [t(d), t(d)]),
    );
  });

  it("a pause made by another process on the same store is honoured at the next look", async () => {
    const calls: Call[] = [];
    const jobs = [job("refresh", "every 1 day from 2025-01-01", calls)];
    const { store } = live(jobs, { recheckMs: HOUR });
    await vi.advanceTimersByTimeAsync(2 * HOUR); // 01-01 ran
    // `freshrec schedule pause refresh` in another process: its own Scheduler over the same store.
    await new Scheduler({ jobs, store, clock: new SystemClock() }).pause("refresh", "operator");
    await vi.advanceTimersByTimeAsync(3 * DAY_MS);
    expect(calls.map((c) => c.asOf)).toEqual([t("2025-01-01")]);
    expect(await store.jobState("refresh")).toMatchObject({ paused: true, pauseReason: "operator" });
  });

  it("resuming a job that is not paused changes nothing (its missed due times stay open for catch-up)", async () => {
    const calls: Call[] = [];
    const store = SqliteScheduleStore.open(":memory:");
    stores.push(store);
    const jobs = [job("refresh", "every 1 day from 2025-01-01", calls)];
    const first = live(jobs, {}, store);
    await vi.advanceTimersByTimeAsync(2 * HOUR);
    await first.scheduler.stop();
    vi.setSystemTime(t("2025-01-05T12:00:00Z"));
    const before = await store.jobState("refresh");
    expect(await new Scheduler({ jobs, store, clock: new SystemClock() }).resume("refresh")).toEqual(before);
    live(jobs, {}, store);
    await vi.advanceTimersByTimeAsync(0);
    expect(calls.at(-1)).toMatchObject({ trigger: "catch-up", asOf: t("2025-01-05") });
  });
});
