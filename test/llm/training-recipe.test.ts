/**
 * The training recipe's pure part: the per-step learning-rate schedule.
 */
import { describe, expect, it } from "vitest";
import { learningRateAt } from "../../src/llm/engine/rows.js";

describe("learning-rate schedule", () => {
  it("schedules the learning rate per step: linear warm-up, cosine decay to 10% at the last step", () => {
    expect(learningRateAt(0, 100, 1e-3, 10)).toBeCloseTo(1e-4);
    expect(learningRateAt(9, 100, 1e-3, 10)).toBeCloseTo(1e-3);
    expect(learningRateAt(10, 100, 1e-3, 10)).toBeCloseTo(1e-3);
    expect(learningRateAt(99, 100, 1e-3, 10)).toBeCloseTo(1e-4);
    for (let s = 11; s < 100; s++) expect(learningRateAt(s, 100, 1e-3, 10)).toBeLessThanOrEqual(learningRateAt(s - 1, 100, 1e-3, 10));
    expect(learningRateAt(5, 1, 1e-3, 0)).toBe(1e-3);
  });
});
