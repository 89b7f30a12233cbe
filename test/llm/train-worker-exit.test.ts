/**
 * A training worker that reports its model written and then never exits (Node's shutdown deadlock,
 * nodejs/node#54918, hung a replay for good) is killed after a grace period: the training succeeds, with a warning.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runWorker, WORKER_EXIT_GRACE_MS } from "../../src/llm/engine/trainer.js";
import type { TrainJob } from "../../src/llm/engine/train-worker.js";
import { tempDir } from "../temp-dir.js";

describe("the training worker's exit", () => {
  it("kills a worker that reported its model written and hangs in its exit, and the training succeeds with a warning", async () => {
    const dir = tempDir("freshrec-train-exit-");
    // A worker that does what train-worker.ts does up to "done", then stays alive as a deadlocked exit would.
    const hanging = join(dir, "hanging-worker.mjs");
    writeFileSync(
      hanging,
      [
        'import { writeSync } from "node:fs";',
        'process.once("message", () => {',
        '  writeSync(3, JSON.stringify({ type: "done", bestEpoch: 2, stoppedEarly: true, cpuSeconds: 1.5 }) + "\\n");',
        "  setInterval(() => undefined, 1000);",
        "});",
      ].join("\n"),
    );
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on("warning", onWarning);
    try {
      const started = Date.now();
      const done = await runWorker({} as TrainJob, {} as never, () => undefined, { file: hanging, execArgv: [] });
      expect(done).toEqual({ bestEpoch: 2, stoppedEarly: true, cpuSeconds: 1.5 });
      expect(Date.now() - started).toBeGreaterThanOrEqual(WORKER_EXIT_GRACE_MS - 100);
      expect(warnings.map((w) => (w as Error & { code?: string }).code)).toContain("FRESHREC_TRAIN_WORKER_KILLED");
    } finally {
      process.off("warning", onWarning);
    }
  }, 40_000);

  it("fails a worker that exits before it reports its model: nothing is taken for done", async () => {
    const dir = tempDir("freshrec-train-exit-");
    const crashing = join(dir, "crashing-worker.mjs");
    writeFileSync(crashing, ['process.once("message", () => {', "  process.exit(3);", "});"].join("\n"));
    await expect(runWorker({} as TrainJob, {} as never, () => undefined, { file: crashing, execArgv: [] })).rejects.toThrow(/training failed \(exit code 3\)/);
  });
});
