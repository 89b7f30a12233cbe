/** A tiny freshrec model trained in seconds (TINY_SHAPE), shared by the backend tests that need a real model file. */
import { join } from "node:path";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { CLUSTERS, TINY_SHAPE, toySamples } from "./fixtures.js";

export async function trainTinyModel(workspace: string, name = "tiny.gguf"): Promise<string> {
  const trainer = new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } });
  const result = await trainer.train(toySamples(400), { outputPath: join(workspace, "models", name), epochs: 2, patience: 99 });
  return result.modelPath;
}

/** A log sink that drops everything (the servers' pino logs would flood the test output). */
export const silentLog = { write: () => undefined };
