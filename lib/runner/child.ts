/*
 * The entry point of each pool child. It loads the task modules once, then runs one
 * task at a time as the parent asks. It imports no fastify: only the protocol's
 * guards, the task loader and the reporting context.
 */
import { encodeResult, isParentMessage, type ChildInit, type ChildMessage, type ParentMessage, type ProgressUpdate } from '../protocol.js'
import { TaskError, tasksOfModule, thrown, type LoadedTask } from '../task.js'
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

async function load (): Promise<void> {
  for (const module of init.modules) {
    try {
      for (const task of tasksOfModule(await import(module))) tasks.set(task.name, task)
    } catch (err) {
      loadErrors.push(`${module}: ${thrown(err).message}`)
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
    const encoded = encodeResult(value, init.limits.maxOutputSize)
    if ('error' in encoded) send({ type: 'fail', id, message: encoded.error, update, retry: false })
    else send({ type: 'done', id, value, update })
  } catch (err) {
    send({ type: 'fail', id, ...thrown(err), update: context.finish() })
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
  const { message, stack } = thrown(err)
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
