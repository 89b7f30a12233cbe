/**
 * The shared conformance suite of the model registry contract (`ModelRegistryContract`, src/llm/registry.ts). Every
 * adapter runs it: `registryConformance("sqlite", async () => (workspace, clock) => EmbeddedModelRegistry.open(workspace, clock))`.
 * `place` allocates a new, empty registry and returns a function that opens it for a workspace (again and again:
 * reopening must find what was committed).
 */
import { createHash } from "node:crypto";
import { mkdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { FreshrecError } from "../../src/domain/errors.js";
import type { ModelRegistryContract } from "../../src/llm/registry.js";
import { tempDir } from "../temp-dir.js";

export type RegistryPlace = () => Promise<(workspace: string, clock: VirtualClock) => Promise<ModelRegistryContract>>;

const T0 = Date.parse("2025-01-01T00:00:00Z");
const sha = (text: string) => createHash("sha256").update(text).digest("hex");

async function code(work: Promise<unknown>): Promise<string | undefined> {
  try {
    await work;
  } catch (error) {
    expect(error).toBeInstanceOf(FreshrecError);
    return (error as FreshrecError).code;
  }
  return undefined;
}

export function registryConformance(adapter: string, place: RegistryPlace): void {
  describe(`model registry conformance: ${adapter}`, () => {
    const open: ModelRegistryContract[] = [];
    afterEach(async () => {
      for (const r of open.splice(0)) await r.close();
    });

    async function registryIn(workspace: string, clock: VirtualClock, opener?: Awaited<ReturnType<RegistryPlace>>) {
      const registry = await (opener ?? (await place()))(workspace, clock);
      open.push(registry);
      return registry;
    }

    function modelFile(registry: ModelRegistryContract, name: string, bytes: string): string {
      mkdirSync(join(registry.modelsDir, name), { recursive: true });
      const file = join(registry.modelsDir, name, "model.gguf");
      writeFileSync(file, bytes);
      return file;
    }

    it("registers versions with lineage, sha256 and metrics, keeps exactly one live model, and keeps it all across reopen", async () => {
      const ws = tempDir("freshrec-registry-conf-");
      const clock = new VirtualClock(T0);
      const opener = await place();
      const registry = await registryIn(ws, clock, opener);
      expect(await registry.nextVersion()).toBe("m000001");
      const file = modelFile(registry, "m000001", "weights");
      const base = await registry.register({ kind: "base", filePath: file, trainSamples: 10, metrics: { top1: 0.2 } });
      expect(base).toMatchObject({ version: "m000001", status: "candidate", parent: null, createdAt: T0, filePath: file, external: false, sha256: sha("weights") });
      expect(await registry.live()).toBeNull();

      await registry.makeLive(base.version, "first base model");
      clock.advance(1000);
      const tuned = await registry.register({ kind: "fine-tuned", parent: base.version, filePath: file, window: { from: 0, to: 10 }, metrics: { exactMatchRate: 1 }, templateHash: "tmpl" });
      expect(tuned).toMatchObject({ version: "m000002", parent: "m000001", window: { from: 0, to: 10 }, templateHash: "tmpl", createdAt: T0 + 1000 });
      await registry.makeLive(tuned.version, "gates passed");
      expect((await registry.live())?.version).toBe("m000002");
      expect((await registry.get("m000001"))?.status).toBe("retired");
      expect(await registry.list({ status: ["live"] })).toHaveLength(1);
      expect((await registry.list({ kind: "base" })).map((m) => m.version)).toEqual(["m000001"]);
      expect(await registry.get("m000404")).toBeNull();

      await registry.setStatus("m000001", "rejected", "bad");
      await expect(registry.makeLive("m000001", "again")).rejects.toThrow(/rejected/);
      expect((await registry.history("m000001")).map((h) => h.to)).toEqual(["candidate", "live", "retired", "rejected"]);
      expect((await registry.history()).map((h) => [h.version, h.to])).toEqual([
        ["m000001", "candidate"],
        ["m000001", "live"],
        ["m000002", "candidate"],
        ["m000001", "retired"],
        ["m000002", "live"],
        ["m000001", "rejected"],
      ]);
      expect((await registry.history("m000002")).at(-1)).toMatchObject({ from: "candidate", to: "live", reason: "gates passed", at: T0 + 1000 });
      expect((await registry.updateMetrics("m000002", { testRecall: 0.02 })).metrics).toEqual({ exactMatchRate: 1, testRecall: 0.02 });
      expect(await registry.nextVersion()).toBe("m000003");

      const reopened = await registryIn(ws, clock, opener);
      expect((await reopened.live())?.version).toBe("m000002");
      expect(await reopened.list()).toEqual(await registry.list());
    });

    it("refuses what the lifecycle forbids: unknown versions (NOT_FOUND), registering as live (BAD_INPUT)", async () => {
      const registry = await registryIn(tempDir("freshrec-registry-conf-"), new VirtualClock(T0));
      const file = modelFile(registry, "m000001", "weights");
      expect(await code(registry.register({ kind: "base", filePath: file, status: "live" }))).toBe("BAD_INPUT");
      expect(await code(registry.register({ kind: "fine-tuned", parent: "m000404", filePath: file }))).toBe("NOT_FOUND");
      expect(await registry.list()).toEqual([]);
      expect(await code(registry.makeLive("m000404", "x"))).toBe("NOT_FOUND");
      expect(await code(registry.setStatus("m000404", "halted", "x"))).toBe("NOT_FOUND");
      expect(await code(registry.updateMetrics("m000404", {}))).toBe("NOT_FOUND");
      expect(await code(registry.modelFile("m000404"))).toBe("NOT_FOUND");
    });

    it("modelFile gives the file while it holds what was registered, and refuses it, naming the file and both hashes, once it changes", async () => {
      const registry = await registryIn(tempDir("freshrec-registry-conf-"), new VirtualClock(T0));
      const file = modelFile(registry, "m000001", "the registered weights");
      const v = await registry.register({ kind: "base", filePath: file });
      expect(await registry.modelFile(v.version)).toBe(file);
      expect(await registry.modelFile(v)).toBe(file);
      writeFileSync(file, "the registered weightz");
      // The hash is kept per file, modification time and size: move the time on, as a real rewrite would.
      utimesSync(file, new Date(Date.now() + 5000), new Date(Date.now() + 5000));
      const refusal = await registry.modelFile(v.version).catch((e: unknown) => e);
      expect(refusal).toBeInstanceOf(FreshrecError);
      expect((refusal as FreshrecError).code).toBe("BAD_INPUT");
      for (const part of [file, v.version, sha("the registered weights"), sha("the registered weightz")]) expect((refusal as Error).message).toContain(part);
      rmSync(file);
      await expect(registry.modelFile(v.version)).rejects.toThrow(file);
    });
  });
}
