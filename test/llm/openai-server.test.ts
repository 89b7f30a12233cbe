import { join } from "node:path";
import OpenAI, { toFile } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renderPrompt } from "../../src/llm/prompt.js";
import { startLlmServer, type RunningLlmServer } from "../../src/llm/openai-server.js";
import { CLUSTERS, toySamples } from "./fixtures.js";
import { silentLog, trainTinyModel } from "./tiny-model.js";
import { tempDir } from "../temp-dir.js";

const descriptions = new Map(CLUSTERS.map((c) => [c.id, c.description]));
const allDescriptions = CLUSTERS.map((c) => c.description);
const prompt = renderPrompt({ history: { c1: "baking", c2: "hiking" } }, descriptions);

describe("freshrec llm serve (OpenAI-compatible routes over the embedded model, real HTTP)", () => {
  let server: RunningLlmServer;
  let client: OpenAI;
  let ws: string;
  let modelPath: string;
  beforeAll(async () => {
    ws = tempDir("freshrec-llm-");
    modelPath = await trainTinyModel(ws);
    server = await startLlmServer({ modelPath, modelName: "tiny", dataDir: join(ws, "llm-server"), port: 0, logStream: silentLog });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  afterAll(async () => {
    await server?.close();
  });

  it("lists the served model", async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(["tiny"]);
  });

  it("answers under a json_schema enum with the constrained distribution as logprobs", async () => {
    const response = await client.chat.completions.create({
      model: "tiny",
      messages: [{ role: "system", content: "ignored" }, { role: "user", content: prompt }],
      response_format: {
        type: "json_schema",
        json_schema: { name: "answer", strict: true, schema: { type: "object", properties: { cluster: { type: "string", enum: allDescriptions } }, required: ["cluster"], additionalProperties: false } },
      },
      logprobs: true,
      top_logprobs: 20,
      temperature: 0,
    });
    const content = response.choices[0].message.content ?? "";
    const answer = (JSON.parse(content) as { cluster: string }).cluster;
    expect(allDescriptions).toContain(answer);
    const tokens = response.choices[0].logprobs?.content ?? [];
    expect(tokens.map((t) => t.token).join("")).toBe(content);
    const alternatives = tokens[1].top_logprobs;
    expect(alternatives.map((a) => a.token).sort()).toEqual([...allDescriptions].sort());
    expect(alternatives.reduce((s, a) => s + Math.exp(a.logprob), 0)).toBeCloseTo(1, 5);
    expect(alternatives[0].token).toBe(answer);
    expect(response.usage?.prompt_tokens).toBeGreaterThan(0);
  });

  it("answers vLLM's guided_choice with one of the choices as plain text", async () => {
    const choices = allDescriptions.slice(2, 5);
    const response = await client.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: prompt }],
      // vLLM's extension, passed through by the openai client as an extra body field.
      ...({ guided_choice: choices } as object),
    } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
    expect(choices).toContain(response.choices[0].message.content);
  });

  it("generates unconstrained text, greedy at temperature 0 and seeded when sampling", async () => {
    const ask = (temperature: number, seed: number) =>
      client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: prompt }], temperature, seed, max_tokens: 8 });
    const greedy = await ask(0, 1);
    expect(typeof greedy.choices[0].message.content).toBe("string");
    expect((await ask(0, 2)).choices[0].message.content).toBe(greedy.choices[0].message.content);
    const hot = await ask(2, 7);
    expect((await ask(2, 7)).choices[0].message.content).toBe(hot.choices[0].message.content);
    expect(server.stats.unconstrained).toBeGreaterThanOrEqual(4);
  });

  it("refuses what it cannot do with OpenAI-style errors naming the parameter", async () => {
    await expect(
      client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: prompt }], ...({ guided_choice: ["not a cluster"] } as object) } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming),
    ).rejects.toMatchObject({ status: 400, param: "response_format" });
    await expect(client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: prompt }] })).rejects.toMatchObject({ status: 404, param: "model" });
    await expect(client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: prompt }], top_logprobs: 50, logprobs: true })).rejects.toMatchObject({ status: 400, param: "top_logprobs" });
  });

  it("legacy completions: echo returns every prompt token with its log-probability, max_tokens 0 generates nothing", async () => {
    const texts = allDescriptions.map((d) => `${prompt} ${d}`);
    const response = await client.completions.create({ model: "tiny", prompt: texts, echo: true, logprobs: 3, max_tokens: 0 });
    expect(response.object).toBe("text_completion");
    expect(response.choices.map((c) => c.index)).toEqual(texts.map((_, i) => i));
    const answerLogprobs = response.choices.map((choice, i) => {
      expect(choice.text).toBe(texts[i]);
      const lp = choice.logprobs!;
      // The token pieces are the text, and each offset is where its piece begins.
      expect(lp.tokens!.join("")).toBe(texts[i]);
      lp.tokens!.forEach((t, k) => expect(texts[i].slice(lp.text_offset![k], lp.text_offset![k] + t.length)).toBe(t));
      for (const x of lp.token_logprobs!) expect(x).toBeLessThanOrEqual(0);
      // Each position lists the token itself among at most 3 + 1 alternatives.
      lp.top_logprobs!.forEach((alternatives, k) => {
        expect(alternatives[lp.tokens![k]]).toBe(lp.token_logprobs![k]);
        expect(Object.keys(alternatives).length).toBeLessThanOrEqual(4);
      });
      // One token per cluster: the description is the last token.
      expect(lp.tokens!.at(-1)).toBe(` ${allDescriptions[i]}`);
      return lp.token_logprobs!.at(-1)!;
    });
    // The prompt's tokens are the same for every text, and so are their log-probabilities.
    const first = response.choices[0].logprobs!;
    for (const c of response.choices) expect(c.logprobs!.token_logprobs!.slice(0, -1)).toEqual(first.token_logprobs!.slice(0, -1));
    // Normalised over the clusters, the echoed answer log-probabilities are the chat route's constrained distribution.
    const chat = await client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: prompt }], ...({ guided_choice: allDescriptions } as object), logprobs: true, top_logprobs: 20 } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
    const constrained = new Map(chat.choices[0].logprobs!.content![0].top_logprobs.map((a) => [a.token, a.logprob]));
    const norm = Math.log(answerLogprobs.reduce((s, x) => s + Math.exp(x), 0));
    allDescriptions.forEach((d, i) => expect(answerLogprobs[i] - norm).toBeCloseTo(constrained.get(d)!, 4));
    expect(response.usage).toMatchObject({ completion_tokens: 0 });
    expect(response.usage!.prompt_tokens).toBe(response.choices.reduce((n, c) => n + c.logprobs!.tokens!.length + 1, 0));
  });

  it("legacy completions: generation after the prompt, echoed or not, greedy at temperature 0", async () => {
    const plain = await client.completions.create({ model: "tiny", prompt, max_tokens: 4, temperature: 0 });
    expect(plain.choices[0].logprobs).toBeNull();
    const echoed = await client.completions.create({ model: "tiny", prompt, max_tokens: 4, temperature: 0, echo: true, logprobs: 0 });
    expect(echoed.choices[0].text).toBe(prompt + plain.choices[0].text);
    const lp = echoed.choices[0].logprobs!;
    expect(lp.tokens!.join("")).toBe(echoed.choices[0].text);
    expect(lp.tokens!.length).toBe(echoed.usage!.prompt_tokens - 1 + echoed.usage!.completion_tokens);
    // Generated tokens start where the prompt ends.
    if (echoed.usage!.completion_tokens > 0) expect(lp.text_offset![echoed.usage!.prompt_tokens - 1]).toBe(prompt.length);
  });

  it("legacy completions: refuses what it does not do, naming the parameter", async () => {
    const ask = (extra: object) => client.completions.create({ model: "tiny", prompt, max_tokens: 0, ...extra } as OpenAI.Completions.CompletionCreateParamsNonStreaming);
    await expect(ask({ prompt: [1, 2, 3] })).rejects.toMatchObject({ status: 400, param: "prompt" });
    await expect(ask({ stop: ["."] })).rejects.toMatchObject({ status: 400, param: "stop" });
    await expect(ask({ n: 2 })).rejects.toMatchObject({ status: 400, param: "n" });
    await expect(ask({ logprobs: 21 })).rejects.toMatchObject({ status: 400, param: "logprobs" });
    await expect(ask({ model: "nope" })).rejects.toMatchObject({ status: 404, param: "model" });
  });

  it('descriptionTokens "words": descriptions are read and answered as their word tokens, several per answer', async () => {
    const words = await startLlmServer({ modelPath, modelName: "tiny", dataDir: join(ws, "llm-server-words"), port: 0, logStream: silentLog, descriptionTokens: "words" });
    try {
      const wordsClient = new OpenAI({ baseURL: `${words.url}/v1`, apiKey: "unused", maxRetries: 0 });
      const response = await wordsClient.chat.completions.create({
        model: "tiny",
        messages: [{ role: "user", content: prompt }],
        response_format: { type: "json_schema", json_schema: { name: "answer", strict: true, schema: { type: "object", properties: { cluster: { type: "string", enum: allDescriptions } }, required: ["cluster"], additionalProperties: false } } },
        logprobs: true,
        top_logprobs: 20,
      });
      const content = response.choices[0].message.content ?? "";
      const answer = (JSON.parse(content) as { cluster: string }).cluster;
      expect(allDescriptions).toContain(answer);
      const tokens = response.choices[0].logprobs!.content!;
      expect(tokens.map((t) => t.token).join("")).toBe(content);
      // The fixed JSON, then one token per word of the answer.
      expect(tokens.length).toBe(2 + answer.split(" ").length);
      // The first step is a distribution over the descriptions' first words.
      const first = tokens[1].top_logprobs;
      expect(first.map((a) => a.token).sort()).toEqual([...new Set(allDescriptions.map((d) => d.split(" ")[0]))].sort());
      expect(first.reduce((s, a) => s + Math.exp(a.logprob), 0)).toBeCloseTo(1, 5);
      // Echo gives every word of an answer its own token.
      const echoed = await wordsClient.completions.create({ model: "tiny", prompt: `${prompt} chess, openings`, echo: true, logprobs: 0, max_tokens: 0 });
      expect(echoed.choices[0].logprobs!.tokens!.slice(-2)).toEqual([" chess,", " openings"]);
    } finally {
      await words.close();
    }
  });

  it("fine-tunes the served model from an uploaded chat JSONL and serves the result", async () => {
    const lines = toySamples(120, 5).map((s) =>
      JSON.stringify({ messages: [{ role: "user", content: renderPrompt(s.prompt, descriptions) }, { role: "assistant", content: descriptions.get(s.answer) }] }),
    );
    const file = await client.files.create({ file: await toFile(Buffer.from(lines.join("\n")), "train.jsonl"), purpose: "fine-tune" });
    expect(file.bytes).toBeGreaterThan(0);
    const bad = await client.files.create({ file: await toFile(Buffer.from('{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"x"}]}'), "bad.jsonl"), purpose: "fine-tune" });
    await expect(client.fineTuning.jobs.create({ model: "tiny", training_file: bad.id })).rejects.toMatchObject({ status: 400, param: "training_file" });

    const job = await client.fineTuning.jobs.create({ model: "tiny", training_file: file.id, hyperparameters: { n_epochs: 1 }, suffix: "test" });
    let current = job;
    for (let i = 0; i < 600 && !["succeeded", "failed", "cancelled"].includes(current.status); i++) {
      await new Promise((r) => setTimeout(r, 100));
      current = await client.fineTuning.jobs.retrieve(job.id);
    }
    expect(current.status).toBe("succeeded");
    expect(current.fine_tuned_model).toMatch(/^ft:tiny:test:/);
    expect(current.trained_tokens).toBeGreaterThan(0);
    const events = await client.fineTuning.jobs.listEvents(job.id);
    expect(events.data.some((e) => e.type === "metrics")).toBe(true);
    expect((await client.models.list()).data.map((m) => m.id)).toContain(current.fine_tuned_model);
    const answer = await client.chat.completions.create({
      model: current.fine_tuned_model!,
      messages: [{ role: "user", content: prompt }],
      ...({ guided_choice: allDescriptions } as object),
    } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
    expect(allDescriptions).toContain(answer.choices[0].message.content);
  });

  it("fine-tunes with the training section it is given (bf16 products, the product's default)", async () => {
    const v2 = await startLlmServer({ modelPath, modelName: "tiny", dataDir: join(ws, "llm-server-bf16"), port: 0, logStream: silentLog, training: { engine: "ggml", precision: "bf16" } });
    try {
      const v2Client = new OpenAI({ baseURL: `${v2.url}/v1`, apiKey: "unused", maxRetries: 0 });
      const lines = toySamples(120, 7).map((s) =>
        JSON.stringify({ messages: [{ role: "user", content: renderPrompt(s.prompt, descriptions) }, { role: "assistant", content: descriptions.get(s.answer) }] }),
      );
      const file = await v2Client.files.create({ file: await toFile(Buffer.from(lines.join("\n")), "train.jsonl"), purpose: "fine-tune" });
      const job = await v2Client.fineTuning.jobs.create({ model: "tiny", training_file: file.id, hyperparameters: { n_epochs: 2 }, suffix: "v2" });
      let current = job;
      for (let i = 0; i < 600 && !["succeeded", "failed", "cancelled"].includes(current.status); i++) {
        await new Promise((r) => setTimeout(r, 100));
        current = await v2Client.fineTuning.jobs.retrieve(job.id);
      }
      expect(current.status).toBe("succeeded");
      // The train loss is the answer token's over the whole vocabulary (measured 3.27 and 3.10 with f32 products).
      const metrics = (await v2Client.fineTuning.jobs.listEvents(job.id)).data.filter((e) => e.type === "metrics");
      expect(metrics).toHaveLength(2);
      for (const m of metrics) expect((m.data as { train_loss: number }).train_loss).toBeGreaterThan(2.5);
      const answer = await v2Client.chat.completions.create({
        model: current.fine_tuned_model!,
        messages: [{ role: "user", content: prompt }],
        ...({ guided_choice: allDescriptions } as object),
      } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
      expect(allDescriptions).toContain(answer.choices[0].message.content);
    } finally {
      await v2.close();
    }
  });
});
