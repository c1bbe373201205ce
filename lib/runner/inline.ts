import { ReportingContext } from '../context.js'
import { encodeResult, type MessageLimits } from '../protocol.js'
import { TaskError, thrown, type LoadedTask } from '../task.js'
import { Fifo } from './queue.js'
import type { Job, Runner, RunnerEvents } from './types.js'

/** Options of the inline runner. */
export interface InlineRunnerOptions {
  tasks: Map<string, LoadedTask>
  concurrency: number
  progressInterval: number
  limits: MessageLimits
}

/**
 * Runs tasks in the server's own process, with the same task API as the pool. Meant
 * for users' unit tests and for tasks that are pure I/O; a CPU-bound task blocks the
 * server here.
 */
export class InlineRunner implements Runner {
  readonly #options: InlineRunnerOptions
  readonly #queue = new Fifo<Job>(job => job.uuid)
  #events: RunnerEvents | undefined
  #running = 0
  #closing = false
  readonly #controllers = new Map<string, AbortController>()
  /** Jobs given up on after an abort's grace period: their late result is ignored. */
  readonly #abandoned = new Set<string>()

  constructor (options: InlineRunnerOptions) {
    this.#options = options
  }

  get queued (): number { return this.#queue.length }
  get running (): number { return this.#running }
  get unavailable (): undefined { return undefined }

  async start (events: RunnerEvents): Promise<void> {
    this.#events = events
  }

  enqueue (job: Job): void {
    this.#queue.push(job)
    this.#dispatch()
  }

  dequeue (uuid: string): boolean {
    return this.#queue.remove(uuid) !== undefined
  }

  abort (uuid: string, grace: number): void {
    const controller = this.#controllers.get(uuid)
    if (controller === undefined || controller.signal.aborted) return
    controller.abort(new Error('the task was cancelled'))
    // In this process nothing can be killed: past the grace period the task is given up
    // on (it may still be running) and reported as ended.
    setTimeout(() => {
      if (!this.#controllers.has(uuid)) return
      this.#abandoned.add(uuid)
      this.#controllers.delete(uuid)
      this.#events?.finished(uuid, { ok: false, error: 'the task did not stop after its signal was aborted' })
    }, grace)
  }

  async close (): Promise<Job[]> {
    this.#closing = true
    // Nothing here can be killed: runs still going are aborted and reported as ended now.
    for (const [uuid, controller] of this.#controllers) {
      controller.abort(new Error('the server is closing'))
      this.#abandoned.add(uuid)
      this.#controllers.delete(uuid)
      this.#events?.finished(uuid, { ok: false, error: 'the server closed while the task was running' })
    }
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
    const controller = new AbortController()
    this.#controllers.set(job.uuid, controller)
    const context = new ReportingContext(job.uuid, controller.signal, this.#options.progressInterval,
      update => { if (!this.#abandoned.has(job.uuid)) events.update(job.uuid, update) }, this.#options.limits, job.attempt)
    const finish = (result: Parameters<RunnerEvents['finished']>[1]): void => {
      this.#controllers.delete(job.uuid)
      if (this.#abandoned.delete(job.uuid)) return
      const update = context.finish()
      if (update !== undefined) events.update(job.uuid, update)
      events.finished(job.uuid, result)
    }
    try {
      const task = this.#options.tasks.get(job.task)
      if (task === undefined) throw new Error(`task "${job.task}" is not registered`)
      const value = await task.invoke(job.inputs, context)
      finish({ ok: true, value: sendable(value, this.#options.limits.maxOutputSize) })
    } catch (err) {
      const { message, stack, retry } = thrown(err)
      finish({ ok: false, error: message, stack, retry })
    } finally {
      this.#running--
      this.#dispatch()
    }
  }
}

/** The value as it would arrive from a child process: through JSON, within the size bound. */
function sendable (value: unknown, maxOutputSize: number): unknown {
  const encoded = encodeResult(value, maxOutputSize)
  if ('error' in encoded) throw new TaskError(encoded.error, { retry: false })
  return encoded.json === undefined ? undefined : JSON.parse(encoded.json) as unknown
}
