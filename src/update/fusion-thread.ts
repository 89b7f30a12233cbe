/**
 * The second thread of a fusion refresh. A 300-cluster refresh's work beyond counting is the window choice's coarse
 * pass (one likelihood per candidate window), the chosen window's full fit, and 89,700 rows computed and written to
 * the store. The store's writes stay on the thread that owns the store, so the second thread takes what has no
 * order: candidate windows of the coarse pass (both threads take the next one from one shared counter) and the rows
 * of each batch, in chunks taken from one shared counter: the second thread from the moment the batch is asked for,
 * this one a chunk per turn of its event loop once the build has written (or, on an asynchronous store, started
 * writing) the last batch (writing takes less than the rows: the second thread alone left this one waiting for much
 * of the build). It runs the same code (`SliceLikelihood`, `FusionRows`) on
 * the same inputs, so every strength, likelihood and row is the same bit for bit as on one thread. The chosen
 * window's fit without the prior also runs there, while the refresh's own thread fits the one with it.
 *
 * A process's refreshes share one thread (`shared`), started by the first refresh that needs it before it reads
 * its log, and kept (compiled and warm) for the next; it keeps no process alive while idle. Small tables (fewer than
 * `FUSION_THREAD_MIN_CLUSTERS` clusters) are fitted and built on one thread: there the work is a few milliseconds.
 * A thread that does not start, or fails, fails the refresh (`FreshrecError` naming the cause): nothing is computed
 * again elsewhere, and the next refresh starts a new thread.
 *
 * @example
 * const thread = await FusionThread.start();
 * try {
 *   const fitted = await fitFusion({ log, asOf, prior, thread });
 *   const scorer = new FusionScorer(fitted.evidence, prior, fitted.params, thread);
 * } finally {
 *   await thread.close();
 * }
 */
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { FreshrecError } from "../domain/errors.js";
import type { CoarsePass, FusionParams, FusionRowsInput, LlmPrior, PackedScores, SliceObservationsData, SliceStart } from "./fusion.js";

/** Tables of fewer clusters are fitted and built on one thread (module comment). */
export const FUSION_THREAD_MIN_CLUSTERS = 64;

/** What the coarse pass sends (`chooseWindow`): the slice, its candidate windows and the counter both threads take from. */
export interface CoarsePassRequest {
  readonly observations: SliceObservationsData;
  readonly prior: LlmPrior | null;
  readonly starts: readonly SliceStart[];
  /** next[0]: the next candidate to take (shared memory: `Atomics.add`). */
  readonly next: Int32Array;
}

/** What the fit without the prior sends (`fittedStrengths`): the slice and the window of the likelihood to fit. */
export interface CountsOnlyFitRequest {
  readonly observations: SliceObservationsData;
  readonly prior: LlmPrior | null;
  readonly start: SliceStart;
}

/**
 * What a batch's rows request sends (`FusionThread.scoreRows`): the rows' handle, the pairs (c1[k], c2[k]), and the
 * counter of their chunks (`chunk` pairs each, the last one shorter) both threads take from.
 */
export interface RowsRequest {
  readonly rows: number;
  readonly c1: Int32Array;
  readonly c2: Int32Array;
  readonly topN: number;
  readonly chunk: number;
  /** next[0]: the next chunk to take (shared memory: `Atomics.add`). */
  readonly next: Int32Array;
}

/** The rows of one chunk of a batch (`FusionRows.scorePairs`), without the pairs the request has. */
export type RowsPart = Omit<PackedScores, "clusters" | "c1" | "c2">;

/** tsx's loader API (its ES module build, beside the CommonJS one `require` resolves), for a thread started from source. */
function sourceLoader(): string {
  return pathToFileURL(createRequire(import.meta.url).resolve("tsx/esm/api").replace(/\.cjs$/, ".mjs")).href;
}

type Reply = { readonly id: number; readonly error?: string; readonly result?: unknown };

export class FusionThread {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  private failure: Error | null = null;
  private closed = false;
  private nextRows = 0;

  private constructor(
    private readonly worker: Worker,
    shared: boolean,
  ) {
    // Referenced only while a request waits: an idle thread keeps no process alive.
    worker.unref();
    worker.on("message", (reply: Reply) => {
      const waiting = this.pending.get(reply.id);
      if (!waiting) return;
      this.pending.delete(reply.id);
      if (this.pending.size === 0) worker.unref();
      if (reply.error !== undefined) waiting.reject(new FreshrecError("INTERNAL", `fusion: the second thread failed: ${reply.error}`));
      else waiting.resolve(reply.result);
    });
    const fail = (error: Error) => {
      this.failure ??= error;
      if (shared && FusionThread.sharedThread === this) FusionThread.sharedStart = null;
      for (const waiting of this.pending.values()) waiting.reject(error);
      this.pending.clear();
    };
    worker.on("error", (error) => fail(new FreshrecError("INTERNAL", `fusion: the second thread failed: ${error.message}`, { cause: error })));
    worker.on("exit", (code) => {
      if (!this.closed) fail(new FreshrecError("INTERNAL", `fusion: the second thread exited (code ${code}) while a refresh needed it`));
    });
  }

  private static sharedStart: Promise<FusionThread> | null = null;
  private static sharedThread: FusionThread | null = null;

  /** The process's shared thread (module comment), started on first use; rejects (`FreshrecError`) when it cannot start. */
  static shared(): Promise<FusionThread> {
    if (!FusionThread.sharedStart) {
      const starting = FusionThread.launch(true).then((thread) => (FusionThread.sharedThread = thread));
      // A start that failed is not kept: the next refresh tries again (this one fails with the reason).
      starting.catch(() => {
        if (FusionThread.sharedStart === starting) FusionThread.sharedStart = null;
      });
      FusionThread.sharedStart = starting;
    }
    return FusionThread.sharedStart;
  }

  /** Starts a thread of its own (closed by the caller); rejects (`FreshrecError`) when it cannot start. */
  static start(): Promise<FusionThread> {
    return FusionThread.launch(false);
  }

  private static launch(shared: boolean): Promise<FusionThread> {
    // From dist the thread runs the compiled module; from source (tsx, vitest) it registers tsx's loader first.
    const source = import.meta.url.endsWith(".ts");
    const entry = new URL(source ? "./fusion-thread-entry.ts" : "./fusion-thread-entry.js", import.meta.url);
    return new Promise((resolve, reject) => {
      let worker: Worker;
      try {
        worker = source
          ? new Worker(`import(${JSON.stringify(sourceLoader())}).then((tsx) => { tsx.register(); return import(${JSON.stringify(entry.href)}); })`, { eval: true })
          : new Worker(entry);
      } catch (error) {
        reject(new FreshrecError("INTERNAL", `fusion: the second thread did not start: ${(error as Error).message}`, { cause: error }));
        return;
      }
      const notStarted = (error: Error) => {
        worker.off("message", started);
        reject(new FreshrecError("INTERNAL", `fusion: the second thread did not start: ${error.message}`, { cause: error }));
      };
      const exited = (code: number) => notStarted(new Error(`it exited with code ${code}`));
      const started = (message: unknown) => {
        if ((message as { kind?: string }).kind !== "ready") return;
        worker.off("message", started);
        worker.off("error", notStarted);
        worker.off("exit", exited);
        resolve(new FusionThread(worker, shared));
      };
      worker.on("message", started);
      worker.once("error", notStarted);
      worker.once("exit", exited);
    });
  }

  /** The shared thread for a table of `clusters` clusters, or null below `FUSION_THREAD_MIN_CLUSTERS`. */
  static forTable(clusters: number): Promise<FusionThread> | null {
    return clusters >= FUSION_THREAD_MIN_CLUSTERS ? FusionThread.shared() : null;
  }

  /** The candidates this thread takes from `request.next`, each with its coarse pass ([index, pass]). */
  coarsePass(request: CoarsePassRequest): Promise<[number, CoarsePass][]> {
    return this.call({ kind: "coarse", ...request }) as Promise<[number, CoarsePass][]>;
  }

  /** The fit without the prior (`countsOnlyFit`) of the likelihood of `request`, computed on this thread. */
  countsOnlyFit(request: CountsOnlyFitRequest): Promise<{ params: FusionParams; ll: number }> {
    return this.call({ kind: "countsOnly", ...request }) as Promise<{ params: FusionParams; ll: number }>;
  }

  /**
   * Sets up the rows of a fitted posterior (`FusionRows`) for `scoreRows`: their handle at once (requests are answered
   * in order, so rows may be asked for before `ready`), and `ready` when they are set up.
   */
  beginRows(input: FusionRowsInput): { readonly rows: number; readonly ready: Promise<void> } {
    const rows = this.nextRows++;
    return { rows, ready: this.call({ kind: "rows", rows, input }).then(() => undefined) };
  }

  /**
   * The chunks of `request` this thread takes from its counter, each with its rows of the posterior `beginRows` set
   * up (`FusionRows.scorePairs`): [chunk, rows]. The request is sent before this returns, so the thread computes
   * while the caller goes on (writing the last batch, then taking chunks of this one).
   */
  async scoreRows(request: RowsRequest): Promise<[number, RowsPart][]> {
    const taken = (await this.call({ kind: "score", ...request })) as [number, RowsPart][];
    // Transferred buffers arrive as plain byte arrays: the store reads them as Buffers.
    const buffer = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    return taken.map(([k, r]) => [k, { count: r.count, answers: buffer(r.answers), answerEnd: r.answerEnd, explanation: buffer(r.explanation), explanationEnd: r.explanationEnd }]);
  }

  /** Lets the thread forget rows `beginRows` set up. */
  async endRows(rows: number): Promise<void> {
    await this.call({ kind: "end", rows });
  }

  async close(): Promise<void> {
    this.closed = true;
    // A closed shared thread is not handed out again: the next refresh starts a new one.
    if (FusionThread.sharedThread === this) {
      FusionThread.sharedStart = null;
      FusionThread.sharedThread = null;
    }
    await this.worker.terminate();
  }

  private call(message: Record<string, unknown>): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new FreshrecError("INTERNAL", "fusion: the second thread was closed"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) this.worker.ref();
      this.worker.postMessage({ ...message, id });
    });
  }
}
