/**
 * The shared conformance suite of the table store contract (`TableStoreContract`). Every adapter runs it:
 * `tableStoreConformance("sqlite", (clock) => EmbeddedTableStore.open(file, clock))`, and the PostgreSQL adapter on a
 * real server (test/tables/postgres-store.test.ts).
 */
import { afterEach, describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { FreshrecError } from "../../src/domain/errors.js";
import type { History } from "../../src/domain/types.js";
import type { TableBuildMeta, TableStoreContract } from "../../src/tables/contract.js";
import { STATS, clusterNames, packedRows, tableRows } from "./fixtures/rows.js";

const META: TableBuildMeta = { modelVersion: "m000001", templateHash: "tmpl-a" };
const T0 = Date.UTC(2025, 2, 1);

export function byPair<T extends History>(rows: T[]): T[] {
  return [...rows].sort((x, y) => (x.c1 + "/" + x.c2 < y.c1 + "/" + y.c2 ? -1 : 1));
}

export async function all<T>(rows: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const row of rows) out.push(row);
  return out;
}

export function tableStoreConformance(adapter: string, open: (clock: VirtualClock) => TableStoreContract | Promise<TableStoreContract>): void {
  describe(`table store conformance: ${adapter}`, () => {
    let store: TableStoreContract | undefined;
    let clock: VirtualClock;
    const clusters = clusterNames(8);

    async function fresh(): Promise<TableStoreContract> {
      clock = new VirtualClock(T0);
      store = await open(clock);
      return store;
    }
    afterEach(async () => {
      await store?.close();
      store = undefined;
    });

    /** Builds and finishes a full table of `variant`; returns its version. */
    async function built(variant: number, meta: Partial<TableBuildMeta> = {}): Promise<string> {
      clock.advance(1000);
      const b = await store!.beginBuild({ ...META, ...meta });
      await b.append(tableRows(clusters, variant));
      return (await b.finish({ ...STATS, pairs: b.written, rescored: b.written })).version;
    }

    async function code(fn: () => unknown): Promise<string | undefined> {
      try {
        await fn();
      } catch (error) {
        expect(error).toBeInstanceOf(FreshrecError);
        return (error as FreshrecError).code;
      }
      return undefined;
    }

    it("builds, finishes, publishes and looks up a table with its metadata", async () => {
      const store = await fresh();
      const meta: TableBuildMeta = {
        modelVersion: "m000007",
        templateHash: "tmpl-b",
        ragAsOf: T0 - 5,
        ragWindowDays: 7,
        ragOptions: { mode: "frequency", topN: 1, minSupport: 2 },
        strategy: "hybrid",
      };
      const b = await store.beginBuild(meta);
      expect(b.version).toBe("t000001");
      expect((await store.get(b.version)).status).toBe("building");
      const rows = tableRows(clusters, 0);
      expect(await b.append(rows)).toBe(rows.length);
      clock.advance(2500);
      const info = await b.finish({ pairs: 56, rescored: 56, copied: 0, seconds: 2.5, promptsPerSecond: 22.4, tokens: 1234 });
      expect(info).toMatchObject({ ...meta, version: "t000001", status: "ready", rows: 56, topN: 6, parent: null, failure: null });
      expect(info.createdAt).toBe(T0);
      expect(info.finishedAt).toBe(T0 + 2500);
      expect(info.stats).toEqual({ pairs: 56, rescored: 56, copied: 0, seconds: 2.5, promptsPerSecond: 22.4, tokens: 1234 });
      expect(await store.live()).toBeUndefined();

      const published = await store.publish(info.version, { actor: "test", reason: "first table" });
      expect(published.status).toBe("live");
      expect((await store.live())?.version).toBe("t000001");
      const row = await store.lookup("t000001", rows[9].c1, rows[9].c2);
      expect(row).toEqual({ c1: rows[9].c1, c2: rows[9].c2, answers: rows[9].answers, contextKey: rows[9].contextKey });
      expect(await store.lookup("t000001", "c000", "nope")).toBeUndefined();
      expect(await store.publishHistory()).toEqual([{ action: "publish", version: "t000001", previous: null, at: T0 + 2500, actor: "test", reason: "first table" }]);
      // Row order is the store's own (stable, not alphabetical): compare by pair.
      expect(byPair(await all(store.rows("t000001")))).toEqual(byPair(rows));
    });

    it("keeps a row's explanation as written: bytes as bytes, an object as an object", async () => {
      const store = await fresh();
      const b = await store.beginBuild(META);
      const bytes = new Uint8Array([1, 2, 3, 250]);
      await b.append([
        { c1: "a", c2: "b", answers: [{ cluster: "c", score: 0.5 }], explanation: bytes },
        { c1: "b", c2: "a", answers: [{ cluster: "c", score: 0.25 }], explanation: { tau: 2, counts: [1, 2] } },
        { c1: "a", c2: "c", answers: [{ cluster: "b", score: 0.125 }] },
      ]);
      const v = (await b.finish(STATS)).version;
      expect([...((await store.lookup(v, "a", "b"))!.explanation as Uint8Array)]).toEqual([1, 2, 3, 250]);
      expect((await store.lookup(v, "b", "a"))!.explanation).toEqual({ tau: 2, counts: [1, 2] });
      expect((await store.lookup(v, "a", "c"))!).not.toHaveProperty("explanation");
    });

    it("refuses to publish a building or failed table, naming its status; unknown versions are NOT_FOUND", async () => {
      const store = await fresh();
      const live = await built(0);
      await store.publish(live);
      const building = await store.beginBuild(META);
      await building.append(tableRows(clusters, 1).slice(0, 10));
      await expect(store.publish(building.version)).rejects.toThrow(/t000002 is building/);
      expect(await code(() => store.publish(building.version))).toBe("BAD_INPUT");
      const failed = await building.fail("scorer crashed");
      expect(failed).toMatchObject({ status: "failed", failure: "scorer crashed", rows: 10 });
      await expect(store.publish(failed.version)).rejects.toThrow(/t000002 is failed/);
      expect((await store.live())?.version).toBe(live);
      expect(await code(() => store.publish("t000099"))).toBe("NOT_FOUND");
      expect(await code(() => store.get("latest"))).toBe("NOT_FOUND");
      expect(await code(() => store.lookup("t000042", "a", "b"))).toBe("NOT_FOUND");
      // A finished build cannot be written to again.
      expect(await code(() => building.append(tableRows(clusters, 1)))).toBe("BAD_INPUT");
      expect(await code(() => building.finish(STATS))).toBe("BAD_INPUT");
    });

    it("rollback walks back through the publish history, then refuses", async () => {
      const store = await fresh();
      const [a, b, c] = [await built(0), await built(1), await built(2)];
      expect(await code(() => store.rollback())).toBe("BAD_INPUT");
      await store.publish(a);
      expect(await code(() => store.rollback())).toBe("BAD_INPUT");
      await store.publish(b);
      await store.publish(c, { reason: "fresh RAG" });
      expect((await store.list()).map((t) => t.status)).toEqual(["retired", "retired", "live"]);
      expect((await store.previousLive())?.version).toBe(b);
      expect((await store.rollback({ actor: "ops", reason: "bad answers" })).version).toBe(b);
      expect((await store.live())?.version).toBe(b);
      expect((await store.get(c)).status).toBe("retired");
      expect((await store.rollback()).version).toBe(a);
      expect((await store.list()).map((t) => t.status)).toEqual(["live", "retired", "retired"]);
      await expect(store.rollback()).rejects.toThrow(/nothing to roll back/);
      expect((await store.live())?.version).toBe(a);
      const history = await store.publishHistory();
      expect(history.map((e) => [e.action, e.version, e.previous])).toEqual([
        ["publish", a, null],
        ["publish", b, a],
        ["publish", c, b],
        ["rollback", b, c],
        ["rollback", a, b],
      ]);
      expect(history[3]).toMatchObject({ actor: "ops", reason: "bad answers" });
      // A retired table can be published again, and publishing the live one is a no-op.
      await store.publish(c);
      await store.publish(c);
      expect((await store.live())?.version).toBe(c);
      expect(await store.publishHistory()).toHaveLength(6);
      expect((await store.rollback()).version).toBe(a);
    });

    it("rollback after publishing A, B, A returns to B, not to A", async () => {
      const store = await fresh();
      const [a, b] = [await built(0), await built(1)];
      await store.publish(a);
      await store.publish(b);
      await store.publish(a);
      expect((await store.previousLive())?.version).toBe(b);
      expect((await store.rollback()).version).toBe(b);
      expect((await store.rollback()).version).toBe(a);
    });

    it("gc keeps the newest versions, the live one, the rollback target and builds in progress", async () => {
      const store = await fresh();
      const v = [await built(0), await built(1), await built(2), await built(3)]; // t1..t4
      await store.publish(v[0]);
      await store.publish(v[1]);
      const failed = await store.beginBuild(META); // t5
      await failed.append(tableRows(clusters, 4).slice(0, 3));
      await failed.fail("boom");
      const v6 = await built(5); // t6
      const building = await store.beginBuild(META); // t7
      await building.append(tableRows(clusters, 6).slice(0, 3));

      const deleted = await store.gc(1);
      // Keep: t6 (newest finished), t2 (live), t1 (rollback target), t7 (building). Delete: t3, t4, failed t5.
      expect(deleted.map((t) => t.version)).toEqual(["t000003", "t000004", "t000005"]);
      expect((await store.list()).map((t) => t.version)).toEqual([v[0], v[1], v6, building.version]);
      expect(await code(() => store.lookup("t000003", "c000", "c001"))).toBe("NOT_FOUND");
      expect(await store.lookup(v[1], "c000", "c001")).toBeDefined();
      expect(await store.gc(1)).toEqual([]);

      // Walking back past deleted tables: publish t6, roll back to t2, gc(0) may now drop t1.
      await store.publish(v6);
      expect((await store.previousLive())?.version).toBe(v[1]);
      expect((await store.gc(0)).map((t) => t.version)).toEqual([v[0]]);
      expect((await store.rollback()).version).toBe(v[1]);
      expect(await code(() => store.rollback())).toBe("BAD_INPUT");
      await building.append(tableRows(clusters, 6).slice(3, 5));
      const done = await building.finish(STATS);
      expect(done.version).toBe("t000007");
      expect(done.rows).toBe(5);
      // Ids are never reused, even when gc deleted the newest version.
      await store.gc(0);
      clock.advance(1);
      const next = await store.beginBuild(META);
      expect(next.version).toBe("t000008");
      await next.fail("not needed");
      expect(await code(() => store.gc(-1))).toBe("BAD_INPUT");
    });

    it("an incremental build that copies unchanged rows gives the same rows as a full build", async () => {
      const store = await fresh();
      const rows = tableRows(clusters, 3);
      const full = await built(3);
      const changed = new Set(rows.filter((_, i) => i % 3 === 0).map((r) => `${r.c1}/${r.c2}`));
      const b = await store.beginBuild({ ...META, parent: full });
      const unchanged: History[] = rows.filter((r) => !changed.has(`${r.c1}/${r.c2}`)).map((r) => ({ c1: r.c1, c2: r.c2 }));
      expect(await b.copyRows(full, [...unchanged, { c1: "never", c2: "seen" }])).toBe(unchanged.length);
      await b.append(rows.filter((r) => changed.has(`${r.c1}/${r.c2}`)));
      expect(b.written).toBe(rows.length);
      const inc = await b.finish({ ...STATS, copied: unchanged.length, rescored: changed.size });
      expect(inc.parent).toBe(full);
      expect(await all(store.rows(inc.version))).toEqual(await all(store.rows(full)));
      expect(await store.contextKeys(inc.version)).toEqual(await store.contextKeys(full));
      expect((await store.contextKeys(full)).get(`${rows[5].c1}\u0000${rows[5].c2}`)).toBe(rows[5].contextKey);

      const whole = await store.beginBuild({ ...META, parent: inc.version });
      expect(await whole.copyRows(inc.version)).toBe(rows.length);
      expect(await code(() => whole.copyRows(full, unchanged.slice(0, 2)))).toBe("BAD_INPUT");
      expect(await code(() => whole.copyRows(whole.version))).toBe("BAD_INPUT");
      expect(await all(store.rows((await whole.finish(STATS)).version))).toEqual(await all(store.rows(full)));
      expect(await code(() => store.beginBuild({ ...META, parent: "t000404" }))).toBe("NOT_FOUND");
    });

    it("rejects rows that break the table's rules", async () => {
      const store = await fresh();
      const b = await store.beginBuild(META);
      expect(await code(() => b.append([{ c1: "a", c2: "a", answers: [] }]))).toBe("BAD_INPUT");
      expect(await code(() => b.append([{ c1: "a", c2: "b", answers: [{ cluster: "b", score: 0.5 }] }]))).toBe("BAD_INPUT");
      expect(await code(() => b.append([{ c1: "a", c2: "b", answers: [{ cluster: "c", score: Number.NaN }] }]))).toBe("BAD_INPUT");
      await b.append([{ c1: "a", c2: "b", answers: [{ cluster: "c", score: 0.5 }] }]);
      await expect(b.append([{ c1: "a", c2: "b", answers: [] }])).rejects.toThrow(/\(a, b\) written twice/);
      // A batch that fails rolls back the clusters it introduced; later rows must still decode to their own names.
      await expect(
        b.append([
          { c1: "x", c2: "y", answers: [{ cluster: "z", score: 0.5 }] },
          { c1: "a", c2: "b", answers: [] },
        ]),
      ).rejects.toThrow(/written twice/);
      await b.append([{ c1: "p", c2: "q", answers: [{ cluster: "r", score: 0.75 }] }]);
      expect((await b.finish(STATS)).rows).toBe(2);
      expect(await store.lookup(b.version, "x", "y")).toBeUndefined();
      expect(await store.lookup(b.version, "p", "q")).toEqual({ c1: "p", c2: "q", answers: [{ cluster: "r", score: 0.75 }], contextKey: null });
      expect(byPair(await all(store.rows(b.version))).map((r) => `${r.c1}${r.c2}`)).toEqual(["ab", "pq"]);
      expect(await code(() => all(store.rows("t000404")))).toBe("NOT_FOUND");
    });

    it("writes rows in stored form (appendPacked) as it writes the same rows as objects, with the same checks", async () => {
      const store = await fresh();
      const rows = tableRows(clusters, 3).map((r, k) => (k % 3 === 0 ? { ...r, explanation: new Uint8Array([k, 7, 250]) } : r));
      // A vocabulary in another order than the store's dictionary, with a cluster no row uses.
      const vocabulary = ["unused", ...[...clusters].reverse()];
      const a = await store.beginBuild(META);
      await a.append(rows);
      const b = await store.beginBuild(META);
      expect(await b.appendPacked(packedRows(rows.slice(0, 20), vocabulary))).toBe(20);
      expect(await b.appendPacked(packedRows(rows.slice(20), vocabulary))).toBe(rows.length - 20);
      expect(b.written).toBe(rows.length);
      const [va, vb] = [(await a.finish(STATS)).version, (await b.finish(STATS)).version];
      const stored = async (v: string) => byPair(await all(store.rows(v))).map((r) => ({ ...r, explanation: r.explanation ? [...(r.explanation as Uint8Array)] : r.explanation }));
      expect(await stored(vb)).toEqual(await stored(va));
      expect((await store.get(vb)).topN).toBe((await store.get(va)).topN);
      // Answers that do not start on a word (a view into a larger buffer) are checked, numbered and written the same.
      const packed = packedRows(rows, vocabulary);
      const shifted = Buffer.alloc(packed.answers.length + 1);
      packed.answers.copy(shifted, 1);
      const d = await store.beginBuild(META);
      expect(await d.appendPacked({ ...packed, answers: shifted.subarray(1) })).toBe(rows.length);
      expect(await stored((await d.finish(STATS)).version)).toEqual(await stored(va));

      const c = await store.beginBuild(META);
      const bad = (row: (typeof rows)[number]) => code(() => c.appendPacked(packedRows([row], ["a", "b", "c"])));
      expect(await bad({ c1: "a", c2: "a", answers: [] })).toBe("BAD_INPUT");
      expect(await bad({ c1: "a", c2: "b", answers: [{ cluster: "b", score: 0.5 }] })).toBe("BAD_INPUT");
      expect(await bad({ c1: "a", c2: "b", answers: [{ cluster: "c", score: Number.NaN }] })).toBe("BAD_INPUT");
      // Rows whose answers' ends go back, or past the bytes there are, are named as such.
      const two = packedRows([{ c1: "a", c2: "b", answers: [{ cluster: "c", score: 0.5 }, { cluster: "d", score: 0.25 }] }, { c1: "b", c2: "a", answers: [] }], ["a", "b", "c", "d"]);
      await expect(c.appendPacked({ ...two, answerEnd: Int32Array.of(16, 8) })).rejects.toThrow(/row \(b, a\) has answers of -8 bytes/);
      await expect(c.appendPacked({ ...two, answerEnd: Int32Array.of(16, 24) })).rejects.toThrow(/row \(b, a\) has answers up to byte 24 of 16/);
      // And so are rows whose explanations end before they start or past the bytes given (never stored as read past them).
      const explained = { ...two, explanation: Buffer.from("ok"), explanationEnd: Int32Array.of(2, 2) };
      await expect(c.appendPacked({ ...explained, explanationEnd: Int32Array.of(2, 1) })).rejects.toThrow(/row \(b, a\) has an explanation of -1 bytes/);
      await expect(c.appendPacked({ ...explained, explanationEnd: Int32Array.of(200, 200) })).rejects.toThrow(/row \(a, b\) has an explanation up to byte 200 of 2/);
      // A pair written twice is named, within one append (in its second batch on a store of small batches) or across two.
      const many = tableRows(clusters, 1);
      await expect(c.appendPacked(packedRows([...many.slice(0, 20), many[5], ...many.slice(20)], clusters))).rejects.toThrow(new RegExp(`\\(${many[5].c1}, ${many[5].c2}\\) written twice`));
      // (A store with small batches has committed the batches before the one that failed.)
      await c.appendPacked(packedRows([{ c1: "a", c2: "b", answers: [] }], ["a", "b"]));
      await expect(c.appendPacked(packedRows([{ c1: "x", c2: "y", answers: [{ cluster: "z", score: 0.5 }] }, { c1: "a", c2: "b", answers: [] }], ["a", "b", "x", "y", "z"]))).rejects.toThrow(
        /\(a, b\) written twice/,
      );
      await c.appendPacked(packedRows([{ c1: "p", c2: "q", answers: [{ cluster: "r", score: 0.75 }] }], ["r", "q", "p"]));
      expect(await store.lookup(c.version, "x", "y")).toBeUndefined();
      expect(await store.lookup(c.version, "p", "q")).toEqual({ c1: "p", c2: "q", answers: [{ cluster: "r", score: 0.75 }], contextKey: null });
    });

    it("after an append whose later batch fails, counts and refuses the rows of the batches it committed", async () => {
      // The adapters run this suite with batches smaller than these rows, so the batches before the failing one commit.
      const store = await fresh();
      const rows = tableRows(clusters, 2);
      const vocabulary = ["unused", ...[...clusters].reverse()];
      for (const append of ["append", "appendPacked"] as const) {
        const b = await store.beginBuild(META);
        const write = (some: typeof rows) => (append === "append" ? b.append(some) : b.appendPacked(packedRows(some, vocabulary)));
        await expect(write([...rows, rows[3]])).rejects.toThrow(new RegExp(`\\(${rows[3].c1}, ${rows[3].c2}\\) written twice`));
        const stored = await all(store.rows(b.version));
        expect(b.written).toBe(stored.length);
        // Every committed pair is written: appending it again is refused, whatever batch it comes in.
        const committed = new Set(stored.map((r) => `${r.c1}/${r.c2}`));
        for (const r of rows.filter((r) => committed.has(`${r.c1}/${r.c2}`))) await expect(write([r])).rejects.toThrow(/written twice/);
        expect(await write(rows.filter((r) => !committed.has(`${r.c1}/${r.c2}`)))).toBe(rows.length - stored.length);
        expect(b.written).toBe(rows.length);
        expect((await b.finish(STATS)).rows).toBe(rows.length);
      }
    });

    it("leaves the caller's packed rows as given (appendPacked never writes into them), whether the append succeeds or fails", async () => {
      const store = await fresh();
      const rows = tableRows(clusters, 4).map((r, k) => (k % 2 === 0 ? { ...r, explanation: new Uint8Array([k, 1]) } : r));
      // A vocabulary numbered unlike the store's dictionary, so the stored answers differ from the given ones.
      const vocabulary = ["unused", ...[...clusters].reverse()];
      const copyOf = (p: ReturnType<typeof packedRows>) => ({ ...p, c1: p.c1.slice(), c2: p.c2.slice(), answers: Buffer.from(p.answers), answerEnd: p.answerEnd.slice(), explanation: Buffer.from(p.explanation), explanationEnd: p.explanationEnd.slice() });
      const b = await store.beginBuild(META);
      const failing = packedRows([...rows, rows[0]], vocabulary);
      const given = copyOf(failing);
      await expect(b.appendPacked(failing)).rejects.toThrow(/written twice/);
      expect(failing).toEqual(given);
      await b.fail("test");
      const c = await store.beginBuild(META);
      const packed = packedRows(rows, vocabulary);
      const before = copyOf(packed);
      expect(await c.appendPacked(packed)).toBe(rows.length);
      expect(packed).toEqual(before);
      const v = (await c.finish(STATS)).version;
      for (const r of rows) expect((await store.lookup(v, r.c1, r.c2))?.answers).toEqual(r.answers);
    });

    it("orders clusters as its dictionary numbers them (those it has not numbered last, as given), for a build to write in key order", async () => {
      const store = await fresh();
      // Before any table, nothing is numbered: the order given.
      expect(await store.clusterOrder(["q", "p", "r"])).toEqual(["q", "p", "r"]);
      // A row's answers are numbered before its own clusters: r, then p, q.
      const b = await store.beginBuild(META);
      await b.append([{ c1: "p", c2: "q", answers: [{ cluster: "r", score: 0.5 }] }]);
      await b.finish(STATS);
      expect(await store.clusterOrder(["p", "x", "q", "r", "w"])).toEqual(["r", "p", "q", "x", "w"]);
      expect(await store.clusterOrder([])).toEqual([]);
    });

    it("stores evaluation metrics after the build, merging by default", async () => {
      const store = await fresh();
      const v = await built(0);
      await store.updateMetrics(v, { hit1: 0.1 });
      expect((await store.updateMetrics(v, { hit5: 0.3 })).metrics).toEqual({ hit1: 0.1, hit5: 0.3 });
      expect((await store.updateMetrics(v, { coverage: 0.9 }, { merge: false })).metrics).toEqual({ coverage: 0.9 });
    });

    it("lists with filters and lets rows be walked while other calls interleave", async () => {
      const store = await fresh();
      await built(0, { strategy: "rag-only" });
      await built(1, { modelVersion: "m000002" });
      await built(2, { templateHash: "tmpl-z", strategy: "rag-only" });
      expect((await store.list({ modelVersion: "m000001" })).map((t) => t.version)).toEqual(["t000001", "t000003"]);
      expect((await store.list({ strategy: "rag-only", templateHash: "tmpl-a" })).map((t) => t.version)).toEqual(["t000001"]);
      expect(await store.list({ status: ["ready", "live"] })).toHaveLength(3);
      let n = 0;
      for await (const row of store.rows("t000002")) {
        expect(await store.lookup("t000002", row.c1, row.c2)).toEqual(row);
        n++;
      }
      expect(n).toBe(56);
    });

    it("reads a table in pages of reused columns, and refuses one collected while it was being read", async () => {
      const store = await fresh();
      const v = await built(0);
      const whole = await store.packed(v);
      expect(whole.c1).toHaveLength(56);
      expect(whole.topN).toBe(tableRows(clusters, 0)[0].answers.length);
      const row = (await all(store.rows(v)))[17];
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
      let page = await pageWise.next();
      for (; !page.done; page = await pageWise.next()) {
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

      const reading = store.packedPages(v, 10);
      await reading.next();
      await built(1);
      await built(2);
      expect((await store.gc(1)).map((t) => t.version)).toContain(v);
      expect(await code(() => all(reading))).toBe("NOT_FOUND");
    });
  });
}
