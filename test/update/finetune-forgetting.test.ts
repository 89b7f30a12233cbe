/**
 * A fine-tune must not make the model worse at what it knew. The tiny world: a model learnt every history pair's
 * successor from a long past; the recent window (what a fine-tune curates) only holds the pairs of three second
 * clusters, whose successors moved. The fine-tune has to learn the move and keep the rest. Curated with the
 * product's defaults (rehearsal of the transitions before the fine-tuning window) it does; curated as before
 * (recent transitions only) the same training unlearns the pairs it no longer sees. Real training of the tiny shape,
 * as test/llm/learning.test.ts does.
 */
import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { DAY_MS } from "../../src/domain/clock.js";
import { EmbeddedLanguageModel } from "../../src/llm/backends/embedded.js";
import type { TrainingSample } from "../../src/llm/contracts.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { curateFineTuningSet, type CurationOptions } from "../../src/update/curation.js";
import { PAIR_WORLD, TINY_SHAPE, pairWorldLog } from "../llm/fixtures.js";
import { tempDir } from "../temp-dir.js";

const { clusters: CLUSTERS, ids, successor, pairs } = PAIR_WORLD;
/** The pairs the recent window holds (their successors moved); the others only the past holds. */
const isRecent = ([, b]: [number, number]) => b < 3;
const recentPairs = pairs.filter(isRecent);
const pastOnlyPairs = pairs.filter((p) => !isRecent(p));

const asOf = Date.UTC(2025, 6, 1);
const CURATION: CurationOptions = { windowDays: 40, testDays: 7, minTestUsers: 1, contextShare: 0 };

/** The world's log in an in-memory event store; each transition is one user's three events: a, b, then the successor. */
function openWorld() {
  const { visit, open } = pairWorldLog();
  // The past (200 to 41 days before the as-of time): every pair, the old successors, four users each.
  for (let r = 0; r < 4; r++) pairs.forEach(([a, b], i) => visit(a, b, successor(a, b), asOf - 200 * DAY_MS + (r * pairs.length + i) * 3_600_000));
  // The recent window (40 to 8 days before) holds the recent pairs only, with moved successors; the test slice
  // (the last 7 days) a few of them.
  for (let r = 0; r < 4; r++) recentPairs.forEach(([a, b], i) => visit(a, b, successor(a, b, 1), asOf - 40 * DAY_MS + (r * recentPairs.length + i) * 3_600_000));
  recentPairs.slice(0, 6).forEach(([a, b], i) => visit(a, b, successor(a, b, 1), asOf - 5 * DAY_MS + i * 3_600_000));
  return open();
}

async function top1(modelPath: string, list: readonly [number, number][]): Promise<string[]> {
  const model = await EmbeddedLanguageModel.open(modelPath);
  try {
    return (await model.score(list.map(([a, b]) => ({ history: { c1: ids[a], c2: ids[b] } })), 1)).map((r) => r[0].cluster);
  } finally {
    await model.close();
  }
}

const agreement = (answers: readonly string[], list: readonly [number, number][], shift: number) =>
  answers.filter((c, i) => c === ids[successor(list[i][0], list[i][1], shift)]).length / list.length;

describe("fine-tuning without forgetting", () => {
  it("learns what moved and keeps what the recent window no longer shows, where recent-only curation forgets it", async () => {
    const ws = tempDir("freshrec-forgetting-");
    const store = await openWorld();
    const trainer = new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } });
    const past: TrainingSample[] = [];
    for (let r = 0; r < 4; r++) for (const [a, b] of pairs) past.push({ prompt: { history: { c1: ids[a], c2: ids[b] } }, answer: ids[successor(a, b)] });
    const parent = (await trainer.train(past, { outputPath: join(ws, "parent.gguf"), epochs: 6, patience: 99, learningRate: 3e-3 })).modelPath;

    const finetune = async (name: string, curation: CurationOptions) => {
      const set = await curateFineTuningSet(store, asOf, curation);
      const model = await trainer.train(set.train, { from: parent, outputPath: join(ws, `${name}.gguf`), epochs: 4, patience: 99, learningRate: 3e-3 });
      return { set, past: agreement(await top1(model.modelPath, pastOnlyPairs), pastOnlyPairs, 0), moved: agreement(await top1(model.modelPath, recentPairs), recentPairs, 1) };
    };
    const recentOnly = await finetune("recent-only", { ...CURATION, rehearsalShare: 0 });
    const product = await finetune("product", CURATION);
    const parentPast = agreement(await top1(parent, pastOnlyPairs), pastOnlyPairs, 0);

    // The margins leave room for training noise: recent-only curation learns the moved pairs but forgets a clear
    // share of the rest; with the default rehearsal the fine-tune learns the move and keeps nearly all the parent knew.
    expect(parentPast).toBeGreaterThanOrEqual(0.75);
    expect(recentOnly.past).toBeLessThanOrEqual(parentPast - 0.15); // the forgetting this test is about
    expect(product.past).toBeGreaterThanOrEqual(parentPast - 0.08);
    expect(product.past).toBeGreaterThanOrEqual(recentOnly.past + 0.15);
    expect(product.moved).toBeGreaterThanOrEqual(0.8);
    expect(recentOnly.set.rehearsed).toBe(0);
    expect(product.set.rehearsed).toBe(recentOnly.set.train.length); // half of the set
    store.close();
  }, 600_000);

  it("draws rehearsal from before the training part only, as the set's share, reproducibly", async () => {
    const store = await openWorld();
    const set = await curateFineTuningSet(store, asOf, { ...CURATION, rehearsalShare: 0.75 });
    const recent = set.train.slice(0, set.train.length - set.rehearsed);
    const rehearsed = set.train.slice(set.train.length - set.rehearsed);
    expect(rehearsed).toHaveLength(3 * recent.length);
    // Only the past knows the old successors of the recent pairs, and every past-only pair.
    for (const s of rehearsed) {
      const [a, b] = [ids.indexOf(s.prompt.history.c1), ids.indexOf(s.prompt.history.c2)];
      expect(s.answer).toBe(ids[successor(a, b)]);
      expect(s.prompt.context).toBeUndefined();
    }
    for (const s of recent) expect(s.answer).toBe(ids[successor(ids.indexOf(s.prompt.history.c1), ids.indexOf(s.prompt.history.c2), 1)]);
    expect(await curateFineTuningSet(store, asOf, { ...CURATION, rehearsalShare: 0.75 })).toEqual(set);
    // Nothing before the rehearsal span: no rehearsal. `since` moves the training part's start.
    expect((await curateFineTuningSet(store, asOf, { ...CURATION, rehearsalDays: 100 })).rehearsed).toBe(0);
    const since = asOf - 20 * DAY_MS;
    expect((await curateFineTuningSet(store, asOf, { ...CURATION, since })).trainWindow.from).toBe(since);
    await expect(curateFineTuningSet(store, asOf, { ...CURATION, rehearsalShare: 1 })).rejects.toThrow(/rehearsalShare/);
    store.close();
  });
});
