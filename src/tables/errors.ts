/**
 * Errors of the table store. Codes follow the domain union: an unknown version is NOT_FOUND (exit 2, HTTP 404), a
 * request the table's state forbids (publishing a failed build, rolling back with nothing to return to) is
 * BAD_INPUT (exit 2, HTTP 400).
 */
import { FreshrecError } from "../domain/errors.js";
import type { TableStatus } from "./contract.js";

export class TableNotFoundError extends FreshrecError {
  override name = "TableNotFoundError";
  constructor(readonly version: string) {
    super("NOT_FOUND", `table ${JSON.stringify(version)} does not exist`);
  }
}

/** The operation is not allowed in the table's current status (or the store's publish history). */
export class TableStateError extends FreshrecError {
  override name = "TableStateError";
  constructor(
    message: string,
    readonly version: string | null = null,
    readonly status: TableStatus | null = null,
    options?: { cause?: unknown },
  ) {
    super("BAD_INPUT", message, options);
  }
}

/**
 * The error for stored rows that cannot be what a store wrote (a file or database damaged, or written by another
 * program): `what` names them (a version, or a version's block of a first cluster), `why` says what is wrong.
 */
export function damagedRowsError(what: string, why: string): FreshrecError {
  return new FreshrecError("INTERNAL", `tables: the stored rows of ${what} are damaged (${why})`);
}
