/** Where a workspace keeps its state. Everything freshrec writes lives under one folder (default ./.freshrec). */
import { join, resolve } from "node:path";

export interface WorkspacePaths {
  readonly root: string;
  readonly events: string;
  readonly registry: string;
  readonly tables: string;
  readonly models: string;
  readonly reports: string;
}

export const DEFAULT_WORKSPACE = ".freshrec";

export function workspacePaths(dir: string = DEFAULT_WORKSPACE): WorkspacePaths {
  const root = resolve(dir);
  return {
    root,
    events: join(root, "events.duckdb"),
    registry: join(root, "registry.sqlite"),
    tables: join(root, "tables.sqlite"),
    models: join(root, "models"),
    reports: join(root, "reports"),
  };
}
