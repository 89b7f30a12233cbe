/**
 * The scheduler of the hybrid strategy: named jobs (fine-tuning, RAG refresh, anything else) on their own
 * cadences, sharing one machine and one model. One core decides what runs; two drivers move time:
 * - `simulate({ from, to })` steps a VirtualClock from due time to due time and awaits each run; this is what
 *   `schedule run --simulate` and replay evaluation call, with the very same job functions;
 * - `start()` sleeps with real timers until the next due time (one timer at a time) until `stop()`.
 *
 * Semantics, after Temporal's schedules:
 * - **as-of**: a run's as-of time is its due time, never later than the clock, whether it runs on time, late
 *   (catch-up) or after an overlap (buffered); the same due time gives the same run live and in replay.
 * - **virtual durations**: in simulation a run takes no virtual time unless its outcome reports `simulatedMs`; the
 *   clock then moves on by that much, so overlap is modelled as it would happen live (a 3-day fine-tune skips the
 *   refreshes due meanwhile). The live driver needs no such report: real time passes.
 * - **same instant**: jobs due at the same time form one batch run one after the other in definition order (so a
 *   refresh due with a fine-tune uses the new model); that is not an overlap.
 * - **overlap**: a due time that falls while a batch is running (any job: they share the machine) is skipped and
 *   counted (`skipped`), or with `overlap: "buffer-one"` the latest such due time of each job runs right after.
 * - **catch-up**: due times that passed while the scheduler was not running (stopped, crashed, clock jumped) are
 *   coalesced: only the latest runs, if it is within the catch-up window; the others count as `missed`.
 * - **pause**: a halted run (a failed quality gate) pauses its job, not the others, until `resume(job)`;
 *   `maxConsecutiveFailures` failed runs in a row pause it too. Due times while paused count as `skippedWhilePaused`
 *   and are not caught up on resume.
 * - **durability**: every run is logged when it starts and when it ends; job state (cursor, pause, counters) is
 *   saved in the same transactions, so a restarted scheduler continues where it stopped. A run left `running` by a
 *   crash is marked failed ("interrupted") on the next start and is not retried: catch-up brings the next one.
 *
 * Only one scheduler may drive a store at a time (a second one would run the same due times and fail the first one's
 * running run as interrupted): `simulate()` and `start()` hold the store's driver lease (ScheduleStoreContract's
 * claimDriver) while they run, and a second driver is refused naming the first. `status()`, `pause()` and `resume()`
 * need no lease and may come from other processes (on PostgreSQL, other hosts).
 *
 * @example
 * const store = SqliteScheduleStore.open(scheduleStorePath(workspace));
 * const clock = new VirtualClock(from);
 * const scheduler = new Scheduler({
 *   clock, store,
 *   jobs: [
 *     { name: "finetune", cadence: DEFAULT_FINETUNE_CADENCE, run: ({ asOf }) => finetune(asOf) },
 *     { name: "refresh", cadence: DEFAULT_REFRESH_CADENCE, run: ({ asOf }) => refresh(asOf) },
 *   ],
 * });
 * const { runs } = await scheduler.simulate({ from, to });
 */
import { hostname } from "node:os";
import { DAY_MS, elapsedSeconds, VirtualClock, type Clock } from "../../domain/clock.js";
import { FreshrecError } from "../../domain/errors.js";
import { parseCadence, type Cadence } from "./cadence.js";
import { ScheduleUsageError, UnknownJobError } from "./errors.js";
import type { DriverLease, ScheduleRecord, ScheduleStoreContract } from "./store.js";
import {
  ZERO_COUNTERS,
  type JobCost,
  type JobCounters,
  type JobDefinition,
  type JobName,
  type JobOutcome,
  type JobState,
  type RunRecord,
  type RunStatus,
  type RunTrigger,
} from "./types.js";

export type OverlapPolicy = "skip" | "buffer-one";

export interface SchedulerOptions {
  /**
   * What happens to a due time that falls while a run is in progress: "skip" drops it (counted as `skipped`),
   * "buffer-one" runs the latest one of each job right after the running batch (older ones are skipped).
   * @defaultValue "skip"
   */
  readonly overlap?: OverlapPolicy;
  /**
   * How late a missed due time may be and still run when the scheduler comes back (coalesced to the latest one).
   * Like Temporal's default, generous: a month-late fine-tune is still better than none until next month.
   * @defaultValue 365 days
   */
  readonly catchupWindowMs?: number;
  /** Failed runs in a row after which a job pauses. @defaultValue 3 */
  readonly maxConsecutiveFailures?: number;
  /**
   * Live driver: the longest sleep between looks at the store and the clock. Bounds how late a pause or resume
   * made by another process, or a wall-clock jump (suspend, NTP step; timers follow a monotonic clock), is noticed.
   * @defaultValue 60_000 (one minute)
   */
  readonly recheckMs?: number;
  /** Called after each run ends, with its log record (progress lines, the demo's summary). @defaultValue none */
  readonly onRun?: (run: RunRecord) => void;
}

export interface SchedulerConfig extends SchedulerOptions {
  readonly jobs: readonly JobDefinition[];
  readonly store: ScheduleStoreContract;
  /**
   * One clock for the scheduler's whole life: due times, pauses and status all read it. A VirtualClock for
   * `simulate`, a SystemClock for `start` (tests of the live driver use SystemClock under fake timers).
   */
  readonly clock: Clock;
}

export interface SimulateOptions {
  /** First instant of the simulated window; due times at `from` run. */
  readonly from: number;
  /** End of the half-open window: due times at `to` are left for the next window. */
  readonly to: number;
}

export interface SimulationResult {
  readonly from: number;
  readonly to: number;
  /** Runs made in this simulation, in the order they ran. */
  readonly runs: RunRecord[];
  readonly status: ScheduleStatus;
}

export interface JobStatus {
  readonly job: JobName;
  readonly cadence: string;
  readonly paused: boolean;
  readonly pauseReason: string | null;
  readonly pausedAt: number | null;
  readonly consecutiveFailures: number;
  readonly counters: JobCounters;
  readonly lastRun: RunRecord | null;
  /** The next due time still open; earlier than `now` when the scheduler is behind. Null while paused. */
  readonly nextDue: number | null;
}

export interface ScheduleStatus {
  readonly now: number;
  /** The run in progress in this process, if any. */
  readonly running: { readonly job: JobName; readonly due: number; readonly startedAt: number } | null;
  readonly jobs: JobStatus[];
}

/** The scheduler's defaults; the config schema (src/cli/config.ts, schedule.*) takes its defaults from here. */
export const SCHEDULER_DEFAULTS = {
  overlap: "skip" as OverlapPolicy,
  catchupWindowMs: 365 * DAY_MS,
  maxConsecutiveFailures: 3,
  recheckMs: 60_000,
};

/** setTimeout fires at once for delays above 2^31 - 1 ms (about 24.8 days), shorter than a month. */
const LONGEST_TIMER_MS = 2_147_483_647;

interface ScheduledJob {
  readonly definition: JobDefinition;
  readonly cadence: Cadence;
}

interface PlannedRun {
  readonly job: ScheduledJob;
  readonly due: number;
  readonly trigger: RunTrigger;
}

interface LiveDriver {
  timer: NodeJS.Timeout | null;
  stopping: boolean;
  settle: (error?: unknown) => void;
}

interface CurrentRun {
  readonly job: JobName;
  readonly due: number;
  readonly startedAt: number;
  readonly controller: AbortController;
}

export class Scheduler {
  private readonly jobs: ScheduledJob[];
  private readonly store: ScheduleStoreContract;
  private readonly clock: Clock;
  private readonly options: Required<Omit<SchedulerOptions, "onRun">> & Pick<SchedulerOptions, "onRun">;
  private current: CurrentRun | null = null;
  /** Set while simulate() drives the clock: runs may then advance it by their simulated duration. */
  private simulating: VirtualClock | null = null;
  private recovered = false;
  /** The store's driver lease while simulate() or the live driver runs (or after claim()). */
  private lease: DriverLease | null = null;
  private inTick = false;
  private ticking: Promise<RunRecord[]> | null = null;
  private live: LiveDriver | null = null;

  constructor(config: SchedulerConfig) {
    const names = new Set<string>();
    this.jobs = config.jobs.map((definition) => {
      if (names.has(definition.name)) throw new ScheduleUsageError(`job "${definition.name}" is defined twice`);
      names.add(definition.name);
      return { definition, cadence: parseCadence(definition.cadence) };
    });
    this.store = config.store;
    this.clock = config.clock;
    this.options = {
      overlap: config.overlap ?? SCHEDULER_DEFAULTS.overlap,
      catchupWindowMs: config.catchupWindowMs ?? SCHEDULER_DEFAULTS.catchupWindowMs,
      maxConsecutiveFailures: config.maxConsecutiveFailures ?? SCHEDULER_DEFAULTS.maxConsecutiveFailures,
      recheckMs: Math.min(config.recheckMs ?? SCHEDULER_DEFAULTS.recheckMs, LONGEST_TIMER_MS),
      onRun: config.onRun,
    };
    if (this.options.overlap !== "skip" && this.options.overlap !== "buffer-one") {
      throw new ScheduleUsageError(`overlap must be "skip" or "buffer-one", not "${String(this.options.overlap)}"`);
    }
    if (!(this.options.catchupWindowMs >= 0)) throw new ScheduleUsageError("catchupWindowMs must be >= 0");
    if (!(this.options.maxConsecutiveFailures >= 1)) throw new ScheduleUsageError("maxConsecutiveFailures must be >= 1");
    if (!(this.options.recheckMs > 0)) throw new ScheduleUsageError("recheckMs must be > 0");
  }

  // ---------------------------------------------------------------- drivers

  /**
   * Runs every job due in [from, to) on the virtual clock, in time order, awaiting each run. The clock is set to
   * `from` first (it must not be past it) and left at `to` (or later, if the last run's simulated duration ends
   * after `to`). Calling it again with the next window continues the same schedule.
   */
  async simulate(window: SimulateOptions): Promise<SimulationResult> {
    const clock = this.clock;
    if (!(clock instanceof VirtualClock)) throw new ScheduleUsageError("simulate needs a VirtualClock");
    const { from, to } = window;
    if (!Number.isFinite(from) || !Number.isFinite(to) || to < from) {
      throw new ScheduleUsageError(`the simulated window must have from <= to (from ${from}, to ${to})`);
    }
    if (clock.now() > from) {
      throw new ScheduleUsageError(`the virtual clock (${clock.now()}) is already past from (${from})`);
    }
    if (this.live !== null || this.simulating !== null) throw new ScheduleUsageError("the scheduler is already running");
    const claimed = await this.claimIfNeeded();
    clock.set(from);
    this.simulating = clock;
    const runs: RunRecord[] = [];
    try {
      for (;;) {
        runs.push(...(await this.tick()));
        const next = await this.nextWake();
        if (next === null || next >= to) break;
        // A tick consumes every due time up to now, so the next one is strictly later; anything else would loop.
        if (next <= clock.now()) throw new FreshrecError("INTERNAL", `scheduler did not consume due time ${next}`);
        clock.set(next);
      }
      if (clock.now() < to) clock.set(to);
    } finally {
      this.simulating = null;
      if (claimed) await this.release();
    }
    return { from, to, runs, status: await this.status() };
  }

  /**
   * Takes the store's driver lease now, ahead of `start()` or `simulate()` (which otherwise take it themselves), so a
   * caller can refuse before doing anything else when another process drives the schedule. Kept until `stop()` (or
   * `release()`).
   * @throws ScheduleDriverHeldError naming the process that drives the schedule.
   */
  async claim(): Promise<void> {
    if (this.lease !== null) return;
    this.lease = await this.store.claimDriver({ host: hostname(), pid: process.pid, since: this.clock.now() });
    // Whatever the log shows running now was begun by a driver that is gone (only the lease holder begins runs).
    this.recovered = false;
  }

  /** Gives up the driver lease (a no-op without one); stop() does it too. */
  async release(): Promise<void> {
    const lease = this.lease;
    this.lease = null;
    await lease?.release();
  }

  /** Claims the lease unless it is held already; says whether it did, so the caller releases only what it took. */
  private async claimIfNeeded(): Promise<boolean> {
    if (this.lease !== null) return false;
    await this.claim();
    return true;
  }

  /**
   * Live driver: takes the driver lease (unless `claim()` did), looks at once (catching up what was missed), then
   * sleeps until the next due time with one timer at a time. Resolves when `stop()` is called; rejects if the lease
   * is refused or lost, or the store fails (the lease is then given up).
   */
  start(): Promise<void> {
    if (this.live !== null || this.simulating !== null) throw new ScheduleUsageError("the scheduler is already running");
    return new Promise<void>((resolve, reject) => {
      const live: LiveDriver = {
        timer: null,
        stopping: false,
        settle: (error?: unknown) => (error === undefined ? resolve() : reject(error)),
      };
      this.live = live;
      const claiming = this.claim().then(
        () => {
          if (!live.stopping) this.wake();
          return [];
        },
        (error: unknown) => this.fail(live, error),
      );
      this.ticking = claiming;
    });
  }

  /** Cancels the timer, aborts the running job's signal and waits for it to end. */
  async stop(): Promise<void> {
    const live = this.live;
    if (live === null) return;
    live.stopping = true;
    if (live.timer !== null) clearTimeout(live.timer);
    live.timer = null;
    this.current?.controller.abort(new FreshrecError("CANCELLED", "the scheduler is stopping"));
    try {
      await this.ticking;
    } catch {
      // the failure has already been reported through start()'s promise
    }
    if (this.live !== live) return; // it failed meanwhile, and fail() settled it
    this.live = null;
    await this.release().catch(() => {});
    live.settle();
  }

  /** Ends the live driver on an error: the lease is given up, then start()'s promise rejects. */
  private async fail(live: LiveDriver, error: unknown): Promise<never[]> {
    if (this.live === live) this.live = null;
    await this.release().catch(() => {});
    live.settle(error);
    return [];
  }

  private wake(): void {
    const live = this.live;
    if (live === null || live.stopping) return;
    live.timer = null;
    const ticking = this.tick();
    this.ticking = ticking;
    ticking.then(
      () => this.arm(),
      (error: unknown) => this.fail(live, error),
    );
  }

  private async arm(): Promise<void> {
    const live = this.live;
    if (live === null || live.stopping) return;
    let next: number | null;
    try {
      next = await this.nextWake();
    } catch (error) {
      await this.fail(live, error);
      return;
    }
    // stop() may have come while the store answered.
    if (this.live !== live || live.stopping) return;
    const delay = next === null ? this.options.recheckMs : Math.min(Math.max(0, next - this.clock.now()), this.options.recheckMs);
    live.timer = setTimeout(() => this.wake(), delay);
  }

  // ---------------------------------------------------------------- control

  /** Pauses a job: its due times are counted as skippedWhilePaused until resume. A running run is not aborted. */
  async pause(job: JobName, reason = "paused by hand"): Promise<JobState> {
    const scheduled = this.jobNamed(job);
    const now = this.clock.now();
    return this.store.transaction(async (tx) => {
      const state = { ...(await this.stateOf(tx, scheduled, now)), paused: true, pauseReason: reason, pausedAt: now };
      await tx.saveJobState(state);
      return state;
    });
  }

  /**
   * Resumes a paused job from now on: due times that fell while paused are counted, not caught up, and the
   * failure streak starts over. The next run is the job's next due time.
   */
  async resume(job: JobName): Promise<JobState> {
    const scheduled = this.jobNamed(job);
    const now = this.clock.now();
    const state = await this.store.transaction(async (tx) => {
      const before = await this.stateOf(tx, scheduled, now);
      // Not paused: nothing to resume, and its open due times must stay open for catch-up.
      if (!before.paused) return before;
      // Up to just before now: a due time at exactly now (the end of a simulated window) still runs.
      const resumed = { ...this.consumeWhilePaused(scheduled, before, now - 1), paused: false, pauseReason: null, pausedAt: null, consecutiveFailures: 0 };
      await tx.saveJobState(resumed);
      return resumed;
    });
    // A sleeping live scheduler may have no timer for this job's next due time: look again now.
    const live = this.live;
    if (live !== null && !live.stopping && live.timer !== null && this.current === null) {
      clearTimeout(live.timer);
      this.wake();
    }
    return state;
  }

  status(): Promise<ScheduleStatus> {
    return readScheduleStatus(
      this.store,
      this.jobs.map((j) => j.definition),
      this.clock.now(),
      this.current && { job: this.current.job, due: this.current.due, startedAt: this.current.startedAt },
    );
  }

  // ---------------------------------------------------------------- core

  /**
   * Handles everything due at the clock's now: catch-up of due times since each job's cursor, the runs, then the
   * due times that fell during those runs (overlap policy), until nothing is open. Both drivers call only this.
   */
  async tick(): Promise<RunRecord[]> {
    if (this.inTick) throw new ScheduleUsageError("a tick is already running");
    this.inTick = true;
    try {
      return await this.tickOnce();
    } finally {
      this.inTick = false;
    }
  }

  private async tickOnce(): Promise<RunRecord[]> {
    const made: RunRecord[] = [];
    if (!this.recovered) {
      await this.failInterruptedRuns();
      this.recovered = true;
    }
    let planTime = this.clock.now();
    let batch = await this.planDue(planTime);
    while (batch.length > 0) {
      for (const planned of batch) {
        if (this.live?.stopping) return made;
        const record = await this.runOne(planned);
        if (record !== null) made.push(record);
      }
      const ended = this.clock.now();
      batch = await this.resolveOverlap(planTime, ended);
      planTime = ended;
    }
    return made;
  }

  /** Decides, at `now`, what each job runs (catch-up) and counts what it missed or skipped while paused. */
  private async planDue(now: number): Promise<PlannedRun[]> {
    const planned: PlannedRun[] = [];
    await this.store.transaction(async (tx) => {
      for (const job of this.jobs) {
        const state = await this.stateOf(tx, job, now);
        if (state.paused) {
          await tx.saveJobState(this.consumeWhilePaused(job, state, now));
          continue;
        }
        const { times, older } = job.cadence.dueBetween(state.cursor, now, 1);
        if (times.length === 0) continue;
        const latest = times[0];
        if (now - latest <= this.options.catchupWindowMs) {
          planned.push({ job, due: latest, trigger: older > 0 ? "catch-up" : "scheduled" });
          // Leave only `latest` open until the run starts, so a crash before then still catches it up.
          await tx.saveJobState({ ...state, cursor: latest - 1, counters: add(state.counters, { missed: older }) });
        } else {
          await tx.saveJobState({ ...state, cursor: latest, counters: add(state.counters, { missed: older + 1 }) });
        }
      }
    });
    return planned;
  }

  /** Applies the overlap policy to due times that fell in (batchStart, batchEnd], while a batch was running. */
  private async resolveOverlap(batchStart: number, batchEnd: number): Promise<PlannedRun[]> {
    if (batchEnd <= batchStart) return [];
    const buffered: PlannedRun[] = [];
    await this.store.transaction(async (tx) => {
      for (const job of this.jobs) {
        const state = await this.stateOf(tx, job, batchEnd);
        if (state.paused) {
          await tx.saveJobState(this.consumeWhilePaused(job, state, batchEnd));
          continue;
        }
        const { times, older } = job.cadence.dueBetween(Math.max(state.cursor, batchStart), batchEnd, 1);
        if (times.length === 0) continue;
        const latest = times[0];
        if (this.options.overlap === "buffer-one") {
          buffered.push({ job, due: latest, trigger: "buffered" });
          await tx.saveJobState({ ...state, cursor: latest - 1, counters: add(state.counters, { skipped: older }) });
        } else {
          await tx.saveJobState({ ...state, cursor: latest, counters: add(state.counters, { skipped: older + 1 }) });
        }
      }
    });
    return buffered.sort((a, b) => a.due - b.due || this.jobs.indexOf(a.job) - this.jobs.indexOf(b.job));
  }

  private async runOne(planned: PlannedRun): Promise<RunRecord | null> {
    const { job, due, trigger } = planned;
    const name = job.definition.name;
    const startedAt = this.clock.now();
    // The one rule replay depends on: a run never sees an as-of time ahead of the clock.
    if (due > startedAt) throw new FreshrecError("INTERNAL", `job ${name} planned for ${due} before it was due (now ${startedAt})`);
    // A driver that lost its lease (PostgreSQL: its connection dropped) must not begin another run: stop instead.
    await this.lease?.check();
    const id = await this.store.transaction(async (tx) => {
      const state = await this.stateOf(tx, job, startedAt);
      if (state.paused) {
        // Paused between planning and starting (by another process, or a stop): count it, do not run it.
        await tx.saveJobState({ ...state, cursor: Math.max(state.cursor, due), counters: add(state.counters, { skippedWhilePaused: 1 }) });
        return null;
      }
      const runId = await tx.begin({ job: name, due, trigger, startedAt });
      await tx.saveJobState({ ...state, cursor: Math.max(state.cursor, due), counters: add(state.counters, { runs: 1 }), lastRunId: runId });
      return runId;
    });
    if (id === null) return null;

    const controller = new AbortController();
    this.current = { job: name, due, startedAt, controller };
    const hrStart = process.hrtime.bigint();
    const cpuStart = process.cpuUsage();
    let outcome: JobOutcome | undefined;
    let thrown: unknown;
    try {
      outcome = await job.definition.run({ asOf: due, clock: this.clock, signal: controller.signal, job: name, trigger });
    } catch (error) {
      thrown = error;
    } finally {
      this.current = null;
    }
    const durationSeconds = elapsedSeconds(hrStart);
    const cpu = process.cpuUsage(cpuStart);
    if (this.simulating !== null && outcome?.simulatedMs !== undefined && outcome.simulatedMs > 0) {
      const end = startedAt + outcome.simulatedMs;
      if (end > this.simulating.now()) this.simulating.set(end);
    }
    const { status, error } = judge(outcome, thrown, controller.signal.aborted);
    const { childCpuSeconds, ...given } = outcome?.cost ?? {};
    // Training runs in a child process, whose CPU time process.cpuUsage() does not include: the job reports it.
    const cost: JobCost = { cpuSeconds: (cpu.user + cpu.system) / 1e6 + (childCpuSeconds ?? 0), ...given };
    const endedAt = this.clock.now();

    await this.store.transaction(async (tx) => {
      await tx.finish(id, { endedAt, status, durationSeconds, cost, detail: outcome?.detail ?? null, error });
      await tx.saveJobState(this.afterRun(await this.stateOf(tx, job, endedAt), id, status, error, endedAt));
    });
    const record = await this.store.run(id);
    if (record === undefined) throw new FreshrecError("INTERNAL", `run ${id} vanished from the run log`);
    this.options.onRun?.(record);
    return record;
  }

  /** Counters, failure streak and pause after a run (or an interrupted run found on restart). */
  private afterRun(state: JobState, id: number, status: Exclude<RunStatus, "running">, error: string | null, at: number): JobState {
    const counters = add(state.counters, { [status]: 1 });
    switch (status) {
      case "succeeded":
        return { ...state, counters, consecutiveFailures: 0 };
      case "halted":
        return {
          ...state,
          counters,
          paused: true,
          pauseReason: `halted by run ${id}: ${error ?? "a quality gate stopped it"}; resume after review`,
          pausedAt: at,
        };
      case "failed": {
        const streak = state.consecutiveFailures + 1;
        if (streak < this.options.maxConsecutiveFailures) return { ...state, counters, consecutiveFailures: streak };
        return {
          ...state,
          counters,
          consecutiveFailures: streak,
          paused: true,
          pauseReason: `failed ${streak} times in a row (last, run ${id}: ${error ?? "no message"})`,
          pausedAt: at,
        };
      }
      case "cancelled":
        return { ...state, counters };
    }
  }

  /** Runs still `running` in the log were cut off by a crash: fail them so the failure streak sees them. */
  private async failInterruptedRuns(): Promise<void> {
    const now = this.clock.now();
    await this.store.transaction(async (tx) => {
      for (const run of await tx.runs({ status: "running" })) {
        const error = "interrupted: the scheduler stopped before the run ended";
        await tx.finish(run.id, { endedAt: null, status: "failed", durationSeconds: null, cost: null, detail: null, error });
        const job = this.jobs.find((j) => j.definition.name === run.job);
        const state = job === undefined ? await tx.jobState(run.job) : await this.stateOf(tx, job, now);
        if (state !== undefined) await tx.saveJobState(this.afterRun(state, run.id, "failed", error, now));
      }
    });
  }

  private consumeWhilePaused(job: ScheduledJob, state: JobState, now: number): JobState {
    const { times, older } = job.cadence.dueBetween(state.cursor, now, 1);
    if (times.length === 0) return state;
    return { ...state, cursor: times[0], counters: add(state.counters, { skippedWhilePaused: older + 1 }) };
  }

  /** A job's saved state, or a fresh one whose first due time is the first at or after `now`. */
  private async stateOf(tx: ScheduleRecord, job: ScheduledJob, now: number): Promise<JobState> {
    const saved = await tx.jobState(job.definition.name);
    if (saved !== undefined) return saved;
    const fresh: JobState = {
      job: job.definition.name,
      cursor: now - 1,
      paused: false,
      pauseReason: null,
      pausedAt: null,
      consecutiveFailures: 0,
      counters: ZERO_COUNTERS,
      lastRunId: null,
    };
    await tx.saveJobState(fresh);
    return fresh;
  }

  /** The earliest open due time of any job, paused ones included so their counters stay current. */
  private async nextWake(): Promise<number | null> {
    const now = this.clock.now();
    let next: number | null = null;
    const states = new Map((await this.store.jobStates()).map((state) => [state.job, state]));
    for (const job of this.jobs) {
      const state = states.get(job.definition.name);
      const due = job.cadence.next(state?.cursor ?? now - 1);
      if (due !== null && (next === null || due < next)) next = due;
    }
    return next;
  }

  private jobNamed(name: JobName): ScheduledJob {
    const job = this.jobs.find((j) => j.definition.name === name);
    if (job === undefined) throw new UnknownJobError(name, this.jobs.map((j) => j.definition.name));
    return job;
  }
}

/**
 * The status snapshot from the store alone, for `freshrec schedule status` in a process that does not run the
 * jobs: only names and cadences are needed.
 */
export async function readScheduleStatus(
  store: ScheduleRecord,
  jobs: ReadonlyArray<{ readonly name: JobName; readonly cadence: string }>,
  now: number,
  running: ScheduleStatus["running"] = null,
): Promise<ScheduleStatus> {
  const states = new Map((await store.jobStates()).map((state) => [state.job, state]));
  return {
    now,
    running,
    jobs: await Promise.all(jobs.map(async ({ name, cadence }) => {
      const state = states.get(name);
      const lastRun = state?.lastRunId == null ? null : ((await store.run(state.lastRunId)) ?? null);
      const paused = state?.paused ?? false;
      return {
        job: name,
        cadence,
        paused,
        pauseReason: state?.pauseReason ?? null,
        pausedAt: state?.pausedAt ?? null,
        consecutiveFailures: state?.consecutiveFailures ?? 0,
        counters: state?.counters ?? ZERO_COUNTERS,
        lastRun,
        nextDue: paused ? null : parseCadence(cadence).next(state?.cursor ?? now - 1),
      };
    })),
  };
}

function judge(
  outcome: JobOutcome | undefined,
  thrown: unknown,
  aborted: boolean,
): { status: Exclude<RunStatus, "running">; error: string | null } {
  if (thrown !== undefined) {
    const message = thrown instanceof Error ? thrown.message : String(thrown);
    if (aborted) return { status: "cancelled", error: message };
    // A job may signal a failed gate by throwing, as the CLI commands do; it still only pauses that job.
    if (thrown instanceof FreshrecError && thrown.code === "GATE_FAILED") return { status: "halted", error: message };
    return { status: "failed", error: message };
  }
  const status = outcome?.status;
  if (status !== "succeeded" && status !== "failed" && status !== "halted") {
    return { status: "failed", error: `the job returned no valid outcome (status ${JSON.stringify(status)})` };
  }
  if (aborted && status !== "succeeded") return { status: "cancelled", error: outcome?.error ?? "cancelled" };
  return { status, error: outcome?.error ?? null };
}

function add(counters: JobCounters, delta: Partial<Record<keyof JobCounters, number>>): JobCounters {
  const next: Record<keyof JobCounters, number> = { ...counters };
  for (const [key, value] of Object.entries(delta) as [keyof JobCounters, number][]) next[key] += value;
  return next;
}
