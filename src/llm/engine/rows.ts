/**
 * Pure parts of the training recipe, kept apart from train-worker.ts (which is a process entry point): the
 * one-sample-per-row layout of the llama.cpp dataset and the per-step learning-rate schedule.
 */
import { EOS_ID } from "./vocabulary.js";

/**
 * Writes rows `from..from+count` of `sequences` into a dataset buffer: one sample per row, EOS after the sample,
 * EOS padding to the row end (labels are the next token, EOS after the last). Each row occupies `stride` tokens of
 * the buffer (the context size llama_opt_epoch reads per datapoint); only the first `row` of them are trained.
 * Returns the number of real tokens (without padding).
 */
export function writeRows(
  sequences: readonly (readonly number[])[],
  order: readonly number[],
  from: number,
  count: number,
  row: number,
  stride: number,
  tokens: Int32Array,
  labels: Int32Array,
): number {
  let real = 0;
  for (let r = 0; r < count; r++) {
    const s = sequences[order[from + r]];
    if (s.length > row) throw new Error(`a sample of ${s.length} tokens does not fit a training row of ${row}`);
    const base = r * stride;
    for (let i = 0; i < row; i++) {
      tokens[base + i] = i < s.length ? s[i] : EOS_ID;
      labels[base + i] = i + 1 < s.length ? s[i + 1] : EOS_ID;
    }
    real += s.length;
  }
  return real;
}

/**
 * Learning rate of an optimizer step: linear warm-up over the first `warmup` steps, then cosine decay to 10% of
 * the peak at the last step.
 */
export function learningRateAt(step: number, steps: number, peak: number, warmup: number): number {
  if (step < warmup) return (peak * (step + 1)) / warmup;
  if (steps <= warmup + 1) return peak;
  const progress = Math.min(1, (step - warmup) / (steps - warmup - 1));
  return peak * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * progress)));
}
