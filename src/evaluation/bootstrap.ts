/**
 * Confidence intervals for differences between strategies or arms, by bootstrap over users: the unit of
 * resampling is a user, because one user's events are not independent of each other. Metrics are ratios of sums
 * (hits / opportunities), the form of hit rates and of the paper's live metrics.
 *
 * @example
 * const units = users.map((u) => ({ a: [hitsA[u], tries[u]], b: [hitsB[u], tries[u]] }));
 * const { delta, ci95 } = bootstrapRatioDelta(units, { seed: 1 });
 */
import { seededRandom } from "../domain/random.js";

/** One user's numerator and denominator under arm/strategy a and b (a user may be absent from one: [0, 0]). */
export interface PairedUnit {
  readonly a: readonly [number, number];
  readonly b: readonly [number, number];
}

export interface BootstrapOptions {
  /** @defaultValue 1000 */
  readonly resamples?: number;
  /** @defaultValue 1 */
  readonly seed?: number;
  /** Report (b - a) / a instead of b - a. @defaultValue false */
  readonly relative?: boolean;
}

export interface BootstrapResult {
  /** b - a (or relative) on the full sample. */
  readonly delta: number;
  readonly ci95: readonly [number, number];
  readonly a: number;
  readonly b: number;
  readonly units: number;
}

function ratio(num: number, den: number): number {
  return den === 0 ? Number.NaN : num / den;
}

export function bootstrapRatioDelta(units: readonly PairedUnit[], options: BootstrapOptions = {}): BootstrapResult {
  const resamples = options.resamples ?? 1000;
  const random = seededRandom(options.seed ?? 1);
  const stat = (an: number, ad: number, bn: number, bd: number): number => {
    const a = ratio(an, ad);
    const b = ratio(bn, bd);
    return options.relative ? (b - a) / a : b - a;
  };
  let an = 0;
  let ad = 0;
  let bn = 0;
  let bd = 0;
  for (const u of units) {
    an += u.a[0];
    ad += u.a[1];
    bn += u.b[0];
    bd += u.b[1];
  }
  const delta = stat(an, ad, bn, bd);
  const draws: number[] = [];
  const n = units.length;
  for (let r = 0; r < resamples && n > 0; r++) {
    let xan = 0;
    let xad = 0;
    let xbn = 0;
    let xbd = 0;
    for (let k = 0; k < n; k++) {
      const u = units[Math.floor(random() * n)];
      xan += u.a[0];
      xad += u.a[1];
      xbn += u.b[0];
      xbd += u.b[1];
    }
    const s = stat(xan, xad, xbn, xbd);
    if (Number.isFinite(s)) draws.push(s);
  }
  draws.sort((x, y) => x - y);
  const ci95: [number, number] = draws.length ? [quantile(draws, 0.025), quantile(draws, 0.975)] : [Number.NaN, Number.NaN];
  return { delta, ci95, a: ratio(an, ad), b: ratio(bn, bd), units: n };
}

/** Linear-interpolated quantile of sorted values. */
export function quantile(sorted: readonly number[], q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}
