/**
 * The per-step learning-rate schedule of a training (ggml-trainer.ts `GgmlTrainingRun`), kept apart as a pure
 * function so its shape is tested without training.
 */

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
