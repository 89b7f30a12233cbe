/**
 * Small error classes with a stable code union, as BullMQ and tRPC do. The CLI maps codes to exit codes and the
 * HTTP API to status codes; messages name the file, line or field at fault.
 */
export type ErrorCode =
  | "BAD_INPUT" // a file, row or argument the user gave is wrong
  | "BAD_CONFIG" // freshrec.config.json does not validate
  | "NOT_FOUND" // a named thing (table, model, user) does not exist
  | "ENGINE" // the LLM engine refused (wrong library version, corrupt model file)
  | "GATE_FAILED" // a quality gate halted a run
  | "CANCELLED"
  | "INTERNAL";

export class FreshrecError extends Error {
  override name = "FreshrecError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** One problem in one row of one input file. */
export interface RowProblem {
  readonly file: string;
  readonly line: number;
  readonly field?: string;
  readonly problem: string;
}

export class BadInputError extends FreshrecError {
  override name = "BadInputError";
  constructor(
    message: string,
    readonly problems: readonly RowProblem[] = [],
    options?: { cause?: unknown },
  ) {
    super("BAD_INPUT", message, options);
  }
}

export class ConfigError extends FreshrecError {
  override name = "ConfigError";
  constructor(
    message: string,
    readonly issues: readonly { path: string; message: string }[] = [],
  ) {
    super("BAD_CONFIG", message);
  }
}

/**
 * The one mapping from the domain's codes to HTTP status codes, for every HTTP surface (the serving API adds its
 * HTTP-only codes in src/serving/errors.ts; the OpenAI-compatible server uses it as is).
 */
export const HTTP_STATUS_OF_CODE: Readonly<Record<ErrorCode, number>> = {
  BAD_INPUT: 400,
  BAD_CONFIG: 500,
  NOT_FOUND: 404,
  ENGINE: 503,
  GATE_FAILED: 409,
  CANCELLED: 503,
  INTERNAL: 500,
};

/** Exit codes of the CLI contract: 0 success, 1 failed run (e.g. a halted gate), 2 bad usage or input. */
export function exitCodeFor(error: unknown): 1 | 2 {
  if (error instanceof FreshrecError) {
    return error.code === "BAD_INPUT" || error.code === "BAD_CONFIG" || error.code === "NOT_FOUND" ? 2 : 1;
  }
  return 1;
}
