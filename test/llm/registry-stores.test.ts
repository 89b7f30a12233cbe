/**
 * The model registry contract on both adapters (the workspace's SQLite file, PostgreSQL on a real throwaway server),
 * and what only a registry shared by hosts has to get right: files found relative to each host's models folder,
 * files outside it refused, concurrent writers.
 */
import { cpSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { FreshrecError } from "../../src/domain/errors.js";
import { PostgresModelRegistry } from "../../src/llm/postgres-registry.js";
import { EmbeddedModelRegistry } from "../../src/llm/registry.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { registryConformance } from "./registry-conformance.js";
import { tempDir } from "../temp-dir.js";

const database = usePostgresCluster();
const T0 = Date.parse("2025-01-01T00:00:00Z");

registryConformance("sqlite", async () => async (workspace, clock) => EmbeddedModelRegistry.open(workspace, clock));
registryConformance("postgres", async () => {
  const url = await database();
  return (workspace, clock) => PostgresModelRegistry.open(url, workspace, clock);
});

describe("PostgresModelRegistry shared by hosts", () => {
  it("records files relative to the models folder, so each host opens its own copy; a file outside it is refused", async () => {
    const url = await database();
    const root = tempDir("freshrec-pg-registry-");
    const a = await PostgresModelRegistry.open(url, join(root, "host-a"), new VirtualClock(T0));
    mkdirSync(join(a.modelsDir, "m000001"), { recursive: true });
    const file = join(a.modelsDir, "m000001", "model.gguf");
    writeFileSync(file, "weights");
    const v = await a.register({ kind: "base", filePath: file });
    await a.makeLive(v.version, "first");

    // Host b has the same models folder at its own path (a copy here; a shared mount in a deployment).
    cpSync(join(root, "host-a", "models"), join(root, "host-b", "models"), { recursive: true });
    const b = await PostgresModelRegistry.open(url, join(root, "host-b"), new VirtualClock(T0));
    const live = await b.live();
    expect(live?.filePath).toBe(join(root, "host-b", "models", "m000001", "model.gguf"));
    expect(await b.modelFile(live!)).toBe(join(root, "host-b", "models", "m000001", "model.gguf"));

    const outside = join(root, "downloads", "user.gguf");
    mkdirSync(join(root, "downloads"));
    writeFileSync(outside, "a user's gguf");
    const refusal = await b.register({ kind: "base", filePath: outside }).catch((e: unknown) => e);
    expect(refusal).toBeInstanceOf(FreshrecError);
    expect((refusal as FreshrecError).code).toBe("BAD_INPUT");
    expect((refusal as Error).message).toContain(outside);
    expect((refusal as Error).message).toContain(join(root, "host-b", "models"));
    expect(await b.list()).toHaveLength(1);
    await a.close();
    await b.close();
  });

  it("two processes registering and making models live at once: distinct versions, exactly one live model", async () => {
    const url = await database();
    const ws = tempDir("freshrec-pg-registry-");
    const [a, b] = [await PostgresModelRegistry.open(url, ws, new VirtualClock(T0)), await PostgresModelRegistry.open(url, ws, new VirtualClock(T0))];
    const file = join(a.modelsDir, "model.gguf");
    writeFileSync(file, "weights");
    const registered = await Promise.all(Array.from({ length: 8 }, (_, i) => (i % 2 ? a : b).register({ kind: "base", filePath: file })));
    expect(new Set(registered.map((m) => m.version)).size).toBe(8);
    await Promise.all(registered.map((m, i) => (i % 2 ? b : a).makeLive(m.version, "race")));
    expect(await a.list({ status: ["live"] })).toHaveLength(1);
    expect((await b.list({ status: ["retired"] })).length).toBe(7);
    await a.close();
    await b.close();
  });

  it("refuses a database it cannot reach, naming it without the password", async () => {
    const error = await PostgresModelRegistry.open("postgres://me:secret@127.0.0.1:1/nowhere", tempDir("freshrec-llm-"), new VirtualClock(T0)).catch((e: unknown) => e);
    expect((error as Error).message).toMatch(/^cannot open the model registry postgres:\/\/me:\*\*\*@127\.0\.0\.1:1\/nowhere: /);
    expect((error as Error).message).not.toContain("secret");
  });
});
