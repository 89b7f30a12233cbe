/**
 * Progress lines as a CI log shows them (stderr not a terminal): training progress counts percent of an epoch, so
 * the lines must not call it steps, and an epoch ends at 100% even when its last step event came before it.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { progressSink, trainingProgress } from "../../src/cli/progress.js";

let written: string;

beforeEach(() => {
  written = "";
  vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
    written += String(chunk);
    return true;
  });
});

afterEach(() => vi.restoreAllMocks());

describe("line progress", () => {
  it("ends each training epoch at 100% and says what it counted", () => {
    expect(process.stderr.isTTY).toBeFalsy();
    const logged: string[] = [];
    const onEvent = trainingProgress(progressSink(), (line) => logged.push(line), "pretraining");
    for (const fraction of [0.1, 0.5, 0.97]) onEvent({ type: "step", epoch: 1, epochs: 2, fraction, tokensPerSecond: 2000 });
    onEvent({ type: "epoch", epoch: 1, epochs: 2, learningRate: 1e-3, trainLoss: 1.5, trainAccuracy: 0.4, validationLoss: null, validationAccuracy: null, tokensPerSecond: 2000, seconds: 3, checkpoint: "epoch-001.gguf" });
    const lines = written.trim().split("\n");
    expect(lines[0]).toBe("pretraining epoch 1/2: started");
    expect(lines).toContain("pretraining epoch 1/2: 100/100 (100%) ");
    expect(lines.at(-1)).toBe("pretraining epoch 1/2: done (100 of 100)");
    expect(written).not.toContain("steps");
    expect(logged).toEqual(["pretraining epoch 1: train loss 1.500 accuracy 0.400 (2000 tok/s)"]);
  });

  it("reports how many of the planned units a job did", () => {
    const sink = progressSink();
    sink.start("synthesizing events", 300_000);
    sink.update(290_549);
    sink.stop();
    expect(written.trim().split("\n").at(-1)).toBe("synthesizing events: done (290549 of 300000)");
  });
});
