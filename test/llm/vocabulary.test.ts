import { describe, expect, it } from "vitest";
import { PROMPT_TEMPLATE_HASH, renderPrompt } from "../../src/llm/prompt.js";
import { BOS_ID, BYTE_BASE, CLUSTER_BASE, buildVocabulary } from "../../src/llm/engine/vocabulary.js";
import { CLUSTERS } from "./fixtures.js";

describe("vocabulary and prompt template", () => {
  const vocab = buildVocabulary({ clusters: CLUSTERS, extraText: ["the best sourdough bread", "bread crumbs"] });

  it("lays out specials, 256 byte tokens, one answer token per cluster, then words", () => {
    expect(vocab.tokens.slice(0, 3)).toEqual(["<unk>", "<s>", "</s>"]);
    expect(vocab.tokens[BYTE_BASE]).toBe("<0x00>");
    expect(vocab.tokens[BYTE_BASE + 255]).toBe("<0xFF>");
    CLUSTERS.forEach((c, i) => expect(vocab.clusterToken(c.id)).toBe(CLUSTER_BASE + i));
    expect(vocab.tokens[vocab.clusterToken("baking")]).toBe("▁baking,▁desserts,▁pastry");
    expect(vocab.tokens).toContain("▁bread");
  });

  it("renders one template with and without RAG context; cluster descriptions become their answer tokens", () => {
    const plain = renderPrompt({ history: { c1: "baking", c2: "jazz" } }, vocab.descriptions);
    expect(plain).toBe("New interest for a user who watched: baking, desserts, pastry ; then: jazz, vinyl, saxophone .");
    const rag = renderPrompt({ history: { c1: "baking", c2: "jazz" }, context: { successors: ["chess"] } }, vocab.descriptions);
    expect(rag).toContain("others then chose: chess, openings");
    const ids = vocab.encode(plain);
    expect(ids).toContain(vocab.clusterToken("baking"));
    expect(ids).toContain(vocab.clusterToken("jazz"));
    expect(vocab.decode([BOS_ID, ...ids])).toBe(plain);
  });

  it("falls back to bytes for unknown words and decodes them back", () => {
    const ids = vocab.encode("zyzzyva ümlaut");
    expect(ids.every((t) => t >= BYTE_BASE && t < CLUSTER_BASE)).toBe(true);
    expect(vocab.decode(ids)).toBe("zyzzyva ümlaut");
  });

  it("hashes deterministically and changes with the clusters", () => {
    expect(buildVocabulary({ clusters: CLUSTERS, extraText: ["the best sourdough bread", "bread crumbs"] }).hash).toBe(vocab.hash);
    expect(buildVocabulary({ clusters: CLUSTERS.slice(1) }).hash).not.toBe(vocab.hash);
    expect(PROMPT_TEMPLATE_HASH).toMatch(/^[0-9a-f]{16}$/);
  });

  it("refuses duplicate ids and empty descriptions as bad input", () => {
    expect(() => buildVocabulary({ clusters: [...CLUSTERS, CLUSTERS[0]] })).toThrow(/duplicate cluster id/);
    expect(() => buildVocabulary({ clusters: [{ id: "x", description: " " }] })).toThrow(/no description/);
  });
});
