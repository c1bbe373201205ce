/*
 * The entry point of each pool child. It loads the task modules once, then runs one
 * task at a time as the parent asks. It imports no fastify: only the protocol's
 * guards, the task loader and the reporting context.
 */
import { isParentMessage, type ChildInit, type ChildMessage, type ParentMessage, type ProgressUpdate } from '../protocol.js'
import { TaskError, tasksOfModule, type LoadedTask } from '../task.js'
import { ReportingContext } from '../context.js'

const init = JSON.parse(process.argv[2] ?? '{}') as ChildInit
const tasks = new Map<string, LoadedTask>()
const loadErrors: string[] = []
let current: string | undefined
let controller: AbortController | undefined

function send (message: ChildMessage, then?: () => void): void {
  if (process.send === undefined) return
  process.send(message, undefined, {}, then)
}

function errorText (err: unknown): { message: string, stack?: string, retry?: boolean } {
  if (err instanceof TaskError && !err.retry) return { message: err.message || err.name, stack: err.stack, retry: false }
  if (err instanceof Error) return { message: err.message || err.name, stack: err.stack }
  return { message: `a non-Error value was thrown: ${String(err)}` }
}

/** Why a result cannot leave this process, or undefined when it can. */
function unsendable (value: unknown): string | undefined {
  let json: string | undefined
  try {
    json = JSON.stringify(value)
  } catch (err) {
    // Circular objects and BigInts.
    return `task result cannot be sent from the child process: ${errorText(err).message}`
  }
  const size = json === undefined ? 0 : Buffer.byteLength(json)
  if (size > init.limits.maxOutputSize) {
    return `task result is ${size} bytes as JSON, over the maxOutputSize of ${init.limits.maxOutputSize} bytes`
  }
  return undefined
}

async function load (): Promise<void> {
  for (const module of init.modules) {
    try {
      for (const task of tasksOfModule(await import(module))) tasks.set(task.name, task)
    } catch (err) {
      loadErrors.push(`${module}: ${errorText(err).message}`)
    }
  }
}

async function run (message: Extract<ParentMessage, { type: 'run' }>): Promise<void> {
  const { id } = message
  current = id
  controller = new AbortController()
  const task = tasks.get(message.task)
  const context = new ReportingContext(id, controller.signal, init.progressInterval,
    (update: ProgressUpdate) => send({ type: 'update', id, update }), init.limits, message.attempt)
  try {
    if (task === undefined) {
      throw new TaskError(loadErrors.length > 0
        ? `task "${message.task}" could not be loaded in the child process: ${loadErrors.join('; ')}`
        : `task "${message.task}" is not defined in the child process`, { retry: false })
    }
    const value = await task.invoke(message.inputs, context)
    const update = context.finish()
    const problem = unsendable(value)
    if (problem === undefined) send({ type: 'done', id, value, update })
    else send({ type: 'fail', id, message: problem, update, retry: false })
  } catch (err) {
    send({ type: 'fail', id, ...errorText(err), update: context.finish() })
  } finally {
    current = undefined
    controller = undefined
  }
}

function fatal (err: unknown): void {
  // After an uncaught exception the process is in an unknown state: report it against
  // the task it interrupted, then exit and let the pool replace this child.
  const id = current
  if (id === undefined) {
    process.exit(1)
  }
  const { message, stack } = errorText(err)
  try {
    send({ type: 'fail', id, message: `uncaught exception in the child process: ${message}`, stack, fatal: true }, () => process.exit(1))
  } catch {
    process.exit(1)
  }
}

process.on('uncaughtException', fatal)
// The parent is gone (it exited or was killed): never outlive it.
process.on('disconnect', () => process.exit(0))

process.on('message', (message: unknown) => {
  if (!isParentMessage(message)) return
  if (message.type === 'run') void run(message)
  else if (message.id === current) controller?.abort(new Error('the task was cancelled'))
})

await load()
send({ type: 'ready' })
