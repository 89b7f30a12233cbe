/**
 * The deterministic kernel the learning tests train on: the history's second cluster decides the next one (`shift`
 * moves every answer; never a history cluster). A fifth of the pairs never appear in training: accuracy on them
 * needs the rule, not a memorised pair (chance is ~5%).
 */
import { EventStore } from "../../src/data/event-store.js";
import { ingestSynthetic } from "../../src/data/ingest/synthetic.js";
import { SyntheticWorld, SYNTHETIC_QUICK } from "../../src/data/synthetic/index.js";
import { DAY_MS } from "../../src/domain/clock.js";
import type { Cluster, TimeWindow } from "../../src/domain/types.js";
import type { TrainingSample } from "../../src/llm/contracts.js";
import { type TimedTransition, timedTransitions } from "../../src/mining/transitions.js";

const WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo", "juniper", "kelp", "lagoon", "meadow", "nectar", "onyx", "prairie", "quartz", "ridge", "saffron", "tundra"];
export const MAPPING_CLUSTERS: Cluster[] = WORDS.map((w, k) => ({ id: `k${k}`, description: `${w} videos` }));
export const N = MAPPING_CLUSTERS.length;
export const ids = MAPPING_CLUSTERS.map((c) => c.id);

export function successor(a: number, b: number, shift = 0): number {
  let k = (b * 7 + 1 + shift) % N;
  while (k === a || k === b) k = (k + 1) % N;
  return k;
}

export const pairs: [number, number][] = [];
for (let a = 0; a < N; a++) for (let b = 0; b < N; b++) if (a !== b) pairs.push([a, b]);
export const isHeldOut = ([a, b]: [number, number]) => (a * 7 + b * 3) % 5 === 1;
export const heldOut = pairs.filter(isHeldOut);
export const trainPairs = pairs.filter((p) => !isHeldOut(p));

/** The training sample of a pair under the kernel. */
export const mappingSample = ([a, b]: [number, number], shift = 0): TrainingSample => ({ prompt: { history: { c1: ids[a], c2: ids[b] } }, answer: ids[successor(a, b, shift)] });

/**
 * The small synthetic world of the base-model learning tests (36 clusters): its transitions of the 6 weeks before
 * Feb 15 2025 to train on, and of the 2 weeks after to score, read from an in-memory store that `use` may query and
 * that is closed afterwards.
 */
export async function withSmallWorld<T>(
  use: (world: { events: EventStore; window: TimeWindow; transitions: TimedTransition[]; heldOutDays: TimedTransition[] }) => Promise<T>,
): Promise<T> {
  const world = new SyntheticWorld({ ...SYNTHETIC_QUICK, clustersPerDomain: 3, users: 800, targetEvents: 80_000, months: 3 });
  const events = await EventStore.open(":memory:");
  try {
    await ingestSynthetic(events, world);
    const positiveMin = world.options.positiveThreshold;
    const asOf = Date.UTC(2025, 2, 1);
    const window = { from: asOf - 56 * DAY_MS, to: asOf - 14 * DAY_MS };
    const transitions = await timedTransitions(events, window, { positiveMin, horizon: 1 });
    const heldOutDays = await timedTransitions(events, { from: window.to, to: asOf }, { positiveMin, horizon: 1 });
    return await use({ events, window, transitions, heldOutDays });
  } finally {
    events.close();
  }
}
