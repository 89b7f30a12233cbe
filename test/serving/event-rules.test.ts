/**
 * One set of rules for an event, whichever way it comes in: the same events through `freshrec ingest` (exit 2 naming
 * file:line field) and POST /v1/events (400 naming index and field) are accepted or refused alike. Before, the API
 * stored a 30th of February as the 2nd of March, an engagement of 1e39 as Infinity (float32) and bytes that are not
 * UTF-8 as U+FFFD.
 */
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { errorResponseSchema, startServer, type RunningServer } from "../../src/serving/index.js";
import { servingWorkspace, type ServingWorkspace } from "./fixtures.js";
import { tempDir } from "../temp-dir.js";

const BIN = join(import.meta.dirname, "../../bin/freshrec.js");

let ws: ServingWorkspace;
let server: RunningServer;
let item: string;

beforeAll(async () => {
  ws = await servingWorkspace({ users: 100, events: 8000 });
  server = await startServer({ workspace: ws.dir, port: 0, logLevel: "silent" });
  item = ws.world.itemId(42);
});

afterAll(async () => {
  await server?.close();
});

/** An event as raw bytes per field, so a user id can hold bytes that are not UTF-8. */
interface RawEvent {
  readonly userId: Buffer;
  readonly ts: string;
  readonly engagement: string;
}

const NOT_UTF8 = Buffer.from([0x72, 0x75, 0x6c, 0x65, 0xff, 0xfe, 0x73]); // "rule", two bytes no UTF-8 text has, "s"
const good = (user: string): RawEvent => ({ userId: Buffer.from(user), ts: "2025-02-27T10:00:00Z", engagement: "0.5" });
const BAD: readonly [string, RawEvent][] = [
  ["ts", { ...good("rules-feb-30"), ts: "2025-02-30T10:00:00Z" }],
  ["engagement", { ...good("rules-1e39"), engagement: "1e39" }],
  ["userId", { ...good("x"), userId: NOT_UTF8 }],
];

/** `freshrec ingest` of the events as a CSV file into a workspace of its own (a catalog holding the item). */
function ingestCli(events: readonly RawEvent[]): { status: number | null; stdout: string; stderr: string; file: string } {
  const dir = tempDir("freshrec-rules-cli-");
  writeFileSync(join(dir, "clusters.csv"), "cluster_id,description\nc,some cluster\n");
  writeFileSync(join(dir, "items.csv"), `item_id,cluster_id\n${item},c\n`);
  const file = join(dir, "events.csv");
  const rows = events.map((e) => Buffer.concat([e.userId, Buffer.from(`,${item},${e.ts},${e.engagement}\n`)]));
  writeFileSync(file, Buffer.concat([Buffer.from("user_id,item_id,ts,engagement\n"), ...rows]));
  const args = ["--workspace", join(dir, "ws"), "--json", "ingest", "--clusters", join(dir, "clusters.csv"), "--items", join(dir, "items.csv"), "--events", file];
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, file };
}

/** POST /v1/events with the events as a JSON body written byte by byte. */
async function ingestApi(events: readonly RawEvent[]): Promise<{ status: number; body: any }> {
  const parts: Buffer[] = [Buffer.from('{"events":[')];
  events.forEach((e, k) => {
    parts.push(Buffer.from(`${k ? "," : ""}{"userId":"`), e.userId, Buffer.from(`","itemId":${JSON.stringify(item)},"ts":${JSON.stringify(e.ts)},"engagement":${e.engagement}}`));
  });
  parts.push(Buffer.from("]}"));
  const response = await fetch(`${server.url}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: Buffer.concat(parts) });
  return { status: response.status, body: await response.json() };
}

describe("the rules of an event, on the CLI and through the API", () => {
  it("refuse a 30th of February, an engagement beyond float32 and a user id that is not UTF-8, each naming its field", async () => {
    const events = [good("rules-fine"), ...BAD.map(([, e]) => e)];
    const cli = ingestCli(events);
    expect(cli.status).toBe(2);
    const problems = JSON.parse(cli.stdout).error.problems as { line: number; field?: string; problem: string }[];
    expect(problems).toEqual([
      { file: cli.file, line: 3, field: "ts", problem: expect.stringMatching(/2025-02-30.*February 2025 has 28 days/) },
      { file: cli.file, line: 4, field: "engagement", problem: expect.stringMatching(/1e39.*float32/) },
      { file: cli.file, line: 5, problem: expect.stringContaining("not valid UTF-8") },
    ]);
    expect(cli.stderr).toContain(`${cli.file}:3 ts: `);
    expect(cli.stderr).toContain(`${cli.file}:4 engagement: `);

    const api = await ingestApi(events);
    expect(api.status).toBe(400);
    errorResponseSchema.parse(api.body);
    expect(api.body.error.issues).toEqual([
      { index: 1, field: "ts", message: expect.stringMatching(/2025-02-30.*February 2025 has 28 days/) },
      { index: 2, field: "engagement", message: expect.stringMatching(/1e\+?39.*float32/) },
      { index: 3, field: "userId", message: expect.stringContaining("not valid UTF-8") },
    ]);
  });

  it("refuse each bad event alone as well, and accept the good one both ways", async () => {
    for (const [field, event] of BAD) {
      expect(ingestCli([event]).status, field).toBe(2);
      const api = await ingestApi([event]);
      expect(api.status, field).toBe(400);
      expect(api.body.error.issues.map((i: any) => i.field)).toEqual([field]);
    }
    const cli = ingestCli([good("rules-fine")]);
    expect(cli.status).toBe(0);
    expect(JSON.parse(cli.stdout)).toMatchObject({ events: 1, badRows: 0 });
    const api = await ingestApi([good("rules-fine")]);
    expect(api.status).toBe(200);
    expect(api.body).toMatchObject({ eventsAdded: 1 });
  });
});
