import { describe, expect, it } from "vitest";
import { evaluateGates } from "../../src/update/gates.js";

const example = (later: string[]) => ({ userId: "u", c1: "a", c2: "b", later });

describe("quality gates", () => {
  const examples = Array.from({ length: 100 }, (_, k) => example(k < 10 ? ["c"] : ["d"]));

  it("pass at the paper's thresholds", () => {
    const generated = [...Array(90).fill("c"), ...Array(10).fill(null)];
    const predictions = Array(100).fill("c"); // 10 of 100 hit
    const result = evaluateGates(generated, examples, predictions);
    expect(result).toMatchObject({ exactMatchRate: 0.9, testRecall: 0.1, passed: true, reasons: [] });
  });

  it("halt on a low exact-match rate and name it", () => {
    const generated = [...Array(89).fill("c"), ...Array(11).fill(null)];
    const result = evaluateGates(generated, examples, Array(100).fill("c"));
    expect(result.passed).toBe(false);
    expect(result.reasons).toEqual(["exact-match rate 89.0% < 90.0%"]);
  });

  it("halt on a low test recall and name it", () => {
    const predictions = [...Array(1).fill("c"), ...Array(99).fill("e")]; // 1% recall
    const result = evaluateGates(Array(10).fill("c"), examples, predictions);
    expect(result.testRecall).toBeCloseTo(0.01);
    expect(result.reasons).toEqual(["test recall 1.00% < 1.50%"]);
    expect(evaluateGates(Array(10).fill("c"), examples, predictions, { minTestRecall: 0.01 }).passed).toBe(true);
  });

  it("refuse to pass without evidence", () => {
    expect(evaluateGates([], [], []).reasons).toHaveLength(2);
  });
});
