import { afterEach, describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import type { TableRow } from "../../src/domain/types.js";
import { LiveTable, TableLookup } from "../../src/tables/lookup.js";
import { SqliteTableStore } from "../../src/tables/sqlite-store.js";
import { loadLookup } from "../../src/serving/table-loader.js";
import { EmbeddedTableStore } from "../../src/tables/embedded-store.js";
import { byPair } from "./conformance.js";
import { STATS, clusterNames, tableRows } from "./fixtures/rows.js";

const META = { modelVersion: "m000003", templateHash: "tmpl-a" };
const clusters = clusterNames(20);
let store: SqliteTableStore;
afterEach(() => store?.close());

function storeWith(...variants: number[]): { store: SqliteTableStore; versions: string[] } {
  store = SqliteTableStore.open(":memory:", new VirtualClock(Date.UTC(2025, 2, 1)));
  const versions = variants.map((v) => {
    const b = store.beginBuild(META);
    b.append(tableRows(clusters, v));
    return b.finish(STATS).version;
  });
  return { store, versions };
}

const strip = (rows: Iterable<TableRow>) => byPair([...rows].map(({ c1, c2, answers }) => ({ c1, c2, answers })));

describe("TableLookup", () => {
  it("returns exactly the stored rows, with its table and model version", () => {
    const { versions } = storeWith(2);
    const lookup = TableLookup.load(store, versions[0]);
    expect(lookup).toMatchObject({ version: "t000001", modelVersion: "m000003", topN: 10, size: 380 });
    const stored = [...store.rows(versions[0])];
    for (const row of stored) expect(lookup.get(row.c1, row.c2)).toEqual(row.answers);
    expect(strip(lookup.rows())).toEqual(strip(stored));
    expect(lookup.get("c001", "c001")).toBeUndefined();
    expect(lookup.get("c001", "unknown")).toBeUndefined();
    expect(lookup.has("c001", "c002")).toBe(true);
  });

  it("reads into caller-owned buffers without allocating answer objects", () => {
    const { versions } = storeWith(1);
    const lookup = TableLookup.load(store, versions[0]);
    const into = { clusters: [] as string[], scores: new Float64Array(10) };
    const row = store.lookup(versions[0], "c004", "c011")!;
    expect(lookup.read("c004", "c011", into)).toBe(10);
    expect(into.clusters.slice(0, 10)).toEqual(row.answers.map((a) => a.cluster));
    expect([...into.scores]).toEqual(row.answers.map((a) => a.score));
    expect(lookup.read("c004", "c011", into, 3)).toBe(3);
    expect(lookup.read("c004", "zzz", into)).toBe(-1);
  });

  it("pads short rows and keeps rows with no answers distinct from missing rows", () => {
    const rows: TableRow[] = [
      { c1: "a", c2: "b", answers: [{ cluster: "c", score: 0.5 }, { cluster: "d", score: 0.25 }] },
      { c1: "b", c2: "a", answers: [] },
      { c1: "c", c2: "d", answers: [{ cluster: "a", score: 1 }] },
    ];
    const lookup = TableLookup.fromRows({ version: "t000009", modelVersion: "m1" }, rows);
    expect(lookup.size).toBe(3);
    expect(lookup.get("a", "b")).toEqual(rows[0].answers);
    expect(lookup.get("b", "a")).toEqual([]);
    expect(lookup.get("d", "c")).toBeUndefined();
    expect(lookup.get("c", "d")).toEqual(rows[2].answers);
  });

  it("refuses a table too large for the dense layout", () => {
    const { versions } = storeWith(0);
    expect(() => TableLookup.load(store, versions[0], { maxSlots: 1000 })).toThrow(/maxSlots 1000/);
  });
});

describe("loadLookup (page by page into the dense arrays)", () => {
  const same = (a: TableLookup, b: TableLookup) => {
    expect(a).toMatchObject({ version: b.version, modelVersion: b.modelVersion, topN: b.topN, size: b.size, clusters: b.clusters });
    expect([...a.rows()]).toEqual([...b.rows()]);
  };

  it("builds the lookup fromPacked builds, in any page size", async () => {
    const { versions } = storeWith(0, 3);
    for (const rowsPerSlice of [1, 7, 380, 5000]) {
      for (const v of versions) same(await loadLookup(new EmbeddedTableStore(store), v, { rowsPerSlice }), TableLookup.load(store, v));
    }
  });

  it("narrows to the clusters a table uses when the store's dictionary remembers others", async () => {
    const { versions } = storeWith(1);
    const b = store.beginBuild(META);
    b.append(tableRows(clusterNames(30).slice(20), 0, 4)); // ten clusters of their own: 30 in the dictionary
    const narrow = b.finish(STATS).version;
    for (const v of [...versions, narrow]) same(await loadLookup(new EmbeddedTableStore(store), v, { rowsPerSlice: 13 }), TableLookup.load(store, v));
    expect([...(await loadLookup(new EmbeddedTableStore(store), narrow)).clusters].sort()).toEqual(clusterNames(30).slice(20));
  });

  it("falls back to the packed columns when the dictionary is too wide for the dense layout, and refuses what fromPacked refuses", async () => {
    const { versions } = storeWith(1);
    const b = store.beginBuild(META);
    b.append(tableRows(clusterNames(30).slice(20), 0, 4));
    const narrow = b.finish(STATS).version;
    // 30^2 x 10 slots over the dictionary, 10^2 x 10 over the table's own clusters.
    same(await loadLookup(new EmbeddedTableStore(store), narrow, { maxSlots: 2000 }), TableLookup.load(store, narrow));
    await expect(loadLookup(new EmbeddedTableStore(store), versions[0], { maxSlots: 1000 })).rejects.toThrow(/maxSlots 1000/);
  });

  it("loads a table without rows", async () => {
    store = SqliteTableStore.open(":memory:", new VirtualClock(Date.UTC(2025, 2, 1)));
    const empty = store.beginBuild(META).finish(STATS).version;
    expect((await loadLookup(new EmbeddedTableStore(store), empty)).size).toBe(0);
  });
});

describe("LiveTable", () => {
  it("follows publish and rollback through reload", () => {
    const { versions } = storeWith(0, 1);
    const live = new LiveTable();
    expect(live.reload(store)).toBe(false); // nothing published yet
    expect(live.get("c000", "c001")).toBeUndefined();
    store.publish(versions[0]);
    expect(live.reload(store)).toBe(true);
    expect(live.version).toBe(versions[0]);
    expect(live.reload(store)).toBe(false);
    store.publish(versions[1]);
    live.reload(store);
    expect(live.get("c000", "c001")).toEqual(store.lookup(versions[1], "c000", "c001")!.answers);
    store.rollback();
    live.reload(store);
    expect(live.version).toBe(versions[0]);
  });

  it("never gives a reader rows of two versions while tables swap under it", async () => {
    const { versions } = storeWith(0, 1);
    const expected = new Map(
      versions.map((v) => [v, new Map([...store.rows(v)].map((r) => [`${r.c1}/${r.c2}`, JSON.stringify(r.answers)]))]),
    );
    // Every row differs between the two versions, so a mixed read would be caught on any row.
    for (const [key, answers] of expected.get(versions[0])!) expect(expected.get(versions[1])!.get(key)).not.toBe(answers);

    const live = new LiveTable();
    store.publish(versions[0]);
    live.reload(store);
    const pairs = clusters.flatMap((c1) => clusters.filter((c2) => c2 !== c1).map((c2) => [c1, c2] as const));
    let swaps = 0;
    let running = true;
    const swapper = (async () => {
      while (running) {
        if (live.version === versions[0]) store.publish(versions[1]);
        else store.rollback();
        live.reload(store);
        swaps++;
        await new Promise((r) => setImmediate(r));
      }
    })();
    const seen = new Set<string>();
    const reader = async (offset: number) => {
      for (let request = 0; request < 40; request++) {
        const table = live.lookup!; // one version per request
        seen.add(table.version);
        const want = expected.get(table.version)!;
        for (let i = 0; i < pairs.length; i += 7) {
          const [c1, c2] = pairs[(i + offset) % pairs.length];
          expect(JSON.stringify(table.get(c1, c2))).toBe(want.get(`${c1}/${c2}`));
          // Yield mid-request so swaps land between the reads of one request.
          if (i % 35 === 0) await new Promise((r) => setImmediate(r));
        }
      }
    };
    await Promise.all([reader(0), reader(3), reader(5)]);
    running = false;
    await swapper;
    expect(swaps).toBeGreaterThan(20);
    expect(seen).toEqual(new Set(versions));
  });
});
