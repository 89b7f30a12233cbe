/** Rules across config sections: a combination that could never do what it says is refused where the file is read. */
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/cli/config.js";
import { ConfigError } from "../../src/domain/errors.js";

describe("config rules across sections", () => {
  it("refuses the drift trigger with prompted refreshes (they fit no prior weight, so it would never fine-tune)", () => {
    expect(() => parseConfig({ finetune: { trigger: "drift" }, rag: { method: "prompt" } }, "f.json")).toThrow(ConfigError);
    expect(() => parseConfig({ finetune: { trigger: "drift" }, rag: { method: "prompt" } }, "f.json")).toThrow(/f\.json: field "finetune\.trigger": got "drift"; expected "schedule" with rag\.method "prompt"/);
    expect(parseConfig({ finetune: { trigger: "drift" } }).rag.method).toBe("fusion");
    expect(parseConfig({ rag: { method: "prompt" } }).finetune.trigger).toBe("schedule");
  });

  it("refuses fusion windows none of which can hold the longest fit slice, as a refresh would", () => {
    const file = { rag: { fusion: { windowsDays: [3, 7, 14], fitMaxDays: 28 } } };
    expect(() => parseConfig(file, "f.json")).toThrow(ConfigError);
    expect(() => parseConfig(file, "f.json")).toThrow(/f\.json: field "rag\.fusion\.windowsDays": got \[3,7,14\]; expected a window that holds the longest fit slice \(fitMaxDays 28\); the longest is 14 days/);
    expect(parseConfig({ rag: { fusion: { windowsDays: [3, 7, 14], fitMaxDays: 14 } } }).rag.fusion.windowsDays).toEqual([3, 7, 14]);
  });

  it("refuses a server period longer than a timer can wait (Node would fire it every millisecond instead)", () => {
    expect(() => parseConfig({ serve: { groundingRebuildMinutes: 40_000 } }, "f.json")).toThrow(/f\.json: field "serve\.groundingRebuildMinutes": .*at most 35791 minutes/);
    expect(() => parseConfig({ serve: { reloadIntervalMs: 2 ** 31 } }, "f.json")).toThrow(/field "serve\.reloadIntervalMs": .*at most 2147483647 ms/);
    expect(parseConfig({ serve: { groundingRebuildMinutes: 35_791, reloadIntervalMs: 2 ** 31 - 1 } }).serve.groundingRebuildMinutes).toBe(35_791);
  });
});
