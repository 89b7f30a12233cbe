import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { tempDir } from "../temp-dir.js";

describe("model registry", () => {
  it("registers versions with lineage, sha256 and metrics, and keeps exactly one live model", async () => {
    const ws = tempDir("freshrec-llm-");
    const clock = new VirtualClock(Date.parse("2025-01-01T00:00:00Z"));
    const registry = new ModelRegistry(ws, clock);
    const file = join(registry.modelsDir, "a.gguf");
    writeFileSync(file, "weights");
    const base = await registry.register({ kind: "base", filePath: file, trainSamples: 10, metrics: { top1: 0.2 } });
    expect(base).toMatchObject({ version: "m000001", status: "candidate", parent: null, createdAt: clock.now() });
    expect(base.sha256).toMatch(/^[0-9a-f]{64}$/);

    registry.makeLive(base.version, "first base model");
    clock.advance(1000);
    const tuned = await registry.register({
      kind: "fine-tuned",
      parent: base.version,
      filePath: file,
      window: { from: 0, to: 10 },
      metrics: { exactMatchRate: 1 },
    });
    expect(tuned.parent).toBe("m000001");
    registry.makeLive(tuned.version, "gates passed");
    expect(registry.live()?.version).toBe("m000002");
    expect(registry.get("m000001")?.status).toBe("retired");
    expect(registry.list({ status: ["live"] })).toHaveLength(1);

    registry.setStatus("m000001", "rejected", "bad");
    expect(() => registry.makeLive("m000001", "again")).toThrow(/rejected/);
    expect(registry.history("m000001").map((h) => h.to)).toEqual(["candidate", "live", "retired", "rejected"]);
    expect(registry.updateMetrics("m000002", { testRecall: 0.02 }).metrics).toEqual({ exactMatchRate: 1, testRecall: 0.02 });
    registry.close();

    const reopened = new ModelRegistry(ws, clock);
    expect(reopened.live()?.version).toBe("m000002");
    reopened.close();
  });
});
