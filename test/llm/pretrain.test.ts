import { describe, expect, it } from "vitest";
import { VirtualClock } from "../../src/domain/clock.js";
import { ModelRegistry } from "../../src/llm/registry.js";
import { pretrainBaseModel } from "../../src/llm/pretrain.js";
import { CLUSTERS, TINY_SHAPE, toySamples } from "./fixtures.js";
import { tempDir } from "../temp-dir.js";

describe("pretrainBaseModel", () => {
  it("trains a base model, evaluates it against the most-popular baseline and registers it live", async () => {
    const ws = tempDir("freshrec-llm-");
    const clock = new VirtualClock(Date.parse("2025-02-01T00:00:00Z"));
    const toTransition = (s: ReturnType<typeof toySamples>[number]) => ({ ...s.prompt.history, next: s.answer });
    const result = await pretrainBaseModel({
      workspace: ws,
      clock,
      clusters: CLUSTERS,
      items: [{ id: "i1", clusterId: "baking", title: "sourdough bread" }],
      transitions: toySamples(300).map(toTransition),
      heldOut: toySamples(60, 11).map(toTransition),
      shape: TINY_SHAPE,
      epochs: 1,
    });
    expect(result.modelVersion).toBe("m000001");
    expect(result.status).toBe("live");
    expect(result.evaluation?.transitions).toBe(60);
    expect(result.evaluation?.mostPopularTop1).toBeGreaterThanOrEqual(0);
    const registry = new ModelRegistry(ws, clock);
    expect(registry.live()).toMatchObject({ version: "m000001", kind: "base", createdAt: clock.now() });
    registry.close();
  });
});
