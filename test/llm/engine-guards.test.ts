import koffi from "koffi";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  DECLARED_STRUCTS,
  EXPECTED_STRUCT_SIZES,
  PINNED_NODE_LLAMA_CPP_VERSION,
  assertPinnedEngine,
  installedNodeLlamaCppVersion,
} from "../../src/llm/engine/llama-api.js";
import { writeGguf, readGgufFile } from "../../src/llm/engine/gguf.js";
import { createModelFile, readModelFile } from "../../src/llm/engine/model-file.js";
import { buildVocabulary } from "../../src/llm/engine/vocabulary.js";
import { EmbeddedLanguageModel } from "../../src/llm/backends/embedded.js";
import { CLUSTERS, TINY_SHAPE } from "./fixtures.js";
import { tempDir } from "../temp-dir.js";

describe("engine guard rails", () => {
  it("declares the llama.cpp v0.4.0 struct layouts with the sizes measured in C (docs/engine.md)", () => {
    for (const [name, type] of Object.entries(DECLARED_STRUCTS)) {
      expect({ name, size: koffi.sizeof(type) }).toEqual({ name, size: EXPECTED_STRUCT_SIZES[name as keyof typeof EXPECTED_STRUCT_SIZES] });
    }
  });

  it("runs against the pinned node-llama-cpp and refuses any other version clearly", () => {
    expect(installedNodeLlamaCppVersion()).toBe(PINNED_NODE_LLAMA_CPP_VERSION);
    expect(() => assertPinnedEngine()).not.toThrow();
    expect(() => assertPinnedEngine("3.22.0")).toThrow(/needs node-llama-cpp 3\.21\.1 exactly.*3\.22\.0 is installed/);
    try {
      assertPinnedEngine("3.20.0");
    } catch (e) {
      expect(e).toMatchObject({ code: "ENGINE" });
    }
  });

  it("refuses corrupt, truncated and foreign GGUF files with an ENGINE error, never a crash", async () => {
    const dir = tempDir("freshrec-llm-");
    const vocab = buildVocabulary({ clusters: CLUSTERS });
    const good = join(dir, "good.gguf");
    createModelFile(good, vocab, TINY_SHAPE);
    expect(readModelFile(good).clusters.map((c) => c.id)).toEqual(CLUSTERS.map((c) => c.id));

    const garbage = join(dir, "garbage.gguf");
    writeFileSync(garbage, Buffer.from("this is not a model at all, just text"));
    expect(() => readModelFile(garbage)).toThrow(/not a valid GGUF.*wrong magic/);

    const { readFileSync } = await import("node:fs");
    const truncated = join(dir, "truncated.gguf");
    const bytes = readFileSync(good);
    writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
    expect(() => readGgufFile(truncated)).toThrow(/truncated/);

    const foreign = join(dir, "foreign.gguf");
    writeGguf(foreign, { kvs: [{ key: "general.architecture", type: "string", value: "llama" }], tensors: [] });
    expect(() => readModelFile(foreign)).toThrow(/no freshrec metadata/);

    for (const bad of [garbage, truncated, foreign, join(dir, "missing.gguf")]) {
      await expect(EmbeddedLanguageModel.open(bad)).rejects.toMatchObject({ code: "ENGINE" });
    }
  });
});
