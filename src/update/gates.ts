/**
 * The quality gates of the fine-tuning pipeline (arXiv 2510.20260 §1.3): a candidate model goes live only if
 * - the exact-match rate of its generated answers (answers that exactly name a cluster description) is at least
 *   90%, and
 * - its test recall (the share of held-out users whose predicted cluster appears among the clusters they went on
 *   to engage with in the test slice) is at least 1.5%.
 * Otherwise the run is halted and an engineer reviews it. Thresholds are options.
 */
import type { FutureExample } from "../mining/transitions.js";

export interface GateOptions {
  /** @defaultValue 0.9 */
  readonly minExactMatchRate?: number;
  /** @defaultValue 0.015 */
  readonly minTestRecall?: number;
}

export const GATE_DEFAULTS = { minExactMatchRate: 0.9, minTestRecall: 0.015 } as const;

export interface GateResult {
  readonly exactMatchRate: number;
  readonly testRecall: number;
  readonly passed: boolean;
  /** Why the gate failed, in words; empty when it passed. */
  readonly reasons: readonly string[];
  readonly generatedAnswers: number;
  readonly testExamples: number;
}

/**
 * @param generated - for each generation probe, the cluster id its answer text mapped to by exact match, or null
 * @param predictions - for each test example (same order), the model's top-1 cluster id
 */
export function evaluateGates(
  generated: readonly (string | null)[],
  examples: readonly FutureExample[],
  predictions: readonly (string | null)[],
  options: GateOptions = {},
): GateResult {
  const minExact = options.minExactMatchRate ?? GATE_DEFAULTS.minExactMatchRate;
  const minRecall = options.minTestRecall ?? GATE_DEFAULTS.minTestRecall;
  if (predictions.length !== examples.length) throw new RangeError("one prediction per test example");
  const exactMatchRate = generated.length ? generated.filter((g) => g !== null).length / generated.length : 0;
  let hits = 0;
  examples.forEach((e, k) => {
    const p = predictions[k];
    if (p !== null && e.later.includes(p)) hits++;
  });
  const testRecall = examples.length ? hits / examples.length : 0;
  const reasons: string[] = [];
  if (generated.length === 0) reasons.push("no generated answers to measure the exact-match rate on");
  else if (exactMatchRate < minExact) reasons.push(`exact-match rate ${(100 * exactMatchRate).toFixed(1)}% < ${(100 * minExact).toFixed(1)}%`);
  if (examples.length === 0) reasons.push("no held-out test examples in the test slice");
  else if (testRecall < minRecall) reasons.push(`test recall ${(100 * testRecall).toFixed(2)}% < ${(100 * minRecall).toFixed(2)}%`);
  return { exactMatchRate, testRecall, passed: reasons.length === 0, reasons, generatedAnswers: generated.length, testExamples: examples.length };
}
