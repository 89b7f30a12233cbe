import { describe, expect, it } from "vitest";
import type { AnswerConstraint, LanguageModel } from "../../src/llm/contracts.js";
import { measureGates } from "../../src/update/finetune.js";
import { evaluateGates, gateReportLines } from "../../src/update/gates.js";

const example = (later: string[], k = 0) => ({ userId: `u${k}`, c1: "a", c2: "b", later });

describe("quality gates", () => {
  const examples = Array.from({ length: 100 }, (_, k) => example(k < 10 ? ["c"] : ["d"], k));

  it("pass at the paper's thresholds", () => {
    const generated = [...Array(90).fill("c"), ...Array(10).fill(null)];
    const predictions = Array(100).fill("c"); // 10 of 100 hit
    const result = evaluateGates(generated, examples, predictions);
    expect(result).toMatchObject({ exactMatchRate: 0.9, testRecall: 0.1, passed: true, reasons: [] });
    expect(result.exactMatch).toMatchObject({ basis: "measured", rate: 0.9, probes: 100 });
  });

  it("halt on a low exact-match rate of free-text answers and name it", () => {
    const generated = [...Array(89).fill("c"), ...Array(11).fill(null)];
    const result = evaluateGates(generated, examples, Array(100).fill("c"));
    expect(result.passed).toBe(false);
    expect(result.reasons).toEqual(["exact-match gate: exact-match rate 89.0% < 90.0% on 100 free-text answers"]);
    expect(result.checks.find((c) => c.gate === "exact-match")).toMatchObject({ canBite: true, passed: false, value: 0.89, threshold: 0.9 });
  });

  it("report exact-match as by construction for constrained answers: it cannot bite and is not measured", () => {
    const result = evaluateGates({ byConstruction: "the answer is the most probable cluster token" }, examples, Array(100).fill("c"));
    expect(result.passed).toBe(true);
    expect(result.exactMatchRate).toBe(1);
    expect(result.generatedAnswers).toBe(0);
    expect(result.exactMatch).toEqual({ basis: "by construction", rate: 1, probes: 0, how: "the answer is the most probable cluster token" });
    expect(result.checks.find((c) => c.gate === "exact-match")).toMatchObject({ canBite: false, passed: true, value: null });
    expect(gateReportLines(result)[0]).toMatch(/^pass {2}exact-match +\(cannot bite\) by construction \(the answer is the most probable cluster token\)/);
  });

  it("halt on a low test recall and name it", () => {
    const predictions = [...Array(1).fill("c"), ...Array(99).fill("e")]; // 1% recall
    const result = evaluateGates(Array(10).fill("c"), examples, predictions);
    expect(result.testRecall).toBeCloseTo(0.01);
    expect(result.reasons).toEqual(["test-recall gate: test recall 1.00% < 1.50% on 100 held-out users"]);
    expect(evaluateGates(Array(10).fill("c"), examples, predictions, { minTestRecall: 0.01 }).passed).toBe(true);
  });

  it("refuse to pass without evidence", () => {
    expect(evaluateGates([], [], []).reasons).toEqual([
      "exact-match gate: no generated answers to measure the exact-match rate on",
      "test-recall gate: no held-out test examples in the test slice",
    ]);
    expect(evaluateGates([], [], [], {}, { version: "m1", predictions: [] }).reasons).toHaveLength(3);
  });

  describe("regression against the live model on the same test slice", () => {
    // The live model hits the 10 users who went to c; the candidate hits 6 of them: 10% vs 6%, -4 points.
    const live = { version: "m000001", predictions: Array(100).fill("c") };
    const worse = [...Array(6).fill("c"), ...Array(94).fill("e")];

    it("halts a candidate more than maxRegression below the live model, naming the gate, the numbers and the CI", () => {
      const result = evaluateGates({ byConstruction: "argmax" }, examples, worse, { minTestRecall: 0 }, live);
      expect(result.passed).toBe(false);
      expect(result.regression).toMatchObject({ live: "m000001", liveRecall: 0.1, candidateRecall: 0.06, users: 100, maxRegression: 0.02, passed: false });
      expect(result.regression!.delta).toBeCloseTo(-0.04, 10);
      const [lo, hi] = result.regression!.ci95;
      // Only the 4 users the candidate lost differ: every resample is a loss or nothing.
      expect(lo).toBeLessThan(-0.04);
      expect(hi).toBeLessThanOrEqual(0);
      expect(hi).toBeGreaterThan(lo);
      expect(result.reasons).toHaveLength(1);
      expect(result.reasons[0]).toMatch(
        /^regression gate: test recall 6\.00% vs live m000001 10\.00% on the same 100 held-out users: -4\.00 points \(95% CI -\d+\.\d\d to [-+]\d+\.\d\d\), beyond the 2\.00 points allowed$/,
      );
      expect(result.checks.map((c) => [c.gate, c.canBite, c.passed])).toEqual([
        ["exact-match", false, true],
        ["test-recall", true, true],
        ["regression", true, false],
      ]);
    });

    it("passes a drop beyond maxRegression that the slice cannot tell from noise (its interval includes 0)", () => {
      // 13 held-out users, as in a MovieLens month: the live model hits 8, the candidate 7. One user is 7.7 points.
      const few = examples.slice(0, 13).map((e, k) => ({ ...e, later: k < 8 ? ["c"] : ["d"] }));
      const result = evaluateGates({ byConstruction: "argmax" }, few, [...Array(7).fill("c"), ...Array(6).fill("e")], { minTestRecall: 0 }, { version: "m000001", predictions: Array(13).fill("c") });
      expect(result.regression!.delta).toBeCloseTo(-1 / 13, 10);
      expect(result.regression!.ci95[1]).toBeGreaterThanOrEqual(0);
      expect(result.passed).toBe(true);
      expect(result.checks.find((c) => c.gate === "regression")!.detail).toMatch(/beyond the 2\.00 points allowed, but the interval includes 0: not a credible drop$/);
    });

    it("passes a candidate within maxRegression, a better one, and anything when nothing is live", () => {
      expect(evaluateGates({ byConstruction: "argmax" }, examples, worse, { maxRegression: 0.04 }, live).passed).toBe(true);
      const better = evaluateGates({ byConstruction: "argmax" }, examples, Array(100).fill("d"), {}, live);
      expect(better.regression).toMatchObject({ liveRecall: 0.1, candidateRecall: 0.9, passed: true });
      const first = evaluateGates({ byConstruction: "argmax" }, examples, worse, { minTestRecall: 0 });
      expect(first.regression).toBeNull();
      expect(first.passed).toBe(true);
      expect(first.checks.find((c) => c.gate === "regression")).toMatchObject({ canBite: false, passed: true, detail: "no live model to compare with" });
    });
  });
});

/** A model that answers `answer` for every prompt; counts its generations and whether it was closed. */
function fakeModel(answer: string | null, answers: AnswerConstraint | undefined) {
  const calls = { generate: 0, score: 0, closed: false };
  const model: LanguageModel = {
    info: { backend: "fake", source: "fake", clusters: [], templateHash: "0".repeat(16), answers },
    score: async (prompts) => {
      calls.score++;
      return prompts.map(() => (answer === null ? [] : [{ cluster: answer, score: 1 }]));
    },
    generate: async () => {
      calls.generate++;
      return answer === null ? { text: "something else", cluster: null } : { text: answer, cluster: answer };
    },
    close: async () => {
      calls.closed = true;
    },
  };
  return { model, calls };
}

describe("measureGates", () => {
  const test = Array.from({ length: 20 }, (_, k) => example(k < 10 ? ["c"] : ["d"], k));

  it("measures exact-match only on free-text answers, and scores the live model on the same users", async () => {
    const constrained = fakeModel("c", { kind: "constrained", how: "a grammar" });
    const live = fakeModel("d", { kind: "constrained", how: "a grammar" });
    const result = await measureGates(constrained.model, { test }, { gates: { maxRegression: 0.1 } }, { version: "m1", open: async () => live.model });
    expect(constrained.calls).toEqual({ generate: 0, score: 1, closed: true });
    expect(live.calls).toEqual({ generate: 0, score: 1, closed: true });
    expect(result.exactMatch.basis).toBe("by construction");
    expect(result.regression).toMatchObject({ liveRecall: 0.5, candidateRecall: 0.5, delta: 0, passed: true });

    // Free text (and a backend that does not say) is measured: off-list answers fail the gate.
    for (const answers of [{ kind: "free-text", how: "plain text" } as const, undefined]) {
      const free = fakeModel(null, answers);
      const measured = await measureGates(free.model, { test }, { generationProbes: 5 });
      expect(free.calls.generate).toBe(5);
      expect(measured.exactMatch).toMatchObject({ basis: "measured", rate: 0, probes: 5 });
      expect(measured.reasons[0]).toMatch(/^exact-match gate: exact-match rate 0\.0% < 90\.0% on 5 free-text answers$/);
    }
  });
});
