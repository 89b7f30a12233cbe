/**
 * The project's seeded generator (mulberry32) for reproducible choices outside the synthetic platform: curation
 * shuffles, bootstrap resampling, the trainer's validation split and batch order, a new model's initial weights.
 * Never Math.random: results must repeat for a seed. (The synthetic platform keeps its own keyed sfc32 streams,
 * src/data/synthetic/random.ts: a different algorithm whose draws every recorded world depends on.)
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let x = state;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** Fisher-Yates in place with draws from `random` (the last index first); returns `items`. */
export function shuffleInPlace<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}
