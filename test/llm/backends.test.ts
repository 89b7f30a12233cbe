import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { diagnoseBackend } from "../../src/cli/commands/doctor.js";
import { parseConfig } from "../../src/cli/config.js";
import { type OpenAiLanguageModel, languageModelBackend, responseCachePath, writeHostedModelFile } from "../../src/llm/backends/index.js";
import { writeGguf } from "../../src/llm/engine/gguf.js";
import { startLlmServer, type RunningLlmServer } from "../../src/llm/openai-server.js";
import { CLUSTERS, TINY_SHAPE } from "./fixtures.js";
import { silentLog, trainTinyModel } from "./tiny-model.js";
import { tempDir } from "../temp-dir.js";

const ws = tempDir("freshrec-backends-");
let tiny: Promise<string> | null = null;
const tinyModel = () => (tiny ??= trainTinyModel(ws));
let server: RunningLlmServer | null = null;
async function llmServer(): Promise<RunningLlmServer> {
  server ??= await startLlmServer({ modelPath: await tinyModel(), modelName: "tiny", dataDir: join(ws, "llm-server"), port: 0, logStream: silentLog });
  return server;
}
afterAll(async () => {
  await server?.close();
});
const llm = (section: object) => parseConfig({ llm: section }).llm;
/** A key in a variable, for the tests of configs that name one (freshrec llm serve itself ignores keys). */
const TEST_KEY_ENV = "FRESHREC_TEST_API_KEY";
process.env[TEST_KEY_ENV] = "sk-freshrec-test";
const clusters = async () => CLUSTERS;

describe("backend factory (config only)", () => {
  it("embedded: opens model version files; no version yet is NOT_FOUND", async () => {
    const backend = languageModelBackend(llm({}), { clusters: [], workspace: ws });
    await expect(backend.openModel(null)).rejects.toMatchObject({ code: "NOT_FOUND" });
    const model = await backend.openModel(await tinyModel());
    expect(model.info.backend).toBe("embedded");
    await model.close();
    expect(backend.trainer()).not.toBeNull();
  });

  it("gguf: the configured file, an adapter version on top of it, or another GGUF as the model", async () => {
    const base = await tinyModel();
    expect(() => languageModelBackend(llm({ backend: "gguf" }), { clusters: CLUSTERS, workspace: ws })).toThrow(/llm\.gguf\.modelPath/);
    const backend = languageModelBackend(llm({ backend: "gguf", gguf: { modelPath: base, contextSize: 256 } }), { clusters: CLUSTERS, workspace: ws });
    expect(backend.trainer()).toBeNull();
    const adapter = join(ws, "version-adapter.gguf");
    const d = TINY_SHAPE.embedding;
    writeGguf(adapter, {
      kvs: [
        { key: "general.architecture", type: "string", value: "llama" },
        { key: "general.type", type: "string", value: "adapter" },
        { key: "adapter.type", type: "string", value: "lora" },
        { key: "adapter.lora.alpha", type: "f32", value: 2 },
      ],
      tensors: [
        { name: "blk.0.attn_q.weight.lora_a", dims: [d, 2], data: new Float32Array(d * 2).fill(0.1) },
        { name: "blk.0.attn_q.weight.lora_b", dims: [2, d], data: new Float32Array(2 * d).fill(0.1) },
      ],
    });
    const adapted = await backend.openModel(adapter);
    expect(adapted.info.source).toBe(`${base}+lora:${adapter}@1`);
    await adapted.close();
    const plain = await backend.openModel(null);
    expect(plain.info.source).toBe(base);
    await plain.close();
  });

  it("openai: a hosted-model file names the server model; no version means the configured model", async () => {
    const s = await llmServer();
    const settings = llm({ backend: "openai", openai: { baseURL: `${s.url}/v1`, model: "tiny", maxRetries: 0, apiKeyEnv: TEST_KEY_ENV } });
    const backend = languageModelBackend(settings, { clusters: CLUSTERS, workspace: ws });
    const hostedFile = join(ws, "hosted.json");
    writeHostedModelFile(hostedFile, { baseURL: `${s.url}/v1`, model: "ft:tiny:x:y" });
    const hosted = await backend.openModel(hostedFile);
    expect(hosted.info.source).toBe(`${s.url}/v1#ft:tiny:x:y`);
    await hosted.close();
    const configured = await backend.openModel(null);
    expect(configured.info.source).toBe(`${s.url}/v1#tiny`);
    expect((await configured.generate({ history: { c1: "baking", c2: "hiking" } })).cluster).not.toBeNull();
    await configured.close();
    expect(responseCachePath(ws)).toBe(join(ws, "llm-cache.sqlite"));
    expect(backend.trainer()).not.toBeNull();
  });

  it("openai: a version file that is missing or is not a hosted-model file is an error naming it, not the configured model served instead", async () => {
    const s = await llmServer();
    const backend = languageModelBackend(llm({ backend: "openai", openai: { baseURL: `${s.url}/v1`, model: "tiny", maxRetries: 0, apiKeyEnv: TEST_KEY_ENV } }), { clusters: CLUSTERS, workspace: ws });
    const gone = join(ws, "models", "m000009-hosted.json");
    await expect(backend.openModel(gone)).rejects.toMatchObject({ name: "HostedModelFileError", code: "NOT_FOUND", path: gone, message: expect.stringContaining(`${gone}: the file does not exist`) });
    // An embedded model file (a workspace that switched backends) is not a model on the server.
    const embedded = await tinyModel();
    await expect(backend.openModel(embedded)).rejects.toMatchObject({ name: "HostedModelFileError", code: "BAD_INPUT", message: expect.stringContaining(`${embedded}: it is not a hosted-model file`) });
    const other = join(ws, "other.json");
    writeFileSync(other, JSON.stringify({ model: "tiny" }));
    await expect(backend.openModel(other)).rejects.toMatchObject({ code: "BAD_INPUT", path: other });
  });

  it("openai config: apiKeyEnv null (keyless), ranking auto by default (first-token on OpenAI's API, echo elsewhere), echoTemplate", async () => {
    const defaults = llm({ backend: "openai" }).openai;
    expect(defaults).toMatchObject({ apiKeyEnv: "OPENAI_API_KEY", ranking: "auto", echoTemplate: { prompt: "{prompt}", answer: " {answer}" } });
    const s = await llmServer();
    const keyless = languageModelBackend(llm({ backend: "openai", openai: { baseURL: `${s.url}/v1`, model: "tiny", maxRetries: 0, apiKeyEnv: null } }), { clusters: CLUSTERS, workspace: ws });
    const local = (await keyless.openModel(null)) as OpenAiLanguageModel;
    expect(local.info.ranking).toMatchObject({ method: "echo", configured: "auto", exact: true });
    expect((await local.score([{ history: { c1: "baking", c2: "hiking" } }], 3))[0]).toHaveLength(3);
    await local.close();
    // OpenAI's API cannot echo: auto ranks by first tokens there (opening sends nothing, so no server is needed).
    const hosted = languageModelBackend(llm({ backend: "openai", openai: { model: "gpt-4o-mini", apiKeyEnv: TEST_KEY_ENV } }), { clusters: CLUSTERS, workspace: ws });
    const remote = (await hosted.openModel(null)) as OpenAiLanguageModel;
    expect(remote.info.ranking).toMatchObject({ method: "first-token", configured: "auto", exact: false });
    await remote.close();
    // An explicit method is taken as it is, and echoTemplate reaches the echo request.
    const pinned = languageModelBackend(
      llm({ backend: "openai", openai: { baseURL: `${s.url}/v1`, model: "tiny", apiKeyEnv: null, ranking: "echo", echoTemplate: { prompt: "Q: {prompt}", answer: " {answer}." } } }),
      { clusters: CLUSTERS, workspace: ws },
    );
    const echo = (await pinned.openModel(null)) as OpenAiLanguageModel;
    expect(echo.info.ranking).toMatchObject({ method: "echo", configured: "echo" });
    expect((echo.echoBody({ history: { c1: "baking", c2: "hiking" } }).prompt as string[])[0]).toMatch(/^Q: .* [^ ]+\.$/s);
    await echo.close();
    expect(() => llm({ backend: "openai", openai: { ranking: "exact" } })).toThrow(/llm\.openai\.ranking/);
    expect(() => llm({ backend: "openai", openai: { echoTemplate: { answer: "no slot" } } })).toThrow(/llm\.openai\.echoTemplate\.answer.*"\{answer\}" exactly once/);
    expect(() => llm({ backend: "openai", openai: { apiKeyEnv: "" } })).toThrow(/llm\.openai\.apiKeyEnv/);
  });

  it("openai: an unset API key variable fails opening the model, naming the variable", async () => {
    const s = await llmServer();
    const backend = languageModelBackend(llm({ backend: "openai", openai: { baseURL: `${s.url}/v1`, model: "tiny", apiKeyEnv: "FRESHREC_TEST_NO_SUCH_KEY" } }), { clusters: CLUSTERS, workspace: ws });
    await expect(backend.openModel(null)).rejects.toMatchObject({ name: "MissingApiKeyError", code: "BAD_CONFIG", message: expect.stringContaining("FRESHREC_TEST_NO_SUCH_KEY") });
  });
});

describe("freshrec doctor", () => {
  it("passes every check of a working embedded workspace, and names the missing live model otherwise", async () => {
    const model = await tinyModel();
    const ok = await diagnoseBackend({ settings: llm({}), workspace: ws, liveModel: () => model, clusters });
    expect(ok.passed).toBe(true);
    expect(ok.checks.map((c) => c.name)).toEqual(["model", "load", "answer", "scoring"]);
    const missing = await diagnoseBackend({ settings: llm({}), workspace: ws, liveModel: () => null, clusters });
    expect(missing.passed).toBe(false);
    expect(missing.checks.at(-1)).toMatchObject({ name: "model", ok: false, detail: expect.stringContaining("freshrec pretrain") });
  });

  it("checks an openai-compatible server end to end and says what is wrong", async () => {
    const s = await llmServer();
    const settings = (extra: object) => llm({ backend: "openai", openai: { baseURL: `${s.url}/v1`, model: "tiny", apiKeyEnv: TEST_KEY_ENV, ...extra } });
    const ok = await diagnoseBackend({ settings: settings({}), workspace: ws, liveModel: () => null, clusters });
    expect(ok.passed).toBe(true);
    expect(ok.checks.map((c) => c.name)).toEqual(["api key", "server", "model", "clusters", "load", "answer", "scoring"]);
    const wrongModel = await diagnoseBackend({ settings: settings({ model: "gpt-nope", maxRetries: 0 }), workspace: ws, liveModel: () => null, clusters });
    expect(wrongModel.passed).toBe(false);
    expect(wrongModel.checks.find((c) => c.name === "model")).toMatchObject({ warning: true });
    expect(wrongModel.checks.at(-1)).toMatchObject({ name: "answer", detail: expect.stringMatching(/404.*llm\.openai\.model/) });
    const down = await diagnoseBackend({ settings: settings({ baseURL: "http://127.0.0.1:9/v1" }), workspace: ws, liveModel: () => null, clusters });
    expect(down.checks.at(-1)).toMatchObject({ name: "server", ok: false, detail: expect.stringMatching(/cannot reach http:\/\/127\.0\.0\.1:9\/v1.*llm\.openai\.baseURL/) });
    const noKey = await diagnoseBackend({ settings: settings({ baseURL: "https://api.openai.com/v1", apiKeyEnv: "FRESHREC_TEST_NO_SUCH_KEY" }), workspace: ws, liveModel: () => null, clusters });
    expect(noKey.checks.at(-1)).toMatchObject({ name: "api key", ok: false, detail: expect.stringContaining("FRESHREC_TEST_NO_SUCH_KEY") });
    // A local server needs its key too unless the config says it takes none: a failed check naming the variable.
    const localNoKey = await diagnoseBackend({ settings: settings({ apiKeyEnv: "FRESHREC_TEST_NO_SUCH_KEY" }), workspace: ws, liveModel: () => null, clusters });
    expect(localNoKey.passed).toBe(false);
    expect(localNoKey.checks.at(-1)).toMatchObject({ name: "api key", ok: false, detail: expect.stringMatching(/FRESHREC_TEST_NO_SUCH_KEY.*not set.*apiKeyEnv to null/) });
    const keyless = await diagnoseBackend({ settings: settings({ apiKeyEnv: null }), workspace: ws, liveModel: () => null, clusters });
    expect(keyless.passed, JSON.stringify(keyless.checks)).toBe(true);
    expect(keyless.checks[0]).toMatchObject({ name: "api key", ok: true, detail: expect.stringContaining("takes no key") });
    expect(keyless.checks.at(-1)).toMatchObject({ name: "scoring", detail: expect.stringMatching(/^ranking echo \(auto; exact\): top /) });
    const keylessOnOpenAi = await diagnoseBackend({ settings: settings({ baseURL: "https://api.openai.com/v1", apiKeyEnv: null }), workspace: ws, liveModel: () => null, clusters });
    expect(keylessOnOpenAi.checks.at(-1)).toMatchObject({ name: "api key", ok: false, detail: expect.stringContaining("always needs a key") });
  });

  it("CLI: exit code 1 with a JSON report when a check fails, 2 for a bad config field", () => {
    const bin = join(import.meta.dirname, "../../bin/freshrec.js");
    const config = join(ws, "down.json");
    writeFileSync(config, JSON.stringify({ llm: { backend: "openai", openai: { baseURL: "http://127.0.0.1:9/v1", model: "m", maxRetries: 0, apiKeyEnv: TEST_KEY_ENV } } }));
    const r = spawnSync(process.execPath, [bin, "--workspace", ws, "--config", config, "--json", "doctor"], { encoding: "utf8", timeout: 60_000 });
    expect(r.status).toBe(1);
    const report = JSON.parse(r.stdout) as { passed: boolean; checks: { name: string; ok: boolean }[] };
    expect(report.passed).toBe(false);
    expect(report.checks.at(-1)).toMatchObject({ name: "server", ok: false });
    writeFileSync(config, JSON.stringify({ llm: { backend: "vllm" } }));
    const bad = spawnSync(process.execPath, [bin, "--workspace", ws, "--config", config, "doctor"], { encoding: "utf8", timeout: 60_000 });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("llm.backend");
  });
});
