/** The versioned table store: contract, adapters (SQLite, PostgreSQL), serving lookup. See ./contract.ts for the lifecycle. */
export * from "./contract.js";
export * from "./errors.js";
export { EmbeddedTableStore, tableStoreContract, type UpdateTableStore } from "./embedded-store.js";
export { PostgresTableStore, TABLES_CHANNEL, type PostgresTableStoreOptions } from "./postgres-store.js";
export { SqliteTableStore, tableStorePath, type SqliteTableStoreOptions } from "./sqlite-store.js";
export { versionId } from "./versions.js";
export { LiveTable, TableLookup, TableLookupBuilder, type AnswerBuffer, type TableLookupOptions } from "./lookup.js";
