/**
 * Client-side pacing of requests to a remote model: at most `concurrency` in flight, and within any 60 s window at
 * most `requestsPerMinute` requests and `tokensPerMinute` tokens (as estimated before sending). Staying under the
 * provider's limits is cheaper than being answered 429 and retrying; retries (with backoff) still cover the rest.
 *
 * @example
 * const pacer = new RequestPacer({ concurrency: 4, requestsPerMinute: 500, tokensPerMinute: 200_000 }, clock);
 * const answer = await pacer.run(estimatedTokens, () => client.chat.completions.create(body), signal);
 */
import type { Clock } from "../../domain/clock.js";
import { FreshrecError } from "../../domain/errors.js";
import { OPENAI_DEFAULTS } from "./backend-defaults.js";

export interface RequestPacerOptions {
  /** @defaultValue 4 */
  readonly concurrency?: number;
  /** null = no limit. @defaultValue null */
  readonly requestsPerMinute?: number | null;
  /** null = no limit. @defaultValue null */
  readonly tokensPerMinute?: number | null;
}

const WINDOW_MS = 60_000;

export class RequestPacer {
  private inFlight = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly sent: { at: number; tokens: number }[] = [];
  /** Milliseconds spent waiting for the rate limits (not for concurrency). */
  waitedMs = 0;

  constructor(
    private readonly options: RequestPacerOptions,
    private readonly clock: Clock,
  ) {}

  async run<T>(tokens: number, send: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    await this.slot(signal);
    try {
      await this.admit(tokens, signal);
      return await send();
    } finally {
      this.inFlight--;
      this.waiting.shift()?.();
    }
  }

  private async slot(signal?: AbortSignal): Promise<void> {
    const limit = this.options.concurrency ?? OPENAI_DEFAULTS.concurrency;
    while (this.inFlight >= limit) {
      await new Promise<void>((resolve) => this.waiting.push(resolve));
      if (signal?.aborted) {
        this.waiting.shift()?.();
        throw new FreshrecError("CANCELLED", "the request was cancelled");
      }
    }
    this.inFlight++;
  }

  /** Waits until the request fits both per-minute budgets, then records it. */
  private async admit(tokens: number, signal?: AbortSignal): Promise<void> {
    const rpm = this.options.requestsPerMinute ?? null;
    const tpm = this.options.tokensPerMinute ?? null;
    for (;;) {
      if (signal?.aborted) throw new FreshrecError("CANCELLED", "the request was cancelled");
      const now = this.clock.now();
      while (this.sent.length > 0 && this.sent[0].at <= now - WINDOW_MS) this.sent.shift();
      const used = this.sent.reduce((s, r) => s + r.tokens, 0);
      // A request larger than the whole token budget still goes, alone in its window, rather than never.
      const fitsTokens = tpm === null || used + tokens <= tpm || this.sent.length === 0;
      const fitsRequests = rpm === null || this.sent.length < rpm;
      if (fitsTokens && fitsRequests) {
        this.sent.push({ at: now, tokens });
        return;
      }
      // Re-checked at least every second: the abort signal, and other requests leaving the window.
      const sleep = Math.min(Math.max(1, this.sent[0].at + WINDOW_MS - now), 1000);
      this.waitedMs += sleep;
      await new Promise((resolve) => setTimeout(resolve, sleep));
    }
  }
}
