/**
 * A FIFO queue of items with a unique key: O(1) push, shift and removal by key
 * (Array#shift and Array#splice are O(n) once a queue holds thousands of jobs, and a
 * close, or a client cancelling queued tasks, removes thousands of them).
 *
 * A removed item leaves a hole that `shift` skips; positions are absolute (`#base` is the
 * position of `#items[0]`), so dropping the consumed front never renumbers the index.
 */
export class Fifo<T> {
  readonly #key: (item: T) => string
  #items: (T | undefined)[] = []
  #head = 0
  #base = 0
  /** Each queued item's absolute position, by key. */
  readonly #where = new Map<string, number>()

  constructor (key: (item: T) => string) {
    this.#key = key
  }

  get length (): number {
    return this.#where.size
  }

  push (item: T): void {
    this.#where.set(this.#key(item), this.#base + this.#items.length)
    this.#items.push(item)
  }

  /** Puts an item back at the front (a job whose child died before taking it). */
  unshift (item: T): void {
    if (this.#head > 0) {
      this.#items[--this.#head] = item
    } else {
      this.#items.unshift(item)
      this.#base--
    }
    this.#where.set(this.#key(item), this.#base + this.#head)
  }

  shift (): T | undefined {
    while (this.#head < this.#items.length) {
      const item = this.#items[this.#head]
      this.#items[this.#head++] = undefined
      if (item === undefined) continue
      this.#where.delete(this.#key(item))
      this.#compact()
      return item
    }
    this.#compact()
    return undefined
  }

  /** Removes the item with this key; returns it, or undefined when none is queued. */
  remove (key: string): T | undefined {
    const position = this.#where.get(key)
    if (position === undefined) return undefined
    this.#where.delete(key)
    const index = position - this.#base
    const item = this.#items[index]
    this.#items[index] = undefined
    return item
  }

  /** Empties the queue and returns what it held, in order. */
  drain (): T[] {
    const items = this.#items.slice(this.#head).filter((item): item is T => item !== undefined)
    this.#items = []
    this.#head = 0
    this.#base = 0
    this.#where.clear()
    return items
  }

  /** Drops the consumed front once it is over half of the array. */
  #compact (): void {
    if (this.#head === this.#items.length) {
      this.#base += this.#head
      this.#items = []
      this.#head = 0
    } else if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#base += this.#head
      this.#items = this.#items.slice(this.#head)
      this.#head = 0
    }
  }
}
