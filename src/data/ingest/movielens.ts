/**
 * MovieLens adapter (ml-latest-small and ml-100k folders). Events are ratings (engagement = the rating; positive
 * at or above `positiveRating`, 4 by default); interest clusters come from the movies' genres.
 *
 * The cluster rule (frequent genre combinations, rare ones merged into their nearest parent):
 * 1. Each movie has a genre set; movies without genres go to one "other" cluster.
 * 2. Every single genre is a candidate cluster, and so is every exact genre combination of 2-3 genres carried
 *    by at least `minClusterItems` movies.
 * 3. A movie joins its nearest parent: the candidate that is the largest subset of its genre set, ties broken
 *    by more movies, then by name. So "Comedy|Drama|Romance|War" joins "comedy, drama, romance" when that
 *    combination is frequent, else e.g. "drama, war", else a single genre.
 * 4. Candidates no movie joined are dropped. If `minClusterItems` is not given, it starts at
 *    max(5, round(movies / 400)) and is moved (by bisection) until 30-300 clusters remain.
 * The description lists the genres in words ("comedy, drama, romance"); the id is their slug.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { BadInputError } from "../../domain/errors.js";
import type { Cluster, Item } from "../../domain/types.js";
import type { EventStoreContract } from "../event-store.js";
import { EventColumnsBuilder, parseEvents, type ParsedFile } from "./catalog-rows.js";
import { commitIngest, type IngestOptions, type IngestReport } from "./ingest.js";
import { readRecords } from "./records.js";

/** Defaults of MovieLensOptions; the config's movielens.* defaults come from here. */
export const MOVIELENS_DEFAULTS = { positiveRating: 4 } as const;

export interface MovieLensOptions extends IngestOptions {
  /** @defaultValue 4 */
  readonly positiveRating?: number;
  /** @defaultValue null (chosen so that 30-300 clusters remain) */
  readonly minClusterItems?: number | null;
}

export type MovieLensVariant = "ml-latest-small" | "ml-100k";

interface Movie {
  readonly id: string;
  readonly title: string;
  readonly genres: readonly string[];
}

export function detectMovieLens(dir: string): MovieLensVariant {
  if (existsSync(join(dir, "movies.csv")) && existsSync(join(dir, "ratings.csv"))) return "ml-latest-small";
  if (existsSync(join(dir, "u.data")) && existsSync(join(dir, "u.item"))) return "ml-100k";
  throw new BadInputError(`${dir}: not a MovieLens folder (expected movies.csv + ratings.csv, or u.data + u.item)`);
}

const GENRE_WORDS: Record<string, string> = {
  "Sci-Fi": "science fiction",
  "Film-Noir": "film noir",
  "Children's": "children",
  Children: "children",
  IMAX: "imax",
};
const genreWords = (genre: string): string => GENRE_WORDS[genre] ?? genre.toLowerCase();
const slug = (genres: readonly string[]): string => genres.map((g) => genreWords(g).replace(/[^a-z0-9]+/g, "-")).join("+");

export interface GenreClustering {
  readonly clusters: Cluster[];
  /** movie id -> cluster id */
  readonly assignment: Map<string, string>;
  readonly minClusterItems: number;
}

/** The genre-combination cluster rule (see the module comment). `genreOrder` fixes the order of words. */
export function clusterByGenres(movies: readonly Movie[], genreOrder: readonly string[], minClusterItems: number | null = null): GenreClustering {
  const order = new Map(genreOrder.map((g, k) => [g, k]));
  const sorted = (gs: readonly string[]) => [...gs].sort((a, b) => (order.get(a) ?? 99) - (order.get(b) ?? 99) || a.localeCompare(b));
  const key = (gs: readonly string[]) => sorted(gs).join("|");
  const exact = new Map<string, number>();
  for (const m of movies) if (m.genres.length) exact.set(key(m.genres), (exact.get(key(m.genres)) ?? 0) + 1);

  const assign = (threshold: number): GenreClustering => {
    const candidates = new Map<string, number>();
    for (const m of movies) for (const g of m.genres) candidates.set(g, exact.get(g) ?? 0);
    for (const [combo, count] of exact) {
      const size = combo.split("|").length;
      if (size >= 2 && size <= 3 && count >= threshold) candidates.set(combo, count);
    }
    const assignment = new Map<string, string>();
    const members = new Map<string, number>();
    for (const m of movies) {
      let best: string | null = null;
      if (m.genres.length) {
        const own = new Set(m.genres);
        let bestSize = 0;
        let bestCount = -1;
        for (const [combo, count] of candidates) {
          const parts = combo.split("|");
          if (!parts.every((p) => own.has(p))) continue;
          if (parts.length > bestSize || (parts.length === bestSize && (count > bestCount || (count === bestCount && combo < best!)))) {
            best = combo;
            bestSize = parts.length;
            bestCount = count;
          }
        }
      }
      const cluster = best ?? "";
      assignment.set(m.id, cluster);
      members.set(cluster, (members.get(cluster) ?? 0) + 1);
    }
    const clusters: Cluster[] = [...members.keys()]
      .sort((a, b) => (members.get(b)! - members.get(a)!) || a.localeCompare(b))
      .map((combo) => {
        const genres = combo === "" ? [] : sorted(combo.split("|"));
        return genres.length ? { id: slug(genres), description: genres.map(genreWords).join(", ") } : { id: "other", description: "other, uncategorized" };
      });
    const idOf = new Map([...members.keys()].map((combo) => [combo, combo === "" ? "other" : slug(sorted(combo.split("|")))]));
    return { clusters, assignment: new Map([...assignment].map(([movie, combo]) => [movie, idOf.get(combo)!])), minClusterItems: threshold };
  };

  if (minClusterItems !== null) return assign(minClusterItems);
  // A lower threshold keeps more combinations: bisect toward 30-300 clusters.
  let threshold = Math.max(5, Math.round(movies.length / 400));
  let lo = 1;
  let hi = Math.max(threshold, movies.length);
  let result = assign(threshold);
  for (let step = 0; step < 30 && (result.clusters.length < 30 || result.clusters.length > 300) && lo < hi; step++) {
    if (result.clusters.length > 300) lo = threshold + 1;
    else hi = threshold - 1;
    threshold = Math.max(1, Math.floor((lo + hi) / 2));
    result = assign(threshold);
  }
  return result;
}

async function readMovies(dir: string, variant: MovieLensVariant): Promise<{ movies: Movie[]; genreOrder: string[]; parsed: ParsedFile }> {
  const movies: Movie[] = [];
  const problems: ParsedFile["problems"] = [];
  if (variant === "ml-latest-small") {
    const path = join(dir, "movies.csv");
    const file = await readRecords(path);
    const genreOrder = new Set<string>();
    for (const r of file.records) {
      const id = String(r.values.movieId ?? "").trim();
      if (r.problem || !id) {
        problems.push({ file: path, line: r.line, field: r.problem ? undefined : "movieId", problem: r.problem?.problem ?? "missing" });
        continue;
      }
      const genres = String(r.values.genres ?? "").split("|").map((g) => g.trim()).filter((g) => g && g !== "(no genres listed)");
      genres.forEach((g) => genreOrder.add(g));
      movies.push({ id, title: String(r.values.title ?? ""), genres });
    }
    return { movies, genreOrder: [...genreOrder].sort(), parsed: { file: path, rows: file.records.length, problems } };
  }
  const genreFile = await readRecords(join(dir, "u.genre"), { format: "csv", delimiter: "|", columns: ["name", "index"], quoting: false });
  const genreNames: string[] = [];
  for (const r of genreFile.records) genreNames[Number(r.values.index)] = String(r.values.name);
  const path = join(dir, "u.item");
  // ml-100k's u.item is Latin-1 (its README); reading it as UTF-8 would turn accented titles into bad rows.
  const columns = ["movie_id", "title", "release", "video_release", "url", ...genreNames.map((_, k) => `g${k}`)];
  const file = await readRecords(path, { format: "csv", delimiter: "|", columns, encoding: "latin1", quoting: false });
  for (const r of file.records) {
    const id = String(r.values.movie_id ?? "").trim();
    if (r.problem || !id) {
      problems.push({ file: path, line: r.line, field: r.problem ? undefined : "movie_id", problem: r.problem?.problem ?? "missing" });
      continue;
    }
    const genres = genreNames.filter((name, k) => r.values[`g${k}`] === "1" && name !== "unknown");
    movies.push({ id, title: String(r.values.title ?? ""), genres });
  }
  return { movies, genreOrder: genreNames.filter((g) => g !== "unknown").sort(), parsed: { file: path, rows: file.records.length, problems } };
}

export async function ingestMovieLens(store: EventStoreContract, dir: string, options: MovieLensOptions = {}): Promise<IngestReport & { variant: MovieLensVariant; minClusterItems: number }> {
  const variant = detectMovieLens(dir);
  const { movies, genreOrder, parsed: movieFile } = await readMovies(dir, variant);
  if (movies.length === 0) throw new BadInputError(`${dir}: no movies`);
  const clustering = clusterByGenres(movies, genreOrder, options.minClusterItems ?? null);
  const items: Item[] = movies.map((m) => ({ id: m.id, clusterId: clustering.assignment.get(m.id)!, title: m.title }));
  const ratingsPath = join(dir, variant === "ml-latest-small" ? "ratings.csv" : "u.data");
  const ratings =
    variant === "ml-latest-small"
      ? await readRecords(ratingsPath)
      : await readRecords(ratingsPath, { format: "csv", delimiter: "\t", columns: ["userId", "movieId", "rating", "timestamp"], quoting: false });
  if (ratings.records.length === 0) throw new BadInputError(`${ratingsPath}: no data rows`);
  // Map MovieLens columns onto the generic event fields, then validate with the generic rules.
  const records = ratings.records.map((r) =>
    r.problem ? r : { line: r.line, values: { user_id: r.values.userId, item_id: r.values.movieId, ts: r.values.timestamp, engagement: r.values.rating } },
  );
  const events = new EventColumnsBuilder();
  const eventFile = parseEvents(ratingsPath, records, new Set(items.map((i) => i.id)), events);
  const positiveRating = options.positiveRating ?? MOVIELENS_DEFAULTS.positiveRating;
  const report = await commitIngest(
    store,
    {
      clusters: clustering.clusters,
      items,
      events,
      parsed: [movieFile, eventFile],
      meta: { positive_min: String(positiveRating) },
      identity: { dataset: variant },
    },
    options,
  );
  return { ...report, variant, minClusterItems: clustering.minClusterItems };
}
