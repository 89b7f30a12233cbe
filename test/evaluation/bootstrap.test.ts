import { describe, expect, it } from "vitest";
import { bootstrapRatioDelta, quantile } from "../../src/evaluation/bootstrap.js";

describe("bootstrap confidence intervals", () => {
  it("gives a zero-width interval when every user moves by the same amount", () => {
    const units = Array.from({ length: 50 }, (_, k) => ({ a: [k % 3, 10] as const, b: [(k % 3) + 1, 10] as const }));
    const r = bootstrapRatioDelta(units);
    expect(r.delta).toBeCloseTo(0.1, 12);
    expect(r.ci95[0]).toBeCloseTo(0.1, 12);
    expect(r.ci95[1]).toBeCloseTo(0.1, 12);
  });

  it("matches the normal approximation for independent Bernoulli arms", () => {
    // Deterministic Bernoulli outcomes with p = 0.30 and 0.35, 4000 users each (unpaired: each user in one arm).
    let s = 12345;
    const rand = () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const units = [
      ...Array.from({ length: 4000 }, () => ({ a: [rand() < 0.3 ? 1 : 0, 1] as const, b: [0, 0] as const })),
      ...Array.from({ length: 4000 }, () => ({ a: [0, 0] as const, b: [rand() < 0.35 ? 1 : 0, 1] as const })),
    ];
    const r = bootstrapRatioDelta(units, { resamples: 2000, seed: 3 });
    const se = Math.sqrt((r.a * (1 - r.a)) / 4000 + (r.b * (1 - r.b)) / 4000);
    expect(r.ci95[0]).toBeLessThan(r.delta);
    expect(r.ci95[1]).toBeGreaterThan(r.delta);
    const halfWidth = (r.ci95[1] - r.ci95[0]) / 2;
    expect(halfWidth / (1.96 * se)).toBeGreaterThan(0.85);
    expect(halfWidth / (1.96 * se)).toBeLessThan(1.15);
    expect(r.ci95[0]).toBeGreaterThan(0); // a 5-point difference on 4000 users each is significant
  });

  it("reports relative deltas and is reproducible for a seed", () => {
    const units = Array.from({ length: 200 }, (_, k) => ({ a: [k % 2, 1] as const, b: [k % 4 === 0 ? 0 : 1, 1] as const }));
    const r = bootstrapRatioDelta(units, { relative: true, seed: 9 });
    expect(r.delta).toBeCloseTo((0.75 - 0.5) / 0.5, 12);
    expect(bootstrapRatioDelta(units, { relative: true, seed: 9 })).toEqual(r);
  });

  it("interpolates quantiles", () => {
    expect(quantile([0, 10], 0.25)).toBe(2.5);
    expect(quantile([1, 2, 3, 4, 5], 0.5)).toBe(3);
  });
});
