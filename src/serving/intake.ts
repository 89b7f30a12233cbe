/**
 * Event intake (POST /v1/events): a batch of events, validated, written to the event store in one transaction (all
 * or nothing) so the next RAG refresh counts them, and applied to the in-memory user state.
 *
 * - Cost: a batch costs its own events, not a recount of the store. Batches waiting while a group is written go
 *   together into the next group, one transaction (./intake-store.ts) that only appends: the user index knows every
 *   stored event (./users.ts `holds`), so a repeated event is told from a new one without searching the store. Only
 *   the events the store newly took are applied to their users' states in place, in any time order, giving what a
 *   reload would give. A body that plainly fits the schema is checked field by field without zod (`plainEvents`);
 *   any other body goes through zod, which names every problem.
 *
 * - Validation: every event must parse (zod) and pass the rules `freshrec ingest` applies (../data/ingest/event-fields.ts:
 *   ids, a time the calendar has, an engagement float32 can hold, text that was UTF-8), and its time must not be later than the server clock's now plus
 *   `futureToleranceMs` (one event from a client whose clock runs years ahead would otherwise become the store's
 *   newest event: the grounding and cold-start windows, the last days before it, would hold nothing, and the CLI's
 *   default as-of, min(now, newest + 1), would jump to the wall clock). A failure
 *   answers 400 naming each event's index and field (`events[3].ts`), and writes nothing. All problems of a batch are
 *   reported in one answer: schema problems, and for each field that parsed, its time or catalog problem, so a client
 *   fixes its batch in one round trip instead of one round per kind of check.
 * - Unknown items (not in the catalog): `reject` answers 400 naming each index; `skip` drops them and counts them.
 * - Idempotency: with an `Idempotency-Key` header, a repeated request gets the first answer again (`replayed: true`)
 *   and writes nothing; the same key with another body is 409. Keys are kept for 7 days. Independently of keys,
 *   the event store never stores an event (user, item, time) twice, so even a retry after a crash between the append
 *   and the key's record (two statements) adds nothing twice.
 * - Upkeep: once no batch has come for a while (`settleAfterMs`), the store's own upkeep runs (`IntakeStore.settle`:
 *   on DuckDB, a move of the intake buffer and a checkpoint of the event store, on the mover's connection, beside the
 *   batches), so that it does not run inside the commit of some later move.
 * - Feedback events (`feedback: "negative"`, "not interested") are not engagement: they are not stored as events
 *   (they would count as positive on a dataset without engagement values), only as experiment outcomes.
 *
 * @example
 * const intake = new EventIntake({ events, catalog, users, queue, experiments, ... });
 * const result = await intake.ingest(body, request.headers["idempotency-key"]);
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import type { EventStore } from "../data/event-store.js";
import { eventEngagement, eventTime, idProblem, MAX_ID_LENGTH } from "../data/ingest/event-fields.js";
import { DAY_MS } from "../domain/clock.js";
import { ConfigError, FreshrecError } from "../domain/errors.js";
import { SERVE_DEFAULTS } from "./defaults.js";
import type { EngagementEvent } from "../domain/types.js";
import type { Catalog } from "./catalog.js";
import { HttpError, type RequestIssue } from "./errors.js";
import type { AttributableEvent } from "./experiments/log.js";
import { DuckDbIntakeStore, type IntakeEvent, type IntakeStore, type RecordedAnswer } from "./intake-store.js";
import type { StoreQueue } from "./store-queue.js";
import type { UserIndex } from "./users.js";

const KEY_TTL_MS = 7 * DAY_MS;
/**
 * How far past the server's now an event's time may be by default: generous for client clocks that drift or sit in
 * another time zone while writing local time as UTC (at most 14 h), tight enough that a wrong year is refused.
 */
export const DEFAULT_FUTURE_TOLERANCE_MS = SERVE_DEFAULTS.futureToleranceMs;

export const intakeEventSchema = z
  .object({
    userId: z.string().min(1).max(MAX_ID_LENGTH).describe(`The user's id (any string of at most ${MAX_ID_LENGTH} characters).`),
    itemId: z.string().min(1).max(MAX_ID_LENGTH).describe("An item of the catalog."),
    ts: z
      .union([z.number(), z.string().min(1)])
      .describe("When: ISO-8601 (a date-time without zone is UTC), or unix milliseconds (or seconds, below 1e11)."),
    engagement: z
      .number()
      .nullable()
      .optional()
      .describe("The engagement signal (rating, watch fraction...); absent or null = engaged. Stored as float32: a value it cannot hold (beyond ±3.4e38, or so small it would be 0) is refused."),
    feedback: z
      .literal("negative")
      .optional()
      .describe('"negative" marks explicit "not interested" feedback on the item: an experiment outcome, not an engagement event.'),
  })
  .strict();

export const intakeBodySchema = z.object({ events: z.array(intakeEventSchema).min(1).describe("The events, oldest first or in any order.") }).strict();

export const intakeResultSchema = z.object({
  received: z.number().int().describe("Events in the request."),
  eventsAdded: z.number().int().describe("Events newly written to the event store."),
  skippedDuplicates: z.number().int().describe("Events the store already had (same user, item and time)."),
  skippedUnknownItems: z.number().int().describe("Events dropped because their item is not in the catalog (unknownItems: skip)."),
  feedback: z.number().int().describe("Negative-feedback events (logged as experiment outcomes only)."),
  outcomesAttributed: z.number().int().describe("Experiment outcomes attributed from this batch."),
  idempotencyKey: z.string().nullable(),
  replayed: z.boolean().describe("True when this is the stored answer of an earlier request with the same key."),
});
export type IntakeResult = z.infer<typeof intakeResultSchema>;

export interface IntakeOptions {
  /** The DuckDB event store intake writes to when no `intakeStore` is given. */
  readonly events?: EventStore;
  /**
   * Where intake writes (events, idempotency keys).
   * @defaultValue a DuckDbIntakeStore on `events`
   */
  readonly intakeStore?: IntakeStore;
  readonly catalog: Catalog;
  readonly users: UserIndex;
  readonly queue: StoreQueue;
  /** What to do with events whose item is not in the catalog. */
  readonly unknownItems: "reject" | "skip";
  /** Most events per batch (more is 413). */
  readonly maxBatchEvents: number;
  /**
   * How far an event's time may lie after `now()` (client clock skew); later is 400.
   * @defaultValue DEFAULT_FUTURE_TOLERANCE_MS (1 day)
   */
  readonly futureToleranceMs?: number;
  /** The server clock's now (epoch ms). */
  readonly now: () => number;
  /** Runs after the append, inside the queue: outcome attribution of the active experiment. */
  readonly attribute?: (events: readonly AttributableEvent[]) => Promise<number>;
  /**
   * How long no batch must have come before the store's upkeep runs (`IntakeStore.settle`).
   * @defaultValue DEFAULT_SETTLE_AFTER_MS
   */
  readonly settleAfterMs?: number;
  /** Told of each failed upkeep (the server logs it); it is also counted in `upkeep`, which /metrics and /healthz show. */
  readonly onUpkeepError?: (error: unknown) => void;
}

/**
 * How long intake waits without a batch before the store's upkeep (a DuckDB checkpoint): long enough that a pause
 * in the traffic, not the gap between two batches of a steady stream, is taken for one, since a batch that arrives
 * while a checkpoint runs waits for it.
 */
export const DEFAULT_SETTLE_AFTER_MS = 1000;

/** What the store's upkeep (`IntakeStore.settle`) did so far: runs that did work, failures and the last one's error. */
export interface IntakeUpkeep {
  ran: number;
  failed: number;
  lastError: unknown;
}

/** zod issues as (index, field) pairs: events.3.ts -> { index: 3, field: "ts" }. */
export function intakeIssues(issues: readonly z.core.$ZodIssue[]): RequestIssue[] {
  return issues.map((issue) => {
    const [head, index, ...rest] = issue.path;
    if (head === "events" && typeof index === "number") return { index, field: rest.map(String).join(".") || "(event)", message: issue.message };
    return { field: issue.path.map(String).join(".") || "(body)", message: issue.message };
  });
}

interface ParsedEvent {
  readonly index: number;
  readonly event: EngagementEvent;
  readonly negative: boolean;
  /** The item's catalog index. */
  readonly item: number;
  /** The time as stored: whole milliseconds. */
  readonly storedTs: number;
}

/** A validated batch waiting for its group write, with the promise its request awaits. */
interface PendingBatch {
  readonly events: readonly ParsedEvent[];
  readonly received: number;
  readonly skippedUnknownItems: number;
  readonly key: string | null;
  readonly bodyHash: string;
  readonly resolve: (result: IntakeResult) => void;
  readonly reject: (error: unknown) => void;
}

/**
 * Most events in one group write: a group is one transaction, and every request in it waits for all of it. Enough
 * for dozens of clients' batches at once, small enough to keep a group within a few milliseconds of appending.
 */
const MAX_GROUP_EVENTS = 20_000;

export class EventIntake {
  private readonly futureToleranceMs: number;
  private readonly intakeStore: IntakeStore;
  private readonly users: UserIndex;
  private readonly catalog: Catalog;
  private pending: PendingBatch[] = [];
  /** Whether a drain task sits in the store queue (one at a time: it takes everything pending when it starts). */
  private drainQueued = false;
  /** When the last batch came (performance.now()). */
  private lastArrival = 0;
  private settleTimer: NodeJS.Timeout | null = null;
  /** The upkeep running now (`close` waits for it). */
  private settling: Promise<void> | null = null;
  private closed = false;
  private readonly settleAfterMs: number;
  /**
   * The store's upkeep so far. A failure is not thrown (no request waits for the upkeep, and the same work is done
   * later anyway: on DuckDB by the intake buffer's mover, after a move once the store's log is full): it is counted
   * here, shown by /metrics and /healthz, and passed to `onUpkeepError`.
   */
  readonly upkeep: IntakeUpkeep = { ran: 0, failed: 0, lastError: null };

  /** @throws ConfigError when `futureToleranceMs` is not a non-negative number of milliseconds. */
  constructor(private readonly options: IntakeOptions) {
    const tolerance = options.futureToleranceMs ?? DEFAULT_FUTURE_TOLERANCE_MS;
    // NaN would silently accept every time (every comparison with it is false); a negative one would refuse "now".
    if (!(tolerance >= 0)) {
      throw new ConfigError(`serve.futureToleranceMs: expected a number of milliseconds >= 0, got ${tolerance}`, [
        { path: "serve.futureToleranceMs", message: "expected a number >= 0" },
      ]);
    }
    this.futureToleranceMs = tolerance;
    this.settleAfterMs = options.settleAfterMs ?? DEFAULT_SETTLE_AFTER_MS;
    if (!options.intakeStore && !options.events) throw new FreshrecError("INTERNAL", "EventIntake needs an intakeStore or the events it writes to");
    this.intakeStore = options.intakeStore ?? new DuckDbIntakeStore(options.events!, options.catalog);
    this.users = options.users;
    this.catalog = options.catalog;
  }

  async ingest(body: unknown, idempotencyKey: string | undefined): Promise<IntakeResult> {
    const { maxBatchEvents } = this.options;
    const raw = (body as { events?: unknown } | null)?.events;
    if (Array.isArray(raw) && raw.length > maxBatchEvents) {
      throw new HttpError("PAYLOAD_TOO_LARGE", `a batch holds at most ${maxBatchEvents} events (serve.maxBatchEvents), this one ${raw.length}`);
    }
    if (idempotencyKey !== undefined && !/^[\x21-\x7e]{1,200}$/.test(idempotencyKey)) {
      throw new HttpError("BAD_INPUT", "Idempotency-Key: 1-200 visible ASCII characters", [{ field: "Idempotency-Key", message: "1-200 visible ASCII characters" }]);
    }
    const now = this.options.now();
    const plain = this.plainEvents(body, now);
    if (plain !== null) {
      const bodyHash = idempotencyKey === undefined ? "" : hashBody(raw as readonly Record<string, unknown>[]);
      return this.submit({ ...plain, received: (raw as unknown[]).length, key: idempotencyKey ?? null, bodyHash });
    }
    const parsed = intakeBodySchema.safeParse(body);
    const issues: RequestIssue[] = parsed.success ? [] : intakeIssues(parsed.error.issues);
    // The time and catalog checks also run over the events of a body that failed the schema (field by field: see
    // `check`), so that one 400 lists every problem of the batch rather than one kind of problem per round trip.
    const rawEvents: readonly unknown[] = parsed.success ? parsed.data.events : Array.isArray(raw) ? raw : [];
    const events: ParsedEvent[] = [];
    let skippedUnknownItems = 0;
    rawEvents.forEach((rawEvent, index) => {
      const checked = this.check(rawEvent, index, now, issues);
      if (checked === "unknown-item") skippedUnknownItems++;
      else if (checked !== null) events.push(checked);
    });
    if (issues.length || !parsed.success) {
      // In batch order (body-level problems first), so a client reads them alongside its events.
      const ordered = issues
        .map((issue, k) => ({ issue, k }))
        .sort((a, b) => (a.issue.index ?? -1) - (b.issue.index ?? -1) || a.k - b.k)
        .map((o) => o.issue);
      throw new HttpError("BAD_INPUT", `invalid events: ${describeIssues(ordered)}`, ordered.slice(0, 100));
    }
    // Only a keyed request is ever compared with another body.
    const bodyHash = idempotencyKey === undefined ? "" : createHash("sha256").update(JSON.stringify(parsed.data)).digest("hex");
    return this.submit({ events, received: parsed.data.events.length, skippedUnknownItems, key: idempotencyKey ?? null, bodyHash });
  }

  /**
   * Queues a validated batch for the next group write. Batches that arrive while a group is being written wait and
   * go together into the next one (group commit): one transaction per group instead of per request, which is what
   * lets single-event batches from many clients through at hundreds per second.
   */
  private submit(batch: Omit<PendingBatch, "resolve" | "reject">): Promise<IntakeResult> {
    this.lastArrival = performance.now();
    return new Promise<IntakeResult>((resolve, reject) => {
      this.pending.push({ ...batch, resolve, reject });
      this.scheduleDrain();
    });
  }

  /**
   * Once no batch has come for `settleAfterMs`, the store's upkeep runs, outside the store queue (on DuckDB on the
   * intake buffer's mover connection): a checkpoint then holds up no batch, where the one DuckDB runs by itself holds
   * up every batch behind the commit that started it. Armed after each group write; a batch coming meanwhile puts it
   * off.
   */
  private armSettle(delay: number): void {
    if (this.settleTimer !== null || this.closed) return;
    this.settleTimer = setTimeout(() => {
      this.settleTimer = null;
      // A drain pending or running arms it again when it ends.
      if (this.pending.length || this.drainQueued) return;
      const quiet = performance.now() - this.lastArrival;
      if (quiet < this.settleAfterMs) {
        this.armSettle(this.settleAfterMs - quiet);
        return;
      }
      // Not through the store queue: the DuckDB store settles on its intake buffer's mover connection, and a batch
      // must not wait behind it.
      const settling = this.intakeStore.settle().then(
        (ran) => {
          if (ran) this.upkeep.ran++;
        },
        (error: unknown) => {
          this.upkeep.failed++;
          this.upkeep.lastError = error;
          this.options.onUpkeepError?.(error);
        },
      );
      this.settling = settling.finally(() => {
        if (this.settling === settling) this.settling = null;
      });
    }, delay);
    // Upkeep never keeps a process alive that has nothing else to do.
    this.settleTimer.unref();
  }

  /**
   * Stops the upkeep: no run starts after it, and the running one ends first (the server closes the store after
   * this). Batches still queued are written as usual.
   */
  async close(): Promise<void> {
    this.closed = true;
    if (this.settleTimer !== null) clearTimeout(this.settleTimer);
    this.settleTimer = null;
    await this.settling;
  }

  private scheduleDrain(): void {
    if (this.drainQueued || this.pending.length === 0) return;
    this.drainQueued = true;
    // Through the store queue: other writers (exposure flushes, grounding rebuilds) take their turns between groups.
    void this.options.queue.run(() => this.drain());
  }

  private async drain(): Promise<void> {
    this.drainQueued = false;
    const group: PendingBatch[] = [];
    let events = 0;
    while (this.pending.length && (group.length === 0 || events + this.pending[0].events.length <= MAX_GROUP_EVENTS)) {
      const batch = this.pending.shift()!;
      group.push(batch);
      events += batch.events.length;
    }
    try {
      await this.writeGroup(group);
    } catch (error) {
      // writeGroup settles every batch itself; this only guards against a bug leaving a client without an answer.
      for (const b of group) b.reject(error);
    }
    this.scheduleDrain();
    if (!this.drainQueued) this.armSettle(this.settleAfterMs);
  }

  /** Writes a group of batches and settles each one's promise (its own answer or error). */
  private async writeGroup(group: readonly PendingBatch[]): Promise<void> {
    const { intakeStore, users } = this;
    const keyed = group.filter((b) => b.key !== null);
    const recorded = keyed.length ? await intakeStore.recorded(keyed.map((b) => b.key!)) : new Map<string, RecordedAnswer>();
    const writers: PendingBatch[] = [];
    const keysInGroup = new Set<string>();
    const later: PendingBatch[] = [];
    for (const batch of group) {
      if (batch.key !== null) {
        const stored = recorded.get(batch.key);
        if (stored) {
          if (stored.bodyHash !== batch.bodyHash) batch.reject(new HttpError("CONFLICT", `Idempotency-Key ${JSON.stringify(batch.key)} was used with a different body`));
          else batch.resolve({ ...(JSON.parse(stored.result) as IntakeResult), replayed: true });
          continue;
        }
        // A second request with a key this group writes waits for the next group, which finds the first's answer.
        if (keysInGroup.has(batch.key)) {
          later.push(batch);
          continue;
        }
        keysInGroup.add(batch.key);
      }
      writers.push(batch);
    }
    this.pending.unshift(...later);

    // The group's new events, each identity (user, item, ts) once: the first occurrence wins, as in the store, and an
    // event the store holds already (the user index knows every stored event) is a duplicate, not written again.
    const toAppend: IntakeEvent[] = [];
    const owner: number[] = [];
    const found: number[] = [];
    const inGroup = new GroupIdentities();
    for (let w = 0; w < writers.length; w++) {
      for (const { event, negative, item, storedTs } of writers[w].events) {
        if (negative) continue;
        const user = users.find(event.userId);
        if (users.holdsEvent(user, item, storedTs) || !inGroup.add(event.userId, item, storedTs)) continue;
        toAppend.push({ userId: event.userId, item, ts: storedTs, engagement: event.engagement ?? null });
        owner.push(w);
        found.push(user);
      }
    }
    let added: boolean[];
    try {
      added = await intakeStore.append(toAppend);
    } catch (error) {
      if (writers.length === 1) {
        writers[0].reject(error);
        return;
      }
      // One batch's problem must not fail the others: each is tried alone.
      for (const batch of writers) await this.writeGroup([batch]);
      return;
    }
    users.applyFound(
      toAppend.filter((_, k) => added[k]),
      found.filter((_, k) => added[k]),
    );

    const eventsAdded = new Array<number>(writers.length).fill(0);
    owner.forEach((w, k) => {
      if (added[k]) eventsAdded[w]++;
    });
    const answers: { batch: PendingBatch; result: IntakeResult }[] = [];
    for (const [w, batch] of writers.entries()) {
      const engagement = batch.events.filter((e) => !e.negative).length;
      const result: IntakeResult = {
        received: batch.received,
        eventsAdded: eventsAdded[w],
        skippedDuplicates: engagement - eventsAdded[w],
        skippedUnknownItems: batch.skippedUnknownItems,
        feedback: batch.events.length - engagement,
        outcomesAttributed: 0,
        idempotencyKey: batch.key,
        replayed: false,
      };
      try {
        answers.push({ batch, result: { ...result, outcomesAttributed: await this.attribute(batch.events) } });
      } catch (error) {
        batch.reject(error);
      }
    }
    const keep = answers.filter((a) => a.batch.key !== null);
    if (keep.length) {
      const now = this.options.now();
      try {
        await intakeStore.record(
          keep.map((a) => ({ key: a.batch.key!, bodyHash: a.batch.bodyHash, result: JSON.stringify(a.result) })),
          now,
          now - KEY_TTL_MS,
        );
      } catch (error) {
        for (const a of keep) a.batch.reject(error);
        for (const a of answers) if (a.batch.key === null) a.batch.resolve(a.result);
        return;
      }
    }
    for (const a of answers) a.batch.resolve(a.result);
  }

  /** Outcome attribution of the active experiment for one batch (inside the queue, after its events are stored). */
  private async attribute(events: readonly ParsedEvent[]): Promise<number> {
    if (!this.options.attribute) return 0;
    const { catalog } = this;
    return this.options.attribute(
      events.map((e) => ({
        userId: e.event.userId,
        itemId: e.event.itemId,
        clusterId: catalog.clusterIds[catalog.itemCluster[e.item]],
        // The time as stored (whole milliseconds), so an outcome is attributed by the event the log holds.
        ts: Math.round(e.event.ts),
        engagement: e.event.engagement ?? null,
        negative: e.negative,
      })),
    );
  }

  /**
   * The time and catalog checks of event `index`, appending its problems to `issues`. A field is checked only when it
   * passes its own schema: otherwise the schema's issue already names it, and its value means nothing.
   * @returns the event to write (meaningful only when the whole body passed its schema); "unknown-item" when it is
   * dropped (unknownItems: skip); null when it has a problem or is not an object.
   */
  private check(raw: unknown, index: number, now: number, issues: RequestIssue[]): ParsedEvent | "unknown-item" | null {
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return null;
    const fields = intakeEventSchema.shape;
    const e = raw as Record<string, unknown>;
    const before = issues.length;
    const userId = fields.userId.safeParse(e.userId);
    const badUser = userId.success ? idProblem(userId.data) : null;
    if (badUser !== null) issues.push({ index, field: "userId", message: badUser });
    let ts = Number.NaN;
    const given = fields.ts.safeParse(e.ts);
    if (given.success) {
      const time = eventTime(given.data);
      if (typeof time !== "number") issues.push({ index, field: "ts", message: time.problem });
      else if (time > now + this.futureToleranceMs) issues.push({ index, field: "ts", message: futureMessage(given.data, time, now, this.futureToleranceMs) });
      else ts = time;
    }
    const itemId = fields.itemId.safeParse(e.itemId);
    const badItem = itemId.success ? idProblem(itemId.data) : null;
    let unknownItem = false;
    const item = itemId.success ? this.catalog.itemIndex.get(itemId.data) : undefined;
    if (badItem !== null) issues.push({ index, field: "itemId", message: badItem });
    else if (itemId.success && item === undefined) {
      if (this.options.unknownItems === "reject") issues.push({ index, field: "itemId", message: `item ${JSON.stringify(itemId.data)} is not in the catalog` });
      else unknownItem = true;
    }
    const rawEngagement = fields.engagement.safeParse(e.engagement);
    const engagement = rawEngagement.success ? eventEngagement(rawEngagement.data) : null;
    if (engagement !== null && typeof engagement !== "number") issues.push({ index, field: "engagement", message: engagement.problem });
    if (issues.length > before || !itemId.success || !userId.success) return null;
    if (unknownItem) return "unknown-item";
    return {
      index,
      event: { userId: userId.data, itemId: itemId.data, ts, ...(typeof engagement === "number" ? { engagement } : {}) },
      negative: e.feedback === "negative",
      item: item!,
      storedTs: Math.round(ts),
    };
  }

  /**
   * The events of a body that plainly fits `intakeBodySchema` and whose every field passes `check`'s rules, checked
   * without zod (which costs more than all the rest of a valid batch); null for any other body, which then goes
   * through zod and `check` to have each of its problems named. Never accepts what they would refuse.
   */
  private plainEvents(body: unknown, now: number): Pick<PendingBatch, "events" | "skippedUnknownItems"> | null {
    if (!isPlainObject(body)) return null;
    for (const key in body) if (key !== "events") return null;
    const raw = body.events;
    if (!Array.isArray(raw) || raw.length === 0) return null;
    const { itemIndex } = this.catalog;
    const latest = now + this.futureToleranceMs;
    const events: ParsedEvent[] = [];
    let skippedUnknownItems = 0;
    for (let index = 0; index < raw.length; index++) {
      const e: unknown = raw[index];
      if (!isPlainObject(e)) return null;
      for (const key in e) if (!EVENT_FIELDS.has(key)) return null;
      const { userId, itemId, ts: given, engagement: rawEngagement, feedback } = e;
      if (typeof userId !== "string" || typeof itemId !== "string" || idProblem(userId) !== null || idProblem(itemId) !== null) return null;
      if (!(typeof given === "number" ? Number.isFinite(given) : typeof given === "string" && given.length > 0)) return null;
      const ts = eventTime(given as number | string);
      if (!(rawEngagement === undefined || rawEngagement === null || (typeof rawEngagement === "number" && Number.isFinite(rawEngagement)))) return null;
      if (feedback !== undefined && feedback !== "negative") return null;
      if (typeof ts !== "number" || ts > latest) return null;
      const engagement = eventEngagement(rawEngagement as number | null | undefined);
      if (engagement !== null && typeof engagement !== "number") return null;
      const item = itemIndex.get(itemId);
      if (item === undefined) {
        if (this.options.unknownItems === "reject") return null;
        skippedUnknownItems++;
        continue;
      }
      events.push({
        index,
        event: { userId, itemId, ts, ...(typeof engagement === "number" ? { engagement } : {}) },
        negative: feedback === "negative",
        item,
        storedTs: Math.round(ts),
      });
    }
    return { events, skippedUnknownItems };
  }
}

const EVENT_FIELDS: ReadonlySet<string> = new Set(Object.keys(intakeEventSchema.shape));

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

/**
 * The idempotency digest of a body `plainEvents` took: the JSON of what zod's parse gives for it (each event's fields
 * in the schema's order, only those present), so a retry hashes alike whichever path checked it.
 */
function hashBody(events: readonly Record<string, unknown>[]): string {
  const data = events.map((e) => {
    const out: Record<string, unknown> = {};
    for (const field of EVENT_FIELDS) if (field in e) out[field] = e[field];
    return out;
  });
  return createHash("sha256").update(JSON.stringify({ events: data })).digest("hex");
}

/**
 * The identities (user, item, ts) of one group's events so far, to keep the first of each: per user, a short list
 * searched in place (a user has few events in one group), turned into a set when it grows.
 */
class GroupIdentities {
  private readonly byUser = new Map<string, { items: number[]; times: number[]; keys: Set<string> | null }>();

  /** @returns false when the identity was added before. */
  add(userId: string, item: number, ts: number): boolean {
    const mine = this.byUser.get(userId);
    if (mine === undefined) {
      this.byUser.set(userId, { items: [item], times: [ts], keys: null });
      return true;
    }
    if (mine.keys !== null) {
      const key = `${item}:${ts}`;
      if (mine.keys.has(key)) return false;
      mine.keys.add(key);
      return true;
    }
    for (let k = 0; k < mine.items.length; k++) if (mine.items[k] === item && mine.times[k] === ts) return false;
    mine.items.push(item);
    mine.times.push(ts);
    if (mine.items.length > 16) mine.keys = new Set(mine.items.map((it, k) => `${it}:${mine.times[k]}`));
    return true;
  }
}

/** Why a time is refused as a future one, with the numbers a client needs to see which clock is wrong. */
function futureMessage(given: string | number, ts: number, now: number, toleranceMs: number): string {
  return (
    `${JSON.stringify(given)} (${new Date(ts).toISOString()}) is in the future: ${duration(ts - now)} after the server's now ${new Date(now).toISOString()}, ` +
    `more than the ${duration(toleranceMs)} (${toleranceMs} ms, serve.futureToleranceMs) allowed for client clock skew`
  );
}

/** A span for people: "1 day", "2.5 hours", "30 seconds". */
function duration(ms: number): string {
  const [amount, unit] = ms >= DAY_MS ? [ms / DAY_MS, "day"] : ms >= 3_600_000 ? [ms / 3_600_000, "hour"] : [ms / 1000, "second"];
  const rounded = Math.round(amount * 10) / 10;
  return `${rounded} ${unit}${rounded === 1 ? "" : "s"}`;
}

function describeIssues(issues: readonly RequestIssue[]): string {
  const shown = issues.slice(0, 3).map((i) => `${i.index === undefined ? "" : `events[${i.index}].`}${i.field}: ${i.message}`);
  return shown.join("; ") + (issues.length > 3 ? `; and ${issues.length - 3} more` : "");
}
