import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { isChildMessage, type ChildInit, type ChildMessage, type MessageLimits, type ParentMessage } from '../protocol.js'
import { Fifo } from './queue.js'
import type { Job, Runner, RunnerEvents } from './types.js'

/** Options of the child-process pool. */
export interface ProcessPoolOptions {
  /** Task module URLs every child loads once. */
  modules: string[]
  /** How many children, each running one task at a time. */
  concurrency: number
  /** Milliseconds between progress flushes from a child. */
  progressInterval: number
  /** Caps on each task's messages. */
  limits: MessageLimits
  /** Node flags for the children. @default process.execArgv (so a tsx loader carries over) */
  execArgv?: string[]
  /** The children's environment. @default process.env */
  env?: NodeJS.ProcessEnv
  /** Tasks a child runs before it is replaced; 0: no limit. */
  maxTasksPerChild?: number
  /** Each child's V8 old-space limit in MB (`--max-old-space-size`); undefined: Node's default. */
  maxOldGenerationSizeMb?: number
  /** Where child failures are logged. */
  log?: { warn (obj: object, msg: string): void }
}

// Under tsx the sources run as .ts; compiled, as .js. The child entry sits beside this file.
const here = fileURLToPath(import.meta.url)
const childEntry = here.replace(/pool\.([cm]?[jt]s)$/, 'child.$1')

// Waiting between respawns of a child that keeps dying before it is ready.
const respawnDelay = 1000
const killGrace = 2000
// How long an exited child's stderr may take to deliver its last words (an out-of-memory report).
const stderrGrace = 250
const stderrTailSize = 4096
const outOfMemory = /JavaScript heap out of memory|Reached heap limit|Ineffective mark-compacts near heap limit/

interface Worker {
  child: ChildProcess
  ready: boolean
  job: Job | undefined
  /** Tasks this child has run. */
  tasks: number
  /** The end of what the child wrote to stderr: tells an out-of-memory death from others. */
  stderrTail: string
  /** Settles once the child has exited and its task, if any, was reported. */
  gone: Promise<void>
  settled: () => void
  /** Escalation of an abort: SIGTERM after the grace period, then SIGKILL. */
  abortTimers: NodeJS.Timeout[]
}

/**
 * A warm pool of forked children. Forking costs about 100 ms, so children are forked
 * once and reused; a child that exits or crashes fails the job it was running and is
 * replaced.
 */
export class ProcessPool implements Runner {
  readonly #options: ProcessPoolOptions
  readonly #queue = new Fifo<Job>()
  readonly #workers = new Set<Worker>()
  readonly #idle: Worker[] = []
  #events: RunnerEvents | undefined
  #running = 0
  #closing = false
  #earlyExits = 0

  constructor (options: ProcessPoolOptions) {
    this.#options = options
  }

  get queued (): number { return this.#queue.length }
  get running (): number { return this.#running }

  async start (events: RunnerEvents): Promise<void> {
    this.#events = events
    const starting: Promise<void>[] = []
    for (let i = 0; i < this.#options.concurrency; i++) starting.push(this.#spawn())
    await Promise.all(starting)
  }

  enqueue (job: Job): void {
    this.#queue.push(job)
    this.#dispatch()
  }

  dequeue (uuid: string): boolean {
    return this.#queue.remove(job => job.uuid === uuid) !== undefined
  }

  abort (uuid: string, grace: number): void {
    for (const worker of this.#workers) {
      if (worker.job?.uuid !== uuid || worker.abortTimers.length > 0) continue
      // Already exited: its task is reported as soon as its last stderr bytes are in.
      if (worker.child.exitCode !== null || worker.child.signalCode !== null) return
      const message: ParentMessage = { type: 'abort', id: uuid }
      worker.child.send(message, () => {})
      // A task that ignores its signal, or never yields (while (true) {}), is ended for
      // real: SIGTERM after the grace period, SIGKILL if it ignores that too.
      worker.abortTimers.push(
        setTimeout(() => worker.child.kill('SIGTERM'), grace).unref(),
        setTimeout(() => worker.child.kill('SIGKILL'), grace + killGrace).unref())
      return
    }
  }

  async close (): Promise<Job[]> {
    this.#closing = true
    const dropped = this.#queue.drain()
    await Promise.all([...this.#workers].map(async (worker) => {
      await stop(worker.child)
      await worker.gone
    }))
    return dropped
  }

  #spawn (): Promise<void> {
    const init: ChildInit = { modules: this.#options.modules, progressInterval: this.#options.progressInterval, limits: this.#options.limits }
    const heap = this.#options.maxOldGenerationSizeMb
    const child = fork(childEntry, [JSON.stringify(init)], {
      execArgv: [...(this.#options.execArgv ?? process.execArgv), ...(heap === undefined ? [] : [`--max-old-space-size=${heap}`])],
      env: this.#options.env ?? process.env,
      serialization: 'json',
      // stderr passes through to ours, and its tail is kept to recognize an out-of-memory death.
      stdio: ['inherit', 'inherit', 'pipe', 'ipc'],
    })
    let settled!: () => void
    const gone = new Promise<void>((resolve) => { settled = resolve })
    const worker: Worker = { child, ready: false, job: undefined, tasks: 0, stderrTail: '', gone, settled, abortTimers: [] }
    this.#workers.add(worker)
    child.stderr?.on('data', (chunk: Buffer) => {
      process.stderr.write(chunk)
      worker.stderrTail = (worker.stderrTail + chunk.toString('utf8')).slice(-stderrTailSize)
    })
    return new Promise((resolve, reject) => {
      child.on('message', (message: unknown) => {
        if (!isChildMessage(message)) {
          this.#options.log?.warn({ pid: child.pid }, 'fastify-task-api: ignored a malformed message from a child process')
          return
        }
        if (message.type === 'ready') {
          worker.ready = true
          this.#earlyExits = 0
          resolve()
          this.#release(worker)
          return
        }
        this.#onMessage(worker, message)
      })
      child.on('error', (err) => {
        this.#options.log?.warn({ err, pid: child.pid }, 'fastify-task-api: child process error')
      })
      child.once('exit', (code, signal) => {
        clearAbort(worker)
        const index = this.#idle.indexOf(worker)
        if (index !== -1) this.#idle.splice(index, 1)
        // Its last stderr bytes can arrive just after 'exit': wait for them, briefly.
        afterStderr(child, () => this.#exited(worker, code, signal, reject))
      })
    })
  }

  #exited (worker: Worker, code: number | null, signal: NodeJS.Signals | null, reject: (err: Error) => void): void {
    this.#workers.delete(worker)
    const heap = this.#options.maxOldGenerationSizeMb
    const how = outOfMemory.test(worker.stderrTail)
      ? `ran out of memory (heap limit ${heap === undefined ? 'the Node.js default' : `${heap} MB`})`
      : signal !== null ? `was killed by signal ${signal}` : `exited with code ${String(code)}`
    if (worker.job !== undefined) {
      const job = worker.job
      worker.job = undefined
      this.#running--
      this.#events?.finished(job.uuid, {
        ok: false,
        error: `the child process running the task ${how}`,
      })
    }
    if (!worker.ready) {
      reject(new Error(`fastify-task-api: a child process ${how} before it was ready`))
      this.#earlyExits++
    }
    worker.settled()
    if (!this.#closing) this.#replace()
  }

  #replace (): void {
    const delay = this.#earlyExits > 0 ? respawnDelay : 0
    const respawn = (): void => {
      if (this.#closing) return
      this.#spawn().catch((err: Error) => {
        if (!this.#closing) this.#options.log?.warn({ err }, 'fastify-task-api: a replacement child process failed to start')
      })
    }
    if (delay === 0) respawn()
    else setTimeout(respawn, delay).unref()
  }

  #onMessage (worker: Worker, message: Exclude<ChildMessage, { type: 'ready' }>): void {
    const job = worker.job
    if (job === undefined || message.id !== job.uuid) return
    const events = this.#events as RunnerEvents
    if (message.type === 'update') {
      events.update(job.uuid, message.update)
      return
    }
    if (message.update !== undefined) events.update(job.uuid, message.update)
    clearAbort(worker)
    worker.job = undefined
    this.#running--
    if (message.type === 'done') {
      events.finished(job.uuid, { ok: true, value: message.value })
    } else {
      events.finished(job.uuid, { ok: false, error: message.message, stack: message.stack, retry: message.retry })
      if (message.fatal === true) {
        // The child exits right after this message; its exit handler replaces it.
        worker.child.kill('SIGKILL')
        return
      }
    }
    const limit = this.#options.maxTasksPerChild ?? 0
    if (limit > 0 && ++worker.tasks >= limit) {
      // Recycled: once it has exited, its exit handler forks a fresh one, so the pool
      // never holds more children than its size.
      void stop(worker.child)
      return
    }
    this.#release(worker)
  }

  #release (worker: Worker): void {
    if (this.#closing || !this.#workers.has(worker)) return
    this.#idle.push(worker)
    this.#dispatch()
  }

  #dispatch (): void {
    while (this.#idle.length > 0 && this.#queue.length > 0) {
      const worker = this.#idle.pop() as Worker
      const job = this.#queue.shift() as Job
      worker.job = job
      this.#running++
      this.#events?.started(job.uuid)
      const message: ParentMessage = { type: 'run', id: job.uuid, task: job.task, inputs: job.inputs, attempt: job.attempt }
      // A send to a child that just died fails asynchronously; its exit handler then fails the job.
      worker.child.send(message, (err) => {
        if (err !== null && err !== undefined) worker.child.kill('SIGKILL')
      })
    }
  }
}

function clearAbort (worker: Worker): void {
  for (const timer of worker.abortTimers) clearTimeout(timer)
  worker.abortTimers = []
}

/** Calls `then` once the child's stderr has ended, or after a short grace period. */
function afterStderr (child: ChildProcess, then: () => void): void {
  const stderr = child.stderr
  if (stderr === null || stderr.readableEnded || stderr.destroyed) {
    then()
    return
  }
  let done = false
  const once = (): void => {
    if (done) return
    done = true
    clearTimeout(timer)
    then()
  }
  const timer = setTimeout(once, stderrGrace)
  stderr.once('end', once)
  stderr.once('close', once)
}

/** Ends a child: SIGTERM, then SIGKILL if it has not exited after a grace period. */
function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), killGrace)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    child.kill('SIGTERM')
  })
}
