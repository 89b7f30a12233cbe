/**
 * Hears a PostgreSQL store's changes as they commit: publish and rollback notify `freshrec_tables`
 * (src/tables/postgres-store.ts), review decisions and new live models `freshrec_models` (src/llm/postgres-registry.ts).
 * A server reloads on each notification instead of waiting for its next poll, so every replica follows a publish
 * within a round trip. The poll stays: it is what catches a change made while this connection was down (a dropped
 * connection is reported through `onError` and not reopened; the poll carries on).
 *
 * @example
 * const listener = await listenForChanges(url, [TABLES_CHANNEL], () => void tables.poll(), (e) => log.error(e));
 * await listener.close();
 */
import pg from "pg";
import { redactedUrl } from "../data/postgres-event-store.js";
import { FreshrecError } from "../domain/errors.js";

export interface ChangeListener {
  close(): Promise<void>;
}

export async function listenForChanges(
  url: string,
  channels: readonly string[],
  onChange: (channel: string, payload: string | undefined) => void,
  onError: (error: Error) => void,
): Promise<ChangeListener> {
  const client = new pg.Client({ connectionString: url });
  let closing = false;
  client.on("error", (error) => {
    if (!closing) onError(error);
  });
  client.on("notification", (message) => onChange(message.channel, message.payload));
  try {
    await client.connect();
    // Channel names are this program's constants, never user input; quoted as identifiers all the same.
    for (const channel of channels) await client.query(`LISTEN "${channel.replace(/"/g, '""')}"`);
  } catch (error) {
    await client.end().catch(() => {});
    throw new FreshrecError("INTERNAL", `cannot listen for changes on ${redactedUrl(url)}: ${(error as Error).message}`, { cause: error });
  }
  return {
    close: async () => {
      closing = true;
      await client.end().catch(() => {});
    },
  };
}
