/**
 * Request and response schemas of the HTTP API, in zod: handlers parse requests with them, tests parse responses
 * with them, and /openapi.json is generated from them (`z.toJSONSchema`), so the three cannot drift apart.
 */
import { z } from "zod";
import { MAX_ID_LENGTH } from "../data/ingest/event-fields.js";
import { experimentDefinitionSchema } from "./experiments/definition.js";
import { experimentSchema, modelSchema, scheduleStatusSchema, statusChangeSchema, tableSchema } from "./views.js";

export { experimentSchema };

const historySchema = z.object({ c1: z.string(), c2: z.string() }).describe("The last two distinct positively engaged clusters, c2 the most recent.");

export const tableRefSchema = z.object({ version: z.string(), modelVersion: z.string() }).describe("The table that answered and the model that made it.");

export const explorationParamsSchema = z.object({ id: z.string().min(1).max(MAX_ID_LENGTH).describe(`User id (at most ${MAX_ID_LENGTH} characters, as POST /v1/events takes).`) });

export function explorationQuerySchema(maxN: number) {
  return z
    .object({
      n: z.coerce
        .number()
        .int()
        .min(1)
        .max(maxN)
        .optional()
        .describe(
          `Clusters wanted (1-${maxN}); default serve.defaultN. An upper bound, not a promise: a table row holds at most the table's topN clusters (GET /v1/tables; 10 by default), so a larger n answers fewer.`,
        ),
      items: z.coerce.number().int().min(0).max(100).optional().describe("Items per cluster (0-100); default serve.itemsPerCluster."),
    })
    .strict();
}

// The two sources score in different units (see ./grounding/policies.ts), so the descriptions say which is which:
// a client comparing a co-visitation score with a popularity count would compare weights with head counts.
export const recommendedItemSchema = z.object({
  itemId: z.string(),
  title: z.string().nullable(),
  score: z
    .number()
    .describe(
      'Meaning depends on `source`. "co-visitation": the sum, over the user\'s recent positive items (the most recent weighing 1, the next 1/2, then 1/3...), of the number of users who engaged positively with both items within serve.covisitationSpan positive events of each other in the last serve.groundingWindowDays. "popularity": the number of distinct users who engaged positively with the item in that window. The units differ: compare scores only between items of the same source (with the default policy, co-visitation items come first and popularity fills the rest).',
    ),
  source: z
    .string()
    .describe('Which signal chose the item, and so what its score counts: "co-visitation" or "popularity" (an item policy given to startServer may name its own).'),
});

export const recommendationSchema = z.object({
  rank: z.number().int().min(0).describe("Position of the cluster in the answer, 0-based (0 is the best answer)."),
  cluster: z.string(),
  description: z.string(),
  score: z
    .number()
    .describe(
      "The table's score for this cluster (a probability, stored as float32, so 0.1 reads 0.10000000149011612); when fallback is not null, the cluster's share of the novel transitions of the last serve.groundingWindowDays (also float32).",
    ),
  items: z.array(recommendedItemSchema),
});

export const explorationResponseSchema = z.object({
  userId: z.string(),
  history: historySchema.nullable(),
  coldStart: z.boolean().describe("True when the user has fewer than two distinct positive clusters: the answer is the most popular novel interests."),
  fallback: z
    .enum(["cold-start", "unknown-cluster", "lookup-miss", "no-table"])
    .nullable()
    .describe(
      'Why the answer is the popular-novel fallback rather than the table\'s row for the history; null when it is the row. "cold-start": fewer than two clusters; "unknown-cluster": the history names a cluster the table does not know (newer than the table); "lookup-miss": the table knows both clusters but has no row for the pair; "no-table": nothing is published yet.',
    ),
  table: tableRefSchema.nullable(),
  model: z.object({ live: z.string().nullable().describe("The model registry's live model (may be newer than the table's).") }),
  experiment: z
    .object({ name: z.string(), arm: z.string(), exposureId: z.string() })
    .nullable()
    .describe("The active experiment, the user's arm and the id this answer is logged under."),
  requestId: z.string(),
  recommendations: z.array(recommendationSchema),
});
export type ExplorationResponse = z.infer<typeof explorationResponseSchema>;

export const tablesResponseSchema = z.object({
  live: z.string().nullable().describe("The version serving now."),
  serving: z.array(z.object({ binding: z.string(), version: z.string().nullable() })).describe("Every table held in memory and what it serves."),
  tables: z.array(tableSchema),
});

export const tableRowParamsSchema = z.object({ c1: z.string().min(1), c2: z.string().min(1) });

export const tableRowResponseSchema = z.object({
  version: z.string(),
  modelVersion: z.string(),
  c1: z.string(),
  c2: z.string(),
  answers: z.array(z.object({ cluster: z.string(), description: z.string().nullable(), score: z.number().describe("The table's score (a probability, stored as float32).") })),
  explanation: z
    .object({
      pairUsers: z.number().describe("Distinct users of the pair in the evidence window."),
      secondUsers: z.number().describe("Distinct users of the pair's second cluster's transitions in the window."),
      evidenceWeight: z.number().describe("Share of the posterior from the pair's own evidence; the rest is the base measure (LLM prior x second-cluster backoff)."),
      answers: z.array(
        z.object({
          cluster: z.string(),
          posterior: z.number(),
          pairUsers: z.number(),
          secondUsers: z.number(),
          llmPrior: z.number().nullable().describe("The LLM prior's probability of the answer (null: no prior, the counts-backoff baseline)."),
          base: z.number().describe("The base measure of the answer."),
        }),
      ),
    })
    .nullable()
    .describe("Why a fusion row says what it says; null for a prompted table's row."),
});

export const versionParamsSchema = z.object({ version: z.string().min(1).max(64) });
export const nameParamsSchema = z.object({ name: z.string().min(1).max(64) });

export const publishBodySchema = z.object({ reason: z.string().max(2000).optional().describe("Why; kept in the publish history.") }).strict();

export const publishResponseSchema = z.object({
  live: z.string().describe("The version live now."),
  previous: z.string().nullable(),
  serving: z.string().nullable().describe("The version this server's live binding serves after the swap."),
  table: tableSchema,
});

export const reviewBodySchema = z.object({ reason: z.string().trim().min(1).max(2000).describe("Why (recorded with the time).") }).strict();

export const reviewResponseSchema = z.object({ model: modelSchema, change: statusChangeSchema });

export const experimentCreateBodySchema = z.object({
  definition: experimentDefinitionSchema,
  replace: z.boolean().optional().describe("Stop the active experiment, if any, instead of refusing."),
});

export const experimentsResponseSchema = z.object({ active: z.string().nullable(), experiments: z.array(experimentSchema) });

export const analysisResponseSchema = z.object({
  experiment: z.string(),
  control: z.string(),
  users: z.number().int(),
  resamples: z.number().int(),
  arms: z.record(
    z.string(),
    z.object({
      users: z.number().int(),
      exposures: z.number().int(),
      slots: z.number().int(),
      satisfied: z.number().int(),
      dissatisfied: z.number().int(),
      negative: z.number().int(),
      metrics: z.record(z.string(), z.number().nullable()),
    }),
  ),
  deltas: z.array(
    z.object({
      metric: z.string(),
      arm: z.string(),
      control: z.string(),
      relative: z.number().nullable(),
      ci95: z.tuple([z.number().nullable(), z.number().nullable()]),
      significant: z.boolean(),
    }),
  ),
  table: z.array(z.string()).describe("The paper-style table as Markdown lines."),
});

export const scheduleStatusResponseSchema = z.object({
  scheduling: z.boolean().describe("Whether this server runs the hybrid schedule (serve --schedule)."),
  status: scheduleStatusSchema.nullable().describe("The schedule's status: each job's cadence, last run, next due time and counters (null when the server was given none)."),
});

export const reloadFailureSchema = z
  .object({
    binding: z.string().describe('What the table serves: "live", or an experiment arm\'s binding.'),
    version: z.string().nullable().describe("The table that could not be loaded (null when the store could not be read at all)."),
    error: z.string().describe("Why."),
    since: z.string().describe("When this run of failures began (ISO-8601)."),
    attempts: z.number().int().describe("Failed attempts in a row (the server retries every serve.reloadIntervalMs)."),
  })
  .describe("A table the server should serve but cannot load; the table it served before keeps serving.");

export const storeFollowSchema = z
  .object({
    state: z
      .enum(["following", "catching-up", "disconnected", "failing"])
      .describe(
        "following: hearing the store's notifications, nothing known to be missing; catching-up: appends committed that are not applied yet; disconnected: the listening connection is down (reconnecting; the poll every serve.reloadIntervalMs still follows); failing: the last catch-up failed (retried at the next notification or poll).",
      ),
    listening: z.boolean().describe("Whether the connection that hears the store's notifications is up."),
    disconnects: z.number().int().describe("Times that connection was lost since start."),
    appliedThrough: z.number().int().describe("The last append (the store's commit-ordered number) whose events this replica applied."),
    storeLatest: z.number().int().describe("The latest append this replica knows the store committed."),
    catchingUp: z.boolean(),
    lastCaughtUpAt: z.string().nullable().describe("When the last successful catch-up ended (ISO-8601)."),
    failing: z.number().int().describe("Failed catch-ups in a row."),
    lastError: z.string().nullable(),
    catchUps: z.number().int(),
    catchUpErrors: z.number().int(),
    eventsApplied: z.number().int().describe("Events appended by other processes (or read again) applied to users' histories since start."),
    itemsAdded: z.number().int(),
    clustersAdded: z.number().int(),
    itemsChanged: z.number().int().describe("Items this replica's catalog held that an append changed (moved to another cluster, or retitled)."),
    clustersChanged: z.number().int().describe("Clusters this replica's catalog held whose description an append changed."),
    usersReloaded: z.number().int().describe("Users read again from the store because an item of their events moved to another cluster."),
  })
  .describe("How this replica follows what other processes append to the shared store (events, items, clusters); null on the embedded workspace.");

export const healthResponseSchema = z.object({
  status: z.literal("ok"),
  ready: z
    .boolean()
    .describe("True when a table is live and every table reload succeeded (otherwise every answer is the popular-novel fallback, or comes from a table older than the published one)."),
  reloadFailures: z.array(reloadFailureSchema).describe("Tables failing to load, one per binding; empty when every reload succeeded."),
  table: tableRefSchema.nullable(),
  model: z.string().nullable(),
  users: z.number().int(),
  clusters: z.number().int(),
  items: z.number().int(),
  uptimeSeconds: z.number(),
  grounding: z
    .object({
      builtAt: z.string().describe("When the grounding index serving now was built (ISO-8601)."),
      stale: z.boolean().describe("True while the catalog has changes the index does not hold yet: a rebuild runs, or the one after the change failed and the next poll retries it."),
    })
    .describe("The item grounding index (which items answer for a cluster)."),
  intakeUpkeep: z
    .object({
      ran: z.number().int().describe("Upkeep runs that did work (a DuckDB checkpoint of the event store or of its intake buffer while no intake batch came)."),
      failed: z.number().int().describe("Upkeep runs that failed; the intake buffer's mover then checkpoints the store after a later move, once its log is full (intake appends to the buffer meanwhile)."),
      lastError: z.string().nullable().describe("The last failure's message, or null."),
    })
    .describe("The event store's upkeep in intake's quiet moments (nothing to do on PostgreSQL, which checkpoints in its own process)."),
  intakeBuffer: z
    .object({
      backlog: z.number().int().describe("Rows written to the buffer that are not in the event store yet."),
      moves: z.number().int().describe("Moves into the event store that moved rows."),
      rowsMoved: z.number().int(),
      moveFailures: z.number().int().describe("Moves that failed (rolled back and retried: no row is dropped)."),
      lastMoveError: z.string().nullable().describe("The last failed move's message, or null."),
      bufferCheckpoints: z.number().int().describe("Checkpoints of the buffer's file."),
      storeCheckpoints: z.number().int().describe("Checkpoints of the event store the mover ran once its log was full (besides intake's quiet-moment upkeep)."),
    })
    .nullable()
    .describe("The embedded store's intake buffer: intake writes to a file beside the event store, moved into it off intake's path (null on PostgreSQL)."),
  storeFollow: storeFollowSchema.nullable(),
});

export const errorResponseSchema = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    requestId: z.string(),
    issues: z.array(z.object({ index: z.number().int().optional(), field: z.string(), message: z.string() })).optional(),
  }),
});
