/**
 * The rules for the fields of one event, shared by every way events come in (`freshrec ingest` and its dataset
 * adapters, POST /v1/events), so that the same value is judged the same way on the CLI and through the API. Each
 * source reads its own format (CSV text, JSON values, Parquet values) and names fields its own way (user_id,
 * userId); what a value may be is decided here, and a value is either stored as given or refused, never changed.
 *
 * @example
 * const ts = eventTime(row.ts);
 * if (typeof ts !== "number") return problem("ts", ts.problem);
 */
import { calendarProblem, parseTime } from "../../domain/clock.js";

/**
 * Longest user or item id, in UTF-16 code units (what JavaScript's `length` counts). One limit for the ids an event
 * may carry and the ids the API looks up (GET /v1/users/{id}/exploration), so every user the intake accepts can be
 * served.
 */
export const MAX_ID_LENGTH = 256;

/** Event times the store takes: from the unix epoch to before 2200 (far past anything real, inside DuckDB's range). */
export const MIN_EVENT_TS = 0;
export const MAX_EVENT_TS = Date.UTC(2200, 0, 1);

/** What a source hands over for a field (CSV gives text, JSON numbers and strings, Parquet dates too). */
export type EventFieldValue = string | number | Date | null | undefined;

/** Why a field's value is refused. */
export interface FieldProblem {
  readonly problem: string;
}

/**
 * A lone surrogate: no UTF-8 byte sequence decodes to one, so a string holding one came from bytes that were not
 * UTF-8 (`decodeUtf8KeepingErrors`) or from a JSON escape of half a character; either way it is no text to store.
 */
const LONE_SURROGATE = /\p{Cs}/u;

/** Why a string cannot be stored as text, or null. */
export function textProblem(value: string): string | null {
  return LONE_SURROGATE.test(value) ? "not valid UTF-8 (wrong encoding?)" : null;
}

/** Why a user or item id cannot be stored, or null. */
export function idProblem(id: string): string | null {
  if (id === "") return "missing";
  if (id.length > MAX_ID_LENGTH) return `longer than ${MAX_ID_LENGTH} characters (${id.length})`;
  return textProblem(id);
}

/**
 * An event time in epoch milliseconds, or why the value is none: ISO-8601 (a date-time without zone is UTC), unix
 * seconds (below 1e11) or milliseconds, as a number or as text; a date the calendar does not have is refused rather
 * than rolled into the next month.
 */
export function eventTime(value: EventFieldValue): number | FieldProblem {
  if (value === null || value === undefined || (typeof value === "string" && value.trim() === "")) return { problem: "missing" };
  let ts: number;
  if (value instanceof Date) ts = value.getTime();
  else if (typeof value === "number") ts = Math.abs(value) < 1e11 ? Math.round(value * 1000) : Math.round(value);
  else ts = parseTime(value);
  const shown = JSON.stringify(value instanceof Date ? value.toISOString() : value);
  if (Number.isNaN(ts)) {
    const calendar = typeof value === "string" ? calendarProblem(value) : null;
    return { problem: `bad timestamp ${shown}: ${calendar ? `not a date (${calendar})` : "not a time (ISO-8601, or unix seconds/milliseconds)"}` };
  }
  if (!(ts >= MIN_EVENT_TS && ts < MAX_EVENT_TS)) {
    return { problem: `bad timestamp ${shown}: not a time between ${new Date(MIN_EVENT_TS).toISOString()} and ${new Date(MAX_EVENT_TS).toISOString()}` };
  }
  return ts;
}

/**
 * An engagement value, null when absent (the event counts as engaged), or why the value cannot be stored. The column
 * is float32: a value beyond its range would become Infinity and one too small for it 0, so both are refused.
 */
export function eventEngagement(value: EventFieldValue): number | null | FieldProblem {
  if (value === null || value === undefined) return null;
  if (value instanceof Date) return { problem: `not a number: ${JSON.stringify(value.toISOString())}` };
  const text = typeof value === "string" ? value.trim() : null;
  if (text === "") return null;
  const x = text === null ? (value as number) : Number(text);
  if (!Number.isFinite(x)) return { problem: `not a number: ${JSON.stringify(value)}` };
  if (!Number.isFinite(Math.fround(x))) return { problem: `${String(value)} is beyond float32, the engagement column's type (at most ±3.4e38)` };
  if (x !== 0 && Math.fround(x) === 0) return { problem: `${String(value)} is too small for float32, the engagement column's type (it would be stored as 0)` };
  return x;
}

/**
 * Decodes UTF-8 bytes, turning each byte of an invalid sequence into a lone surrogate (U+DC80 + the byte, as
 * Python's "surrogateescape") where a plain decoder writes U+FFFD. Text decoded this way that holds an invalid
 * sequence fails `textProblem`, in the field it sits in, instead of being stored as mangled text.
 */
export function decodeUtf8KeepingErrors(bytes: Uint8Array): string {
  try {
    return STRICT_UTF8.decode(bytes);
  } catch {
    // Only a body with an invalid sequence gets here; the slow path decodes one code point at a time.
  }
  let out = "";
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    const length = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    let cp = length === 1 ? b : length === 2 ? b & 0x1f : length === 3 ? b & 0x0f : b & 0x07;
    let ok = length > 0 && i + length <= bytes.length;
    for (let k = 1; ok && k < length; k++) {
      const c = bytes[i + k];
      if ((c & 0xc0) !== 0x80) ok = false;
      else cp = (cp << 6) | (c & 0x3f);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8 either.
    if (ok && ((length === 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (length === 4 && (cp < 0x10000 || cp > 0x10ffff)))) ok = false;
    if (ok) {
      out += String.fromCodePoint(cp);
      i += length;
    } else {
      out += String.fromCharCode(0xdc00 + b);
      i += 1;
    }
  }
  return out;
}

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
