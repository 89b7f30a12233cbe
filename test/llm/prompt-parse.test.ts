import { expect, it } from "vitest";
import { parsePrompt, renderPrompt } from "../../src/llm/prompt.js";
it("roundtrips", () => {
  const d = new Map([["a", "baking, desserts"], ["b", "hiking"], ["c", "jazz ; vinyl x"]]);
  for (const p of [{ history: { c1: "a", c2: "b" } }, { history: { c1: "b", c2: "a" }, context: { successors: ["a", "b"] } }]) {
    expect(parsePrompt(renderPrompt(p, d), d)).toEqual(p);
  }
  expect(parsePrompt("hello", d)).toBeNull();
});
