/**
 * The second thread's side of `FusionThread` (src/update/fusion-thread.ts): it answers the requests with the same
 * code the refresh's own thread runs.
 */
import { parentPort } from "node:worker_threads";
import { coarsePassOf, countsOnlyFit, FusionRows, SliceLikelihood, SliceObservations, type CoarsePass } from "./fusion.js";
import type { CoarsePassRequest, CountsOnlyFitRequest, RowsPart, RowsRequest } from "./fusion-thread.js";

const port = parentPort;
if (!port) throw new Error("fusion-thread-entry runs as a worker thread (FusionThread.start)");

/** The rows of the posteriors being built, by handle (`FusionThread.beginRows`). */
const rowsOf = new Map<number, FusionRows>();

port.on("message", (message: { id: number; kind: string } & Record<string, unknown>) => {
  try {
    if (message.kind === "coarse") {
      const request = message as unknown as CoarsePassRequest;
      const observations = new SliceObservations(request.observations, request.prior);
      const taken: [number, CoarsePass][] = [];
      for (let k = Atomics.add(request.next, 0, 1); k < request.starts.length; k = Atomics.add(request.next, 0, 1)) {
        taken.push([k, coarsePassOf(new SliceLikelihood(observations, request.starts[k]))]);
      }
      port.postMessage({ id: message.id, result: taken });
    } else if (message.kind === "countsOnly") {
      const request = message as unknown as CountsOnlyFitRequest;
      const likelihood = new SliceLikelihood(new SliceObservations(request.observations, request.prior), request.start);
      port.postMessage({ id: message.id, result: countsOnlyFit(likelihood) });
    } else if (message.kind === "rows") {
      rowsOf.set(message.rows as number, new FusionRows(message.input as ConstructorParameters<typeof FusionRows>[0]));
      port.postMessage({ id: message.id, result: null });
    } else if (message.kind === "end") {
      rowsOf.delete(message.rows as number);
      port.postMessage({ id: message.id, result: null });
    } else if (message.kind === "score") {
      const request = message as unknown as RowsRequest;
      const rows = rowsOf.get(request.rows);
      if (!rows) throw new Error("rows asked for before their posterior was set up");
      const taken: [number, RowsPart][] = [];
      const transfer: ArrayBuffer[] = [];
      const chunks = Math.ceil(request.c1.length / request.chunk);
      for (let k = Atomics.add(request.next, 0, 1); k < chunks; k = Atomics.add(request.next, 0, 1)) {
        const [from, to] = [k * request.chunk, (k + 1) * request.chunk];
        const { count, answers, answerEnd, explanation, explanationEnd } = rows.scorePairs(request.c1.subarray(from, to), request.c2.subarray(from, to), request.topN);
        taken.push([k, { count, answers, answerEnd, explanation, explanationEnd }]);
        transfer.push(...([answers.buffer, explanation.buffer, answerEnd.buffer, explanationEnd.buffer] as ArrayBuffer[]));
      }
      port.postMessage({ id: message.id, result: taken }, transfer);
    } else {
      throw new Error(`unknown request ${message.kind}`);
    }
  } catch (error) {
    port.postMessage({ id: message.id, error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
  }
});

port.postMessage({ kind: "ready" });
