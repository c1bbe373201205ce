import { ReportingContext } from '../context.js'
import type { LoadedTask } from '../task.js'
import { Fifo } from './queue.js'
import type { Job, Runner, RunnerEvents } from './types.js'

/** Options of the inline runner. */
export interface InlineRunnerOptions {
  tasks: Map<string, LoadedTask>
  concurrency: number
  progressInterval: number
}

/**
 * Runs tasks in the server's own process, with the same task API as the pool. Meant
 * for users' unit tests and for tasks that are pure I/O; a CPU-bound task blocks the
 * server here.
 */
export class InlineRunner implements Runner {
  readonly #options: InlineRunnerOptions
  readonly #queue = new Fifo<Job>()
  #events: RunnerEvents | undefined
  #running = 0
  #closing = false

  constructor (options: InlineRunnerOptions) {
    this.#options = options
  }

  get queued (): number { return this.#queue.length }
  get running (): number { return this.#running }

  async start (events: RunnerEvents): Promise<void> {
    this.#events = events
  }

  enqueue (job: Job): void {
    this.#queue.push(job)
    this.#dispatch()
  }

  async close (): Promise<Job[]> {
    this.#closing = true
    return this.#queue.drain()
  }

  #dispatch (): void {
    while (!this.#closing && this.#running < this.#options.concurrency && this.#queue.length > 0) {
      void this.#run(this.#queue.shift() as Job)
    }
  }

  async #run (job: Job): Promise<void> {
    const events = this.#events as RunnerEvents
    this.#running++
    events.started(job.uuid)
    const context = new ReportingContext(job.uuid, new AbortController().signal, this.#options.progressInterval,
      update => events.update(job.uuid, update))
    try {
      const task = this.#options.tasks.get(job.task)
      if (task === undefined) throw new Error(`task "${job.task}" is not registered`)
      const value = await task.invoke(job.inputs, context)
      const update = context.finish()
      if (update !== undefined) events.update(job.uuid, update)
      events.finished(job.uuid, { ok: true, value: sendable(value) })
    } catch (err) {
      const update = context.finish()
      if (update !== undefined) events.update(job.uuid, update)
      const error = err instanceof Error ? err : new Error(`a non-Error value was thrown: ${String(err)}`)
      events.finished(job.uuid, { ok: false, error: error.message, stack: error.stack })
    } finally {
      this.#running--
      this.#dispatch()
    }
  }
}

/** The value as it would arrive from a child process: through JSON. */
function sendable (value: unknown): unknown {
  if (value === undefined) return undefined
  try {
    return JSON.parse(JSON.stringify(value)) as unknown
  } catch (err) {
    throw new Error(`task result cannot be sent from the child process: ${(err as Error).message}`)
  }
}
