/**
 * Event intake (POST /v1/events): a batch of events, validated, written to the event store in one transaction (all
 * or nothing) so the next RAG refresh counts them, and applied to the in-memory user state.
 *
 * - Validation: every event must parse (zod) and its time must be a time; a failure answers 400 naming the event's
 *   index and the field (`events[3].ts`), and writes nothing.
 * - Unknown items (not in the catalog): `reject` answers 400 naming each index; `skip` drops them and counts them.
 * - Idempotency: with an `Idempotency-Key` header, a repeated request gets the first answer again (`replayed: true`)
 *   and writes nothing; the same key with another body is 409. Keys are kept for 7 days. Independently of keys,
 *   the event store never stores an event (user, item, time) twice, so even a retry after a crash between the append
 *   and the key's record (two statements) adds nothing twice.
 * - Feedback events (`feedback: "negative"`, "not interested") are not engagement: they are not stored as events
 *   (they would count as positive on a dataset without engagement values), only as experiment outcomes.
 *
 * @example
 * const intake = new EventIntake({ events, catalog, users, queue, experiments, ... });
 * const result = await intake.ingest(body, request.headers["idempotency-key"]);
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { eventBatchFromEvents, type EventStore } from "../data/event-store.js";
import { parseTime } from "../domain/clock.js";
import type { EngagementEvent } from "../domain/types.js";
import type { Catalog } from "./catalog.js";
import { HttpError, type RequestIssue } from "./errors.js";
import type { AttributableEvent } from "./experiments/log.js";
import type { StoreQueue } from "./store-queue.js";
import type { UserIndex } from "./users.js";

/** Latest time an event may carry (far beyond anything real; keeps timestamps inside DuckDB's range). */
const MAX_TS = Date.UTC(9999, 0, 1);
const KEY_TTL_MS = 7 * 86_400_000;

export const intakeEventSchema = z
  .object({
    userId: z.string().min(1).max(256).describe("The user's id (any string)."),
    itemId: z.string().min(1).max(256).describe("An item of the catalog."),
    ts: z
      .union([z.number(), z.string().min(1)])
      .describe("When: ISO-8601 (a date-time without zone is UTC), or unix milliseconds (or seconds, below 1e11)."),
    engagement: z.number().nullable().optional().describe("The engagement signal (rating, watch fraction...); absent or null = engaged."),
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
  readonly events: EventStore;
  readonly catalog: Catalog;
  readonly users: UserIndex;
  readonly queue: StoreQueue;
  /** What to do with events whose item is not in the catalog. */
  readonly unknownItems: "reject" | "skip";
  /** Most events per batch (more is 413). */
  readonly maxBatchEvents: number;
  readonly now: () => number;
  /** Runs after the append, inside the queue: outcome attribution of the active experiment. */
  readonly attribute?: (events: readonly AttributableEvent[]) => Promise<number>;
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
}

export class EventIntake {
  private schemaReady = false;

  constructor(private readonly options: IntakeOptions) {}

  async ingest(body: unknown, idempotencyKey: string | undefined): Promise<IntakeResult> {
    const { catalog, maxBatchEvents } = this.options;
    const raw = (body as { events?: unknown } | null)?.events;
    if (Array.isArray(raw) && raw.length > maxBatchEvents) {
      throw new HttpError("PAYLOAD_TOO_LARGE", `a batch holds at most ${maxBatchEvents} events (serve.maxBatchEvents), this one ${raw.length}`);
    }
    if (idempotencyKey !== undefined && !/^[\x21-\x7e]{1,200}$/.test(idempotencyKey)) {
      throw new HttpError("BAD_INPUT", "Idempotency-Key: 1-200 visible ASCII characters", [{ field: "Idempotency-Key", message: "1-200 visible ASCII characters" }]);
    }
    const parsed = intakeBodySchema.safeParse(body);
    if (!parsed.success) {
      const issues = intakeIssues(parsed.error.issues);
      throw new HttpError("BAD_INPUT", `invalid events: ${describeIssues(issues)}`, issues);
    }
    const events: ParsedEvent[] = [];
    const issues: RequestIssue[] = [];
    let skippedUnknownItems = 0;
    parsed.data.events.forEach((e, index) => {
      const ts = parseTime(String(e.ts));
      if (!Number.isFinite(ts) || ts < 0 || ts >= MAX_TS) issues.push({ index, field: "ts", message: `${JSON.stringify(e.ts)} is not a time (ISO-8601 or unix ms/s)` });
      if (e.engagement !== undefined && e.engagement !== null && !Number.isFinite(e.engagement)) issues.push({ index, field: "engagement", message: "expected a finite number" });
      if (!catalog.itemIndex.has(e.itemId)) {
        if (this.options.unknownItems === "reject") issues.push({ index, field: "itemId", message: `item ${JSON.stringify(e.itemId)} is not in the catalog` });
        else {
          skippedUnknownItems++;
          return;
        }
      }
      events.push({
        index,
        event: { userId: e.userId, itemId: e.itemId, ts, ...(e.engagement === undefined || e.engagement === null ? {} : { engagement: e.engagement }) },
        negative: e.feedback === "negative",
      });
    });
    if (issues.length) throw new HttpError("BAD_INPUT", `invalid events: ${describeIssues(issues)}`, issues.slice(0, 100));
    const bodyHash = createHash("sha256").update(JSON.stringify(parsed.data)).digest("hex");
    const received = parsed.data.events.length;
    return this.options.queue.run(() => this.write(events, received, skippedUnknownItems, idempotencyKey ?? null, bodyHash));
  }

  private async write(events: ParsedEvent[], received: number, skippedUnknownItems: number, key: string | null, bodyHash: string): Promise<IntakeResult> {
    const store = this.options.events;
    if (!this.schemaReady) {
      await store.connection.run("CREATE TABLE IF NOT EXISTS intake_keys (key VARCHAR PRIMARY KEY, body_hash VARCHAR NOT NULL, result VARCHAR NOT NULL, created_at BIGINT NOT NULL)");
      this.schemaReady = true;
    }
    if (key !== null) {
      const [stored] = await store.query<{ body_hash: string; result: string }>("SELECT body_hash, result FROM intake_keys WHERE key = $key", { key });
      if (stored) {
        if (stored.body_hash !== bodyHash) throw new HttpError("CONFLICT", `Idempotency-Key ${JSON.stringify(key)} was used with a different body`);
        return { ...(JSON.parse(stored.result) as IntakeResult), replayed: true };
      }
    }
    const engagement = events.filter((e) => !e.negative).map((e) => e.event);
    const appended = engagement.length
      ? await store.append({ events: eventBatchFromEvents(engagement) })
      : { eventsAdded: 0, skippedDuplicates: 0, clustersAdded: 0, itemsAdded: 0 };
    const result: IntakeResult = {
      received,
      eventsAdded: appended.eventsAdded,
      skippedDuplicates: appended.skippedDuplicates,
      skippedUnknownItems,
      feedback: events.length - engagement.length,
      outcomesAttributed: 0,
      idempotencyKey: key,
      replayed: false,
    };
    await this.options.users.refresh(store, [...new Set(events.map((e) => e.event.userId))]);
    let outcomesAttributed = 0;
    if (this.options.attribute) {
      const { catalog } = this.options;
      outcomesAttributed = await this.options.attribute(
        events.map((e) => ({
          userId: e.event.userId,
          itemId: e.event.itemId,
          clusterId: catalog.clusterOfItem(e.event.itemId)!,
          ts: e.event.ts,
          engagement: e.event.engagement ?? null,
          negative: e.negative,
        })),
      );
    }
    const final = { ...result, outcomesAttributed };
    if (key !== null) {
      const now = this.options.now();
      await store.connection.run("INSERT INTO intake_keys VALUES ($key, $hash, $result, $at)", { key, hash: bodyHash, result: JSON.stringify(final), at: BigInt(now) });
      await store.connection.run("DELETE FROM intake_keys WHERE created_at < $before", { before: BigInt(now - KEY_TTL_MS) });
    }
    return final;
  }
}

function describeIssues(issues: readonly RequestIssue[]): string {
  const shown = issues.slice(0, 3).map((i) => `${i.index === undefined ? "" : `events[${i.index}].`}${i.field}: ${i.message}`);
  return shown.join("; ") + (issues.length > 3 ? `; and ${issues.length - 3} more` : "");
}
