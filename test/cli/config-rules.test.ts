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
});
