/**
 * The HTTP routes (README.md and docs/architecture.md, "The user contract"). Each route is one spec (zod schemas for path, query and body,
 * success and error responses) registered with Fastify and listed in /openapi.json from the same object. Requests are
 * parsed with the zod schemas here rather than by Fastify's validator, so that a bad event batch answers with the
 * index and field of each problem in our error shape.
 */
import { explanationOf } from "../update/fusion.js";
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { z } from "zod";
import { decodeUtf8KeepingErrors } from "../data/ingest/event-fields.js";
import { BadInputError } from "../domain/errors.js";
import { EXPERIMENT_DEFAULTS, SERVE_DEFAULTS } from "./defaults.js";
import { HttpError, errorBody, toHttpError } from "./errors.js";
import { analyzeExperiment, renderExperimentTable } from "./experiments/analysis.js";
import { parseExperimentDefinition } from "./experiments/definition.js";
import { intakeBodySchema, intakeResultSchema } from "./intake.js";
import { PROMETHEUS_CONTENT_TYPE } from "./metrics.js";
import { ExplorationJsonWriter, explorationResponse } from "./exploration-json.js";
import { openApiDocument, type RouteSpec } from "./openapi.js";
import {
  analysisResponseSchema,
  experimentCreateBodySchema,
  experimentSchema,
  experimentsResponseSchema,
  explorationParamsSchema,
  explorationQuerySchema,
  explorationResponseSchema,
  healthResponseSchema,
  nameParamsSchema,
  publishBodySchema,
  publishResponseSchema,
  reviewBodySchema,
  reviewResponseSchema,
  scheduleStatusResponseSchema,
  tableRowParamsSchema,
  tableRowResponseSchema,
  tablesResponseSchema,
  versionParamsSchema,
} from "./schemas.js";
import type { Explorer, IndexedExplorationAnswer } from "./exploration.js";
import type { ServingState } from "./server.js";
import { resolveBinding } from "./tables.js";
import { TurnBatch } from "./turn-batch.js";
import { experimentView, isoTime, modelView, scheduleStatusView, statusChangeView, tableView } from "./views.js";

/** Parses a request part with its schema; a failure is a 400 naming each field. */
function parseInput<S extends z.ZodType>(schema: S, value: unknown, where: string): z.infer<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues.map((i) => ({ field: i.path.map(String).join(".") || where, message: i.message }));
  throw new HttpError("BAD_INPUT", `invalid ${where}: ${issues.map((i) => `${i.field}: ${i.message}`).join("; ")}`, issues);
}

/** A handler's body already written as JSON, in UTF-8 (the route checked it when `validateResponses` is on). */
class SerializedJson {
  constructor(readonly json: Buffer) {}
}

type Infer<S> = S extends z.ZodType ? z.infer<S> : undefined;

interface RouteInput<P, Q, B> {
  readonly params: P;
  readonly query: Q;
  readonly body: B;
  readonly request: FastifyRequest;
  readonly reply: FastifyReply;
}

/**
 * Answers a failed request in the API's error shape. Also the server's `frameworkErrors` handler: the router's own
 * errors (a path that is not valid percent-encoding) come before any hook or route, and would otherwise answer in
 * Fastify's shape.
 */
export function replyWithError(state: ServingState, error: unknown, request: FastifyRequest, reply: FastifyReply): void {
  const e = toHttpError(error, { bodyLimitBytes: state.bodyLimitBytes, contentType: request.headers["content-type"] });
  if (e.status >= 500) request.log.error({ err: error }, "request failed");
  else request.log.info({ code: e.code, status: e.status }, e.message);
  if (e.code === "UNAUTHORIZED") reply.header("www-authenticate", 'Bearer realm="freshrec admin"');
  reply.header("x-request-id", request.id);
  reply.status(e.status).send(errorBody(e, request.id));
}

/** Registers the routes and returns their specs (what /openapi.json lists). */
export function registerRoutes(app: FastifyInstance, state: ServingState): RouteSpec[] {
  const specs: RouteSpec[] = [];
  const { metrics, tables, options } = state;
  const validate = options.validateResponses ?? false;
  const maxN = options.maxN ?? SERVE_DEFAULTS.maxN;
  const explorations = new TurnBatch();

  function route<P extends z.ZodObject | undefined, Q extends z.ZodObject | undefined, B extends z.ZodType | undefined>(
    spec: RouteSpec & { params?: P; querystring?: Q; body?: B },
    handler: (input: RouteInput<Infer<P>, Infer<Q>, Infer<B>>) => unknown,
  ): void {
    specs.push(spec);
    const success = Object.entries(spec.responses).find(([status]) => status.startsWith("2"))?.[1];
    const successSchema = success && !("contentType" in success && typeof success.contentType === "string") ? (success as z.ZodType) : null;
    app.route({
      method: spec.method,
      url: spec.url,
      // Before the body is read: an unauthenticated caller learns nothing about its body (400, 413, 415) and cannot
      // make the server parse up to serve.bodyLimitBytes.
      ...(spec.admin ? { onRequest: async (request: FastifyRequest) => state.authorize(request.headers.authorization) } : {}),
      // Not an async function: a handler that answers synchronously (/healthz, /metrics) is sent without a trip
      // through the microtask queue; one that returns a promise (exploration's turn batch) is sent when it settles.
      handler: (request, reply) => {
        const params = (spec.params ? parseInput(spec.params, request.params, "path parameters") : undefined) as Infer<P>;
        const query = (spec.querystring ? parseInput(spec.querystring, request.query ?? {}, "query") : undefined) as Infer<Q>;
        const body = (spec.body ? request.body : undefined) as Infer<B>;
        const result = handler({ params, query, body, request, reply });
        if (result instanceof Promise) return result.then((settled) => respond(settled, reply));
        // Fastify sends nothing for a synchronous undefined; as a promise's value, it answers an error as before.
        return result === undefined ? Promise.resolve(result) : respond(result, reply);
      },
    });

    /** What the route sends for a handler's result. */
    function respond(result: unknown, reply: FastifyReply): unknown {
      if (result instanceof SerializedJson) {
        // Bytes with a JSON content type go out as they are (Fastify serializes only objects).
        reply.type("application/json; charset=utf-8");
        return result.json;
      }
      if (validate && successSchema && result !== undefined) successSchema.parse(JSON.parse(JSON.stringify(result)));
      return result;
    }
  }

  app.addHook("onRequest", (request, reply, done) => {
    reply.header("x-request-id", request.id);
    done();
  });
  app.addHook("onResponse", (request, reply, done) => {
    metrics.observeRequest(request.method, request.routeOptions.url ?? "(unmatched)", reply.statusCode, reply.elapsedTime / 1000);
    done();
  });
  // Fastify parses text/plain bodies into strings by default, which then fail the body schema as "expected object,
  // received string" although the problem is the media type: without the parser, every body that is not
  // application/json is a 415 naming the type to send, as XML and form bodies already were.
  app.removeContentTypeParser("text/plain");
  // Fastify decodes a JSON body with U+FFFD for bytes that are not UTF-8, so an id sent in another encoding would be
  // stored mangled where `freshrec ingest` refuses the row. Decoded keeping such bytes (as lone surrogates), the
  // intake's rules refuse them in the field they sit in. Parsing stays Fastify's (prototype-poisoning checks).
  const parseJson = app.getDefaultJsonParser("error", "error") as (request: FastifyRequest, body: string, done: (error: Error | null, value?: unknown) => void) => void;
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (request, body, done) => parseJson(request, decodeUtf8KeepingErrors(body as Buffer), done));
  app.setErrorHandler((error, request, reply) => replyWithError(state, error, request, reply));
  app.setNotFoundHandler((request, reply) => {
    const e = new HttpError("NOT_FOUND", `no route ${request.method} ${request.url.split("?")[0]} (see /openapi.json)`);
    reply.status(e.status).send(errorBody(e, request.id));
  });

  // ------------------------------------------------------------------------------------------------ exploration

  route(
    {
      method: "GET",
      url: "/v1/users/:id/exploration",
      tag: "exploration",
      summary: "Novel interest clusters for a user, each grounded into items",
      description:
        "Reads the user's last two distinct positively engaged clusters, looks them up in the live table (or the user's experiment arm's table), and grounds each answer cluster into items the user has not seen (co-visitation from the user's recent items, restricted to the cluster, then recent popularity in the cluster). Users with fewer than two clusters (including users never seen) get the most popular novel interests of the recent window, flagged coldStart. The answer may hold fewer than n recommendations: a table row holds at most the table's topN clusters (GET /v1/tables shows topN; 10 by default), so n=20 on a top-10 table answers 10; answers naming a cluster the catalog does not know are left out; the cold-start answer holds at most the clusters other than the user's own.",
      params: explorationParamsSchema,
      querystring: explorationQuerySchema(maxN),
      responses: { 200: explorationResponseSchema },
      errors: [400],
    },
    ({ params, query, request }) => {
      const userId = params.id;
      const assignment = state.armOf(userId);
      // Taken once: the whole answer comes from this one table version, whatever is published meanwhile.
      const lookup = tables.lookup(assignment ? assignment.arm.table : "live");
      const explorer = state.explorer;
      const ask = {
        userId,
        lookup,
        n: query.n ?? options.defaultN ?? SERVE_DEFAULTS.defaultN,
        itemsPerCluster: query.items ?? options.itemsPerCluster ?? SERVE_DEFAULTS.itemsPerCluster,
      };
      // Found and written with the other exploration requests of this event-loop turn (./turn-batch.ts says why).
      return explorations.run(() => {
        const answer = explorer.answer(ask);
        const body = (found: IndexedExplorationAnswer) => explorationBody(explorer, found, assignment, request.id);
        return answer instanceof Promise ? answer.then(body) : body(answer);
      });
    },
  );

  /** The exploration route's body for an answer: metrics and the experiment's exposure logged, the JSON written. */
  function explorationBody(explorer: Explorer, answer: IndexedExplorationAnswer, assignment: ReturnType<ServingState["armOf"]>, requestId: string): SerializedJson {
    if (answer.fallback === "cold-start") metrics.coldStarts++;
    else if (answer.fallback === "unknown-cluster") metrics.unknownClusterFallbacks++;
    else if (answer.fallback === "lookup-miss") metrics.lookupMisses++;
    let experiment: { name: string; arm: string; exposureId: string } | null = null;
    if (assignment) {
      const userId = answer.userId;
      const exposureId = randomUUID();
      const { catalog } = state;
      const slots = answer.clusters.map((c, rank) => ({ rank, cluster: catalog.clusterIds[c], items: (answer.items[rank] ?? []).map((i) => catalog.itemIds[i.item]) }));
      state.experiments.logExposure({
        exposureId,
        experiment: assignment.experiment.name,
        arm: assignment.arm.name,
        userId,
        ts: options.clock.now(),
        tableVersion: answer.table?.version ?? null,
        coldStart: answer.coldStart,
        slots,
      });
      metrics.exposuresLogged += slots.length;
      experiment = { name: assignment.experiment.name, arm: assignment.arm.name, exposureId };
    }
    const extras = { model: { live: tables.liveModelVersion }, experiment, requestId };
    // The body is written from the indexed answer (./exploration-json.ts); the object is built only to check it.
    const json = ExplorationJsonWriter.of(explorer.answerCatalog).bytes(answer, extras);
    if (validate) {
      const response = explorationResponse(explorer.present(answer), extras);
      const text = json.toString("utf8");
      if (text !== JSON.stringify(response)) throw new Error("the exploration JSON writer wrote other JSON than JSON.stringify of the response");
      explorationResponseSchema.parse(JSON.parse(text));
    }
    return new SerializedJson(json);
  }

  // ------------------------------------------------------------------------------------------------ intake

  route(
    {
      method: "POST",
      url: "/v1/events",
      tag: "events",
      summary: "Ingest a batch of events (all or nothing, idempotent)",
      description:
        "Validates every event, then writes the batch to the event store in one transaction so the next RAG refresh counts it. Bad input answers 400 listing every problem of the batch with its index and field, and writes nothing; an event time later than the server's now plus serve.futureToleranceMs (1 day, for client clock skew) is bad input. The body must be application/json (anything else is 415). Events whose item is not in the catalog are rejected or skipped (serve.unknownItems). With an Idempotency-Key header a repeated request gets the first answer again; the same key with another body is 409. Events are never stored twice (same user, item and time).",
      body: intakeBodySchema,
      headers: [{ name: "Idempotency-Key", description: "Makes a retry safe: the same key and body answer the first result again." }],
      responses: { 200: intakeResultSchema },
      errors: [400, 409, 413, 415],
    },
    async ({ request }) => {
      const key = request.headers["idempotency-key"];
      const result = await state.intake.ingest(request.body, Array.isArray(key) ? key[0] : key);
      if (result.replayed) metrics.idempotentReplays++;
      else {
        metrics.intakeBatches++;
        metrics.eventsIngested += result.eventsAdded;
        metrics.duplicateEvents += result.skippedDuplicates;
        metrics.eventsSkippedUnknown += result.skippedUnknownItems;
      }
      return result;
    },
  );

  // ------------------------------------------------------------------------------------------------ tables

  route(
    { method: "GET", url: "/v1/tables", tag: "tables", summary: "Table versions, the live one, and what this server holds in memory", responses: { 200: tablesResponseSchema } },
    async () => ({
      live: (await state.tableStore.live())?.version ?? null,
      serving: tables.bindings(),
      tables: (await state.tableStore.list()).map(tableView),
    }),
  );

  route(
    {
      method: "GET",
      url: "/v1/tables/live/:c1/:c2",
      tag: "tables",
      summary: "The live table's answers for one history pair (from the in-memory table serving now)",
      params: tableRowParamsSchema,
      responses: { 200: tableRowResponseSchema },
      errors: [404],
    },
    async ({ params }) => {
      const lookup = tables.lookup("live");
      if (!lookup) throw new HttpError("NOT_FOUND", "no table is live yet (run freshrec refresh, or publish one)");
      const answers = lookup.get(params.c1, params.c2);
      if (!answers) throw new HttpError("NOT_FOUND", `table ${lookup.version} has no row for (${params.c1}, ${params.c2})`);
      return {
        version: lookup.version,
        modelVersion: lookup.modelVersion,
        c1: params.c1,
        c2: params.c2,
        answers: answers.map((a) => {
          const c = state.catalog.clusterIndex.get(a.cluster);
          return { cluster: a.cluster, description: c === undefined ? null : state.catalog.descriptions[c], score: a.score };
        }),
        // The explanation is read from the store (an inspection route, not the serving path).
        explanation: explanationOf((await state.tableStore.lookup(lookup.version, params.c1, params.c2)) ?? { answers: [] }),
      };
    },
  );

  route(
    {
      method: "POST",
      url: "/v1/tables/:version/publish",
      tag: "admin",
      admin: true,
      summary: "Publish a ready or retired table (the server swaps to it at once)",
      params: versionParamsSchema,
      body: publishBodySchema,
      responses: { 200: publishResponseSchema },
      errors: [400, 404],
    },
    async ({ params, request }) => {
      const body = parseInput(publishBodySchema, request.body ?? {}, "body");
      const previous = (await state.tableStore.live())?.version ?? null;
      const info = await state.tableStore.publish(params.version, { actor: "api", reason: body.reason ?? null });
      await tables.poll();
      return { live: info.version, previous, serving: tables.lookup("live")?.version ?? null, table: tableView(info) };
    },
  );

  route(
    {
      method: "POST",
      url: "/v1/tables/rollback",
      tag: "admin",
      admin: true,
      summary: "Make the previously live table live again",
      body: publishBodySchema,
      responses: { 200: publishResponseSchema },
      errors: [400],
    },
    async ({ request }) => {
      const body = parseInput(publishBodySchema, request.body ?? {}, "body");
      const previous = (await state.tableStore.live())?.version ?? null;
      const info = await state.tableStore.rollback({ actor: "api", reason: body.reason ?? null });
      await tables.poll();
      return { live: info.version, previous, serving: tables.lookup("live")?.version ?? null, table: tableView(info) };
    },
  );

  // ------------------------------------------------------------------------------------------------ models

  for (const decision of ["approve", "reject"] as const) {
    route(
      {
        method: "POST",
        url: `/v1/models/:version/${decision}`,
        tag: "admin",
        admin: true,
        summary:
          decision === "approve"
            ? "Approve a halted (or candidate) model: it goes live (as `freshrec review approve`)"
            : "Reject a halted (or candidate) model for good (as `freshrec review reject`)",
        params: versionParamsSchema,
        body: reviewBodySchema,
        responses: { 200: reviewResponseSchema },
        errors: [400, 404],
      },
      async ({ params, request }) => {
        const { reason } = parseInput(reviewBodySchema, request.body ?? {}, "body");
        const registry = state.registry;
        const model = await registry.get(params.version);
        if (!model) throw new HttpError("NOT_FOUND", `unknown model version ${JSON.stringify(params.version)}`);
        if (model.status !== "halted" && model.status !== "candidate") {
          throw new HttpError("BAD_INPUT", `${params.version} is ${model.status}: only halted or candidate models are reviewed`);
        }
        const decided = decision === "approve" ? await registry.makeLive(params.version, `approved: ${reason}`) : await registry.setStatus(params.version, "rejected", `rejected: ${reason}`);
        const change = (await registry.history(params.version)).at(-1)!;
        await tables.poll();
        return { model: modelView(decided), change: statusChangeView(change) };
      },
    );
  }

  route(
    {
      method: "GET",
      url: "/v1/schedule/status",
      tag: "admin",
      admin: true,
      summary: "The hybrid schedule: each job's cadence, last run, next due time, counters and pause state",
      responses: { 200: scheduleStatusResponseSchema },
    },
    // `scheduling` comes from its own option: the CLI passes `scheduleStatus` with or without --schedule.
    async () => ({ scheduling: options.scheduling ?? false, status: options.scheduleStatus ? scheduleStatusView(await options.scheduleStatus()) : null }),
  );

  // ------------------------------------------------------------------------------------------------ experiments

  const servingVersion = (table: string) => tables.lookup(table)?.version ?? null;

  route(
    { method: "GET", url: "/v1/experiments", tag: "experiments", admin: true, summary: "Every experiment; the active one serves its arms' tables", responses: { 200: experimentsResponseSchema } },
    async () => {
      const list = await state.queue.run(() => state.experiments.list());
      return { active: state.experiment?.experiment.name ?? null, experiments: list.map((e) => experimentView(e, servingVersion)) };
    },
  );

  route(
    {
      method: "POST",
      url: "/v1/experiments",
      tag: "experiments",
      admin: true,
      summary: "Define and start an experiment (arms bound to tables, traffic split, salt)",
      body: experimentCreateBodySchema,
      responses: { 200: experimentSchema },
      errors: [400, 404],
    },
    async ({ request }) => {
      const raw = (request.body ?? {}) as { definition?: unknown; replace?: unknown };
      if (raw.replace !== undefined && typeof raw.replace !== "boolean") throw new HttpError("BAD_INPUT", "replace: expected a boolean", [{ field: "replace", message: "expected a boolean" }]);
      let definition;
      try {
        definition = parseExperimentDefinition(raw.definition);
      } catch (error) {
        if (error instanceof BadInputError) {
          throw new HttpError("BAD_INPUT", error.message, error.problems.map((p) => ({ field: `definition.${p.field}`, message: p.problem })));
        }
        throw error;
      }
      const log = state.experiments;
      for (const arm of definition.arms) await resolveBinding(state.tableStore, arm.table);
      await state.flushExposures();
      const created = await state.queue.run(() => log.create(definition, options.clock.now(), { replace: raw.replace === true }));
      await state.activate(created);
      return experimentView(created, servingVersion);
    },
  );

  route(
    {
      method: "POST",
      url: "/v1/experiments/:name/stop",
      tag: "experiments",
      admin: true,
      summary: "Stop an experiment (everyone gets the live table again)",
      params: nameParamsSchema,
      responses: { 200: experimentSchema },
      errors: [404],
    },
    async ({ params }) => {
      const log = state.experiments;
      await state.flushExposures();
      const stopped = await state.queue.run(() => log.stop(params.name, options.clock.now()));
      if (state.experiment?.experiment.name === stopped.name) await state.activate(null);
      return experimentView(stopped, servingVersion);
    },
  );

  route(
    {
      method: "GET",
      url: "/v1/experiments/:name/analysis",
      tag: "experiments",
      admin: true,
      summary: "Per-arm metrics, relative deltas vs the control and 95% bootstrap CIs (the paper's live-results table)",
      params: nameParamsSchema,
      responses: { 200: analysisResponseSchema },
      errors: [404],
    },
    async ({ params }) => {
      await state.flushExposures();
      await state.moveIntake();
      const analysis = await state.queue.run(async () => analyzeExperiment(state.events, await state.experiments.get(params.name), { resamples: options.resamples ?? EXPERIMENT_DEFAULTS.resamples }));
      return { ...analysis, table: renderExperimentTable(analysis) };
    },
  );

  // ------------------------------------------------------------------------------------------------ operations

  route(
    {
      method: "GET",
      url: "/metrics",
      tag: "operations",
      summary: "Prometheus metrics: latency per route, live table and model versions, lookup misses, cold starts, events ingested",
      responses: { 200: { contentType: PROMETHEUS_CONTENT_TYPE, description: "Prometheus text exposition format 0.0.4" } },
    },
    ({ reply }) => {
      const lookup = tables.lookup("live");
      const failing = new Set(tables.failures().map((f) => f.binding));
      reply.type(PROMETHEUS_CONTENT_TYPE);
      return metrics.render({
        liveTable: lookup ? { version: lookup.version, modelVersion: lookup.modelVersion } : null,
        liveModel: tables.liveModelVersion,
        users: state.users.size,
        experiment: state.experiment ? { name: state.experiment.experiment.name, arms: state.experiment.experiment.arms.map((a) => a.name) } : null,
        groundingAgeSeconds: (options.clock.now() - state.groundingBuiltAt) / 1000,
        groundingStale: state.liveGrounding.stale,
        intakeUpkeep: { ran: state.intake.upkeep.ran, failed: state.intake.upkeep.failed },
        intakeBuffer: state.intakeBuffer?.status() ?? null,
        tableBindings: tables.bindings().map((b) => ({ binding: b.binding, reloadFailing: failing.has(b.binding) })),
        storeFollow: state.storeFollow(),
        now: options.clock.now(),
      });
    },
  );

  route(
    {
      method: "GET",
      url: "/healthz",
      tag: "operations",
      summary: "Liveness: 200 while the process serves, with readiness in the body (ready: a table is live and loads)",
      description: "Always 200 while the server runs (a liveness probe). A readiness probe that needs the status code uses GET /readyz.",
      responses: { 200: healthResponseSchema },
    },
    () => health(),
  );

  route(
    {
      method: "GET",
      url: "/readyz",
      tag: "operations",
      summary: "Readiness: 200 when a table is live and every table reload succeeded, 503 otherwise",
      description:
        "For a load balancer or a Kubernetes readiness probe: before the first table is published every exploration answer is the popular-novel fallback, so the instance answers 503 NOT_READY until a table is live (publish one, or run freshrec refresh). It also answers 503 while the table the store says to serve cannot be loaded (a damaged table, an unreadable store): the instance keeps answering from the table it loaded before, but that is not the published one, and the message names the table and the reason. The 200 body is that of /healthz.",
      responses: { 200: healthResponseSchema },
      errors: [503],
    },
    () => {
      const body = health();
      if (body.ready) return body;
      if (!body.table) throw new HttpError("NOT_READY", "no table is live yet: every answer would be the cold-start fallback; publish a table (freshrec refresh, or POST /v1/tables/{v}/publish)");
      const failing = body.reloadFailures
        .map((f) => `${f.binding} could not load ${f.version ?? "its table"} (${f.error}; ${f.attempts} attempt${f.attempts === 1 ? "" : "s"} since ${f.since})`)
        .join("; ");
      throw new HttpError("NOT_READY", `table reload failing: ${failing}; still serving ${body.table.version}`);
    },
  );

  /** The last upkeep failure's message, or null. */
  function upkeepError(error: unknown): string | null {
    if (error === null) return null;
    return error instanceof Error ? error.message : String(error);
  }

  /** What /healthz and /readyz answer. */
  function health() {
    const lookup = tables.lookup("live");
    const reloadFailures = tables.failures().map((f) => ({ ...f, since: isoTime(f.since) }));
    const follow = state.storeFollow();
    return {
      status: "ok" as const,
      ready: lookup !== undefined && reloadFailures.length === 0,
      reloadFailures,
      table: lookup ? { version: lookup.version, modelVersion: lookup.modelVersion } : null,
      model: tables.liveModelVersion,
      users: state.users.size,
      clusters: state.catalog.clusterCount,
      items: state.catalog.itemCount,
      uptimeSeconds: (options.clock.now() - state.startedAt) / 1000,
      grounding: { builtAt: isoTime(state.liveGrounding.builtAt), stale: state.liveGrounding.stale },
      intakeUpkeep: {
        ran: state.intake.upkeep.ran,
        failed: state.intake.upkeep.failed,
        lastError: upkeepError(state.intake.upkeep.lastError),
      },
      intakeBuffer: state.intakeBuffer?.status() ?? null,
      storeFollow: follow && { ...follow, lastCaughtUpAt: follow.lastCaughtUpAt === null ? null : isoTime(follow.lastCaughtUpAt) },
    };
  }

  let document: Record<string, unknown> | null = null;
  route(
    {
      method: "GET",
      url: "/openapi.json",
      tag: "operations",
      summary: "This document",
      responses: { 200: { contentType: "application/json", description: "OpenAPI 3.1" } },
    },
    () => (document ??= openApiDocument(specs, { title: "freshrec API", version: "1" })),
  );
  return specs;
}
