/*
 * The entry point of each pool child. It loads the task modules once, then runs one
 * task at a time as the parent asks. It imports no fastify: only the protocol's
 * guards, the task loader and the reporting context.
 *
 * Task code is trusted but may be buggy, and one warm child runs many tasks, so what
 * this file relies on is saved before any task module loads, and what a task may
 * change in the process (its cwd, its environment) is put back after each task.
 */
import { AsyncLocalStorage } from 'node:async_hooks'
import { inspect } from 'node:util'
import { cut, encodeResult, isParentMessage, maxDetailLength, maxErrorLength, type ChildInit, type ChildMessage, type ParentMessage, type ProgressUpdate } from '../protocol.js'
import { TaskError, tasksOfModule, thrown, type LoadedTask } from '../task.js'
import { ReportingContext } from '../context.js'

const parse = JSON.parse
const NativePromise = Promise
const processSend = process.send?.bind(process)
const realExit = process.exit.bind(process)
const chdir = process.chdir.bind(process)
const getCwd = process.cwd.bind(process)
const kill = process.kill.bind(process)
const keys = Object.keys
const entries = Object.entries
const hasOwn = Object.hasOwn
const startCwd = getCwd()
const startEnv: Record<string, string | undefined> = { ...process.env }
/**
 * True once task code has changed the environment. Reading every variable back after each
 * task (process.env is a live view of the C environment, each access a call into it)
 * cost more than the whole rest of a no-op task; a proxy that notes writes lets the
 * common case (no change) skip it. Writes still reach the real environment (TZ, and the
 * env of processes the task spawns).
 */
let envChanged = false
const realEnv = process.env
process.env = new Proxy(realEnv, {
  set (target, key, value) {
    envChanged = true
    return Reflect.set(target, key, value)
  },
  deleteProperty (target, key) {
    envChanged = true
    return Reflect.deleteProperty(target, key)
  },
  defineProperty (target, key, descriptor) {
    envChanged = true
    return Reflect.defineProperty(target, key, descriptor)
  },
})

const init = parse(process.argv[2] ?? '{}') as ChildInit
const tasks = new Map<string, LoadedTask>()
const loadErrors: string[] = []
/** The task each async context belongs to: tells a task's own uncaught error from a leftover of another's. */
const owner = new AsyncLocalStorage<string>()
let current: string | undefined
let controller: AbortController | undefined
/** True while run()'s synchronous body executes: process.exit() there exits at once. */
let inRunBody = false
/** Messages handed to the channel and not yet written. */
let unsent = 0
let exitCode: number | undefined
let exiting = false

function send (message: ChildMessage): void {
  if (processSend === undefined) return
  unsent++
  processSend(message, undefined, {}, () => {
    unsent--
    if (exiting && unsent === 0 && current === undefined) realExit(exitCode)
  })
}

/** What the running task's run() returned (a promise for async tasks), once it has returned. */
let outcome: { value: unknown } | undefined

/** True once run() has returned and what it returned has settled. */
function settled (): boolean {
  if (outcome === undefined) return false
  if (!(outcome.value instanceof NativePromise)) return true
  return !inspect(outcome.value, { depth: 0, maxArrayLength: 0, maxStringLength: 0 }).includes('<pending>')
}

/**
 * process.exit() right after a task returned (from a nextTick, a microtask or a timer)
 * would cut off the result on its way to the parent. So an exit once run() has settled
 * waits until the result is written to the channel (at most a second). An exit while the
 * task is still running (in run()'s body or its awaits) ends the child at once, as it
 * always did: the task fails with the exit code.
 */
process.exit = ((code?: number | string | null) => {
  exitCode = typeof code === 'number' ? code : typeof process.exitCode === 'number' ? process.exitCode : 0
  if (inRunBody || (current === undefined ? unsent === 0 : !settled())) realExit(exitCode)
  if (!exiting) {
    exiting = true
    setTimeout(() => realExit(exitCode), 1000).unref()
  }
  return undefined as never
}) as typeof process.exit

async function load (): Promise<void> {
  for (const module of init.modules) {
    try {
      for (const task of tasksOfModule(await import(module))) tasks.set(task.name, task)
    } catch (err) {
      loadErrors.push(`${module}: ${thrown(err).message}`)
    }
  }
}

/** Puts back the working directory and the environment a task may have changed. */
function restore (): void {
  if (getCwd() !== startCwd) {
    try {
      chdir(startCwd)
    } catch {}
  }
  if (!envChanged) return
  envChanged = false
  const env = realEnv
  for (const key of keys(env)) {
    if (!hasOwn(startEnv, key)) delete env[key]
  }
  for (const [key, value] of entries(startEnv)) {
    if (env[key] !== value) env[key] = value
  }
}

async function run (message: Extract<ParentMessage, { type: 'run' }>): Promise<void> {
  const { id } = message
  send({ type: 'ack', id })
  current = id
  controller = new AbortController()
  const task = tasks.get(message.task)
  const context = new ReportingContext(id, controller.signal, init.progressInterval,
    (update: ProgressUpdate) => send({ type: 'update', id, update }), init.limits, message.attempt)
  let result: ChildMessage
  try {
    if (task === undefined) {
      // The detail (a module's load error) is for the server log, not for clients.
      throw new Unavailable(message.task)
    }
    inRunBody = true
    try {
      outcome = { value: owner.run(id, () => task.invoke(message.inputs, context)) }
    } finally {
      inRunBody = false
    }
    const value: unknown = await outcome.value
    const update = context.finish()
    const encoded = encodeResult(value, init.limits.maxOutputSize)
    result = 'error' in encoded
      ? { type: 'fail', id, message: encoded.error, update, retry: false }
      : { type: 'done', id, value, update }
  } catch (err) {
    const update = context.finish()
    if (err instanceof Unavailable) {
      result = { type: 'fail', id, message: `task "${message.task}" is unavailable`, detail: err.detail, update, retry: false }
    } else {
      const { message: text, stack, retry } = thrown(err)
      result = { type: 'fail', id, message: cut(text, maxErrorLength), stack: stack === undefined ? undefined : cut(stack, maxDetailLength), update, retry }
    }
  }
  current = undefined
  controller = undefined
  outcome = undefined
  restore()
  send(result)
}

class Unavailable extends Error {
  readonly detail: string
  constructor (name: string) {
    super(`task "${name}" is unavailable`)
    this.detail = loadErrors.length > 0
      ? `task "${name}" could not be loaded in the child process: ${loadErrors.join('; ')}`
      : `task "${name}" is not defined in the child process`
  }
}

/**
 * An uncaught exception or unhandled rejection leaves the process in an unknown state:
 * report it and exit; the pool replaces this child. The running task's record gets the
 * error's message only when the error came from that task's own async context: a
 * leftover timer of an earlier task must not write its text into another task's record.
 */
function crash (err: unknown): void {
  const id = current
  const { message, stack } = thrown(err)
  const own = id !== undefined && owner.getStore() === id
  current = undefined // the exit follows this message, not a result
  try {
    exiting = true
    exitCode = 1
    send({ type: 'crash', ...(id === undefined ? {} : { id }), own, message: cut(message, maxErrorLength), stack: stack === undefined ? undefined : cut(stack, maxDetailLength) })
    setTimeout(() => realExit(1), 1000).unref()
  } catch {
    realExit(1)
  }
}

process.on('uncaughtException', crash)
process.on('unhandledRejection', crash)
// The parent is gone (it exited or was killed): never outlive it, nor let anything this
// child started outlive it. The child leads its own process group.
process.on('disconnect', () => {
  try {
    kill(-process.pid, 'SIGKILL')
  } catch {
    realExit(0)
  }
})

process.on('message', (message: unknown) => {
  if (!isParentMessage(message)) return
  // An exiting child takes no new task: unacknowledged, the pool gives it to another child.
  if (message.type === 'run') {
    if (!exiting) void run(message)
  }
  else if (message.id === current) controller?.abort(new Error('the task was cancelled'))
})

await load()
send(loadErrors.length > 0 ? { type: 'ready', loadErrors } : { type: 'ready' })
