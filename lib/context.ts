import type { MessageLimits, ProgressUpdate } from './protocol.js'
import type { TaskContext } from './task.js'
import { describe } from './task.js'
import { Pace } from './pace.js'

/**
 * The TaskContext a running task reports through, in a child process or inline.
 *
 * Progress is meant to be called in tight loops, so nothing here may send or store
 * per call: values accumulate and `flush` is called at most once per `interval`
 * milliseconds (leading edge: a quiet task's first update goes out at once, then at
 * most one flush per interval while a timer is pending). `finish()` hands back what
 * is still unflushed so the final values always arrive exactly, with the result.
 */
export class ReportingContext implements TaskContext {
  readonly uuid: string
  readonly attempt: number
  readonly signal: AbortSignal
  #progress: number | null = null
  #dirtyProgress = false
  #target: number | null = null
  #dirtyTarget = false
  #messages: string[] = []
  #timer: NodeJS.Timeout | undefined
  /** When the pending timer is due; checked every few hundred calls, see #changed. */
  #due = 0
  #calls = 0
  readonly #pace: Pace
  #finished = false
  readonly #flush: (update: ProgressUpdate) => void

  readonly #limits: MessageLimits
  #dropped = 0

  constructor (uuid: string, signal: AbortSignal, interval: number, flush: (update: ProgressUpdate) => void, limits: MessageLimits, attempt = 1) {
    this.#limits = limits
    this.uuid = uuid
    this.attempt = attempt
    this.signal = signal
    this.#pace = new Pace(interval)
    this.#flush = flush
  }

  setTarget (target: number): void {
    if (typeof target !== 'number' || !(target > 0) || target === Infinity) {
      throw new RangeError(`setTarget expects a finite number greater than 0, got ${describe(target)}`)
    }
    this.#target = target
    this.#dirtyTarget = true
    this.#changed()
  }

  setProgress (progress: number): void {
    // typeof plus one comparison also rejects NaN; this is the hot path.
    if (typeof progress !== 'number' || !(progress >= 0) || progress === Infinity) {
      throw new RangeError(`setProgress expects a finite number of 0 or more, got ${describe(progress)}`)
    }
    this.#progress = progress
    this.#dirtyProgress = true
    this.#changed()
  }

  incProgress (by = 1): void {
    if (typeof by !== 'number' || !Number.isFinite(by)) {
      throw new RangeError(`incProgress expects a finite number, got ${describe(by)}`)
    }
    this.setProgress((this.#progress ?? 0) + by)
  }

  addMessage (message: string): void {
    let text = String(message)
    const { maxMessages, maxMessageLength } = this.#limits
    if (text.length > maxMessageLength) text = text.slice(0, Math.max(0, maxMessageLength - 1)) + '…'
    this.#messages.push(text)
    // Keep the buffer bounded between flushes (a loop adding 100,000 messages), cheaply:
    // drop a whole cap's worth of the oldest at a time.
    if (this.#messages.length >= 2 * maxMessages) {
      this.#messages.splice(0, this.#messages.length - maxMessages)
      this.#dropped += maxMessages
    }
    this.#changed()
  }

  /**
   * A task that loops synchronously never lets the timer fire, so while a timer is
   * pending every 256th change also looks at the clock. One increment and a mask per
   * call keeps setProgress far above 5 million calls a second.
   */
  #changed (): void {
    if (this.#timer === undefined) {
      this.#schedule()
    } else if ((++this.#calls & 255) === 0 && performance.now() >= this.#due) {
      clearTimeout(this.#timer)
      this.#timer = undefined
      this.#send()
    }
  }

  /** Stops the timer and returns what was not flushed yet, if anything. */
  finish (): ProgressUpdate | undefined {
    this.#finished = true
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer)
      this.#timer = undefined
    }
    return this.#take()
  }

  #schedule (): void {
    if (this.#finished) return
    const wait = this.#pace.wait(performance.now())
    if (wait <= 0) {
      this.#send()
    } else {
      this.#due = performance.now() + wait
      this.#timer = setTimeout(this.#onTimer, wait)
    }
  }

  #onTimer = (): void => {
    this.#timer = undefined
    this.#send()
  }

  #send (): void {
    const update = this.#take()
    if (update === undefined) return
    this.#pace.sent(performance.now())
    this.#flush(update)
  }

  #take (): ProgressUpdate | undefined {
    if (!this.#dirtyProgress && !this.#dirtyTarget && this.#messages.length === 0 && this.#dropped === 0) return undefined
    const update: ProgressUpdate = {}
    if (this.#dirtyProgress) update.progress = this.#progress as number
    if (this.#dirtyTarget) update.target = this.#target as number
    const { maxMessages } = this.#limits
    if (this.#messages.length > maxMessages) {
      this.#dropped += this.#messages.length - maxMessages
      this.#messages = this.#messages.slice(-maxMessages)
    }
    if (this.#messages.length > 0) {
      update.messages = this.#messages
      this.#messages = []
    }
    if (this.#dropped > 0) {
      update.dropped = this.#dropped
      this.#dropped = 0
    }
    this.#dirtyProgress = false
    this.#dirtyTarget = false
    return update
  }
}
