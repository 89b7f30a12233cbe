/**
 * The rules for the fields of one event, shared by every way events come in (`freshrec ingest` and POST /v1/events),
 * so that the same value is judged the same way on the CLI and through the API.
 *
 * @example
 * if (userId.length > MAX_ID_LENGTH) problem("user_id", `longer than ${MAX_ID_LENGTH} characters`);
 */

/**
 * Longest user or item id, in UTF-16 code units (what JavaScript's `length` counts). One limit for the ids an event
 * may carry and the ids the API looks up (GET /v1/users/{id}/exploration), so every user the intake accepts can be
 * served.
 */
export const MAX_ID_LENGTH = 256;
