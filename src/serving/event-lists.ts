/**
 * One ordered list of events (item, time) per user, every user's list held in a few large typed arrays. Why not an
 * array or two per user: the server keeps every user of the store in memory, and intake inserts into their lists all
 * the time. JS arrays per user are millions of small objects for the garbage collector, and each insertion that
 * outgrows one allocates a new backing store that outlives the young generation, so every minor collection copied
 * them and its pauses grew with the intake rate. Here the lists live in array buffers the collector never scans or
 * copies; an insertion allocates nothing on the JS heap.
 *
 * Each list has a region in one page (a pair of typed arrays): its capacity is one of a ladder of sizes (size
 * classes). A list that outgrows its region moves to a region of the next size, and the region it leaves is kept for
 * the next list of that size that needs one; a new region is cut from the end of the last page, and a new page is
 * added when that one is full. So no step ever copies more than one list: there is no compaction of all lists (a
 * pass over every list, a pause that grows with the store), and pages are never copied to grow. A list larger than a
 * page gets a page of its own.
 *
 * Readers get copies (`copy`), never views: a region a list left may hold another list's events later.
 *
 * @example
 * const lists = new EventLists();
 * const u = lists.add(0);              // an empty list
 * lists.insert(u, 0, 42, Date.parse("2025-03-02"));
 * lists.item(u, 0); // 42
 */
export class EventLists {
  private readonly pageEntries: number;
  /** The pages: `items[p]` and `times[p]` hold the regions of page `p`. */
  private readonly items: Int32Array[] = [];
  private readonly times: Float64Array[] = [];
  /** Where the unused end of the last shared page begins. */
  private cut = 0;
  /** The page being cut, -1 before the first. */
  private cutting = -1;
  /** Per size class, regions lists left: page * 2^32 + offset. */
  private readonly free: number[][] = CAPACITIES.map(() => []);
  /** Per list: its region's page and offset, its size class and its length. */
  private page: Int32Array = new Int32Array(1024);
  private offset: Int32Array = new Int32Array(1024);
  private sizeClass: Int32Array = new Int32Array(1024);
  private lengths: Int32Array = new Int32Array(1024);
  private lists = 0;

  /** @param pageEntries events per page. @defaultValue 2^20 */
  constructor(pageEntries = 2 ** 20) {
    this.pageEntries = pageEntries;
  }

  /** How many lists there are; list numbers run from 0 to count - 1. */
  get count(): number {
    return this.lists;
  }

  /** Events the pages have room for, in use or not (what the lists cost in memory, over 12 bytes an event). */
  get entries(): number {
    let sum = 0;
    for (const page of this.items) sum += page.length;
    return sum;
  }

  /** Adds an empty list with room for `room` events; @returns its number. */
  add(room: number): number {
    if (this.lists === this.page.length) {
      const size = this.lists * 2;
      this.page = grown(this.page, size);
      this.offset = grown(this.offset, size);
      this.sizeClass = grown(this.sizeClass, size);
      this.lengths = grown(this.lengths, size);
    }
    const u = this.lists++;
    this.sizeClass[u] = 0;
    this.lengths[u] = 0;
    if (room > 0) this.move(u, classFor(room));
    return u;
  }

  length(u: number): number {
    return this.lengths[u];
  }

  item(u: number, k: number): number {
    return this.items[this.page[u]][this.offset[u] + k];
  }

  time(u: number, k: number): number {
    return this.times[this.page[u]][this.offset[u] + k];
  }

  /** Inserts (item, ts) at position `at` (0..length) of list `u`, moving the later events up by one. */
  insert(u: number, at: number, item: number, ts: number): void {
    const n = this.lengths[u];
    if (n === CAPACITIES[this.sizeClass[u]]) this.move(u, this.sizeClass[u] + 1);
    const items = this.items[this.page[u]];
    const times = this.times[this.page[u]];
    const s = this.offset[u];
    if (at < n) {
      items.copyWithin(s + at + 1, s + at, s + n);
      times.copyWithin(s + at + 1, s + at, s + n);
    }
    items[s + at] = item;
    times[s + at] = ts;
    this.lengths[u] = n + 1;
  }

  /** Removes the event at position `at` of list `u`, moving the later events down by one. */
  remove(u: number, at: number): void {
    const s = this.offset[u];
    const n = this.lengths[u];
    if (at < n - 1) {
      this.items[this.page[u]].copyWithin(s + at, s + at + 1, s + n);
      this.times[this.page[u]].copyWithin(s + at, s + at + 1, s + n);
    }
    this.lengths[u] = n - 1;
  }

  /** Makes list `u` hold exactly the events at `rows` of the given columns, in that order. */
  assign(u: number, items: ArrayLike<number>, times: ArrayLike<number>, rows: readonly number[]): void {
    const n = rows.length;
    this.lengths[u] = 0;
    // Room for a quarter more: a list given whole (a load) usually grows next.
    const wanted = classFor(n + (n >> 2));
    if (wanted > this.sizeClass[u] || (n === 0 && this.sizeClass[u] > 0)) this.move(u, wanted);
    if (n === 0) return;
    const to = this.items[this.page[u]];
    const toTimes = this.times[this.page[u]];
    const s = this.offset[u];
    for (let k = 0; k < n; k++) {
      to[s + k] = items[rows[k]];
      toTimes[s + k] = times[rows[k]];
    }
    this.lengths[u] = n;
  }

  /** Copies of list `u`'s items and times. */
  copy(u: number): { items: number[]; times: number[] } {
    const n = this.lengths[u];
    const result = { items: new Array<number>(n), times: new Array<number>(n) };
    if (n === 0) return result;
    const items = this.items[this.page[u]];
    const times = this.times[this.page[u]];
    const s = this.offset[u];
    for (let k = 0; k < n; k++) {
      result.items[k] = items[s + k];
      result.times[k] = times[s + k];
    }
    return result;
  }

  /** Gives list `u` a region of size class `c` with its events, and keeps the region it leaves for reuse. */
  private move(u: number, c: number): void {
    const n = this.lengths[u];
    const old = this.sizeClass[u];
    const [page, offset] = c === 0 ? [0, 0] : this.region(c);
    if (n > 0) {
      const s = this.offset[u];
      const fromItems = this.items[this.page[u]];
      const fromTimes = this.times[this.page[u]];
      const toItems = this.items[page];
      const toTimes = this.times[page];
      if (n > 64) {
        toItems.set(fromItems.subarray(s, s + n), offset);
        toTimes.set(fromTimes.subarray(s, s + n), offset);
      } else {
        for (let k = 0; k < n; k++) {
          toItems[offset + k] = fromItems[s + k];
          toTimes[offset + k] = fromTimes[s + k];
        }
      }
    }
    if (old > 0) this.release(this.page[u], this.offset[u], old);
    this.page[u] = page;
    this.offset[u] = offset;
    this.sizeClass[u] = c;
  }

  /** A region of size class `c`: one a list left, else cut from the last page (a new one when it is full). */
  private region(c: number): [number, number] {
    const reused = this.free[c].pop();
    if (reused !== undefined) return [Math.floor(reused / 2 ** 32), reused % 2 ** 32];
    const capacity = CAPACITIES[c];
    if (capacity > this.pageEntries) {
      // A page of its own, dropped when the list leaves it.
      this.items.push(new Int32Array(capacity));
      this.times.push(new Float64Array(capacity));
      return [this.items.length - 1, 0];
    }
    if (this.cutting < 0 || this.cut + capacity > this.pageEntries) {
      // The rest of the last page is left unused: less than one region of the largest shared size.
      this.items.push(new Int32Array(this.pageEntries));
      this.times.push(new Float64Array(this.pageEntries));
      this.cutting = this.items.length - 1;
      this.cut = 0;
    }
    const offset = this.cut;
    this.cut += capacity;
    return [this.cutting, offset];
  }

  private release(page: number, offset: number, c: number): void {
    if (CAPACITIES[c] > this.pageEntries) {
      this.items[page] = EMPTY_ITEMS;
      this.times[page] = EMPTY_TIMES;
      return;
    }
    this.free[c].push(page * 2 ** 32 + offset);
  }
}

/**
 * The size classes' capacities: 0 (no region), then from 4 up by about half each step, so a list that grows by one
 * event at a time moves about once per third of its length, and a region is at most about a third unused.
 */
const CAPACITIES: readonly number[] = (() => {
  const list = [0, 4];
  while (list[list.length - 1] < 2 ** 31) list.push(Math.ceil((list[list.length - 1] * 1.5) / 2) * 2);
  return list;
})();

const EMPTY_ITEMS = new Int32Array(0);
const EMPTY_TIMES = new Float64Array(0);

/** The smallest size class with room for `n` events. */
function classFor(n: number): number {
  let c = 0;
  while (CAPACITIES[c] < n) c++;
  return c;
}

/** A copy of `a` in a larger array of `size` (the rest zeros). */
export function grown<T extends Int32Array | Float64Array>(a: T, size: number): T {
  const b = new (a.constructor as new (size: number) => T)(size);
  b.set(a);
  return b;
}
