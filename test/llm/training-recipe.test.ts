/**
 * The training recipe's pure parts: one isolated sample per row and the per-step learning-rate schedule.
 */
import { describe, expect, it } from "vitest";
import { learningRateAt, writeRows } from "../../src/llm/engine/rows.js";
import { EOS_ID } from "../../src/llm/engine/vocabulary.js";

describe("training rows", () => {
  it("puts one sample per row, EOS-padded, with next-token labels, and counts only real tokens", () => {
    const sequences = [
      [1, 10, 11, 12],
      [1, 20, 21],
    ];
    const stride = 8;
    const tokens = new Int32Array(2 * stride).fill(-7);
    const labels = new Int32Array(2 * stride).fill(-7);
    const real = writeRows(sequences, [1, 0], 0, 2, 5, stride, tokens, labels);
    expect(real).toBe(7);
    const E = EOS_ID;
    expect([...tokens.subarray(0, 5)]).toEqual([1, 20, 21, E, E]);
    expect([...labels.subarray(0, 5)]).toEqual([20, 21, E, E, E]);
    expect([...tokens.subarray(stride, stride + 5)]).toEqual([1, 10, 11, 12, E]);
    expect([...labels.subarray(stride, stride + 5)]).toEqual([10, 11, 12, E, E]);
    // Past the row, nothing is written (llama.cpp never reads it).
    expect(tokens[5]).toBe(-7);
    expect(() => writeRows(sequences, [0], 0, 1, 3, stride, tokens, labels)).toThrow(/does not fit a training row of 3/);
  });

  it("schedules the learning rate per step: linear warm-up, cosine decay to 10% at the last step", () => {
    expect(learningRateAt(0, 100, 1e-3, 10)).toBeCloseTo(1e-4);
    expect(learningRateAt(9, 100, 1e-3, 10)).toBeCloseTo(1e-3);
    expect(learningRateAt(10, 100, 1e-3, 10)).toBeCloseTo(1e-3);
    expect(learningRateAt(99, 100, 1e-3, 10)).toBeCloseTo(1e-4);
    for (let s = 11; s < 100; s++) expect(learningRateAt(s, 100, 1e-3, 10)).toBeLessThanOrEqual(learningRateAt(s - 1, 100, 1e-3, 10));
    expect(learningRateAt(5, 1, 1e-3, 0)).toBe(1e-3);
  });
});
