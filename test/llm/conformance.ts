/**
 * The LanguageModel conformance suite: every backend registers it with a factory that returns an open model over
 * the given clusters. Behaviour only (ranking shape, probabilities, exclusion of the history, determinism,
 * generation naming a cluster); no timing.
 */
import { describe, expect, it, beforeAll, afterAll } from "vitest";
import type { LanguageModel } from "../../src/llm/contracts.js";

export interface ConformanceFixture {
  readonly model: LanguageModel;
  readonly dispose?: () => Promise<void>;
}

export function languageModelConformance(name: string, open: () => Promise<ConformanceFixture>): void {
  describe(`LanguageModel conformance: ${name}`, () => {
    let fixture: ConformanceFixture;
    beforeAll(async () => {
      fixture = await open();
    });
    afterAll(async () => {
      await fixture.model.close();
      await fixture.dispose?.();
    });

    it("describes itself with clusters and a template hash", () => {
      const { info } = fixture.model;
      expect(info.clusters.length).toBeGreaterThanOrEqual(4);
      expect(info.templateHash).toMatch(/^[0-9a-f]{16}$/);
      // Whether generated answers can miss every cluster decides whether the exact-match gate can bite.
      expect(info.answers?.kind).toMatch(/^(constrained|free-text)$/);
      expect(info.answers?.how).toBeTruthy();
    });

    it("ranks allowed answers best first, top-n, probabilities in (0, 1] summing to at most 1", async () => {
      const ids = fixture.model.info.clusters.map((c) => c.id);
      const [ranked] = await fixture.model.score([{ history: { c1: ids[0], c2: ids[1] } }], 3);
      expect(ranked).toHaveLength(3);
      for (let i = 1; i < ranked.length; i++) expect(ranked[i - 1].score).toBeGreaterThanOrEqual(ranked[i].score);
      const sum = ranked.reduce((a, r) => a + r.score, 0);
      expect(sum).toBeLessThanOrEqual(1 + 1e-6);
      for (const r of ranked) expect(r.score).toBeGreaterThan(0);
    });

    it("never answers with a history cluster, and covers all other clusters when asked for all", async () => {
      const ids = fixture.model.info.clusters.map((c) => c.id);
      const [ranked] = await fixture.model.score([{ history: { c1: ids[2], c2: ids[3] } }], ids.length);
      const answers = ranked.map((r) => r.cluster);
      expect(answers).not.toContain(ids[2]);
      expect(answers).not.toContain(ids[3]);
      expect(new Set(answers).size).toBe(ids.length - 2);
      expect(ranked.reduce((a, r) => a + r.score, 0)).toBeCloseTo(1, 5);
    });

    it("is deterministic run to run, batched or not, with and without RAG context", async () => {
      const ids = fixture.model.info.clusters.map((c) => c.id);
      const prompts = [
        { history: { c1: ids[0], c2: ids[1] } },
        { history: { c1: ids[1], c2: ids[0] }, context: { successors: [ids[2]] } },
        { history: { c1: ids[3], c2: ids[2] } },
      ];
      const a = await fixture.model.score(prompts, 2);
      const b = await fixture.model.score(prompts, 2);
      expect(b).toEqual(a);
      const alone = await fixture.model.score([prompts[1]], 2);
      expect(alone[0].map((r) => r.cluster)).toEqual(a[1].map((r) => r.cluster));
    });

    it("generates an answer that names one cluster exactly", async () => {
      const { clusters } = fixture.model.info;
      const answer = await fixture.model.generate({ history: { c1: clusters[0].id, c2: clusters[1].id } });
      expect(answer.cluster).not.toBeNull();
      expect(clusters.find((c) => c.id === answer.cluster)?.description).toBe(answer.text);
    });

    it("refuses unknown cluster ids as bad input", async () => {
      const ids = fixture.model.info.clusters.map((c) => c.id);
      await expect(fixture.model.score([{ history: { c1: "no-such-cluster", c2: ids[0] } }], 2)).rejects.toMatchObject({
        code: "BAD_INPUT",
      });
    });
  });
}
