/**
 * The exploration route writes its JSON body from memoized per-cluster and per-item fragments
 * (src/serving/exploration-json.ts). It must write exactly JSON.stringify of the documented response object, for
 * awkward text too, and never serve text of a catalog or table other than the one that answered.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore, eventBatchFromEvents } from "../../src/data/event-store.js";
import { DAY_MS } from "../../src/domain/clock.js";
import type { EngagementEvent } from "../../src/domain/types.js";
import { ExplorationJsonWriter, explorationResponse, type ExplorationResponseExtras } from "../../src/serving/exploration-json.js";
import { Catalog, CoVisitationPolicy, Explorer, UserIndex, buildGroundingIndex, type ItemPolicy } from "../../src/serving/index.js";
import { TableLookup } from "../../src/tables/index.js";

const END = Date.parse("2025-06-30T00:00:00Z");
const AWKWARD = ['quote " and \\ backslash', "line\nbreak\ttab\u0001", "é ☃ 😀 \u2028\u2029", "lone \ud800 surrogate", "</script>"];

let store: EventStore;

beforeAll(async () => {
  store = await EventStore.open(":memory:");
  const clusters = ["A", "B", "C", "D"].map((id, k) => ({ id, description: `${id}: ${AWKWARD[k]}` }));
  const items = clusters.flatMap((c, k) =>
    Array.from({ length: 6 }, (_, i) => ({ id: `${c.id.toLowerCase()}${i}`, clusterId: c.id, title: i === 5 ? undefined : `${AWKWARD[(k + i) % AWKWARD.length]} ${i}` })),
  );
  const events: EngagementEvent[] = [];
  const visit = (user: string, day: number, ...ids: string[]) => ids.forEach((itemId, k) => events.push({ userId: user, itemId, ts: END - day * DAY_MS + k * 60_000, engagement: 1 }));
  for (let u = 0; u < 4; u++) visit(`p${u}`, 3, "a0", "b1", "c2", "d3");
  for (let u = 0; u < 3; u++) visit(`q${u}`, 2, "b0", "c1", "d2");
  visit("h1", 1, "a1", "b2");
  visit("cold", 1, "c4");
  await store.append({ clusters, items, events: eventBatchFromEvents(events) });
});

afterAll(() => store?.close());

async function explorerOver(policy?: (g: () => Awaited<ReturnType<typeof buildGroundingIndex>>) => ItemPolicy) {
  const catalog = await Catalog.load(store);
  const users = await UserIndex.load(store, catalog, { positiveMin: null });
  const index = await buildGroundingIndex(store, catalog, { positiveMin: null });
  return { catalog, explorer: new Explorer(catalog, users, () => index, (policy ?? ((g) => new CoVisitationPolicy(g)))(() => index)) };
}

const table = (version: string, rows: [string, string, [string, number][]][]) =>
  TableLookup.fromRows({ version, modelVersion: `m-${version}` }, rows.map(([c1, c2, answers]) => ({ c1, c2, answers: answers.map(([cluster, score]) => ({ cluster, score })) })));

const EXTRAS: ExplorationResponseExtras[] = [
  { model: { live: null }, experiment: null, requestId: "r-1" },
  { model: { live: 'm"1' }, experiment: { name: "exp\n1", arm: "treatment", exposureId: "e-\u2028" }, requestId: AWKWARD[0] },
];

describe("ExplorationJsonWriter", () => {
  it("writes exactly JSON.stringify of the response, for histories, cold starts, lookup misses and awkward text", async () => {
    const { catalog, explorer } = await explorerOver();
    const lookup = table("t000001", [["A", "B", [["C", 0.5], ["D", 1 / 3], ["unknown", 0.2]]]]);
    const writer = ExplorationJsonWriter.of(catalog);
    for (const lookupOrNone of [lookup, undefined]) {
      for (const userId of ["h1", "p0", "q1", "cold", "never-seen \"x\""]) {
        for (const n of [1, 3, 10]) {
          const answer = await explorer.exploreIndexed({ userId, lookup: lookupOrNone, n, itemsPerCluster: 4 });
          for (const extras of EXTRAS) {
            // Twice: the second write reads the memoized fragments.
            for (let k = 0; k < 2; k++) expect(writer.write(answer, extras)).toBe(JSON.stringify(explorationResponse(explorer.present(answer), extras)));
          }
        }
      }
    }
    const h1 = await explorer.exploreIndexed({ userId: "h1", lookup, n: 10, itemsPerCluster: 3 });
    expect(h1.fallback).toBeNull();
    expect(JSON.parse(writer.write(h1, EXTRAS[0])).recommendations.map((r: { cluster: string }) => r.cluster)).toEqual(["C", "D"]);
  });

  it("hands out each body as its own bytes: bodies written later, across slabs and larger than one, never change an earlier one", async () => {
    const { catalog, explorer } = await explorerOver();
    const lookup = table("t000006", [["A", "B", [["C", 0.5], ["D", 1 / 3]]]]);
    const writer = ExplorationJsonWriter.of(catalog);
    const written: { body: Buffer; expected: string }[] = [];
    for (let k = 0; k < 3000; k++) {
      const userId = ["h1", "p0", "q1", "cold"][k % 4];
      const answer = await explorer.exploreIndexed({ userId, lookup, n: 1 + (k % 4), itemsPerCluster: 1 + (k % 5) });
      // Every 1000th request id is larger than a slab (256 KiB), with characters of 1 to 4 UTF-8 bytes.
      const extras = { ...EXTRAS[k % 2], requestId: k % 1000 === 999 ? "é☃😀x".repeat(70_000) : `r-${k}` };
      written.push({ body: writer.bytes(answer, extras), expected: JSON.stringify(explorationResponse(explorer.present(answer), extras)) });
    }
    for (const { body, expected } of written) expect(body.toString("utf8")).toBe(expected);
    expect(written.reduce((sum, w) => sum + w.body.length, 0)).toBeGreaterThan(4 * 256 * 1024);
  });

  it("writes any item policy's scores and sources as JSON.stringify does (non-finite numbers as null)", async () => {
    const scores = [0.1 + 0.2, 1e21, -0, 5e-324, Number.NaN, Number.POSITIVE_INFINITY, 42];
    const { catalog, explorer } = await explorerOver(() => ({
      name: "odd",
      ground: (request) => Array.from(request.clusters, (c, k) => [0, 1, 2].map((i) => ({ item: c * 6 + i, score: scores[(k + i) % scores.length], source: k % 2 ? 'odd "source"' : "popularity" }))),
    }));
    const lookup = table("t000002", [["A", "B", [["C", Number.NaN], ["D", 1e-7]]]]);
    for (const userId of ["h1", "cold"]) {
      const answer = await explorer.exploreIndexed({ userId, lookup, n: 4, itemsPerCluster: 3 });
      expect(ExplorationJsonWriter.of(catalog).write(answer, EXTRAS[1])).toBe(JSON.stringify(explorationResponse(explorer.present(answer), EXTRAS[1])));
    }
  });

  it("never writes a title or description of another catalog: changed item metadata shows in the next catalog's answers", async () => {
    const before = await explorerOver();
    const lookup = table("t000003", [["A", "B", [["C", 0.5], ["D", 0.25]]]]);
    const answerBefore = await before.explorer.exploreIndexed({ userId: "h1", lookup, n: 10, itemsPerCluster: 6 });
    const jsonBefore = ExplorationJsonWriter.of(before.catalog).write(answerBefore, EXTRAS[0]);
    expect(jsonBefore).toContain(JSON.stringify(`${AWKWARD[2]} 0`).slice(1, -1));

    await store.append({
      clusters: [{ id: "C", description: "C: renamed" }],
      items: [{ id: "c0", clusterId: "C", title: "c0 renamed" }, { id: "d1", clusterId: "D", title: "d1 renamed" }],
    });
    const after = await explorerOver();
    expect(ExplorationJsonWriter.of(after.catalog)).not.toBe(ExplorationJsonWriter.of(before.catalog));
    const answerAfter = await after.explorer.exploreIndexed({ userId: "h1", lookup, n: 10, itemsPerCluster: 6 });
    const jsonAfter = ExplorationJsonWriter.of(after.catalog).write(answerAfter, EXTRAS[0]);
    expect(jsonAfter).toBe(JSON.stringify(explorationResponse(after.explorer.present(answerAfter), EXTRAS[0])));
    expect(jsonAfter).toContain('"description":"C: renamed"');
    expect(jsonAfter).toContain('"title":"c0 renamed"');
    expect(jsonAfter).toContain('"title":"d1 renamed"');
    // The old catalog (still serving whoever holds it) keeps its own text.
    expect(ExplorationJsonWriter.of(before.catalog).write(answerBefore, EXTRAS[0])).toBe(jsonBefore);
  });

  it("writes a description or title the catalog took in place (a shared store's revision), not the text it wrote before", async () => {
    const { catalog, explorer } = await explorerOver();
    const lookup = table("t000007", [["A", "B", [["C", 0.5], ["D", 0.25]]]]);
    const writer = ExplorationJsonWriter.of(catalog);
    const answer = await explorer.exploreIndexed({ userId: "h1", lookup, n: 10, itemsPerCluster: 6 });
    const before = writer.write(answer, EXTRAS[0]);
    const c = catalog.clusterIndex.get("C")!;
    const clusterKey = Array.from(catalog.clusterOfKey).indexOf(c);
    const item = answer.items[0][0].item;
    expect(catalog.itemCluster[item]).toBe(c);
    const revised = catalog.revise(
      [{ key: clusterKey, id: "C", description: "C: revised in place" }],
      [{ key: Array.from(catalog.itemOfKey).indexOf(item), id: catalog.itemIds[item], clusterKey, title: "title revised in place" }],
    );
    expect(revised).toMatchObject({ clusters: 1, items: 1 });
    const after = writer.write(answer, EXTRAS[0]);
    expect(after).not.toBe(before);
    expect(after).toBe(JSON.stringify(explorationResponse(explorer.present(answer), EXTRAS[0])));
    expect(after).toContain('"description":"C: revised in place"');
    expect(after).toContain('"title":"title revised in place"');
  });

  it("answers from whichever table it is given: a newly published table's clusters, scores and version show at once", async () => {
    const { catalog, explorer } = await explorerOver();
    const writer = ExplorationJsonWriter.of(catalog);
    const v1 = table("t000004", [["A", "B", [["C", 0.5], ["D", 0.25]]]]);
    // Another cluster set (other local indices) and other scores for the same history.
    const v2 = table("t000005", [["D", "C", [["A", 0.1]]], ["A", "B", [["D", 0.75], ["C", 0.125]]]]);
    const bodies = [];
    for (const lookup of [v1, v2, v1]) {
      const answer = await explorer.exploreIndexed({ userId: "h1", lookup, n: 10, itemsPerCluster: 2 });
      const json = writer.write(answer, EXTRAS[0]);
      expect(json).toBe(JSON.stringify(explorationResponse(explorer.present(answer), EXTRAS[0])));
      bodies.push(JSON.parse(json) as { table: { version: string }; recommendations: { cluster: string; score: number }[] });
    }
    expect(bodies.map((b) => b.table.version)).toEqual(["t000004", "t000005", "t000004"]);
    expect(bodies[0].recommendations.map((r) => [r.cluster, r.score])).toEqual([["C", 0.5], ["D", 0.25]]);
    expect(bodies[1].recommendations.map((r) => [r.cluster, r.score])).toEqual([["D", 0.75], ["C", 0.125]]);
    expect(bodies[2]).toEqual(bodies[0]);
  });
});
