/**
 * The promise under `key` in `map`, computed by `compute` when absent: callers asking at the same time share one
 * computation (in flight too). A rejected promise is forgotten, so the next caller tries again.
 *
 * @example
 * const sets = new Map<string, Promise<FineTuningSet>>();
 * const set = await remembered(sets, key, () => curateFineTuningSet(events, asOf, options));
 */
export function remembered<T>(map: Map<string, Promise<T>>, key: string, compute: () => Promise<T>): Promise<T> {
  let value = map.get(key);
  if (!value) {
    value = compute();
    value.catch(() => map.delete(key));
    map.set(key, value);
  }
  return value;
}
