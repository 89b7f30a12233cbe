/**
 * The shared conformance suite of the response cache contract (`ResponseCacheContract`,
 * src/llm/backends/response-cache.ts). Every adapter runs it:
 * `responseCacheConformance("sqlite", async () => () => SqliteResponseCache.open(file))`. `place` allocates a new,
 * empty cache and returns a function that opens it (again and again: a second opening is another process or host,
 * and must see what the first wrote).
 */
import { afterEach, describe, expect, it } from "vitest";
import { type ResponseCacheContract, responseCacheKey } from "../../src/llm/backends/response-cache.js";

export type ResponseCachePlace = () => Promise<() => Promise<ResponseCacheContract>>;

export function responseCacheConformance(adapter: string, place: ResponseCachePlace): void {
  describe(`response cache conformance: ${adapter}`, () => {
    const open: ResponseCacheContract[] = [];
    afterEach(async () => {
      for (const c of open.splice(0)) await c.close();
    });
    async function two(): Promise<[ResponseCacheContract, ResponseCacheContract]> {
      const opener = await place();
      const a = await opener();
      open.push(a);
      const b = await opener();
      open.push(b);
      return [a, b];
    }

    it("stores a value once: a second put of the same key keeps the first value, here and for another opener", async () => {
      const [a, b] = await two();
      const key = responseCacheKey({ prompt: "baking, hiking" });
      expect(await a.get(key)).toBeUndefined();
      await a.put(key, { content: "first", logprobs: [{ token: "jazz", logprob: -0.25 }] });
      await a.put(key, { content: "second" });
      await b.put(key, { content: "third" });
      expect(await a.get(key)).toEqual({ content: "first", logprobs: [{ token: "jazz", logprob: -0.25 }] });
      expect(await b.get(key)).toEqual({ content: "first", logprobs: [{ token: "jazz", logprob: -0.25 }] });
      expect(await b.size()).toBe(1);
    });

    it("reads values back exactly as written (nested objects, arrays, null, numbers, any script)", async () => {
      const [a, b] = await two();
      const value = { content: "pâtisserie, 和菓子 \"quoted\"\n", logprobs: null, sums: [-1.5e-7, 0, 3.25], nested: { z: [true, false, null], a: "" } };
      await a.put("k", value);
      expect(await b.get("k")).toEqual(value);
      expect(JSON.stringify(await b.get("k"))).toBe(JSON.stringify(value));
    });

    it("looks up many keys at once: present ones returned, each distinct key counted once as a hit or a miss", async () => {
      const [a, b] = await two();
      // More keys than one lookup query takes on PostgreSQL, so the split into queries is exercised.
      const keys = Array.from({ length: 12_000 }, (_, i) => responseCacheKey({ i }));
      for (const [i, key] of keys.entries()) if (i % 3 === 0) await a.put(key, i);
      const asked = [...keys, keys[0], keys[1]];
      const found = await b.getMany<number>(asked);
      expect(found.size).toBe(4000);
      for (const [i, key] of keys.entries()) expect(found.get(key)).toBe(i % 3 === 0 ? i : undefined);
      expect(b.stats).toEqual({ hits: 4000, misses: 8000 });
      expect(await b.get(keys[0])).toBe(0);
      expect(await b.get(keys[1])).toBeUndefined();
      expect(b.stats).toEqual({ hits: 4001, misses: 8001 });
      // has and hasMany answer without counting lookups.
      expect(await b.has(keys[0])).toBe(true);
      expect(await b.has(keys[1])).toBe(false);
      expect(await b.hasMany(keys)).toEqual(new Set(keys.filter((_, i) => i % 3 === 0)));
      expect(b.stats).toEqual({ hits: 4001, misses: 8001 });
      expect(await a.size()).toBe(4000);
      expect(await b.getMany([])).toEqual(new Map());
    }, 120_000);

    it("records, replaces and forgets running batches, seen by another opener (a build resumed elsewhere)", async () => {
      const [a, b] = await two();
      const chunk = responseCacheKey(["k1", "k2"]);
      expect(await a.batchOf(chunk)).toBeNull();
      await a.recordBatch(chunk, "batch_1");
      expect(await b.batchOf(chunk)).toBe("batch_1");
      await b.recordBatch(chunk, "batch_2");
      expect(await a.batchOf(chunk)).toBe("batch_2");
      await a.recordBatch(responseCacheKey(["k3"]), "batch_3");
      await b.forgetBatch(chunk);
      expect(await a.batchOf(chunk)).toBeNull();
      expect(await a.batchOf(responseCacheKey(["k3"]))).toBe("batch_3");
      // Batches are not answers.
      expect(await a.size()).toBe(0);
    });

    it("keys are canonical: the same request with its keys in another order is the same entry", async () => {
      const [a, b] = await two();
      const one = { baseURL: "http://127.0.0.1:1/v1", body: { model: "tiny", temperature: 0, messages: [{ role: "user", content: "x" }] } };
      const reordered = { body: { messages: [{ content: "x", role: "user" }], temperature: 0, model: "tiny" }, baseURL: "http://127.0.0.1:1/v1" };
      expect(responseCacheKey(reordered)).toBe(responseCacheKey(one));
      expect(responseCacheKey(one)).toMatch(/^[0-9a-f]{64}$/);
      // Order inside an array is part of the request; an undefined field is as if absent.
      expect(responseCacheKey({ ...one, body: { ...one.body, messages: [...one.body.messages, { role: "system", content: "y" }] } })).not.toBe(
        responseCacheKey({ ...one, body: { ...one.body, messages: [{ role: "system", content: "y" }, ...one.body.messages] } }),
      );
      expect(responseCacheKey({ ...one, seed: undefined })).toBe(responseCacheKey(one));
      await a.put(responseCacheKey(one), { content: "jazz" });
      expect(await b.get(responseCacheKey(reordered))).toEqual({ content: "jazz" });
    });
  });
}
