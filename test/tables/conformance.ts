/**
 * The shared conformance suite of the table store contract. Every adapter runs it:
 * `tableStoreConformance("sqlite", (clock) => SqliteTableStore.open(file, clock))`.
 */
import { afterEach, describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { FreshrecError } from "../../src/domain/errors.js";
import type { History } from "../../src/domain/types.js";
import type { TableBuildMeta, TableStore } from "../../src/tables/contract.js";
import { STATS, clusterNames, tableRows } from "./fixtures/rows.js";

const META: TableBuildMeta = { modelVersion: "m000001", templateHash: "tmpl-a" };
const T0 = Date.UTC(2025, 2, 1);

export function byPair<T extends History>(rows: T[]): T[] {
  return [...rows].sort((x, y) => (x.c1 + "/" + x.c2 < y.c1 + "/" + y.c2 ? -1 : 1));
}

export function tableStoreConformance(adapter: string, open: (clock: VirtualClock) => TableStore): void {
  describe(`table store conformance: ${adapter}`, () => {
    let store: TableStore;
    let clock: VirtualClock;
    const clusters = clusterNames(8);

    function fresh(): TableStore {
      clock = new VirtualClock(T0);
      store = open(clock);
      return store;
    }
    afterEach(() => store?.close());

    /** Builds and finishes a full table of `variant`; returns its version. */
    function built(variant: number, meta: Partial<TableBuildMeta> = {}): string {
      clock.advance(1000);
      const b = store.beginBuild({ ...META, ...meta });
      b.append(tableRows(clusters, variant));
      return b.finish({ ...STATS, pairs: b.written, rescored: b.written }).version;
    }

    function code(fn: () => unknown): string | undefined {
      try {
        fn();
      } catch (error) {
        expect(error).toBeInstanceOf(FreshrecError);
        return (error as FreshrecError).code;
      }
      return undefined;
    }

    it("builds, finishes, publishes and looks up a table with its metadata", () => {
      fresh();
      const meta: TableBuildMeta = {
        modelVersion: "m000007",
        templateHash: "tmpl-b",
        ragAsOf: T0 - 5,
        ragWindowDays: 7,
        ragOptions: { mode: "frequency", topN: 1, minSupport: 2 },
        strategy: "hybrid",
      };
      const b = store.beginBuild(meta);
      expect(b.version).toBe("t000001");
      expect(store.get(b.version).status).toBe("building");
      const rows = tableRows(clusters, 0);
      expect(b.append(rows)).toBe(rows.length);
      clock.advance(2500);
      const info = b.finish({ pairs: 56, rescored: 56, copied: 0, seconds: 2.5, promptsPerSecond: 22.4, tokens: 1234 });
      expect(info).toMatchObject({ ...meta, version: "t000001", status: "ready", rows: 56, topN: 6, parent: null, failure: null });
      expect(info.createdAt).toBe(T0);
      expect(info.finishedAt).toBe(T0 + 2500);
      expect(info.stats).toEqual({ pairs: 56, rescored: 56, copied: 0, seconds: 2.5, promptsPerSecond: 22.4, tokens: 1234 });
      expect(store.live()).toBeUndefined();

      const published = store.publish(info.version, { actor: "test", reason: "first table" });
      expect(published.status).toBe("live");
      expect(store.live()?.version).toBe("t000001");
      const row = store.lookup("t000001", rows[9].c1, rows[9].c2);
      expect(row).toEqual({ c1: rows[9].c1, c2: rows[9].c2, answers: rows[9].answers, contextKey: rows[9].contextKey });
      expect(store.lookup("t000001", "c000", "nope")).toBeUndefined();
      expect(store.publishHistory()).toEqual([{ action: "publish", version: "t000001", previous: null, at: T0 + 2500, actor: "test", reason: "first table" }]);
      // Row order is the store's own (stable, not alphabetical): compare by pair.
      expect(byPair([...store.rows("t000001")])).toEqual(byPair(rows));
    });

    it("refuses to publish a building or failed table, naming its status; unknown versions are NOT_FOUND", () => {
      fresh();
      const live = built(0);
      store.publish(live);
      const building = store.beginBuild(META);
      building.append(tableRows(clusters, 1).slice(0, 10));
      expect(() => store.publish(building.version)).toThrow(/t000002 is building/);
      expect(code(() => store.publish(building.version))).toBe("BAD_INPUT");
      const failed = building.fail("scorer crashed");
      expect(failed).toMatchObject({ status: "failed", failure: "scorer crashed", rows: 10 });
      expect(() => store.publish(failed.version)).toThrow(/t000002 is failed/);
      expect(store.live()?.version).toBe(live);
      expect(code(() => store.publish("t000099"))).toBe("NOT_FOUND");
      expect(code(() => store.get("latest"))).toBe("NOT_FOUND");
      expect(code(() => store.lookup("t000042", "a", "b"))).toBe("NOT_FOUND");
      // A finished build cannot be written to again.
      expect(code(() => building.append(tableRows(clusters, 1)))).toBe("BAD_INPUT");
      expect(code(() => building.finish(STATS))).toBe("BAD_INPUT");
    });

    it("rollback walks back through the publish history, then refuses", () => {
      fresh();
      const [a, b, c] = [built(0), built(1), built(2)];
      expect(code(() => store.rollback())).toBe("BAD_INPUT");
      store.publish(a);
      expect(code(() => store.rollback())).toBe("BAD_INPUT");
      store.publish(b);
      store.publish(c, { reason: "fresh RAG" });
      expect(store.list().map((t) => t.status)).toEqual(["retired", "retired", "live"]);
      expect(store.previousLive()?.version).toBe(b);
      expect(store.rollback({ actor: "ops", reason: "bad answers" }).version).toBe(b);
      expect(store.live()?.version).toBe(b);
      expect(store.get(c).status).toBe("retired");
      expect(store.rollback().version).toBe(a);
      expect(store.list().map((t) => t.status)).toEqual(["live", "retired", "retired"]);
      expect(() => store.rollback()).toThrow(/nothing to roll back/);
      expect(store.live()?.version).toBe(a);
      const history = store.publishHistory();
      expect(history.map((e) => [e.action, e.version, e.previous])).toEqual([
        ["publish", a, null],
        ["publish", b, a],
        ["publish", c, b],
        ["rollback", b, c],
        ["rollback", a, b],
      ]);
      expect(history[3]).toMatchObject({ actor: "ops", reason: "bad answers" });
      // A retired table can be published again, and publishing the live one is a no-op.
      store.publish(c);
      store.publish(c);
      expect(store.live()?.version).toBe(c);
      expect(store.publishHistory()).toHaveLength(6);
      expect(store.rollback().version).toBe(a);
    });

    it("rollback after publishing A, B, A returns to B, not to A", () => {
      fresh();
      const [a, b] = [built(0), built(1)];
      store.publish(a);
      store.publish(b);
      store.publish(a);
      expect(store.previousLive()?.version).toBe(b);
      expect(store.rollback().version).toBe(b);
      expect(store.rollback().version).toBe(a);
    });

    it("gc keeps the newest versions, the live one, the rollback target and builds in progress", () => {
      fresh();
      const v = [built(0), built(1), built(2), built(3)]; // t1..t4
      store.publish(v[0]);
      store.publish(v[1]);
      const failed = store.beginBuild(META); // t5
      failed.append(tableRows(clusters, 4).slice(0, 3));
      failed.fail("boom");
      const v6 = built(5); // t6
      const building = store.beginBuild(META); // t7
      building.append(tableRows(clusters, 6).slice(0, 3));

      const deleted = store.gc(1);
      // Keep: t6 (newest finished), t2 (live), t1 (rollback target), t7 (building). Delete: t3, t4, failed t5.
      expect(deleted.map((t) => t.version)).toEqual(["t000003", "t000004", "t000005"]);
      expect(store.list().map((t) => t.version)).toEqual([v[0], v[1], v6, building.version]);
      expect(code(() => store.lookup("t000003", "c000", "c001"))).toBe("NOT_FOUND");
      expect(store.lookup(v[1], "c000", "c001")).toBeDefined();
      expect(store.gc(1)).toEqual([]);

      // Walking back past deleted tables: publish t6, roll back to t2, gc(0) may now drop t1.
      store.publish(v6);
      expect(store.previousLive()?.version).toBe(v[1]);
      expect(store.gc(0).map((t) => t.version)).toEqual([v[0]]);
      expect(store.rollback().version).toBe(v[1]);
      expect(code(() => store.rollback())).toBe("BAD_INPUT");
      building.append(tableRows(clusters, 6).slice(3, 5));
      const done = building.finish(STATS);
      expect(done.version).toBe("t000007");
      expect(done.rows).toBe(5);
      // Ids are never reused, even when gc deleted the newest version.
      store.gc(0);
      clock.advance(1);
      expect(store.beginBuild(META).version).toBe("t000008");
      expect(code(() => store.gc(-1))).toBe("BAD_INPUT");
    });

    it("an incremental build that copies unchanged rows gives the same rows as a full build", () => {
      fresh();
      const rows = tableRows(clusters, 3);
      const full = built(3);
      const changed = new Set(rows.filter((_, i) => i % 3 === 0).map((r) => `${r.c1}/${r.c2}`));
      const b = store.beginBuild({ ...META, parent: full });
      const unchanged: History[] = rows.filter((r) => !changed.has(`${r.c1}/${r.c2}`)).map((r) => ({ c1: r.c1, c2: r.c2 }));
      expect(b.copyRows(full, [...unchanged, { c1: "never", c2: "seen" }])).toBe(unchanged.length);
      b.append(rows.filter((r) => changed.has(`${r.c1}/${r.c2}`)));
      expect(b.written).toBe(rows.length);
      const inc = b.finish({ ...STATS, copied: unchanged.length, rescored: changed.size });
      expect(inc.parent).toBe(full);
      expect([...store.rows(inc.version)]).toEqual([...store.rows(full)]);
      expect(store.contextKeys(inc.version)).toEqual(store.contextKeys(full));
      expect(store.contextKeys(full).get(`${rows[5].c1}\u0000${rows[5].c2}`)).toBe(rows[5].contextKey);

      const all = store.beginBuild({ ...META, parent: inc.version });
      expect(all.copyRows(inc.version)).toBe(rows.length);
      expect(code(() => all.copyRows(full, unchanged.slice(0, 2)))).toBe("BAD_INPUT");
      expect([...store.rows(all.finish(STATS).version)]).toEqual([...store.rows(full)]);
      expect(code(() => store.beginBuild({ ...META, parent: "t000404" }))).toBe("NOT_FOUND");
    });

    it("rejects rows that break the table's rules", () => {
      fresh();
      const b = store.beginBuild(META);
      expect(code(() => b.append([{ c1: "a", c2: "a", answers: [] }]))).toBe("BAD_INPUT");
      expect(code(() => b.append([{ c1: "a", c2: "b", answers: [{ cluster: "b", score: 0.5 }] }]))).toBe("BAD_INPUT");
      expect(code(() => b.append([{ c1: "a", c2: "b", answers: [{ cluster: "c", score: Number.NaN }] }]))).toBe("BAD_INPUT");
      b.append([{ c1: "a", c2: "b", answers: [{ cluster: "c", score: 0.5 }] }]);
      expect(() => b.append([{ c1: "a", c2: "b", answers: [] }])).toThrow(/\(a, b\) written twice/);
      // A batch that fails rolls back the clusters it introduced; later rows must still decode to their own names.
      expect(() =>
        b.append([
          { c1: "x", c2: "y", answers: [{ cluster: "z", score: 0.5 }] },
          { c1: "a", c2: "b", answers: [] },
        ]),
      ).toThrow(/written twice/);
      b.append([{ c1: "p", c2: "q", answers: [{ cluster: "r", score: 0.75 }] }]);
      expect(b.finish(STATS).rows).toBe(2);
      expect(store.lookup(b.version, "x", "y")).toBeUndefined();
      expect(store.lookup(b.version, "p", "q")).toEqual({ c1: "p", c2: "q", answers: [{ cluster: "r", score: 0.75 }], contextKey: null });
      expect(byPair([...store.rows(b.version)]).map((r) => `${r.c1}${r.c2}`)).toEqual(["ab", "pq"]);
      expect(code(() => store.rows("t000404"))).toBe("NOT_FOUND");
    });

    it("stores evaluation metrics after the build, merging by default", () => {
      fresh();
      const v = built(0);
      store.updateMetrics(v, { hit1: 0.1 });
      expect(store.updateMetrics(v, { hit5: 0.3 }).metrics).toEqual({ hit1: 0.1, hit5: 0.3 });
      expect(store.updateMetrics(v, { coverage: 0.9 }, { merge: false }).metrics).toEqual({ coverage: 0.9 });
    });

    it("lists with filters and lets rows be walked while other calls interleave", () => {
      fresh();
      built(0, { strategy: "rag-only" });
      built(1, { modelVersion: "m000002" });
      built(2, { templateHash: "tmpl-z", strategy: "rag-only" });
      expect(store.list({ modelVersion: "m000001" }).map((t) => t.version)).toEqual(["t000001", "t000003"]);
      expect(store.list({ strategy: "rag-only", templateHash: "tmpl-a" }).map((t) => t.version)).toEqual(["t000001"]);
      expect(store.list({ status: ["ready", "live"] })).toHaveLength(3);
      let n = 0;
      for (const row of store.rows("t000002")) {
        expect(store.lookup("t000002", row.c1, row.c2)).toEqual(row);
        n++;
      }
      expect(n).toBe(56);
    });

    it("reads a table in pages, yielding between them, and refuses one collected while it was being read", () => {
      fresh();
      const v = built(0);
      const whole = store.packed(v);
      const pages = store.packedInPages(v, 10);
      const yields: number[] = [];
      let step = pages.next();
      for (; !step.done; step = pages.next()) yields.push(step.value);
      // 56 rows in pages of 10: yields after 10..50 rows, then returns the table; paging changes nothing.
      expect(yields).toEqual([10, 20, 30, 40, 50]);
      expect(step.value).toEqual(whole);
      expect(whole.c1).toHaveLength(56);
      expect(whole.topN).toBe(tableRows(clusters, 0)[0].answers.length);
      const row = [...store.rows(v)][17];
      const answers = Array.from({ length: whole.topN }, (_, k) => whole.answerIds[17 * whole.topN + k])
        .filter((id) => id >= 0)
        .map((id) => whole.clusters[id]);
      expect(answers).toEqual(row.answers.map((a) => a.cluster));

      // packedPages: the same rows as pages of reused columns, then the header.
      const pageWise = store.packedPages(v, 10);
      const counts: number[] = [];
      const c1: number[] = [];
      const answerIds: number[] = [];
      const scores: number[] = [];
      let page = pageWise.next();
      for (; !page.done; page = pageWise.next()) {
        const { count, header } = page.value;
        counts.push(count);
        expect(header).toMatchObject({ version: v, rows: 56, topN: whole.topN });
        c1.push(...page.value.c1.subarray(0, count));
        answerIds.push(...page.value.answerIds.subarray(0, count * whole.topN));
        scores.push(...page.value.scores.subarray(0, count * whole.topN));
      }
      expect(counts).toEqual([10, 10, 10, 10, 10, 6]);
      expect(page.value).toEqual({ version: v, modelVersion: whole.modelVersion, topN: whole.topN, clusters: whole.clusters, rows: 56 });
      expect(c1).toEqual([...whole.c1]);
      expect(answerIds).toEqual([...whole.answerIds]);
      expect(scores).toEqual([...whole.scores]);

      const reading = store.packedInPages(v, 10);
      reading.next();
      built(1);
      built(2);
      expect(store.gc(1).map((t) => t.version)).toContain(v);
      expect(code(() => [...reading])).toBe("NOT_FOUND");
    });
  });
}
