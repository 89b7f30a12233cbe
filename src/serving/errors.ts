/**
 * HTTP errors, tRPC style: a stable code union (the domain's codes plus the few only HTTP has) mapped to status
 * codes in exactly one place, and one error body shape for every route:
 * `{ "error": { "code", "message", "requestId", "issues"?: [{ "index"?, "field", "message" }] } }`.
 *
 * @example
 * throw new HttpError("UNAUTHORIZED", "admin routes need a bearer token");
 * reply.status(statusOf(error.code)).send(errorBody(error, request.id));
 */
import { MAX_ID_LENGTH } from "../data/ingest/event-fields.js";
import { BadInputError, FreshrecError, HTTP_STATUS_OF_CODE, type ErrorCode } from "../domain/errors.js";

export type HttpErrorCode =
  | ErrorCode
  | "UNAUTHORIZED" // no bearer token on an admin route
  | "FORBIDDEN" // a wrong token, or admin routes disabled
  | "PAYLOAD_TOO_LARGE" // body over serve.bodyLimitBytes, or more events than serve.maxBatchEvents
  | "CONFLICT" // an idempotency key reused with a different body
  | "UNSUPPORTED_MEDIA_TYPE"
  | "NOT_READY"; // the server cannot answer yet (no catalog)

/** The one mapping from error codes to HTTP status codes: the domain's (src/domain/errors.ts) and the HTTP-only ones. */
export const HTTP_STATUS: Readonly<Record<HttpErrorCode, number>> = {
  ...HTTP_STATUS_OF_CODE,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  PAYLOAD_TOO_LARGE: 413,
  CONFLICT: 409,
  UNSUPPORTED_MEDIA_TYPE: 415,
  NOT_READY: 503,
};

/** One problem with a request: `index` is the position in a batch (events[index]), `field` the field's path. */
export interface RequestIssue {
  readonly index?: number;
  readonly field: string;
  readonly message: string;
}

export class HttpError extends Error {
  override name = "HttpError";
  constructor(
    readonly code: HttpErrorCode,
    message: string,
    readonly issues: readonly RequestIssue[] = [],
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  get status(): number {
    return HTTP_STATUS[this.code];
  }
}

export interface ErrorBody {
  readonly error: {
    readonly code: HttpErrorCode;
    readonly message: string;
    readonly requestId: string;
    readonly issues?: readonly RequestIssue[];
  };
}

/** Fastify's own errors that are the client's fault, by their code (413 and 415 get own messages: `toHttpError`). */
const FASTIFY_CODES: Readonly<Record<string, HttpErrorCode>> = {
  FST_ERR_CTP_EMPTY_JSON_BODY: "BAD_INPUT",
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: "BAD_INPUT",
  FST_ERR_CTP_INVALID_JSON_BODY: "BAD_INPUT",
  FST_ERR_VALIDATION: "BAD_INPUT",
};

/** What the request said and what the server allows, so Fastify's terse client errors can name both. */
export interface ErrorContext {
  /** serve.bodyLimitBytes of this server. */
  readonly bodyLimitBytes?: number;
  /** The request's content-type header. */
  readonly contentType?: string | undefined;
}

/**
 * Any thrown value as an HttpError: domain errors keep their code, Fastify's client errors get theirs. Fastify's own
 * messages ("Request body is too large", "Unsupported Media Type") do not say what would have been accepted, so
 * those two are rewritten to name the limit and its setting, or the expected content type.
 */
export function toHttpError(error: unknown, context: ErrorContext = {}): HttpError {
  if (error instanceof HttpError) return error;
  if (error instanceof BadInputError) {
    const issues = error.problems.map((p) => ({ field: p.field ?? "", message: p.problem, index: p.line }));
    return new HttpError("BAD_INPUT", error.message, issues, { cause: error });
  }
  if (error instanceof FreshrecError) return new HttpError(error.code, error.message, [], { cause: error });
  const e = error as { code?: string; statusCode?: number; message?: string };
  if (e?.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
    return new HttpError("PAYLOAD_TOO_LARGE", bodyTooLargeMessage(context.bodyLimitBytes), [], { cause: error });
  }
  if (e?.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
    return new HttpError("UNSUPPORTED_MEDIA_TYPE", unsupportedMediaTypeMessage(context.contentType), [], { cause: error });
  }
  // The router's own errors (answered through `frameworkErrors`, before any route runs).
  if (e?.code === "FST_ERR_BAD_URL") {
    return new HttpError("BAD_INPUT", "the request path is not valid percent-encoding (a % must start an escape like %C3%A9, the UTF-8 bytes of a character)", [], { cause: error });
  }
  if (e?.code === "FST_ERR_MAX_PARAM_LENGTH") {
    return new HttpError("BAD_INPUT", `a path parameter is longer than ${MAX_ID_LENGTH} characters (the longest id the API takes)`, [], { cause: error });
  }
  if (e?.code && FASTIFY_CODES[e.code]) return new HttpError(FASTIFY_CODES[e.code], e.message ?? e.code, [], { cause: error });
  // Fastify marks malformed JSON as a SyntaxError with statusCode 400.
  if (e?.statusCode === 400) return new HttpError("BAD_INPUT", e.message ?? "bad request", [], { cause: error });
  if (e?.statusCode === 413) return new HttpError("PAYLOAD_TOO_LARGE", bodyTooLargeMessage(context.bodyLimitBytes), [], { cause: error });
  if (e?.statusCode === 415) return new HttpError("UNSUPPORTED_MEDIA_TYPE", unsupportedMediaTypeMessage(context.contentType), [], { cause: error });
  return new HttpError("INTERNAL", "internal error (see the server log for its request id)", [], { cause: error });
}

function bodyTooLargeMessage(limit: number | undefined): string {
  const allowed = limit === undefined ? "the server's limit" : `${limit} bytes`;
  return `request body is larger than ${allowed} (serve.bodyLimitBytes): send fewer events per request, or raise serve.bodyLimitBytes`;
}

function unsupportedMediaTypeMessage(contentType: string | undefined): string {
  const given = contentType === undefined || contentType.trim() === "" ? "a body without a content-type" : `content-type ${JSON.stringify(contentType)}`;
  return `unsupported media type: ${given}; request bodies must be JSON sent as content-type application/json`;
}

export function errorBody(error: HttpError, requestId: string): ErrorBody {
  return {
    error: {
      code: error.code,
      message: error.message,
      requestId,
      ...(error.issues.length ? { issues: error.issues } : {}),
    },
  };
}
