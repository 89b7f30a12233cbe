/** A tiny freshrec model trained in seconds (TINY_SHAPE), shared by the backend tests that need a real model file. */
import { join } from "node:path";
import { writeGguf } from "../../src/llm/engine/gguf.js";
import { EmbeddedTrainer } from "../../src/llm/engine/trainer.js";
import { CLUSTERS, TINY_SHAPE, toySamples } from "./fixtures.js";

export async function trainTinyModel(workspace: string, name = "tiny.gguf"): Promise<string> {
  const trainer = new EmbeddedTrainer({ init: { clusters: CLUSTERS, shape: TINY_SHAPE } });
  const result = await trainer.train(toySamples(400), { outputPath: join(workspace, "models", name), epochs: 2, patience: 99 });
  return result.modelPath;
}

/** A log sink that drops everything (the servers' pino logs would flood the test output). */
export const silentLog = { write: () => undefined };

/** A LoRA adapter on every layer's attn_q (the adapter GGUF layout of docs/engine.md, "Model files"). */
export function writeLora(path: string, value: number): void {
  const d = TINY_SHAPE.embedding;
  const r = 4;
  const tensors = [];
  for (let i = 0; i < TINY_SHAPE.layers; i++) {
    tensors.push({ name: `blk.${i}.attn_q.weight.lora_a`, dims: [d, r], data: new Float32Array(d * r).fill(value) });
    tensors.push({ name: `blk.${i}.attn_q.weight.lora_b`, dims: [r, d], data: new Float32Array(r * d).map((_, k) => (k % 3 === 0 ? value : -value)) });
  }
  writeGguf(path, {
    kvs: [
      { key: "general.architecture", type: "string", value: "llama" },
      { key: "general.type", type: "string", value: "adapter" },
      { key: "adapter.type", type: "string", value: "lora" },
      { key: "adapter.lora.alpha", type: "f32", value: r },
      { key: "general.alignment", type: "u32", value: 32 },
    ],
    tensors,
  });
}
