/**
 * The bulk table build (`freshrec refresh`): for every ordered pair (c1 != c2) build the prompt, with its
 * retrieved context when there is one, score it, and keep the top-n novel clusters (never c1 or c2).
 *
 * Incremental by default: a pair is re-scored only when its context changed since the last table built with the
 * same model and template (compared through context keys); otherwise its row is copied in SQL. `full` re-scores
 * everything. The build writes into a new table version that becomes visible only when published; a failure or
 * an abort marks it failed and leaves the live table untouched, and a crash is found and marked on the next open.
 *
 * Every strategy builds its table here: the LLM through its scorer, the non-LLM baselines through theirs.
 *
 * @example
 * const built = await buildTable({ store: tables, clusters, scorer, modelVersion: "m000002", templateHash, rag: snapshot });
 * await tables.publish(built.table.version);
 */
import { pairKey, type ScoredCluster } from "../domain/types.js";
import { DAY_MS } from "../domain/clock.js";
import { FreshrecError } from "../domain/errors.js";
import { SILENT_PROGRESS, type ProgressSink } from "../domain/types.js";
import type { CostEstimate } from "../llm/contracts.js";
import type { PromptContext, PromptInput } from "../llm/prompt.js";
import type { PackedBuildRows, TableBuildRow, TableInfo, TableStoreContract } from "../tables/contract.js";
import { TABLE_DEFAULTS } from "../tables/contract.js";
import { tableStoreContract, type UpdateTableStore } from "../tables/embedded-store.js";
import { contextFor, contextKey, type RagSnapshot } from "./rag.js";

/** Scores prompts over the cluster vocabulary: the part of a language model (or baseline) a table build needs. */
export interface PromptScorer {
  /**
   * For each prompt, clusters ranked best first with scores; at least `topN` when the vocabulary allows.
   * `options.onProgress` hears how many prompts of this call are done, for scorers that take long per call.
   */
  score(prompts: readonly PromptInput[], topN: number, signal?: AbortSignal, options?: { onProgress?: (done: number) => void }): Promise<ScoredCluster[][]>;
  /**
   * Prompts the build hands over per call. A scorer that submits work in bulk (the OpenAI Batch API: one batch
   * per build, not one per 1,024 pairs) asks for all of them at once. @defaultValue 1024
   */
  readonly promptsPerCall?: number;
  /** Prices scoring these prompts before anything is sent; absent for scorers not paid per token. */
  estimateCost?(prompts: readonly PromptInput[]): Promise<CostEstimate>;
  /** Rows computed from counts, not prompted (the counting baselines): a build with this scorer pays no prompt. */
  readonly computed?: boolean;
  /** Why a prompt of the last `score` call got its answers (fusion: weights and counts), stored with its row. */
  storedExplanation?(prompt: PromptInput, answers: number): Readonly<Record<string, unknown>> | Uint8Array | undefined;
  /**
   * For scorers that compute rows rather than prompt for them (fusion): the rows of `prompts` straight in the form
   * the store keeps (at most `topN` answers a row, never c1 or c2, best first, with their explanations), which a
   * build then writes without an object per row or answer. A build uses it instead of `score` when it is there,
   * and asks for the next batch before it writes the last one (a scorer on another thread computes while it writes).
   */
  scorePacked?(prompts: readonly PromptInput[], topN: number): Promise<Omit<PackedBuildRows, "contextKeys">>;
}

export interface BuildTableOptions {
  /** Any table store adapter, or the workspace's synchronous SQLite store (replay keeps that one). */
  readonly store: UpdateTableStore;
  /** Cluster ids of the vocabulary; every ordered pair of them gets a row. */
  readonly clusters: readonly string[];
  readonly scorer: PromptScorer;
  readonly modelVersion: string;
  readonly templateHash: string;
  /** The RAG snapshot whose contexts go into the prompts; null builds the no-RAG table. */
  readonly rag?: RagSnapshot | null;
  /** Re-score every pair instead of copying unchanged ones. @defaultValue false */
  readonly full?: boolean;
  /** @defaultValue 10 */
  readonly topN?: number;
  /** Prompts per scorer call. @defaultValue 1024 */
  readonly batchSize?: number;
  readonly strategy?: string | null;
  /** What made a table built without prompts' contexts from fresh data (fusion): recorded instead of `rag`'s. */
  readonly evidenceMeta?: { readonly asOf: number; readonly windowDays: number; readonly options: Readonly<Record<string, unknown>> } | null;
  readonly progress?: ProgressSink;
  readonly signal?: AbortSignal;
}

export interface BuildTableResult {
  readonly table: TableInfo;
  readonly pairs: number;
  readonly rescored: number;
  readonly copied: number;
  readonly seconds: number;
  readonly promptsPerSecond: number;
  /** Where the seconds went: comparing contexts with the previous table, copying unchanged rows, scoring the rest. */
  readonly phases: { readonly diffSeconds: number; readonly copySeconds: number; readonly scoreSeconds: number };
  /**
   * What the scored prompts cost by the scorer's own estimate (the one `refresh --dry-run` prints), taken before
   * they were sent; null for a scorer that prices nothing (a local model, counts).
   */
  readonly cost: CostEstimate | null;
}

/** The newest finished table of this model and template: what an incremental build copies from. */
export async function previousTable(store: UpdateTableStore, modelVersion: string, templateHash: string): Promise<TableInfo | null> {
  return (await tableStoreContract(store).list({ modelVersion, templateHash, status: ["ready", "live", "retired"] })).at(-1) ?? null;
}

/** What a build will do: the rows it copies from the previous table and the prompts it scores. */
export interface TablePlan {
  /** The table unchanged rows are copied from (null: a full build). */
  readonly previous: TableInfo | null;
  readonly copy: readonly { readonly c1: string; readonly c2: string }[];
  readonly rescore: RescorePairs;
}

/**
 * The pairs a build scores, in order, in columns (cluster indices, context, context key); their prompts are made a
 * batch at a time (`slice`). A table's worth of prompt objects made up front would live through the whole build,
 * and every young-generation collection of it would copy them.
 */
export class RescorePairs {
  private readonly c1: Int32Array;
  private readonly c2: Int32Array;
  private count = 0;
  /** Per pair, with contexts (a RAG build); without, every pair's context is none and its key the same. */
  private readonly contexts: (PromptContext | undefined)[] | null;
  private readonly keys: string[] | null;
  private readonly noContextKey = contextKey(undefined);

  /** Room for `capacity` pairs of `clusters`; `withContexts`: pairs may carry a context. */
  constructor(
    private readonly clusters: readonly string[],
    capacity: number,
    withContexts: boolean,
  ) {
    this.c1 = new Int32Array(capacity);
    this.c2 = new Int32Array(capacity);
    this.contexts = withContexts ? [] : null;
    this.keys = withContexts ? [] : null;
  }

  get length(): number {
    return this.count;
  }

  /** Adds the pair of clusters[i1], clusters[i2], with its context and key when the pairs carry them. */
  add(i1: number, i2: number, context: PromptContext | undefined, key: string): void {
    if (!this.contexts && (context !== undefined || key !== this.noContextKey)) throw new FreshrecError("INTERNAL", "table plan: a context for a build without contexts");
    this.c1[this.count] = i1;
    this.c2[this.count++] = i2;
    this.contexts?.push(context);
    this.keys?.push(key);
  }

  /** Pairs [from, to) as prompts with their context keys. */
  slice(from: number, to: number): { readonly input: PromptInput; readonly key: string }[] {
    const out: { input: PromptInput; key: string }[] = [];
    for (let k = from, end = Math.min(to, this.length); k < end; k++) {
      const history = { c1: this.clusters[this.c1[k]], c2: this.clusters[this.c2[k]] };
      const context = this.contexts?.[k];
      out.push({ input: context ? { history, context } : { history }, key: this.keys?.[k] ?? this.noContextKey });
    }
    return out;
  }

  /** Every pair's prompt (what a dry run prices). */
  inputs(): PromptInput[] {
    return this.slice(0, this.length).map((r) => r.input);
  }
}

/**
 * Compares every pair's context with the previous table's (module comment). `buildTable` runs this plan;
 * `refresh --dry-run` prices it without building anything.
 */
export async function planTable(options: Pick<BuildTableOptions, "store" | "clusters" | "modelVersion" | "templateHash" | "rag" | "full">): Promise<TablePlan> {
  const rag = options.rag ?? null;
  const store = tableStoreContract(options.store);
  const previous = options.full ? null : await previousTable(store, options.modelVersion, options.templateHash);
  const previousKeys = previous ? await store.contextKeys(previous.version) : null;
  const copy: { c1: string; c2: string }[] = [];
  const rescore = new RescorePairs(options.clusters, options.clusters.length * options.clusters.length, rag !== null);
  options.clusters.forEach((c1, i1) =>
    options.clusters.forEach((c2, i2) => {
      if (c1 === c2) return;
      const context = rag ? contextFor(rag, c1, c2) : undefined;
      const key = contextKey(context);
      if (previousKeys && previousKeys.get(pairKey(c1, c2)) === key) copy.push({ c1, c2 });
      else rescore.add(i1, i2, context, key);
    }),
  );
  return { previous, copy, rescore };
}

export async function buildTable(options: BuildTableOptions): Promise<BuildTableResult> {
  const started = process.hrtime.bigint();
  const topN = options.topN ?? TABLE_DEFAULTS.topN;
  const batchSize = options.batchSize ?? options.scorer.promptsPerCall ?? 1024;
  const progress = options.progress ?? SILENT_PROGRESS;
  const rag = options.rag ?? null;
  const store: TableStoreContract = tableStoreContract(options.store);
  const { previous, copy, rescore } = await planTable({ ...options, store });
  // Priced before scoring: afterwards a response cache would answer every prompt for free.
  const cost = (await options.scorer.estimateCost?.(rescore.inputs())) ?? null;

  const builder = await store.beginBuild({
    modelVersion: options.modelVersion,
    templateHash: options.templateHash,
    ragAsOf: options.evidenceMeta?.asOf ?? rag?.asOf ?? null,
    ragWindowDays: options.evidenceMeta?.windowDays ?? (rag ? (rag.window.to - rag.window.from) / DAY_MS : null),
    ragOptions:
      options.evidenceMeta?.options ??
      (rag ? { method: "prompt", mode: rag.mode, topN: rag.topN, minSupport: rag.minSupport, pairsWithContext: rag.contexts.size, global: rag.global } : null),
    strategy: options.strategy ?? null,
    parent: copy.length && previous ? previous.version : null,
  });
  const diffDone = process.hrtime.bigint();
  try {
    const copied = copy.length && previous ? await builder.copyRows(previous.version, copy) : 0;
    const copyDone = process.hrtime.bigint();
    progress.start(`scoring ${rescore.length} pairs`, rescore.length);
    const scorePacked = options.scorer.scorePacked?.bind(options.scorer);
    // Packed rows: the next batch is asked for before this one is written.
    const packedBatch = (start: number) => {
      if (!scorePacked || start >= rescore.length) return null;
      const batch = rescore.slice(start, start + batchSize);
      const rows = scorePacked(batch.map((b) => b.input), topN);
      // Awaited after the write of the batch before it: a failure meanwhile is not unhandled (it fails the build then).
      rows.catch(() => undefined);
      return { batch, rows };
    };
    let nextPacked = packedBatch(0);
    for (let start = 0; start < rescore.length; start += batchSize) {
      if (options.signal?.aborted) {
        // Settled before the build fails, so no batch is left unawaited.
        await nextPacked?.rows.catch(() => undefined);
        throw new FreshrecError("CANCELLED", "table build cancelled");
      }
      if (nextPacked) {
        const { batch, rows } = nextPacked;
        const packed = await rows;
        nextPacked = packedBatch(start + batchSize);
        try {
          await builder.appendPacked({ ...packed, contextKeys: batch.map((b) => b.key) });
        } catch (error) {
          await nextPacked?.rows.catch(() => undefined);
          throw error;
        }
        progress.update(Math.min(start + batchSize, rescore.length), { pairs: start + batch.length });
        continue;
      }
      const batch = rescore.slice(start, start + batchSize);
      const ranked = await options.scorer.score(
        batch.map((b) => b.input),
        topN + 2,
        options.signal,
        { onProgress: (done) => progress.update(start + done, { pairs: start + done }) },
      );
      const rows: TableBuildRow[] = batch.map((b, k) => {
        const { c1, c2 } = b.input.history;
        const answers = ranked[k].filter((a) => a.cluster !== c1 && a.cluster !== c2).slice(0, topN);
        const explanation = options.scorer.storedExplanation?.(b.input, answers.length);
        return explanation ? { c1, c2, answers, contextKey: b.key, explanation } : { c1, c2, answers, contextKey: b.key };
      });
      await builder.append(rows);
      progress.update(Math.min(start + batchSize, rescore.length), { pairs: start + batch.length });
    }
    progress.stop();
    const done = process.hrtime.bigint();
    const seconds = Number(done - started) / 1e9;
    const promptsPerSecond = rescore.length / Math.max(seconds, 1e-9);
    const pairs = copy.length + rescore.length;
    const table = await builder.finish({ pairs, rescored: rescore.length, copied, seconds, promptsPerSecond });
    const phases = { diffSeconds: Number(diffDone - started) / 1e9, copySeconds: Number(copyDone - diffDone) / 1e9, scoreSeconds: Number(done - copyDone) / 1e9 };
    return { table, pairs, rescored: rescore.length, copied, seconds, promptsPerSecond, phases, cost };
  } catch (error) {
    progress.stop();
    await builder.fail(error instanceof Error ? error.message : String(error));
    throw error;
  }
}
