/**
 * Does a model read its RAG context? (`freshrec evaluate context`.) For the days after a time T: the novel
 * transitions whose pair has a context a refresh at T would retrieve, and on them the hit@1 of serving the retrieved
 * successor itself, of the model without the context and with it, and how often the model with the context answers
 * the retrieved successor (follows it). A model that ignores its context scores the same with and without it; after
 * a drift (a month boundary of the synthetic platform) that is what makes in-prompt RAG worse than counting.
 *
 * @example
 * const use = await measureContextUse(events, model, Date.parse("2025-10-09"), { days: 2, rag: { positiveMin } });
 * use.followsContext; use.modelWithContextHit1;
 */
import type { EventStoreContract } from "../data/event-store.js";
import { DAY_MS } from "../domain/clock.js";
import { BadInputError } from "../domain/errors.js";
import type { PromptInput } from "../llm/prompt.js";
import { timedTransitions } from "../mining/transitions.js";
import type { PromptScorer } from "../update/generate.js";
import { contextFor, retrieveContexts, type RagOptions } from "../update/rag.js";

export interface ContextUse {
  /** The refresh time the contexts are retrieved at (ms). */
  readonly at: number;
  readonly days: number;
  /** Novel transitions of [at, at + days). */
  readonly transitions: number;
  /** Of those, the ones whose pair has a retrieved context; every rate below is over these (null when none). */
  readonly withContext: number;
  readonly successorHit1: number | null;
  readonly modelHit1: number | null;
  readonly modelWithContextHit1: number | null;
  /** Share whose answer with the context is the context's first successor. */
  readonly followsContext: number | null;
}

export async function measureContextUse(
  events: EventStoreContract,
  model: Pick<PromptScorer, "score">,
  at: number,
  options: { days: number; rag: RagOptions; signal?: AbortSignal },
): Promise<ContextUse> {
  if (!(options.days > 0)) throw new BadInputError(`evaluate context: days must be positive, got ${options.days}`);
  const snapshot = await retrieveContexts(events, at, options.rag);
  const transitions = await timedTransitions(events, { from: at, to: at + options.days * DAY_MS }, { positiveMin: options.rag.positiveMin ?? null, horizon: 1 });
  const asked = transitions.flatMap((t) => {
    const context = contextFor(snapshot, t.c1, t.c2);
    return context ? [{ next: t.next, history: { c1: t.c1, c2: t.c2 }, context }] : [];
  });
  const withContext: PromptInput[] = asked.map(({ history, context }) => ({ history, context }));
  const plain = await model.score(asked.map(({ history }) => ({ history })), 1, options.signal);
  const read = await model.score(withContext, 1, options.signal);
  let successor = 0;
  let memory = 0;
  let withIt = 0;
  let follows = 0;
  asked.forEach((a, i) => {
    const retrieved = a.context.successors[0];
    if (retrieved === a.next) successor++;
    if (plain[i][0]?.cluster === a.next) memory++;
    if (read[i][0]?.cluster === a.next) withIt++;
    if (read[i][0]?.cluster === retrieved) follows++;
  });
  const share = (k: number) => (asked.length === 0 ? null : k / asked.length);
  return {
    at,
    days: options.days,
    transitions: transitions.length,
    withContext: asked.length,
    successorHit1: share(successor),
    modelHit1: share(memory),
    modelWithContextHit1: share(withIt),
    followsContext: share(follows),
  };
}
