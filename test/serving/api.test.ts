/**
 * The HTTP API over a real workspace (DuckDB event store, SQLite table store and registry), on loopback: every
 * route, its error paths, and the response schemas the OpenAPI document advertises.
 */
import { once } from "node:events";
import { rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import { DAY_MS, SystemClock, VirtualClock } from "../../src/domain/clock.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import {
  analysisResponseSchema,
  errorResponseSchema,
  experimentSchema,
  explorationResponseSchema,
  healthResponseSchema,
  startServer,
  tableRowResponseSchema,
  tablesResponseSchema,
  type RunningServer,
} from "../../src/serving/index.js";
import { SqliteTableStore, TableLookup, tableStorePath } from "../../src/tables/index.js";
import { ZERO_COUNTERS, type ScheduleStatus } from "../../src/update/schedule/index.js";
import { servingWorkspace, TOKEN, type ServingWorkspace } from "./fixtures.js";
import { tempDir } from "../temp-dir.js";

let ws: ServingWorkspace;
let server: RunningServer;
const logs: string[] = [];
const admin = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" };

async function get(path: string, headers: Record<string, string> = {}) {
  const response = await fetch(`${server.url}${path}`, { headers });
  return { status: response.status, headers: response.headers, body: (await response.json()) as any };
}

async function post(path: string, body: unknown, headers: Record<string, string> = { "content-type": "application/json" }) {
  const response = await fetch(`${server.url}${path}`, { method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body) });
  return { status: response.status, headers: response.headers, body: (await response.json()) as any };
}

/** GETs sent pipelined on one connection, in one write; the responses in order (JSON bodies). */
async function pipelined(url: string, paths: readonly string[]): Promise<{ status: number; body: any }[]> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  await once(socket, "connect");
  socket.write(paths.map((path) => `GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\n\r\n`).join(""));
  let buffered = Buffer.alloc(0);
  const responses: { status: number; body: any }[] = [];
  for await (const chunk of socket) {
    buffered = Buffer.concat([buffered, chunk as Buffer]);
    for (;;) {
      const end = buffered.indexOf("\r\n\r\n");
      if (end < 0) break;
      const head = buffered.subarray(0, end).toString("latin1");
      const length = Number(/content-length: (\d+)/i.exec(head)![1]);
      if (buffered.length < end + 4 + length) break;
      responses.push({ status: Number(head.split(" ")[1]), body: JSON.parse(buffered.subarray(end + 4, end + 4 + length).toString("utf8")) });
      buffered = buffered.subarray(end + 4 + length);
    }
    if (responses.length === paths.length) break;
  }
  socket.destroy();
  return responses;
}

/** A user of the fixture with a history, and one with a single cluster (a cold start). */
let warm: string;
let warmHistory: { c1: string; c2: string };
let lonely: string;

beforeAll(async () => {
  ws = await servingWorkspace();
  // A model in the registry to review through the admin routes.
  const registry = new ModelRegistry(ws.dir, new SystemClock());
  const modelFile = join(ws.dir, "model.bin");
  writeFileSync(modelFile, "weights");
  await registry.register({ kind: "base", filePath: modelFile, reason: "test" });
  registry.makeLive("m000001", "test");
  await registry.register({ kind: "fine-tuned", parent: "m000001", filePath: modelFile, status: "halted", reason: "gates failed" });
  await registry.register({ kind: "fine-tuned", parent: "m000001", filePath: modelFile, status: "halted", reason: "gates failed" });
  registry.close();
  // One user with events in a single cluster: fewer than two clusters, a cold start.
  const events = await EventStore.open(join(ws.dir, "events.duckdb"));
  lonely = "newcomer-1";
  const item = ws.world.itemId(3);
  await events.append({ events: eventBatchFromEvents([{ userId: lonely, itemId: item, ts: ws.world.endMs - 1000, engagement: 0.9 }]) });
  events.close();
  server = await startServer({
    workspace: ws.dir,
    port: 0,
    adminToken: TOKEN,
    logLevel: "info",
    logStream: { write: (line: string) => void logs.push(line) },
    validateResponses: true,
    reloadIntervalMs: 50,
  });
  for (const id of ["u000001", "u000002", "u000003", "u000004", "u000005", "u000006"]) {
    const state = server.state.users.get(id);
    if (state?.history) {
      warm = id;
      warmHistory = { c1: server.state.catalog.clusterIds[state.history.c1], c2: server.state.catalog.clusterIds[state.history.c2] };
      break;
    }
  }
});

afterAll(async () => {
  await server?.close();
});

describe("GET /v1/users/{id}/exploration", () => {
  it("answers a warm user from the live table's row for the history, items grounded inside each cluster", async () => {
    const { status, body, headers } = await get(`/v1/users/${warm}/exploration?n=4&items=2`);
    expect(status).toBe(200);
    expect(headers.get("x-request-id")).toBe(body.requestId);
    explorationResponseSchema.parse(body);
    expect(body).toMatchObject({ userId: warm, coldStart: false, fallback: null, history: warmHistory, table: { version: ws.rag, modelVersion: "successor" }, model: { live: "m000001" }, experiment: null });
    const tables = SqliteTableStore.open(tableStorePath(ws.dir), new SystemClock());
    const expected = TableLookup.load(tables, ws.rag).get(warmHistory.c1, warmHistory.c2)!.slice(0, 4);
    tables.close();
    expect(body.recommendations.map((r: any) => r.cluster)).toEqual(expected.map((a) => a.cluster));
    const seen = server.state.users.get(warm)!;
    for (const rec of body.recommendations) {
      expect(rec.cluster).not.toBe(warmHistory.c1);
      expect(rec.cluster).not.toBe(warmHistory.c2);
      expect(rec.items.length).toBe(2);
      for (const item of rec.items) {
        expect(server.state.catalog.clusterOfItem(item.itemId)).toBe(rec.cluster);
        expect(seen.seen.includes(server.state.catalog.itemIndex.get(item.itemId)!)).toBe(false);
      }
    }
  });

  it("flags a cold start (fewer than two clusters, or never seen) and answers the most popular novel interests", async () => {
    const newcomer = await get(`/v1/users/${lonely}/exploration?n=5`);
    expect(newcomer.status).toBe(200);
    expect(newcomer.body).toMatchObject({ coldStart: true, fallback: "cold-start", history: null });
    const own = server.state.catalog.clusterOfItem(ws.world.itemId(3));
    expect(newcomer.body.recommendations.map((r: any) => r.cluster)).not.toContain(own);
    const stranger = await get("/v1/users/never-seen-anywhere/exploration");
    expect(stranger.body.coldStart).toBe(true);
    expect(stranger.body.recommendations).toHaveLength(10); // serve.defaultN
    const order = [...server.state.grounding.coldStart].slice(0, 10).map((c) => server.state.catalog.clusterIds[c]);
    expect(stranger.body.recommendations.map((r: any) => r.cluster)).toEqual(order);
  });

  it("answers requests that arrive together (one event-loop turn, answered as a batch) each with its own user's answer", async () => {
    const users = [warm, lonely, "never-seen-anywhere", ...Array.from({ length: 40 }, (_, k) => `u${String(k).padStart(6, "0")}`)];
    const paths = users.map((id, k) => `/v1/users/${encodeURIComponent(id)}/exploration?n=${1 + (k % 10)}&items=${k % 4}`);
    const withoutRequestId = (body: any) => ({ ...body, requestId: undefined });
    const alone = [];
    for (const path of paths) alone.push(withoutRequestId((await get(path)).body));
    // Pipelined on one connection in one write: the server reads and routes them all in one turn of its event loop.
    const together = await pipelined(server.url, [...paths, ...paths]);
    expect(together.map((r) => r.status)).toEqual(together.map(() => 200));
    expect(new Set(together.map((r) => r.body.requestId)).size).toBe(together.length);
    expect(together.map((r) => withoutRequestId(r.body))).toEqual([...alone, ...alone]);
    expect(alone.filter((a) => a.history !== null).length).toBeGreaterThan(10);
  });

  it("answers fewer than n when n exceeds the table's topN (documented on the route and on n)", async () => {
    const { status, body } = await get(`/v1/users/${warm}/exploration?n=20&items=0`);
    expect(status).toBe(200);
    expect(body.fallback).toBeNull();
    expect(body.recommendations.map((r: any) => r.rank)).toEqual(Array.from({ length: 10 }, (_, k) => k)); // the fixture's tables are top-10
    const doc = (await get("/openapi.json")).body.paths["/v1/users/{id}/exploration"].get;
    expect(doc.description).toMatch(/fewer than n/);
    expect(doc.parameters.find((p: any) => p.name === "n").description).toMatch(/topN.*a larger n answers fewer/);
  });

  it("documents rank (0-based, never negative) and what each score means in /openapi.json", async () => {
    const doc = (await get("/openapi.json")).body;
    const recommendation = doc.paths["/v1/users/{id}/exploration"].get.responses["200"].content["application/json"].schema.properties.recommendations.items;
    const { rank, score, items } = recommendation.properties;
    expect(rank).toMatchObject({ type: "integer", minimum: 0, description: expect.stringContaining("0-based") });
    expect(score.description).toMatch(/table's score.*float32/);
    const itemScore = items.items.properties.score;
    expect(itemScore.description).toMatch(/"co-visitation":.*"popularity":/);
    expect(itemScore.description).toMatch(/units differ/);
    expect(JSON.stringify(recommendation)).not.toContain("-9007199254740991");
  });

  it("answers 400 naming the query field for a bad n", async () => {
    for (const q of ["n=0", "n=51", "n=abc", "items=-1", "bogus=1"]) {
      const { status, body } = await get(`/v1/users/${warm}/exploration?${q}`);
      expect(status, q).toBe(400);
      errorResponseSchema.parse(body);
      expect(body.error.code).toBe("BAD_INPUT");
    }
    expect((await get(`/v1/users/${warm}/exploration?n=abc`)).body.error.issues[0].field).toBe("n");
  });

  it("serves every user id POST /v1/events accepts (up to 256 characters, encoded or not); a longer id is 400 in the API's error shape", async () => {
    const item = ws.world.itemId(42);
    const ascii = `long-${"x".repeat(251)}`;
    const accented = "é".repeat(256); // 256 characters, 2304 once percent-encoded
    const ingested = await post("/v1/events", { events: [ascii, accented].map((userId) => ({ userId, itemId: item, ts: "2025-02-27T10:00:00Z" })) });
    expect(ingested.status).toBe(200);
    for (const id of [ascii, accented]) {
      const { status, body } = await get(`/v1/users/${encodeURIComponent(id)}/exploration?n=2`);
      expect(status, `${id.length} characters`).toBe(200);
      expect(body.userId).toBe(id);
    }
    const tooLong = "y".repeat(257);
    expect((await post("/v1/events", { events: [{ userId: tooLong, itemId: item, ts: "2025-02-27T10:00:00Z" }] })).status).toBe(400);
    const { status, body } = await get(`/v1/users/${tooLong}/exploration`);
    expect(status).toBe(400);
    errorResponseSchema.parse(body);
    expect(body.error).toMatchObject({ code: "BAD_INPUT", message: expect.stringContaining("256") });
  });

  it("answers 400 in the API's error shape for a path that is not valid percent-encoding", async () => {
    const response = await fetch(`${server.url}/v1/users/%E0%A4%A/exploration`);
    expect(response.status).toBe(400);
    const body = (await response.json()) as any;
    errorResponseSchema.parse(body);
    expect(body.error).toMatchObject({ code: "BAD_INPUT", message: expect.stringContaining("percent-encoding") });
    expect(response.headers.get("x-request-id")).toBe(body.error.requestId);
  });
});

describe("tables", () => {
  it("GET /v1/tables lists versions, the live one and what is in memory", async () => {
    const { status, body } = await get("/v1/tables");
    expect(status).toBe(200);
    tablesResponseSchema.parse(body);
    expect(body.live).toBe(ws.rag);
    expect(body.tables.map((t: any) => t.version)).toEqual([ws.plain, ws.rag, ws.fusion]);
    expect(body.serving).toContainEqual({ binding: "live", version: ws.rag });
  });

  it("GET /v1/tables/live/{c1}/{c2} answers from the in-memory live table; 404 for an unknown pair", async () => {
    const { status, body } = await get(`/v1/tables/live/${warmHistory.c1}/${warmHistory.c2}`);
    expect(status).toBe(200);
    tableRowResponseSchema.parse(body);
    expect(body.version).toBe(ws.rag);
    expect(body.answers.length).toBe(10);
    expect(body.answers[0].description).toEqual(expect.any(String));
    const missing = await get(`/v1/tables/live/${warmHistory.c1}/no-such-cluster`);
    expect(missing.status).toBe(404);
    expect(missing.body.error.code).toBe("NOT_FOUND");
  });
});

describe("POST /v1/events", () => {
  const item = () => ws.world.itemId(42);
  const event = (userId: string, ts: string, engagement = 0.9) => ({ userId, itemId: item(), ts, engagement });
  const countEvents = async (userId: string) => {
    // Through the server's own connection (the server owns the store), in its queue.
    const rows = await server.state.queue.run(() =>
      server.state.events.query<{ n: bigint }>("SELECT count(*) AS n FROM events JOIN users USING (user_key) WHERE user_id = $u", { u: userId }),
    );
    return Number(rows[0].n);
  };

  it("writes a valid batch and updates the user's state at once", async () => {
    const user = "intake-user-1";
    const other = ws.world.itemId(400);
    const { status, body } = await post("/v1/events", { events: [event(user, "2025-02-27T10:00:00Z"), { userId: user, itemId: other, ts: Date.parse("2025-02-27T11:00:00Z") }] });
    expect(status).toBe(200);
    expect(body).toMatchObject({ received: 2, eventsAdded: 2, skippedDuplicates: 0, replayed: false });
    expect(await countEvents(user)).toBe(2);
    const state = server.state.users.get(user)!;
    const c1 = server.state.catalog.clusterOfItem(item());
    const c2 = server.state.catalog.clusterOfItem(other);
    if (c1 !== c2) {
      const explored = await get(`/v1/users/${user}/exploration?n=3`);
      expect(explored.body.history).toEqual({ c1, c2 });
    }
    expect(state.seen.length).toBe(2);
  });

  it("is all or nothing: one bad event answers 400 with its index and field, and nothing is written", async () => {
    const user = "intake-user-2";
    const { status, body } = await post("/v1/events", {
      events: [event(user, "2025-02-27T10:00:00Z"), event(user, "not a time"), { userId: user, itemId: "no-such-item", ts: "2025-02-27T12:00:00Z" }, { userId: user, ts: 5 }],
    });
    expect(status).toBe(400);
    errorResponseSchema.parse(body);
    expect(body.error.issues).toContainEqual({ index: 3, field: "itemId", message: expect.any(String) });
    const schema = await post("/v1/events", { events: [event(user, "2025-02-27T10:00:00Z"), { ...event(user, "2025-02-27T10:00:00Z"), engagement: "high" }] });
    expect(schema.status).toBe(400);
    expect(schema.body.error.issues).toEqual([{ index: 1, field: "engagement", message: expect.any(String) }]);
    const time = await post("/v1/events", { events: [event(user, "2025-02-27T10:00:00Z"), event(user, "yesterday")] });
    expect(time.body.error.issues).toEqual([{ index: 1, field: "ts", message: expect.stringContaining("not a time") }]);
    const unknown = await post("/v1/events", { events: [event(user, "2025-02-27T10:00:00Z"), { userId: user, itemId: "no-such-item", ts: "2025-02-27T12:00:00Z" }] });
    expect(unknown.body.error.issues).toEqual([{ index: 1, field: "itemId", message: expect.stringContaining("not in the catalog") }]);
    expect(await countEvents(user)).toBe(0);
    for (const bad of [{}, { events: [] }, { events: "x" }, [1, 2]]) expect((await post("/v1/events", bad)).status).toBe(400);
    expect((await post("/v1/events", "{not json")).status).toBe(400);
  });

  it("lists every problem of a batch in one 400: schema problems and, for fields that parsed, time and catalog problems", async () => {
    const user = "intake-user-all-problems";
    const { status, body } = await post("/v1/events", {
      events: [
        event(user, "2025-02-27T10:00:00Z"),
        event(user, "yesterday"), // parses (a string), is no time
        { userId: user, itemId: "no-such-item", ts: "2025-02-27T12:00:00Z" }, // parses, is not in the catalog
        { userId: user, ts: 5 }, // schema: no itemId
        { userId: user, itemId: "no-such-item-either", ts: "2025-02-27T12:00:00Z", engagement: "high" }, // schema and catalog
        { userId: "", itemId: item(), ts: "not a time either" }, // schema (userId) and time
        7, // schema: not an object
      ],
    });
    expect(status).toBe(400);
    errorResponseSchema.parse(body);
    expect(body.error.issues).toEqual([
      { index: 1, field: "ts", message: expect.stringContaining("not a time") },
      { index: 2, field: "itemId", message: expect.stringContaining("not in the catalog") },
      { index: 3, field: "itemId", message: expect.any(String) },
      { index: 4, field: "engagement", message: expect.any(String) },
      { index: 4, field: "itemId", message: expect.stringContaining("not in the catalog") },
      { index: 5, field: "userId", message: expect.any(String) },
      { index: 5, field: "ts", message: expect.stringContaining("not a time") },
      { index: 6, field: "(event)", message: expect.any(String) },
    ]);
    expect(body.error.message).toMatch(/^invalid events: events\[1\]\.ts: .*; and 5 more$/);
    expect(await countEvents(user)).toBe(0);
  });

  it("is idempotent: a repeated key answers the first result and writes nothing; another body with that key is 409", async () => {
    const user = "intake-user-3";
    const batch = { events: [event(user, "2025-02-26T10:00:00Z"), event(user, "2025-02-26T10:05:00Z")] };
    const headers = { "content-type": "application/json", "idempotency-key": "batch-0001" };
    const first = await post("/v1/events", batch, headers);
    expect(first.body).toMatchObject({ eventsAdded: 2, replayed: false, idempotencyKey: "batch-0001" });
    const again = await post("/v1/events", batch, headers);
    expect(again.status).toBe(200);
    expect(again.body).toEqual({ ...first.body, replayed: true });
    expect(await countEvents(user)).toBe(2);
    const conflict = await post("/v1/events", { events: [event(user, "2025-02-26T11:00:00Z")] }, headers);
    expect(conflict.status).toBe(409);
    expect(conflict.body.error.code).toBe("CONFLICT");
    // Without a key the store still never stores an event twice.
    const nokey = await post("/v1/events", batch);
    expect(nokey.body).toMatchObject({ eventsAdded: 0, skippedDuplicates: 2 });
    expect(await countEvents(user)).toBe(2);
  });

  it("answers 413 for an oversized body or too many events, 415 for a non-JSON body", async () => {
    const many = { events: Array.from({ length: 10_001 }, (_, k) => event("big", new Date(Date.parse("2025-02-01") + k * 1000).toISOString())) };
    const tooMany = await post("/v1/events", many);
    expect(tooMany.status).toBe(413);
    expect(tooMany.body.error.code).toBe("PAYLOAD_TOO_LARGE");
    const huge = await post("/v1/events", { events: [{ ...event("big", "2025-02-01T00:00:00Z"), userId: "x".repeat(1_100_000) }] });
    expect(huge.status).toBe(413);
    // The answer names the limit and the setting that raises it, not just "too large".
    expect(huge.body.error).toMatchObject({ code: "PAYLOAD_TOO_LARGE", message: expect.stringMatching(/larger than 1048576 bytes \(serve\.bodyLimitBytes\)/) });
    const text = await post("/v1/events", "userId,itemId", { "content-type": "text/csv" });
    expect(text.status).toBe(415);
    expect(text.body.error.message).toMatch(/"text\/csv".*application\/json/);
    expect(await countEvents("big")).toBe(0);
  });

  it("answers 415 naming application/json for a JSON body sent as text/plain (not a 400 about a string), and writes nothing", async () => {
    const user = "intake-user-text-plain";
    const batch = JSON.stringify({ events: [event(user, "2025-02-27T10:00:00Z")] });
    for (const contentType of ["text/plain", "text/plain; charset=utf-8", "application/octet-stream"]) {
      const { status, body } = await post("/v1/events", batch, { "content-type": contentType });
      expect(status, contentType).toBe(415);
      errorResponseSchema.parse(body);
      expect(body.error.code).toBe("UNSUPPORTED_MEDIA_TYPE");
      expect(body.error.message).toContain(JSON.stringify(contentType));
      expect(body.error.message).toContain("application/json");
    }
    expect(await countEvents(user)).toBe(0);
    // The same bytes as application/json are accepted: the type was the only problem.
    expect((await post("/v1/events", batch)).status).toBe(200);
    expect(await countEvents(user)).toBe(1);
  });
});

describe("admin routes", () => {
  it("answer 401 without a token and 403 with a wrong one; the tokens never reach the logs", async () => {
    const wrong = "wrong-token-abcdefghijklmnop";
    const none = await post("/v1/tables/rollback", {});
    expect(none.status).toBe(401);
    expect(none.headers.get("www-authenticate")).toMatch(/^Bearer/);
    const bad = await post("/v1/tables/rollback", {}, { authorization: `Bearer ${wrong}`, "content-type": "application/json" });
    expect(bad.status).toBe(403);
    expect((await get("/v1/schedule/status", { authorization: "Basic abc" })).status).toBe(401);
    expect((await get("/v1/schedule/status", admin)).status).toBe(200);
    expect((await post("/v1/tables/t999999/publish", {}, admin)).status).toBe(404);
    const all = logs.join("");
    expect(all).toContain("request completed");
    expect(all).not.toContain(TOKEN);
    expect(all).not.toContain(wrong);
  });

  it("authenticate before the body is read: an unauthenticated caller gets 401/403 whatever body it sends, never 400/413/415", async () => {
    const wrong = { authorization: "Bearer wrong-token-abcdefghijklmnop" };
    const cases: [string, string | Uint8Array, Record<string, string>][] = [
      ["malformed JSON", "{not json", { "content-type": "application/json" }],
      ["a non-JSON media type", "reason=x", { "content-type": "application/x-www-form-urlencoded" }],
      ["a body over serve.bodyLimitBytes", new Uint8Array(1_100_000).fill(0x20), { "content-type": "application/json" }],
    ];
    for (const [what, body, headers] of cases) {
      for (const [auth, status] of [[{}, 401], [wrong, 403]] as const) {
        const response = await fetch(`${server.url}/v1/tables/rollback`, { method: "POST", headers: { ...headers, ...auth }, body });
        expect(response.status, `${what}, ${status}`).toBe(status);
        errorResponseSchema.parse(await response.json());
      }
    }
    // An admin with the token still gets the body's own problems.
    expect((await post("/v1/tables/rollback", "{not json", admin)).status).toBe(400);
  });

  it("never log a token sent in the query string (the configured one or any other)", async () => {
    const before = logs.length;
    const wrong = "query-token-that-is-wrong-0123";
    expect((await get(`/v1/schedule/status?token=${TOKEN}`)).status).toBe(401);
    expect((await get(`/v1/schedule/status?access_token=${wrong}&x=1`)).status).toBe(401);
    expect((await get(`/v1/users/${warm}/exploration?api_key=${encodeURIComponent(wrong)}`)).status).toBe(400);
    const written = logs.slice(before).join("");
    expect(written).toContain("request completed");
    expect(written).not.toContain(TOKEN);
    expect(written).not.toContain(wrong);
    expect(written).toContain("token=[redacted]");
  });

  it("GET /v1/tables/live/{c1}/{c2} explains a fusion row with the counts behind it (a prompted row has none)", async () => {
    const prompted = await get(`/v1/tables/live/${warmHistory.c1}/${warmHistory.c2}`);
    expect(prompted.body.explanation).toBeNull();
    expect((await post(`/v1/tables/${ws.fusion}/publish`, { reason: "explain" }, admin)).status).toBe(200);
    try {
      const { status, body } = await get(`/v1/tables/live/${warmHistory.c1}/${warmHistory.c2}`);
      expect(status).toBe(200);
      tableRowResponseSchema.parse(body);
      expect(body.version).toBe(ws.fusion);
      const e = body.explanation;
      expect(e.answers.map((a: { cluster: string }) => a.cluster)).toEqual(body.answers.map((a: { cluster: string }) => a.cluster));
      expect(e.evidenceWeight).toBeGreaterThanOrEqual(0);
      expect(e.evidenceWeight).toBeLessThanOrEqual(1);
      // No LLM prior in the counts-backoff table; the counts are what the pair and its second cluster had.
      for (const a of e.answers) {
        expect(a.llmPrior).toBeNull();
        expect(a.pairUsers).toBeLessThanOrEqual(e.pairUsers);
        expect(a.secondUsers).toBeLessThanOrEqual(e.secondUsers);
      }
    } finally {
      expect((await post("/v1/tables/rollback", {}, admin)).status).toBe(200);
    }
  });

  it("publish and rollback swap the served table at once", async () => {
    const published = await post(`/v1/tables/${ws.plain}/publish`, { reason: "test" }, admin);
    expect(published.status).toBe(200);
    expect(published.body).toMatchObject({ live: ws.plain, previous: ws.rag, serving: ws.plain });
    expect((await get(`/v1/users/${warm}/exploration`)).body.table.version).toBe(ws.plain);
    const rolled = await post("/v1/tables/rollback", {}, admin);
    expect(rolled.body).toMatchObject({ live: ws.rag, previous: ws.plain, serving: ws.rag });
    expect((await get(`/v1/users/${warm}/exploration`)).body.table.version).toBe(ws.rag);
    expect((await post("/v1/tables/rollback", { reason: 5 }, admin)).status).toBe(400);
  });

  it("approve makes a halted model live, reject retires one for good (as freshrec review)", async () => {
    const noReason = await post("/v1/models/m000002/approve", {}, admin);
    expect(noReason.status).toBe(400);
    const approved = await post("/v1/models/m000002/approve", { reason: "recall dip explained" }, admin);
    expect(approved.status).toBe(200);
    expect(approved.body).toMatchObject({ model: { version: "m000002", status: "live" }, change: { from: "halted", to: "live", reason: "approved: recall dip explained" } });
    expect((await get(`/v1/users/${warm}/exploration`)).body.model.live).toBe("m000002");
    const rejected = await post("/v1/models/m000003/reject", { reason: "off-list answers" }, admin);
    expect(rejected.body.model.status).toBe("rejected");
    expect((await post("/v1/models/m000003/approve", { reason: "again" }, admin)).status).toBe(400);
    expect((await post("/v1/models/m000404/approve", { reason: "x" }, admin)).status).toBe(404);
  });
});

describe("experiments through the server", () => {
  it("assigns arms by hash, serves each arm's table, logs exposures, attributes outcomes and analyses them", async () => {
    const definition = { name: "api-test", arms: [{ name: "control", table: ws.plain }, { name: "treatment", table: ws.rag }] };
    expect((await post("/v1/experiments", { definition: { ...definition, arms: [{ name: "a", table: "t999" }, { name: "b", table: "live" }] } }, admin)).status).toBe(404);
    const bad = await post("/v1/experiments", { definition: { name: "x", arms: [{ name: "a", table: "nonsense" }] } }, admin);
    expect(bad.status).toBe(400);
    expect(bad.body.error.issues.map((i: any) => i.field)).toEqual(expect.arrayContaining(["definition.arms.0.table", "definition.arms"]));
    const created = await post("/v1/experiments", { definition }, admin);
    expect(created.status).toBe(200);
    experimentSchema.parse(created.body);
    expect(created.body.arms.map((a: any) => a.serving)).toEqual([ws.plain, ws.rag]);
    expect((await post("/v1/experiments", { definition: { ...definition, name: "api-test-2" } }, admin)).status).toBe(400); // one active at a time

    const users = Array.from({ length: 40 }, (_, k) => ws.world.userId(k));
    const served = new Map<string, any>();
    for (const user of users) {
      const { body } = await get(`/v1/users/${user}/exploration?n=3&items=1`);
      served.set(user, body);
      const again = await get(`/v1/users/${user}/exploration?n=3&items=1`);
      expect(again.body.experiment.arm).toBe(body.experiment.arm);
      expect(body.table.version).toBe(body.experiment.arm === "control" ? ws.plain : ws.rag);
    }
    const arms = new Set([...served.values()].map((b) => b.experiment.arm));
    expect(arms).toEqual(new Set(["control", "treatment"]));

    // Engagement with a recommended cluster within the attribution window is the slot's outcome.
    const now = Date.now();
    const outcomes = [...served.entries()].slice(0, 10).map(([user, body], k) => ({
      userId: user,
      itemId: body.recommendations[0].items[0]?.itemId ?? ws.world.itemId(0),
      ts: new Date(now + 1000 + k).toISOString(),
      engagement: k % 2 === 0 ? 0.9 : 0.1,
    }));
    const negative = [...served.entries()].slice(10, 12).map(([user, body]) => ({ userId: user, itemId: body.recommendations[1].items[0].itemId, ts: new Date(now + 5000).toISOString(), feedback: "negative" }));
    const ingested = await post("/v1/events", { events: [...outcomes, ...negative] });
    expect(ingested.status).toBe(200);
    expect(ingested.body.feedback).toBe(2);
    expect(ingested.body.outcomesAttributed).toBeGreaterThanOrEqual(12);

    const analysis = await get("/v1/experiments/api-test/analysis", admin);
    expect(analysis.status).toBe(200);
    analysisResponseSchema.parse(analysis.body);
    const total = (k: string) => analysis.body.arms.control[k] + analysis.body.arms.treatment[k];
    expect(analysis.body.users).toBe(40);
    expect(total("slots")).toBe(40 * 2 * 3);
    expect(total("satisfied")).toBeGreaterThanOrEqual(5);
    expect(total("dissatisfied")).toBeGreaterThanOrEqual(5);
    // Each user was served twice: both slates showed the cluster, so each feedback event is the outcome of both.
    expect(total("negative")).toBe(4);
    expect(analysis.body.deltas.map((d: any) => d.metric)).toContain("satisfactionRate");
    expect(analysis.body.table[0]).toMatch(/^\| metric \| control \| treatment/);

    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/freshrec_experiment_exposures_total 240/);
    const stopped = await post("/v1/experiments/api-test/stop", {}, admin);
    expect(stopped.body.status).toBe("stopped");
    expect((await get(`/v1/users/${users[0]}/exploration`)).body.experiment).toBeNull();
    const listed = await get("/v1/experiments", admin);
    expect(listed.body).toMatchObject({ active: null, experiments: [{ name: "api-test", status: "stopped" }] });
  });
});

describe("operations", () => {
  it("GET /healthz reports readiness and what serves", async () => {
    const { status, body } = await get("/healthz");
    expect(status).toBe(200);
    healthResponseSchema.parse(body);
    expect(body).toMatchObject({ status: "ok", ready: true, table: { version: ws.rag } });
    // The event store's upkeep in intake's quiet moments is shown, failures included (none here).
    expect(body.intakeUpkeep).toMatchObject({ failed: 0, lastError: null });
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/^freshrec_intake_upkeep_total \d+$/m);
    expect(metrics).toMatch(/^freshrec_intake_upkeep_failures_total 0$/m);
  });

  it("GET /readyz answers 200 with the health body when a table is live, 503 NOT_READY before any is (GET /healthz stays 200)", async () => {
    const ready = await get("/readyz");
    expect(ready.status).toBe(200);
    expect(ready.body).toMatchObject({ status: "ok", ready: true, table: { version: ws.rag } });
    // The same event store, a workspace whose table store has nothing published.
    const empty = tempDir("freshrec-readyz-");
    const unready = await startServer({ workspace: empty, port: 0, events: server.state.events as EventStore, adminToken: TOKEN, logLevel: "silent" });
    try {
      const notReady = await fetch(`${unready.url}/readyz`);
      expect(notReady.status).toBe(503);
      const body = (await notReady.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe("NOT_READY");
      expect(body.error.message).toContain("no table is live yet");
      const health = await fetch(`${unready.url}/healthz`);
      expect(health.status).toBe(200);
      expect(await health.json()).toMatchObject({ status: "ok", ready: false, table: null });
    } finally {
      await unready.close();
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it("GET /metrics is Prometheus text with latency per route, versions, misses, cold starts, ingested events", async () => {
    const response = await fetch(`${server.url}/metrics`);
    expect(response.headers.get("content-type")).toMatch(/^text\/plain; version=0.0.4/);
    const text = await response.text();
    expect(text).toMatch(/^# HELP freshrec_http_request_duration_seconds/m);
    expect(text).toMatch(/freshrec_http_request_duration_seconds_bucket\{method="GET",route="\/v1\/users\/:id\/exploration",le="\+Inf"\} \d+/);
    expect(text).toContain(`freshrec_live_table_info{version="${ws.rag}",model_version="successor"} 1`);
    expect(text).toContain('freshrec_live_model_info{version="m000002"} 1');
    expect(text).toMatch(/^freshrec_cold_starts_total [1-9]\d*$/m);
    expect(text).toMatch(/^freshrec_events_ingested_total [1-9]\d*$/m);
    expect(text).toMatch(/^freshrec_table_lookup_misses_total \d+$/m);
    // Every sample line parses as name{labels} value.
    for (const line of text.trim().split("\n")) if (!line.startsWith("#")) expect(line).toMatch(/^[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+$/);
  });

  it("GET /openapi.json documents every route with its schemas", async () => {
    const { status, body } = await get("/openapi.json");
    expect(status).toBe(200);
    expect(body.openapi).toBe("3.1.0");
    for (const path of ["/v1/users/{id}/exploration", "/v1/events", "/v1/tables", "/v1/tables/live/{c1}/{c2}", "/v1/tables/{version}/publish", "/v1/tables/rollback", "/v1/models/{version}/approve", "/v1/models/{version}/reject", "/metrics", "/healthz", "/readyz"]) {
      expect(body.paths[path], path).toBeDefined();
    }
    expect(body.paths["/v1/tables/rollback"].post.security).toEqual([{ adminToken: [] }]);
    expect(body.paths["/v1/events"].post.responses["413"]).toBeDefined();
    expect(body.paths["/v1/users/{id}/exploration"].get.responses["200"].content["application/json"].schema.properties.coldStart).toBeDefined();
  });

  it("unknown routes answer 404 in the error shape", async () => {
    const { status, body } = await get("/v2/nothing");
    expect(status).toBe(404);
    errorResponseSchema.parse(body);
  });

  it("unknownItems: skip drops events of unknown items and counts them", async () => {
    const second = await startServer({ workspace: ws.dir, port: 0, events: server.state.events as EventStore, unknownItems: "skip", logLevel: "silent" });
    try {
      const r = await fetch(`${second.url}/v1/events`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ events: [{ userId: "skipper", itemId: ws.world.itemId(7), ts: "2025-02-20T00:00:00Z" }, { userId: "skipper", itemId: "nope", ts: "2025-02-20T00:00:01Z" }] }),
      });
      expect(await r.json()).toMatchObject({ received: 2, eventsAdded: 1, skippedUnknownItems: 1 });
    } finally {
      await second.close();
    }
  });
});

describe("a server on a virtual clock (event times, schedule status, body limit)", () => {
  // A second server over the same event store, on a clock that stands at the end of the fixture's events.
  let clock: VirtualClock;
  let clocked: RunningServer;
  // A status as a scheduler reports it (epoch ms); the route answers its ISO view.
  const DUE = Date.UTC(2025, 11, 3);
  const recorded: ScheduleStatus = {
    now: DUE + 3_600_000,
    running: null,
    jobs: [
      {
        job: "refresh",
        cadence: "every 2 days",
        paused: false,
        pauseReason: null,
        pausedAt: null,
        consecutiveFailures: 0,
        counters: { ...ZERO_COUNTERS, runs: 1, succeeded: 1 },
        lastRun: { id: 7, job: "refresh", due: DUE, trigger: "scheduled", startedAt: DUE + 1000, endedAt: DUE + 61_000, status: "succeeded", durationSeconds: 60, cost: { promptsScored: 46 }, detail: { tableVersion: "t000004", dataAsOf: DUE }, error: null },
        nextDue: DUE + 2 * 86_400_000,
      },
    ],
  };
  const recordedView = {
    now: "2025-12-03T01:00:00.000Z",
    running: null,
    jobs: [
      {
        ...recorded.jobs[0],
        counters: { ...recorded.jobs[0].counters },
        lastRun: {
          ...recorded.jobs[0].lastRun!,
          due: "2025-12-03T00:00:00.000Z",
          startedAt: "2025-12-03T00:00:01.000Z",
          endedAt: "2025-12-03T00:01:01.000Z",
          detail: { tableVersion: "t000004", dataAsOf: "2025-12-03T00:00:00.000Z" },
        },
        nextDue: "2025-12-05T00:00:00.000Z",
      },
    ],
  };

  beforeAll(async () => {
    clock = new VirtualClock(ws.world.endMs);
    clocked = await startServer({
      workspace: ws.dir,
      port: 0,
      events: server.state.events as EventStore,
      clock,
      adminToken: TOKEN,
      logLevel: "silent",
      validateResponses: true,
      bodyLimitBytes: 4096,
      // As the CLI passes it without --schedule: the status recorded in the workspace, from a function.
      scheduleStatus: () => recorded,
    });
  });
  afterAll(async () => {
    await clocked?.close();
  });

  const send = async (body: unknown, headers: Record<string, string> = { "content-type": "application/json" }) => {
    const response = await fetch(`${clocked.url}/v1/events`, { method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body) });
    return { status: response.status, body: (await response.json()) as any };
  };
  const eventAt = (userId: string, ts: string | number) => ({ userId, itemId: ws.world.itemId(42), ts });
  const countOf = async (userId: string) => {
    const rows = await server.state.queue.run(() => server.state.events.query<{ n: bigint }>("SELECT count(*) AS n FROM events JOIN users USING (user_key) WHERE user_id = $u", { u: userId }));
    return Number(rows[0].n);
  };
  const newest = async () => {
    const [row] = await server.state.queue.run(() => server.state.events.query<{ t: bigint | number | null }>("SELECT epoch_ms(max(ts)) AS t FROM events"));
    return Number(row.t);
  };

  it("refuses, per event, a ts later than the server clock's now plus the 1-day skew tolerance, writing nothing of the batch", async () => {
    const user = "future-user-1";
    const now = clock.now();
    const newestBefore = await newest();
    const { status, body } = await send({
      events: [eventAt(user, now - 3_600_000), eventAt(user, "2099-01-01T00:00:00Z"), eventAt(user, now + DAY_MS + 1000), eventAt(user, now + DAY_MS)],
    });
    expect(status).toBe(400);
    errorResponseSchema.parse(body);
    const nowIso = new Date(now).toISOString();
    expect(body.error.issues).toEqual([
      { index: 1, field: "ts", message: expect.stringMatching(/^"2099-01-01T00:00:00Z" \(2099-01-01T00:00:00\.000Z\) is in the future: \d+ days after the server's now/) },
      { index: 2, field: "ts", message: expect.stringContaining("is in the future: 1 day after") },
    ]);
    for (const issue of body.error.issues) {
      expect(issue.message).toContain(`the server's now ${nowIso}`);
      expect(issue.message).toContain("serve.futureToleranceMs");
    }
    // All or nothing: the valid events of the batch are not written either, and the store's newest time stays.
    expect(await countOf(user)).toBe(0);
    expect(await newest()).toBe(newestBefore);

    // Exactly at the tolerance is skew, accepted; the server's clock decides, not the machine's.
    const accepted = await send({ events: [eventAt(user, now - 3_600_000), eventAt(user, now + DAY_MS)] });
    expect(accepted.status).toBe(200);
    expect(accepted.body.eventsAdded).toBe(2);
    clock.advance(2 * DAY_MS);
    const later = await send({ events: [eventAt(user, now + DAY_MS + 1000)] });
    expect(later.status).toBe(200);
    expect(await countOf(user)).toBe(3);
  });

  it("takes the skew tolerance from serve.futureToleranceMs and refuses a negative one at start-up", async () => {
    const strict = await startServer({ workspace: ws.dir, port: 0, events: server.state.events as EventStore, clock, logLevel: "silent", futureToleranceMs: 60_000 });
    try {
      const now = clock.now();
      const post1 = (ts: number) =>
        fetch(`${strict.url}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ events: [eventAt("future-user-2", ts)] }) }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));
      const refused = await post1(now + 120_000);
      expect(refused.status).toBe(400);
      expect(refused.body.error.issues).toEqual([{ index: 0, field: "ts", message: expect.stringContaining("more than the 60 seconds (60000 ms, serve.futureToleranceMs)") }]);
      expect((await post1(now + 60_000)).status).toBe(200);
    } finally {
      await strict.close();
    }
    await expect(startServer({ workspace: ws.dir, port: 0, events: server.state.events as EventStore, clock, logLevel: "silent", futureToleranceMs: -1 })).rejects.toThrow(/serve\.futureToleranceMs/);
  });

  it("GET /v1/schedule/status answers scheduling: false when only the recorded status is given, true with scheduling: true", async () => {
    const response = await fetch(`${clocked.url}/v1/schedule/status`, { headers: admin });
    expect(response.status).toBe(200);
    // Times as ISO, like every other time the API answers (the scheduler keeps epoch ms).
    expect(await response.json()).toEqual({ scheduling: false, status: recordedView });
    const running = await startServer({ workspace: ws.dir, port: 0, events: server.state.events as EventStore, clock, adminToken: TOKEN, logLevel: "silent", scheduleStatus: () => recorded, scheduling: true });
    try {
      expect(await (await fetch(`${running.url}/v1/schedule/status`, { headers: admin })).json()).toEqual({ scheduling: true, status: recordedView });
    } finally {
      await running.close();
    }
  });

  it("answers 413 naming this server's serve.bodyLimitBytes", async () => {
    const user = "limit-user";
    const { status, body } = await send({ events: [{ ...eventAt(user, clock.now()), title: "x".repeat(5000) }] });
    expect(status).toBe(413);
    errorResponseSchema.parse(body);
    expect(body.error).toMatchObject({ code: "PAYLOAD_TOO_LARGE", message: expect.stringContaining("larger than 4096 bytes (serve.bodyLimitBytes)") });
    expect(await countOf(user)).toBe(0);
  });
});
