/**
 * A FIFO queue with O(1) push and shift (Array#shift is O(n) once a queue holds
 * thousands of jobs).
 */
export class Fifo<T> {
  #items: (T | undefined)[] = []
  #head = 0

  get length (): number {
    return this.#items.length - this.#head
  }

  push (item: T): void {
    this.#items.push(item)
  }

  /** Puts an item back at the front (a job whose child died before taking it). */
  unshift (item: T): void {
    if (this.#head > 0) this.#items[--this.#head] = item
    else this.#items.unshift(item)
  }

  shift (): T | undefined {
    if (this.#head === this.#items.length) return undefined
    const item = this.#items[this.#head]
    this.#items[this.#head++] = undefined
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head)
      this.#head = 0
    }
    return item
  }

  /** Removes the first item matching; O(n), for the rare cancel of a queued job. */
  remove (match: (item: T) => boolean): T | undefined {
    for (let i = this.#head; i < this.#items.length; i++) {
      const item = this.#items[i] as T
      if (match(item)) {
        this.#items.splice(i, 1)
        return item
      }
    }
    return undefined
  }

  /** Empties the queue and returns what it held, in order. */
  drain (): T[] {
    const items = this.#items.slice(this.#head) as T[]
    this.#items = []
    this.#head = 0
    return items
  }
}
