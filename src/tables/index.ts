/** The versioned table store: contract, SQLite adapter, serving lookup. See ./contract.ts for the lifecycle. */
export * from "./contract.js";
export * from "./errors.js";
export { SqliteTableStore, tableStorePath, versionId, type SqliteTableStoreOptions } from "./sqlite-store.js";
export { LiveTable, TableLookup, TableLookupBuilder, type AnswerBuffer, type TableLookupOptions } from "./lookup.js";
