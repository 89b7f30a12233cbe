import { join } from "node:path";
import { describe, expect, it, afterAll } from "vitest";
import { GgufLanguageModel, descriptionGrammar } from "../../src/llm/backends/gguf.js";
import { languageModelConformance } from "./conformance.js";
import { CLUSTERS, tempWorkspace } from "./fixtures.js";
import { trainTinyModel, writeLora } from "./tiny-model.js";

const ws = tempWorkspace("freshrec-gguf-");
let modelPromise: Promise<string> | null = null;
/** A GGUF written and trained by freshrec's own engine: to node-llama-cpp it is just another llama GGUF file. */
const tinyGguf = () => (modelPromise ??= trainTinyModel(ws));

languageModelConformance("gguf (node-llama-cpp, freshrec-written GGUF)", async () => ({
  model: await GgufLanguageModel.open({ modelPath: await tinyGguf(), clusters: CLUSTERS, contextSize: 256 }),
}));

describe("gguf backend", () => {
  const opened: GgufLanguageModel[] = [];
  afterAll(async () => {
    for (const m of opened) await m.close();
  });

  it("writes a grammar that admits exactly the descriptions, quotes escaped", () => {
    const g = descriptionGrammar(['say "hi"', "back\\slash"]);
    expect(g).toContain('"say \\"hi\\""');
    expect(g).toContain('"back\\\\slash"');
  });

  it("applies LoRA adapters from files (a fine-tune delivered as an adapter changes the answers' scores)", async () => {
    const modelPath = await tinyGguf();
    const adapter = join(ws, "adapter.gguf");
    writeLora(adapter, 0.5);
    const plain = await GgufLanguageModel.open({ modelPath, clusters: CLUSTERS, contextSize: 256 });
    opened.push(plain);
    const adapted = await GgufLanguageModel.open({ modelPath, clusters: CLUSTERS, contextSize: 256, loraAdapters: [{ path: adapter, scale: 1 }] });
    opened.push(adapted);
    expect(adapted.info.source).toContain("+lora:");
    const prompt = [{ history: { c1: "baking", c2: "hiking" } }];
    const [a] = await plain.score(prompt, 6);
    const [b] = await adapted.score(prompt, 6);
    expect(b.map((r) => r.score)).not.toEqual(a.map((r) => r.score));
    expect((await adapted.generate(prompt[0])).cluster).not.toBeNull();
  });

  it("refuses missing files naming the config field", async () => {
    await expect(GgufLanguageModel.open({ modelPath: join(ws, "missing.gguf"), clusters: CLUSTERS })).rejects.toMatchObject({ code: "BAD_INPUT", message: expect.stringContaining("llm.gguf.modelPath") });
    await expect(GgufLanguageModel.open({ modelPath: await tinyGguf(), clusters: CLUSTERS, loraAdapters: [{ path: join(ws, "nope.gguf") }] })).rejects.toMatchObject({ message: expect.stringContaining("llm.gguf.loraAdapters") });
  });
});
