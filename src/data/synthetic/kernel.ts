/**
 * The population transition kernel of the synthetic platform: for each calendar month m and each history pair
 * (c1, c2), the distribution P_m(next | c1, c2) over novel clusters (next not in {c1, c2}) that users who explore
 * move to. It is the "truth" the recommender tries to learn, so tests and evaluations can read it directly.
 *
 * Form (a log-linear model; all terms per month m):
 *
 *     logit_m(n | c1, c2) = wS * S(c2, n) + sigma * A_m(c2, n)              "what follows c2"
 *                         + beta * (wS * S(c1, n) + sigma * B_m(c1, n))    "what the older interest adds"
 *                         + pop(n) + trend_m(n) + season_m(n)              population-level appeal of n
 *
 * - S is static topical affinity (same domain, plus a fixed random part);
 * - A_m and B_m are the slowly evolving random component: AR(1) in months, A_m = rho A_{m-1} + sqrt(1-rho^2) E_m,
 *   so they are stationary with unit variance and `1 - rho` is the *drift volatility*;
 * - trend_m adds Gaussian bumps in time (trends rise and fade), launched clusters start with a hype bump;
 * - season_m gives seasonal clusters a bonus in their months; clusters that do not exist in a month (before their
 *   launch, out of season) get probability 0 there.
 *
 * Calibration: `rho` is bisected at construction so that the month-over-month Jaccard of the true top-5 successor sets
 * matches `targetJaccard`. The mean runs over a fixed sample of history pairs drawn with replacement with probability
 * proportional to a traffic proxy exp(pop(c1) + pop(c2) + S(c1, c2)) (popular pairs, which are the ones an empirical
 * analysis has support for, count more), and over all consecutive month pairs within the world's months; a pair is
 * compared in a month pair only when both of its clusters exist in both months. The same random draws are used for
 * every candidate `rho` (common random numbers), so the bisection sees a smooth, deterministic function.
 *
 * @example
 * const kernel = new SuccessorKernel(buildTaxonomy(), monthStarts, { seed: 42, months: 12, targetJaccard: 0.17 });
 * kernel.calibration.achievedJaccard; // ~0.17
 * const w = new Float64Array(kernel.size);
 * kernel.weightsInto(3, c1, c2, w); // unnormalised P_3(. | c1, c2)
 */
import { hashString, SeededRandom } from "./random.js";
import { clusterActive, type SyntheticCluster } from "./taxonomy.js";

export interface SuccessorKernelOptions {
  seed: number;
  /** Months of the world that calibration covers (month 0 .. months-1). */
  months: number;
  /** Target mean month-over-month Jaccard of true top-5 successor sets. */
  targetJaccard: number;
  /** History pairs sampled for calibration. @defaultValue 1500 */
  calibrationPairs?: number;
}

/** What the bisection reached: compare `achievedJaccard` with `targetJaccard`. */
export interface KernelCalibration {
  readonly targetJaccard: number;
  readonly achievedJaccard: number;
  readonly varianceJaccard: number;
  /** Mean Jaccard between month m and m+1, for m = 0 .. months-2. */
  readonly perMonth: readonly number[];
  /** 1 - rho: 0 freezes the random component, 1 redraws it every month. */
  readonly driftVolatility: number;
  /** Pair-month comparisons averaged. */
  readonly comparisons: number;
  /** True when the target lay outside what the drift model can reach and the nearest end was taken. */
  readonly clamped: boolean;
}

/** Weight of static topical affinity, of the random drifting component, and of the older history cluster. */
const W_STATIC = 1.1;
const SIGMA_DRIFT = 1.5;
const BETA_OLDER = 0.6;
const SEASON_BONUS = 0.8;
const TOP_N = 5;
/**
 * Scales every logit. Rankings, hence the calibrated top-5 Jaccard, do not depend on it; it sets how much mass the
 * top successors carry, i.e. how reliably a finite sample recovers them.
 */
const SHARPNESS = 1;

/** Extra months beyond the world's end for which the kernel is defined (live simulations after the data). */
export const KERNEL_EXTRA_MONTHS = 24;

interface MonthTables {
  /** exp(row of c2): ea[c2 * K + n]. Zero where n does not exist in the month. */
  readonly ea: Float64Array;
  /** exp(row of c1): eb[c1 * K + n]. */
  readonly eb: Float64Array;
  readonly active: Uint8Array;
}

export class SuccessorKernel {
  readonly size: number;
  readonly calibration: KernelCalibration;
  /** Population appeal pop(n), also used to seed users' interests. */
  readonly popularity: Float64Array;
  private readonly staticAffinity: Float32Array;
  private readonly horizon: number;
  private readonly activeByMonth: Uint8Array[];
  /** pop + trend + season per month, -Infinity where the cluster does not exist. */
  private readonly appealByMonth: Float64Array[];
  private rho = 1;
  private readonly driftA: Float32Array[] = [];
  private readonly driftB: Float32Array[] = [];
  private readonly tables: (MonthTables | undefined)[] = [];

  constructor(
    readonly clusters: readonly SyntheticCluster[],
    monthStarts: ArrayLike<number>,
    private readonly options: SuccessorKernelOptions,
  ) {
    const K = clusters.length;
    this.size = K;
    this.horizon = options.months + KERNEL_EXTRA_MONTHS;
    if (monthStarts.length < this.horizon) throw new RangeError("monthStarts must cover months + KERNEL_EXTRA_MONTHS");
    const rng = new SeededRandom(options.seed, hashString("kernel-static"));

    const domains = [...new Set(clusters.map((x) => x.domain))];
    const domainAppeal = domains.map(() => 0.4 * rng.normal());
    this.popularity = new Float64Array(K);
    for (let i = 0; i < K; i++) {
      this.popularity[i] = 0.8 * rng.normal() + domainAppeal[domains.indexOf(clusters[i].domain)];
    }
    this.staticAffinity = new Float32Array(K * K);
    for (let a = 0; a < K; a++) {
      for (let b = 0; b < K; b++) {
        const same = clusters[a].domain === clusters[b].domain ? 1.2 : 0;
        this.staticAffinity[a * K + b] = same + 0.6 * rng.normal();
      }
    }

    // Trends: Gaussian bumps in month time; about one new trend per 3 clusters over the horizon.
    const trend = Array.from({ length: this.horizon }, () => new Float64Array(K));
    const bump = (n: number, peak: number, width: number, amplitude: number): void => {
      for (let m = 0; m < this.horizon; m++) trend[m][n] += amplitude * Math.exp(-((m - peak) ** 2) / (2 * width * width));
    };
    const trendCount = Math.round((K * this.horizon) / 36);
    for (let t = 0; t < trendCount; t++) {
      bump(rng.int(K), -2 + rng.next() * (this.horizon + 2), 0.7 + 1.3 * rng.next(), 0.5 + 1.3 * rng.next());
    }
    for (let n = 0; n < K; n++) {
      const launch = clusters[n].launchOffsetMonths;
      if (launch !== undefined) bump(n, launch + 0.5, 1.5, 1.5);
    }

    this.activeByMonth = [];
    this.appealByMonth = [];
    for (let m = 0; m < this.horizon; m++) {
      const active = new Uint8Array(K);
      const appeal = new Float64Array(K);
      for (let n = 0; n < K; n++) {
        const on = clusterActive(clusters[n], m, monthStarts[m]);
        active[n] = on ? 1 : 0;
        appeal[n] = on ? this.popularity[n] + trend[m][n] + (clusters[n].season ? SEASON_BONUS : 0) : -Infinity;
      }
      this.activeByMonth.push(active);
      this.appealByMonth.push(appeal);
    }

    this.calibration = this.calibrate();
  }

  /** Whether cluster n exists in month m. */
  isActive(month: number, n: number): boolean {
    return this.activeByMonth[this.clampMonth(month)][n] === 1;
  }

  activeMask(month: number): Uint8Array {
    return this.activeByMonth[this.clampMonth(month)];
  }

  /**
   * Writes the unnormalised P_month(. | c1, c2) into `out` (length K) and returns its sum. Entries for c1, c2 and
   * for clusters that do not exist in the month are 0.
   */
  weightsInto(month: number, c1: number, c2: number, out: Float64Array): number {
    const t = this.monthTables(month);
    const K = this.size;
    const ra = c2 * K;
    const rb = c1 * K;
    const ea = t.ea;
    const eb = t.eb;
    let sum = 0;
    for (let n = 0; n < K; n++) {
      const w = ea[ra + n] * eb[rb + n];
      out[n] = w;
      sum += w;
    }
    sum -= out[c1] + out[c2];
    out[c1] = 0;
    out[c2] = 0;
    return sum;
  }

  /** Normalised P_month(. | c1, c2) over cluster indices. */
  distribution(month: number, c1: number, c2: number): Float64Array {
    const out = new Float64Array(this.size);
    const sum = this.weightsInto(month, c1, c2, out);
    if (sum > 0) for (let n = 0; n < out.length; n++) out[n] /= sum;
    return out;
  }

  /** Cluster indices of the top-n successors of (c1, c2) in a month, most probable first. */
  topSuccessors(month: number, c1: number, c2: number, n = TOP_N): number[] {
    const p = this.distribution(month, c1, c2);
    return [...p.keys()]
      .filter((i) => p[i] > 0)
      .sort((a, b) => p[b] - p[a] || a - b)
      .slice(0, n);
  }

  /** Month tables, built on first use from the calibrated rho. */
  monthTables(month: number): MonthTables {
    const m = this.clampMonth(month);
    const cached = this.tables[m];
    if (cached) return cached;
    this.extendDrift(m);
    const K = this.size;
    const ea = new Float64Array(K * K);
    const eb = new Float64Array(K * K);
    const appeal = this.appealByMonth[m];
    const A = this.driftA[m];
    const B = this.driftB[m];
    for (let a = 0; a < K; a++) {
      for (let n = 0; n < K; n++) {
        const i = a * K + n;
        ea[i] = Math.exp(SHARPNESS * (W_STATIC * this.staticAffinity[i] + SIGMA_DRIFT * A[i] + appeal[n]));
        eb[i] = Math.exp(SHARPNESS * BETA_OLDER * (W_STATIC * this.staticAffinity[i] + SIGMA_DRIFT * B[i]));
      }
    }
    const t = { ea, eb, active: this.activeByMonth[m] };
    this.tables[m] = t;
    return t;
  }

  private clampMonth(month: number): number {
    return Math.max(0, Math.min(this.horizon - 1, Math.floor(month)));
  }

  /** Innovation E_m of the drifting component; a pure function of (seed, month) so every rho sees the same draws. */
  private innovation(which: "A" | "B", m: number): Float32Array {
    const K = this.size;
    const rng = new SeededRandom(this.options.seed, hashString(`kernel-drift-${which}`), m);
    const e = new Float32Array(K * K);
    for (let i = 0; i < e.length; i++) e[i] = rng.normal();
    return e;
  }

  private extendDrift(m: number): void {
    const innovationWeight = Math.sqrt(1 - this.rho * this.rho);
    for (let k = this.driftA.length; k <= m; k++) {
      const ea = this.innovation("A", k);
      const eb = this.innovation("B", k);
      if (k > 0) {
        const pa = this.driftA[k - 1];
        const pb = this.driftB[k - 1];
        for (let i = 0; i < ea.length; i++) {
          ea[i] = this.rho * pa[i] + innovationWeight * ea[i];
          eb[i] = this.rho * pb[i] + innovationWeight * eb[i];
        }
      }
      this.driftA.push(ea);
      this.driftB.push(eb);
    }
  }

  private calibrate(): KernelCalibration {
    const K = this.size;
    const M = this.options.months;
    const rng = new SeededRandom(this.options.seed, hashString("kernel-calibration-pairs"));
    const pairCount = this.options.calibrationPairs ?? 1500;
    const traffic = new Float64Array(K * K);
    for (let a = 0; a < K; a++) {
      for (let b = 0; b < K; b++) {
        traffic[a * K + b] = a === b ? 0 : Math.exp(this.popularity[a] + this.popularity[b] + this.staticAffinity[a * K + b]);
      }
    }
    let trafficSum = 0;
    for (let i = 0; i < traffic.length; i++) trafficSum += traffic[i];
    const pairs = new Int32Array(pairCount * 2);
    for (let p = 0; p < pairCount; p++) {
      const i = rng.pick(traffic, trafficSum);
      pairs[2 * p] = Math.floor(i / K);
      pairs[2 * p + 1] = i % K;
    }
    const innovationsA = Array.from({ length: M }, (_, m) => this.innovation("A", m));
    const innovationsB = Array.from({ length: M }, (_, m) => this.innovation("B", m));

    const measure = (rho: number): { mean: number; variance: number; perMonth: number[]; comparisons: number } => {
      const w = Math.sqrt(1 - rho * rho);
      // Logit rows per month for this rho: la[c2*K+n], lb[c1*K+n] (the exp is monotone, so top-5 needs no exp).
      const la: Float64Array[] = [];
      const lb: Float64Array[] = [];
      let prevA = innovationsA[0];
      let prevB = innovationsB[0];
      for (let m = 0; m < M; m++) {
        const A = m === 0 ? innovationsA[0] : new Float32Array(K * K);
        const B = m === 0 ? innovationsB[0] : new Float32Array(K * K);
        if (m > 0) {
          const ia = innovationsA[m];
          const ib = innovationsB[m];
          for (let i = 0; i < A.length; i++) {
            A[i] = rho * prevA[i] + w * ia[i];
            B[i] = rho * prevB[i] + w * ib[i];
          }
        }
        prevA = A;
        prevB = B;
        const a = new Float64Array(K * K);
        const b = new Float64Array(K * K);
        const appeal = this.appealByMonth[m];
        for (let r = 0; r < K; r++) {
          for (let n = 0; n < K; n++) {
            const i = r * K + n;
            a[i] = W_STATIC * this.staticAffinity[i] + SIGMA_DRIFT * A[i] + appeal[n];
            b[i] = BETA_OLDER * (W_STATIC * this.staticAffinity[i] + SIGMA_DRIFT * B[i]);
          }
        }
        la.push(a);
        lb.push(b);
      }
      const top = new Int32Array(pairCount * M * TOP_N).fill(-1);
      const scores = new Float64Array(TOP_N);
      for (let p = 0; p < pairCount; p++) {
        const c1 = pairs[2 * p];
        const c2 = pairs[2 * p + 1];
        for (let m = 0; m < M; m++) {
          const base = (p * M + m) * TOP_N;
          scores.fill(-Infinity);
          const a = la[m];
          const b = lb[m];
          for (let n = 0; n < K; n++) {
            if (n === c1 || n === c2) continue;
            const s = a[c2 * K + n] + b[c1 * K + n];
            if (s === -Infinity || s <= scores[TOP_N - 1]) continue;
            let j = TOP_N - 1;
            while (j > 0 && scores[j - 1] < s) {
              scores[j] = scores[j - 1];
              top[base + j] = top[base + j - 1];
              j--;
            }
            scores[j] = s;
            top[base + j] = n;
          }
        }
      }
      const perMonth: number[] = [];
      const all: number[] = [];
      for (let m = 0; m + 1 < M; m++) {
        const act0 = this.activeByMonth[m];
        const act1 = this.activeByMonth[m + 1];
        let sum = 0;
        let count = 0;
        for (let p = 0; p < pairCount; p++) {
          const c1 = pairs[2 * p];
          const c2 = pairs[2 * p + 1];
          if (!act0[c1] || !act0[c2] || !act1[c1] || !act1[c2]) continue;
          const b0 = (p * M + m) * TOP_N;
          const b1 = (p * M + m + 1) * TOP_N;
          let inter = 0;
          for (let i = 0; i < TOP_N; i++) {
            for (let j = 0; j < TOP_N; j++) if (top[b0 + i] === top[b1 + j]) inter++;
          }
          const jac = inter / (2 * TOP_N - inter);
          sum += jac;
          all.push(jac);
          count++;
        }
        perMonth.push(count > 0 ? sum / count : Number.NaN);
      }
      const mean = all.reduce((s, x) => s + x, 0) / Math.max(1, all.length);
      const variance = all.reduce((s, x) => s + (x - mean) ** 2, 0) / Math.max(1, all.length);
      return { mean, variance, perMonth, comparisons: all.length };
    };

    const target = this.options.targetJaccard;
    let lo = 0;
    let hi = 1;
    let clamped = false;
    let best = measure(hi);
    if (M < 2) {
      this.rho = 1;
    } else if (best.mean <= target) {
      // Even a frozen random component drifts more than asked (trends and seasons alone): freeze it.
      this.rho = 1;
      clamped = best.mean < target - 0.01;
    } else {
      const atZero = measure(lo);
      if (atZero.mean >= target) {
        this.rho = 0;
        best = atZero;
        clamped = atZero.mean > target + 0.01;
      } else {
        // J(rho) increases with rho; bisect, keeping the closest evaluation.
        let bestGap = Math.abs(best.mean - target);
        for (let it = 0; it < 22; it++) {
          const mid = (lo + hi) / 2;
          const r = measure(mid);
          const gap = Math.abs(r.mean - target);
          if (gap < bestGap) {
            bestGap = gap;
            best = r;
            this.rho = mid;
          }
          if (r.mean < target) lo = mid;
          else hi = mid;
          if (gap < 0.002) break;
        }
      }
    }
    return {
      targetJaccard: target,
      achievedJaccard: best.mean,
      varianceJaccard: best.variance,
      perMonth: best.perMonth,
      driftVolatility: 1 - this.rho,
      comparisons: best.comparisons,
      clamped,
    };
  }
}
