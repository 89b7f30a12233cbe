/**
 * Seeded randomness for the synthetic platform. Every draw comes from an sfc32 stream keyed by (seed, stream id), so
 * the world is a pure function of its seed, and each user owns an independent stream: a user's behaviour does not
 * depend on how many other users exist or in which order they are simulated (which is what lets the live
 * environment replay one user to a point in time, and gives A/B arms common random numbers).
 *
 * Never Math.random, never the wall clock.
 *
 * @example
 * const rng = new SeededRandom(42, 7);
 * const u = rng.next(); // [0, 1)
 */

/** Mixes up to three 32-bit integers into one well-spread 32-bit hash (murmur3 finaliser steps). */
export function mix32(a: number, b = 0, c = 0): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h ^ b, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h ^ Math.imul(c, 0x27d4eb2f), 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Stable 32-bit hash of a string, to derive stream ids from names ("drift", "user"). */
export function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return mix32(h >>> 0);
}

const TWO_POW_32 = 4294967296;

/**
 * sfc32: small, fast, passes PractRand; state is four 32-bit words so it can be kept per simulated user.
 * Not src/domain/random.ts's mulberry32 on purpose: a different algorithm, so routing it there would change every draw
 * and with it every recorded synthetic world.
 */
export class SeededRandom {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number, stream = 0, substream = 0) {
    this.a = mix32(seed >>> 0, stream >>> 0, 0x51ed270b);
    this.b = mix32(stream >>> 0, substream >>> 0, seed >>> 0);
    this.c = mix32(substream >>> 0, seed >>> 0, 0x2545f491);
    this.d = 1;
    // The first outputs of a freshly keyed sfc32 are still correlated with the key.
    for (let i = 0; i < 12; i++) this.nextUint32();
  }

  nextUint32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextUint32() / TWO_POW_32;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Standard normal (Box-Muller; one value per call keeps the state small and the stream simple). */
  normal(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** Exponential with the given mean. */
  exponential(mean: number): number {
    return -Math.log(1 - this.next()) * mean;
  }

  /** Number of failures before the first success, with the given mean (>= 0). */
  geometric(mean: number): number {
    if (mean <= 0) return 0;
    const p = 1 / (1 + mean);
    return Math.floor(Math.log(1 - this.next()) / Math.log(1 - p));
  }

  /** Index drawn from non-negative weights (linear scan; the arrays here have ~100 entries). */
  pick(weights: ArrayLike<number>, total?: number): number {
    let sum = total ?? 0;
    if (total === undefined) for (let i = 0; i < weights.length; i++) sum += weights[i];
    let r = this.next() * sum;
    for (let i = 0; i < weights.length; i++) {
      r -= weights[i];
      if (r < 0) return i;
    }
    // Rounding can leave r at a hair above zero: fall back to the last positive weight.
    for (let i = weights.length - 1; i >= 0; i--) if (weights[i] > 0) return i;
    return -1;
  }
}
