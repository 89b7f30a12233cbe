/**
 * One ordered list of events (item, time) per user, every user's list held in the same two typed arrays. Why not an
 * array or two per user: the server keeps every user of the store in memory, and intake inserts into their lists all
 * the time. JS arrays per user are millions of small objects for the garbage collector, and each insertion that
 * outgrows one allocates a new backing store that outlives the young generation, so every minor collection copied
 * them and its pauses grew with the intake rate. Here the lists live in array buffers the collector never scans or
 * copies; an insertion allocates nothing on the JS heap.
 *
 * Each list has a region (start, capacity) in the shared arrays. A list that outgrows its region moves to a larger
 * one at the end of the used part; the region it leaves is not reused (a view taken of a list before the move keeps
 * showing that list's events, never another's). When the arrays are full, every list is copied into new, larger
 * arrays, side by side (compaction): that copy costs a pass over all lists, and the arrays are then made twice what
 * the lists hold, so that it comes again only after about as many events as the lists hold have been added.
 *
 * @example
 * const lists = new EventLists(1000);
 * const u = lists.add(0);              // an empty list
 * lists.insert(u, 0, 42, Date.parse("2025-03-02"));
 * lists.item(u, 0); // 42
 */
export class EventLists {
  /** Every list's items and times; list `u`'s are at [start[u], start[u] + length[u]). */
  private items: Int32Array;
  private times: Float64Array;
  private start: Int32Array = new Int32Array(1024);
  private lengths: Int32Array = new Int32Array(1024);
  private capacity: Int32Array = new Int32Array(1024);
  private lists = 0;
  /** The end of the used part of `items` and `times`. */
  private end = 0;
  /** The sum of the lists' capacities (the used part minus the regions lists left). */
  private held = 0;

  /** @param expected the events the lists will hold at first (a hint for the arrays' first size). */
  constructor(expected: number) {
    const size = Math.max(1024, Math.ceil(expected * 1.5));
    this.items = new Int32Array(size);
    this.times = new Float64Array(size);
  }

  /** How many lists there are; list numbers run from 0 to count - 1. */
  get count(): number {
    return this.lists;
  }

  /** Adds an empty list with room for `room` events; @returns its number. */
  add(room: number): number {
    if (this.lists === this.start.length) {
      const size = this.lists * 2;
      this.start = grown(this.start, size);
      this.lengths = grown(this.lengths, size);
      this.capacity = grown(this.capacity, size);
    }
    const u = this.lists++;
    this.start[u] = this.end;
    this.lengths[u] = 0;
    this.capacity[u] = 0;
    this.move(u, room);
    return u;
  }

  length(u: number): number {
    return this.lengths[u];
  }

  item(u: number, k: number): number {
    return this.items[this.start[u] + k];
  }

  time(u: number, k: number): number {
    return this.times[this.start[u] + k];
  }

  /** Inserts (item, ts) at position `at` (0..length) of list `u`, moving the later events up by one. */
  insert(u: number, at: number, item: number, ts: number): void {
    const n = this.lengths[u];
    if (n === this.capacity[u]) this.move(u, n + (n >> 1) + 4);
    const s = this.start[u];
    if (at < n) {
      this.items.copyWithin(s + at + 1, s + at, s + n);
      this.times.copyWithin(s + at + 1, s + at, s + n);
    }
    this.items[s + at] = item;
    this.times[s + at] = ts;
    this.lengths[u] = n + 1;
  }

  /** Removes the event at position `at` of list `u`, moving the later events down by one. */
  remove(u: number, at: number): void {
    const s = this.start[u];
    const n = this.lengths[u];
    if (at < n - 1) {
      this.items.copyWithin(s + at, s + at + 1, s + n);
      this.times.copyWithin(s + at, s + at + 1, s + n);
    }
    this.lengths[u] = n - 1;
  }

  /** Makes list `u` hold exactly the events at `rows` of the given columns, in that order. */
  assign(u: number, items: ArrayLike<number>, times: ArrayLike<number>, rows: readonly number[]): void {
    const n = rows.length;
    this.lengths[u] = 0;
    if (n > this.capacity[u]) this.move(u, n + (n >> 2) + 4);
    const s = this.start[u];
    for (let k = 0; k < n; k++) {
      this.items[s + k] = items[rows[k]];
      this.times[s + k] = times[rows[k]];
    }
    this.lengths[u] = n;
  }

  /** Copies of list `u`'s items and times (for callers that keep them). */
  copy(u: number): { items: number[]; times: number[] } {
    const s = this.start[u];
    const n = this.lengths[u];
    const items = new Array<number>(n);
    const times = new Array<number>(n);
    for (let k = 0; k < n; k++) {
      items[k] = this.items[s + k];
      times[k] = this.times[s + k];
    }
    return { items, times };
  }

  /** Gives list `u` a region of `room` events (at least its length) at the end of the used part, with its events. */
  private move(u: number, room: number): void {
    if (this.end + room > this.items.length) {
      this.compact(u, room);
      return;
    }
    const from = this.start[u];
    const to = this.end;
    const n = this.lengths[u];
    // The new region lies after every used one, so it never overlaps the old.
    for (let k = 0; k < n; k++) {
      this.items[to + k] = this.items[from + k];
      this.times[to + k] = this.times[from + k];
    }
    this.start[u] = to;
    this.held += room - this.capacity[u];
    this.capacity[u] = room;
    this.end += room;
  }

  /**
   * Copies every list into new arrays side by side, each keeping its capacity but `u`, which gets `room` and goes
   * last; the new arrays have room for twice what the lists then hold.
   */
  private compact(u: number, room: number): void {
    const size = Math.max(1024, (this.held - this.capacity[u] + room) * 2);
    const items = new Int32Array(size);
    const times = new Float64Array(size);
    let end = 0;
    const copy = (v: number) => {
      const s = this.start[v];
      const n = this.lengths[v];
      for (let k = 0; k < n; k++) {
        items[end + k] = this.items[s + k];
        times[end + k] = this.times[s + k];
      }
      this.start[v] = end;
    };
    for (let v = 0; v < this.lists; v++) {
      if (v === u) continue;
      copy(v);
      end += this.capacity[v];
    }
    copy(u);
    this.capacity[u] = room;
    end += room;
    this.items = items;
    this.times = times;
    this.end = end;
    this.held = end;
  }
}

/** A copy of `a` in a larger array of `size` (the rest zeros). */
export function grown<T extends Int32Array | Float64Array>(a: T, size: number): T {
  const b = new (a.constructor as new (size: number) => T)(size);
  b.set(a);
  return b;
}
