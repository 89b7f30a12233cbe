/**
 * Relabelled context samples: teaching a model to read its RAG context.
 *
 * A model trained on a sample's history with a context retrieved from the weeks before it learns that the context
 * almost always agrees with what it memorised (both come from the same regime), so after a drift it follows a
 * context that contradicts its memory 5-7% of the time (README, "Why the paper's in-prompt RAG fails here"). A
 * relabelled sample renames every cluster it names (history, context and answer) by one random injective map onto
 * the catalog: the renamed history points memory at the wrong successors, while the context keeps exactly the
 * relation to the answer it had in the data (the answer is the retrieved successor as often as in real logs). The
 * only thing that answers such a sample better than chance is the context, to the degree the context deserves, so
 * the model learns to weigh a context against its memory instead of ignoring it. Samples without a context are
 * never relabelled: the no-context prompt form keeps answering from memory alone.
 *
 * @example
 * const samples = relabelContextSamples(set, clusters.map((c) => c.id), { share: 0.5, seed: asOf });
 */
import { BadInputError } from "../domain/errors.js";
import { seededRandom } from "../domain/random.js";
import type { TrainingSample } from "./contracts.js";

/** Share of the samples with a context relabelled by default (pretrain and fine-tunes): all of them (README, "In-prompt RAG"). */
export const DEFAULT_RELABEL_SHARE = 1;

export interface RelabelOptions {
  /** Share of the context-carrying samples that are relabelled, in [0, 1]. */
  readonly share: number;
  /** Seed of the draws (a curation's as-of time), so a training set repeats for its inputs. */
  readonly seed: number;
}

/**
 * `samples` with `share` of those carrying a context relabelled (the others as they are, in the same order). Each
 * relabelled sample draws its own map, so no pair of renamed clusters recurs often enough to be memorised.
 */
export function relabelContextSamples(samples: readonly TrainingSample[], clusterIds: readonly string[], options: RelabelOptions): TrainingSample[] {
  if (!(options.share >= 0 && options.share <= 1)) throw new BadInputError(`relabelShare must be between 0 and 1, got ${options.share}`);
  if (options.share === 0) return [...samples];
  const catalog = [...new Set(clusterIds)];
  const coin = seededRandom((Math.floor(options.seed / 1000) ^ 0x68e31da4) >>> 0);
  const draw = seededRandom((Math.floor(options.seed / 1000) ^ 0x1b873593) >>> 0);
  return samples.map((sample) => {
    const successors = sample.prompt.context?.successors ?? [];
    if (successors.length === 0 || coin() >= options.share) return sample;
    const named = [...new Set([sample.prompt.history.c1, sample.prompt.history.c2, sample.answer, ...successors])];
    if (named.length > catalog.length) {
      throw new BadInputError(`relabelling needs the catalog's clusters: ${catalog.length} given, a sample names ${named.length}`);
    }
    const map = new Map<string, string>();
    const taken = new Set<string>();
    for (const id of named) {
      let renamed: string;
      do renamed = catalog[Math.floor(draw() * catalog.length)];
      while (taken.has(renamed));
      taken.add(renamed);
      map.set(id, renamed);
    }
    const to = (id: string): string => map.get(id)!;
    return {
      prompt: { history: { c1: to(sample.prompt.history.c1), c2: to(sample.prompt.history.c2) }, context: { successors: successors.map(to) } },
      answer: to(sample.answer),
    };
  });
}
