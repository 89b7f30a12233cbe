/**
 * Batched next-token scoring through llama.cpp: many prompts (one sequence each) per `llama_decode`, logits read
 * only at each prompt's last token, and only for the answer tokens. This is what makes a full table
 * (|C|·(|C|-1) pairs) cheap: node-llama-cpp evaluates one sequence at a time and its multi-sequence probability
 * maps were measured unreliable (docs/engine.md, "Threads: the pitfalls").
 *
 * `llama_decode` runs synchronously on the main thread, one batch (~10 ms) at a time with a yield to the event loop
 * in between. koffi's async path (a worker thread per call) was measured 2.2x slower: llama.cpp's CPU thread team
 * is tied to the calling thread. Calls on one scorer are serialised: the context and batch buffers are single-use.
 *
 * @example
 * const scorer = BatchScorer.open(api, "/m.gguf", { answerBase: CLUSTER_BASE, answerCount: 300 });
 * const logits = await scorer.score([[1, 300, 301, 302]]); // Float32Array of 300 answer logits per prompt
 */
import { FreshrecError } from "../../domain/errors.js";
import {
  type BatchViews,
  type LlamaApi,
  type NativePointer,
  allocBatch,
  createContext,
  floatView,
  freeBatch,
  loadModel,
} from "./llama-api.js";

export interface BatchScorerOptions {
  /** First answer token id (answers are a contiguous id range). */
  readonly answerBase: number;
  readonly answerCount: number;
  /**
   * Sequences decoded together in one `llama_decode`.
   * @defaultValue 48
   */
  readonly sequences?: number;
  /**
   * Longest prompt in tokens; longer prompts are refused.
   * @defaultValue 64
   */
  readonly maxPromptTokens?: number;
  /**
   * CPU threads of the context. One: on the 2-core reference machine two threads decode faster only while nothing
   * else runs (7.5k vs 4.2k prompts/s); with other processes on the cores (a training, a refresh, the API server)
   * llama.cpp's spin barriers made two threads collapse to 229-419 prompts/s in two of three runs, while one
   * thread stayed at 3.7-4.8k (300-cluster table prompts, alternating runs).
   * @defaultValue 1
   */
  readonly threads?: number;
}

export class BatchScorer {
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly memory: NativePointer;

  private constructor(
    private readonly api: LlamaApi,
    private readonly model: NativePointer,
    private readonly ctx: NativePointer,
    private readonly batch: BatchViews,
    private readonly options: Required<BatchScorerOptions>,
  ) {
    this.memory = api.fn.llama_get_memory(ctx);
  }

  /** Opens a model file read-only (mmapped) and a scoring context on it. */
  static open(api: LlamaApi, modelPath: string, options: BatchScorerOptions): BatchScorer {
    const model = loadModel(api, modelPath);
    try {
      return BatchScorer.onModel(api, model, options);
    } catch (e) {
      api.fn.llama_model_free(model);
      throw e;
    }
  }

  /** A scorer on a model `open` loaded; the scorer frees it on close. */
  private static onModel(api: LlamaApi, model: NativePointer, options: BatchScorerOptions): BatchScorer {
    const full: Required<BatchScorerOptions> = {
      answerBase: options.answerBase,
      answerCount: options.answerCount,
      sequences: options.sequences ?? 48,
      maxPromptTokens: options.maxPromptTokens ?? 64,
      threads: options.threads ?? 1,
    };
    const capacity = full.sequences * full.maxPromptTokens;
    const ctx = createContext(api, model, {
      nCtx: capacity,
      nBatch: capacity,
      nUbatch: capacity,
      nSeqMax: full.sequences,
      threads: full.threads,
      // One KV buffer for all sequences, so a prefix shared by the prompts of a batch (the template's opening and
      // the first history cluster, when callers list pairs by c1) is computed once and attended by all of them.
      kvUnified: true,
    });
    const batch = allocBatch(api, capacity, full.sequences);
    return new BatchScorer(api, model, ctx, batch, full);
  }

  get answerCount(): number {
    return this.options.answerCount;
  }

  /**
   * Answer-token logits for each prompt (prompt i's logits at [i*answerCount, (i+1)*answerCount)). Deterministic:
   * the same prompts in the same order give bit-identical results.
   */
  score(prompts: readonly (readonly number[])[]): Promise<Float32Array> {
    const run = this.queue.then(() => this.scoreNow(prompts));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async scoreNow(prompts: readonly (readonly number[])[]): Promise<Float32Array> {
    if (this.closed) throw new FreshrecError("ENGINE", "the scorer is closed");
    const { answerBase, answerCount, sequences, maxPromptTokens } = this.options;
    for (const p of prompts) {
      if (p.length === 0) throw new FreshrecError("BAD_INPUT", "an empty prompt cannot be scored");
      if (p.length > maxPromptTokens) {
        throw new FreshrecError("BAD_INPUT", `a prompt of ${p.length} tokens exceeds the scorer's ${maxPromptTokens}`);
      }
    }
    const out = new Float32Array(prompts.length * answerCount);
    // Lexicographic order puts prompts with long common prefixes next to each other; results go back to the
    // caller's order, and the order is a pure function of the input, so scoring stays deterministic.
    const order = prompts.map((_, i) => i).sort((a, b) => compareTokens(prompts[a], prompts[b]) || a - b);
    const b = this.batch;
    const rowFloats = answerBase + answerCount;
    let next = 0;
    while (next < order.length) {
      const chunk = takeChunk(order, prompts, next, sequences);
      next += chunk.length;
      const members = chunk.map((i) => prompts[i]);
      // The shared prefix stops one token short of the shortest prompt: every prompt needs its own last token.
      let shared = Math.min(...members.map((p) => p.length)) - 1;
      for (let k = 1; k < members.length && shared > 0; k++) shared = Math.min(shared, commonPrefix(members[0], members[k]));
      let n = 0;
      for (let j = 0; j < shared; j++) {
        b.token[n] = members[0][j];
        b.pos[n] = j;
        b.nSeqId[n] = members.length;
        for (let s = 0; s < members.length; s++) b.seqId[n][s] = s;
        b.logits[n] = 0;
        n++;
      }
      const lastIndex: number[] = [];
      for (let s = 0; s < members.length; s++) {
        const p = members[s];
        for (let j = shared; j < p.length; j++) {
          b.token[n] = p[j];
          b.pos[n] = j;
          b.nSeqId[n] = 1;
          b.seqId[n][0] = s;
          b.logits[n] = j === p.length - 1 ? 1 : 0;
          n++;
        }
        lastIndex.push(n - 1);
      }
      this.api.fn.llama_memory_clear(this.memory, true);
      b.value.n_tokens = n;
      const rc = this.api.fn.llama_decode(this.ctx, b.value) as number;
      if (rc !== 0) {
        throw new FreshrecError("ENGINE", `llama_decode failed with ${rc}: ${this.api.recentLog() || "no detail"}`);
      }
      for (let k = 0; k < lastIndex.length; k++) {
        const ptr = this.api.fn.llama_get_logits_ith(this.ctx, lastIndex[k]);
        if (!ptr) throw new FreshrecError("ENGINE", "llama.cpp returned no logits for a prompt");
        const row = floatView(ptr, rowFloats);
        out.set(row.subarray(answerBase, rowFloats), chunk[k] * answerCount);
      }
      // Yield between batches so a table build never holds the event loop for more than one decode (~10 ms).
      await new Promise((resolve) => setImmediate(resolve));
    }
    return out;
  }

  /** Frees the context and the model. Waits for a running batch first. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.queue;
    this.closed = true;
    freeBatch(this.api, this.batch);
    this.api.fn.llama_free(this.ctx);
    this.api.fn.llama_model_free(this.model);
  }
}

/**
 * Softmax restricted to the allowed answers, then the top n, best first (ties by answer index, so rankings are
 * deterministic). `allowed[i]` false removes answer i (for example the history's own clusters).
 */
export function rankAnswers(
  logits: Float32Array,
  offset: number,
  count: number,
  allowed: (i: number) => boolean,
  topN: number,
): { index: number; probability: number }[] {
  let max = -Infinity;
  for (let i = 0; i < count; i++) if (allowed(i) && logits[offset + i] > max) max = logits[offset + i];
  if (max === -Infinity) return [];
  let sum = 0;
  const probs = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    if (!allowed(i)) continue;
    const e = Math.exp(logits[offset + i] - max);
    probs[i] = e;
    sum += e;
  }
  const n = Math.min(topN, count);
  // Partial selection: top-n of a few hundred answers without sorting them all.
  const top: number[] = [];
  for (let i = 0; i < count; i++) {
    if (!allowed(i)) continue;
    if (top.length < n) {
      top.push(i);
      for (let j = top.length - 1; j > 0 && better(probs, top[j], top[j - 1]); j--) [top[j], top[j - 1]] = [top[j - 1], top[j]];
    } else if (better(probs, i, top[n - 1])) {
      top[n - 1] = i;
      for (let j = n - 1; j > 0 && better(probs, top[j], top[j - 1]); j--) [top[j], top[j - 1]] = [top[j - 1], top[j]];
    }
  }
  return top.map((index) => ({ index, probability: probs[index] / sum }));
}

function compareTokens(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * Up to `max` prompts from `order[start]` on, cut early where the shared prefix would shrink (a new first
 * history cluster begins), unless the chunk would stay small: a full batch beats a longer shared prefix.
 */
function takeChunk(order: readonly number[], prompts: readonly (readonly number[])[], start: number, max: number): number[] {
  const chunk = [order[start]];
  const first = prompts[order[start]];
  let shared = Infinity;
  for (let i = start + 1; i < order.length && chunk.length < max; i++) {
    const lcp = commonPrefix(first, prompts[order[i]]);
    if (chunk.length >= 2 && lcp < shared && chunk.length >= max / 4) break;
    shared = Math.min(shared, lcp);
    chunk.push(order[i]);
  }
  return chunk;
}

function better(p: Float64Array, a: number, b: number): boolean {
  return p[a] > p[b] || (p[a] === p[b] && a < b);
}
