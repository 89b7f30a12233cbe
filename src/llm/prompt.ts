/**
 * The one prompt template of freshrec, used by every backend (embedded, gguf, openai-compatible). Every artifact
 * made from it (model, table) records `PROMPT_TEMPLATE_HASH`, so a table can always say which wording produced it.
 *
 * The wording follows the reconstruction of the paper's Figure 1 (research/paper-notes.md §1.9) but is terse on
 * purpose: the embedded model reads every word of it for every one of the ~90k pairs of a table, so each word
 * costs table-build time. The parts that vary per pair come last: the batched scorer computes the prefix shared
 * by all pairs with the same first cluster once, so only the second cluster (and the RAG context) is paid per
 * pair. The answer is one cluster named by its exact description.
 *
 * @example
 * const text = renderPrompt({ history: { c1: "a", c2: "b" }, context: { successors: ["c"] } }, descriptions);
 * // "New interest for a user who watched: baking, desserts ; then: hiking, trails ; others then chose: jazz, vinyl ."
 */
import { createHash } from "node:crypto";
import type { History } from "../domain/types.js";
import { FreshrecError } from "../domain/errors.js";

/** Retrieved context for RAG: the pair's freshest top successor cluster(s), most frequent first. */
export interface PromptContext {
  readonly successors: readonly string[];
}

/** What a language model is asked: the two history clusters (ids), optionally with RAG context. */
export interface PromptInput {
  readonly history: History;
  readonly context?: PromptContext;
}

/** The template's parts; placeholders are `{c1}`, `{c2}` and `{successors}` (joined by `successorJoin`). */
export const PROMPT_TEMPLATE = {
  id: "freshrec-next-interest-v1",
  history: "New interest for a user who watched: {c1} ; then: {c2}",
  context: "; others then chose: {successors}",
  successorJoin: " ; ",
  end: ".",
} as const;

/** sha256 (hex, first 16) of the template source; recorded in every model and table made with it. */
export const PROMPT_TEMPLATE_HASH = createHash("sha256").update(JSON.stringify(PROMPT_TEMPLATE)).digest("hex").slice(0, 16);

/** Every literal word of the template, for the vocabulary. */
export function templateWords(): string[] {
  const text = [PROMPT_TEMPLATE.history, PROMPT_TEMPLATE.context, PROMPT_TEMPLATE.successorJoin, PROMPT_TEMPLATE.end].join(
    " ",
  );
  return text
    .replace(/\{[a-z0-9]+\}/g, " ")
    .split(/\s+/)
    .filter((w) => w.length > 0);
}

/** Renders the prompt text with the clusters' descriptions. Unknown cluster ids are bad input. */
export function renderPrompt(input: PromptInput, descriptions: ReadonlyMap<string, string>): string {
  const describe = (id: string): string => {
    const d = descriptions.get(id);
    if (d === undefined) throw new FreshrecError("BAD_INPUT", `prompt names an unknown cluster id ${JSON.stringify(id)}`);
    return d;
  };
  const parts = [PROMPT_TEMPLATE.history.replace("{c1}", describe(input.history.c1)).replace("{c2}", describe(input.history.c2))];
  const successors = input.context?.successors ?? [];
  if (successors.length > 0) {
    parts.push(PROMPT_TEMPLATE.context.replace("{successors}", successors.map(describe).join(PROMPT_TEMPLATE.successorJoin)));
  }
  parts.push(PROMPT_TEMPLATE.end);
  return parts.join(" ");
}

/**
 * Inverse of `renderPrompt`: the prompt a rendered text came from, or null when the text does not follow the
 * template or names a description outside `clusters`. Servers and trainers that receive prompts as text (an
 * OpenAI-compatible fine-tuning file) use it to recover the history and context.
 */
export function parsePrompt(text: string, descriptions: ReadonlyMap<string, string>): PromptInput | null {
  const idOf = new Map<string, string>();
  for (const [id, d] of descriptions) if (!idOf.has(d)) idOf.set(d, id);
  const [head, tail] = PROMPT_TEMPLATE.history.split("{c1}");
  const [middle] = tail.split("{c2}");
  const contextHead = PROMPT_TEMPLATE.context.split("{successors}")[0];
  const end = ` ${PROMPT_TEMPLATE.end}`;
  const body = text.trim();
  if (!body.startsWith(`${head}`) || !body.endsWith(end)) return null;
  const inner = body.slice(head.length, body.length - end.length);
  const split = inner.indexOf(middle);
  if (split < 0) return null;
  const c1 = idOf.get(inner.slice(0, split));
  let rest = inner.slice(split + middle.length);
  let successors: string[] = [];
  const at = rest.indexOf(` ${contextHead}`);
  if (at >= 0) {
    const listed = rest.slice(at + contextHead.length + 1).split(PROMPT_TEMPLATE.successorJoin);
    rest = rest.slice(0, at);
    const ids = listed.map((d) => idOf.get(d));
    if (ids.some((id) => id === undefined)) return null;
    successors = ids as string[];
  }
  const c2 = idOf.get(rest);
  if (c1 === undefined || c2 === undefined) return null;
  return successors.length > 0 ? { history: { c1, c2 }, context: { successors } } : { history: { c1, c2 } };
}
