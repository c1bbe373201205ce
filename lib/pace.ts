/**
 * At most one send per `interval` on average, without drift: a generic cell rate
 * algorithm (a token bucket holding one token, with some tolerance). A send is allowed
 * once `now` is within `tolerance` of the theoretical time of the next one; an early send
 * moves that time on by one interval from where it was, not from when the send happened,
 * so a source that updates exactly every interval is never pushed a whole interval back
 * by timer jitter (a late one restarts the schedule from now). Over any window of n sends, at least (n - 1) * interval - tolerance
 * milliseconds pass.
 */
export class Pace {
  readonly #interval: number
  readonly #tolerance: number
  #next = -Infinity

  constructor (interval: number, tolerance = interval / 2) {
    this.#interval = interval
    this.#tolerance = tolerance
  }

  /** Milliseconds to wait before the next send is allowed; 0 or less means now. */
  wait (now: number): number {
    return this.#next - this.#tolerance - now
  }

  /** Records a send made at `now`. */
  sent (now: number): void {
    this.#next = Math.max(this.#next, now) + this.#interval
  }
}
