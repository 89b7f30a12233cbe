/**
 * The shared conformance suite of the schedule store contract (`ScheduleStoreContract`, src/update/schedule/store.ts).
 * Every adapter runs it: `scheduleStoreConformance("sqlite file", async () => () => SqliteScheduleStore.open(file))`.
 * `place` allocates a new, empty store and returns a function that opens it (again and again: each handle stands for
 * another process on the same store, and must find what the others committed).
 */
import { afterEach, describe, expect, it } from "vitest";
import { VirtualClock } from "../../../src/domain/clock.js";
import {
  Scheduler,
  ScheduleDriverHeldError,
  ScheduleStoreError,
  ZERO_COUNTERS,
  type JobDefinition,
  type JobOutcome,
  type JobState,
  type ScheduleStoreContract,
} from "../../../src/update/schedule/index.js";

export type ScheduleStorePlace = () => Promise<() => Promise<ScheduleStoreContract>>;

const t = (iso: string) => Date.parse(iso);

function jobState(job: string, overrides: Partial<JobState> = {}): JobState {
  return { job, cursor: 0, paused: false, pauseReason: null, pausedAt: null, consecutiveFailures: 0, counters: ZERO_COUNTERS, lastRunId: null, ...overrides };
}

async function refusal(work: Promise<unknown>): Promise<Error> {
  try {
    await work;
  } catch (error) {
    return error as Error;
  }
  throw new Error("it was not refused");
}

export function scheduleStoreConformance(adapter: string, place: ScheduleStorePlace): void {
  describe(`schedule store conformance: ${adapter}`, () => {
    const opened: ScheduleStoreContract[] = [];
    afterEach(async () => {
      for (const store of opened.splice(0)) await store.close();
    });

    /** A new empty store, and how to open another handle on it. */
    async function fresh(): Promise<{ store: ScheduleStoreContract; another: () => Promise<ScheduleStoreContract> }> {
      const open = await place();
      const another = async () => {
        const store = await open();
        opened.push(store);
        return store;
      };
      return { store: await another(), another };
    }

    it("logs a run at its start and completes it once at its end; another handle reads the same", async () => {
      const { store, another } = await fresh();
      const id = await store.begin({ job: "refresh", due: 1000, trigger: "scheduled", startedAt: 1005 });
      expect(await store.run(id)).toEqual({
        id,
        job: "refresh",
        due: 1000,
        trigger: "scheduled",
        startedAt: 1005,
        endedAt: null,
        status: "running",
        durationSeconds: null,
        cost: null,
        detail: null,
        error: null,
      });
      await store.finish(id, {
        endedAt: 2000,
        status: "succeeded",
        durationSeconds: 1.5,
        cost: { promptsScored: 90_000, cpuSeconds: 3.25 },
        detail: { tableVersion: "t-7", nested: { pairs: [1, 2] } },
        error: null,
      });
      const ended = {
        endedAt: 2000,
        status: "succeeded",
        durationSeconds: 1.5,
        cost: { promptsScored: 90_000, cpuSeconds: 3.25 },
        detail: { tableVersion: "t-7", nested: { pairs: [1, 2] } },
      };
      expect(await store.run(id)).toMatchObject(ended);
      // Epoch milliseconds beyond 2^31 come back as the same numbers.
      const late = await store.begin({ job: "refresh", due: t("2030-01-01"), trigger: "catch-up", startedAt: t("2030-01-02") });
      expect(await (await another()).run(late)).toMatchObject({ due: t("2030-01-01"), startedAt: t("2030-01-02"), trigger: "catch-up" });
      expect(await (await another()).run(id)).toMatchObject(ended);
      expect(await store.run(id + 1000)).toBeUndefined();
      await expect(store.finish(id + 1000, { endedAt: 1, status: "failed", durationSeconds: 0, cost: null, detail: null, error: "x" })).rejects.toThrow(ScheduleStoreError);
    });

    it("keeps the run even when the job's detail is not JSON", async () => {
      const { store } = await fresh();
      const id = await store.begin({ job: "j", due: 1, trigger: "scheduled", startedAt: 1 });
      await store.finish(id, { endedAt: 2, status: "succeeded", durationSeconds: 0, cost: null, detail: { big: 1n }, error: null });
      expect((await store.run(id))?.detail).toMatchObject({ unserialisable: expect.any(String) });
    });

    it("queries runs by job, status and due window; limit keeps the newest, returned oldest first", async () => {
      const { store } = await fresh();
      for (let day = 1; day <= 5; day++) {
        for (const job of ["finetune", "refresh"]) {
          const id = await store.begin({ job, due: day * 100, trigger: "scheduled", startedAt: day * 100 + (job === "refresh" ? 1 : 0) });
          if (day < 5) await store.finish(id, { endedAt: day * 100 + 50, status: "succeeded", durationSeconds: 0, cost: null, detail: null, error: null });
        }
      }
      expect(await store.runs()).toHaveLength(10);
      expect((await store.runs({ job: "refresh" })).map((r) => r.due)).toEqual([100, 200, 300, 400, 500]);
      expect((await store.runs({ job: "refresh", limit: 2 })).map((r) => r.due)).toEqual([400, 500]);
      expect((await store.runs({ dueFrom: 200, dueTo: 400 })).map((r) => `${r.job}@${r.due}`)).toEqual(["finetune@200", "refresh@200", "finetune@300", "refresh@300"]);
      expect((await store.runs({ status: "running" })).map((r) => r.job)).toEqual(["finetune", "refresh"]);
    });

    it("a job runs each due time once: a second begin of it is refused naming the first run", async () => {
      const { store, another } = await fresh();
      const id = await store.begin({ job: "refresh", due: 500, trigger: "scheduled", startedAt: 500 });
      const error = await refusal((await another()).begin({ job: "refresh", due: 500, trigger: "catch-up", startedAt: 900 }));
      expect(error).toBeInstanceOf(ScheduleStoreError);
      expect(error.message).toContain(`run ${id}, running`);
      expect(error.message).toMatch(/another scheduler drives this schedule/);
      // Another job, or another due time, is another run.
      await store.begin({ job: "finetune", due: 500, trigger: "scheduled", startedAt: 500 });
      await store.begin({ job: "refresh", due: 501, trigger: "scheduled", startedAt: 501 });
      expect((await store.runs()).map((r) => [r.job, r.due, r.trigger])).toEqual([
        ["refresh", 500, "scheduled"],
        ["finetune", 500, "scheduled"],
        ["refresh", 501, "scheduled"],
      ]);
    });

    it("saves and replaces job state; job states come in byte order of their names", async () => {
      const { store, another } = await fresh();
      const state = jobState("finetune", { cursor: t("2025-03-01"), paused: true, pauseReason: "halted", pausedAt: 120, consecutiveFailures: 2, counters: { ...ZERO_COUNTERS, runs: 4, halted: 1, missed: 3 }, lastRunId: 9 });
      expect(await store.jobState("finetune")).toBeUndefined();
      await store.saveJobState(state);
      expect(await (await another()).jobState("finetune")).toEqual(state);
      await store.saveJobState({ ...state, paused: false, pauseReason: null, pausedAt: null, cursor: 456 });
      expect(await store.jobState("finetune")).toMatchObject({ paused: false, pauseReason: null, pausedAt: null, cursor: 456 });
      for (const job of ["refresh", "alpha", "Zeta"]) await store.saveJobState({ ...state, job });
      // "Zeta" before "alpha": code points, not a linguistic collation, so both databases answer alike.
      expect((await store.jobStates()).map((s) => s.job)).toEqual(["Zeta", "alpha", "finetune", "refresh"]);
    });

    it("a transaction that throws leaves nothing behind", async () => {
      const { store } = await fresh();
      await expect(
        store.transaction(async (tx) => {
          await tx.begin({ job: "j", due: 1, trigger: "scheduled", startedAt: 1 });
          await tx.saveJobState(jobState("j", { cursor: 1 }));
          throw new Error("crash between the two writes");
        }),
      ).rejects.toThrow("crash");
      expect(await store.runs()).toEqual([]);
      expect(await store.jobState("j")).toBeUndefined();
      expect(await store.transaction(async () => 42)).toBe(42);
    });

    it("transactions run one at a time: concurrent read-modify-writes of one job's counters lose nothing", async () => {
      const { store, another } = await fresh();
      const other = await another();
      await store.saveJobState(jobState("refresh"));
      // Each reads the counters, yields (as the scheduler does between its statements), then writes them plus one.
      const bump = (on: ScheduleStoreContract) =>
        on.transaction(async (tx) => {
          const before = (await tx.jobState("refresh"))!;
          await new Promise((resolve) => setImmediate(resolve));
          await tx.saveJobState({ ...before, counters: { ...before.counters, runs: before.counters.runs + 1 } });
        });
      const handles = adapter.startsWith("sqlite") ? [store] : [store, other];
      await Promise.all(Array.from({ length: 12 }, (_, k) => bump(handles[k % handles.length])));
      expect((await other.jobState("refresh"))?.counters.runs).toBe(12);
    });

    it("one driver at a time: a second claim is refused naming the holder; after release another may drive", async () => {
      const { store, another } = await fresh();
      expect(await store.driver()).toBeNull();
      const first = { host: "worker-a", pid: process.pid, since: t("2025-06-01T10:00:00Z") };
      // Only the host and pid of this process pass the SQLite adapter's liveness check: the test's driver is itself.
      const me = adapter.startsWith("sqlite") ? { ...first, host: (await import("node:os")).hostname() } : first;
      const lease = await store.claimDriver(me);
      await lease.check();
      const other = await another();
      expect(await other.driver()).toEqual(me);
      const error = await refusal(other.claimDriver({ host: "worker-b", pid: 4242, since: t("2025-06-01T11:00:00Z") }));
      expect(error).toBeInstanceOf(ScheduleDriverHeldError);
      expect((error as ScheduleDriverHeldError).code).toBe("BAD_INPUT");
      expect(error.message).toContain(`host ${me.host} pid ${me.pid} (since 2025-06-01T10:00:00.000Z)`);
      expect(error.message).toMatch(/Stop that freshrec schedule run \(or serve --schedule\) first/);
      await lease.release();
      expect(await other.driver()).toBeNull();
      const second = await other.claimDriver({ ...me, since: t("2025-06-01T12:00:00Z") });
      expect(await store.driver()).toMatchObject({ since: t("2025-06-01T12:00:00Z") });
      await second.release();
    });

    it("two schedulers on one store: the second is refused while the first runs, then continues without running a due time twice", async () => {
      const { store, another } = await fresh();
      const ran: string[] = [];
      let finish: (outcome: JobOutcome) => void = () => {};
      const blocking = new Promise<JobOutcome>((resolve) => (finish = resolve));
      const jobs = (who: string, hold: boolean): JobDefinition[] => [
        {
          name: "refresh",
          cadence: "every 1 day from 2025-01-01",
          run: async ({ asOf }) => {
            ran.push(`${who} ${new Date(asOf).toISOString().slice(0, 10)}`);
            return hold && asOf === t("2025-01-02") ? blocking : { status: "succeeded" };
          },
        },
      ];
      const a = new Scheduler({ jobs: jobs("a", true), store, clock: new VirtualClock(0) });
      const first = a.simulate({ from: t("2025-01-01"), to: t("2025-01-04") });
      while (!ran.includes("a 2025-01-02")) await new Promise((resolve) => setTimeout(resolve, 5));
      const b = new Scheduler({ jobs: jobs("b", false), store: await another(), clock: new VirtualClock(0) });
      const refused = await refusal(b.simulate({ from: t("2025-01-02T12:00:00Z"), to: t("2025-01-05") }));
      expect(refused).toBeInstanceOf(ScheduleDriverHeldError);
      // The refused scheduler changed nothing: a's running run is still running, not failed as interrupted.
      expect((await store.runs({ status: "running" })).map((r) => r.due)).toEqual([t("2025-01-02")]);
      finish({ status: "succeeded" });
      await first;
      await b.simulate({ from: t("2025-01-04"), to: t("2025-01-06") });
      expect(ran).toEqual(["a 2025-01-01", "a 2025-01-02", "a 2025-01-03", "b 2025-01-04", "b 2025-01-05"]);
      expect((await store.runs()).map((r) => r.status)).toEqual(Array(5).fill("succeeded"));
      expect(await store.driver()).toBeNull();
    });
  });
}
