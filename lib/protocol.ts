/**
 * Every message that crosses the parent <-> child IPC channel, as one discriminated
 * union per direction. This file imports nothing, so the child never pulls in fastify.
 * What arrives is checked by `isChildMessage` / `isParentMessage` before it is used:
 * nothing is trusted across the process boundary. The parent also checks that each
 * message fits the state of the child that sent it (see the pool).
 */

// Saved when this module loads, before any task module does: task code that replaces
// JSON.stringify cannot change how results are measured or sent.
const stringify = JSON.stringify
const byteLength = Buffer.byteLength

/** Characters of a failed task's error text kept in its record (and in the log). */
export const maxErrorLength = 4096
/** Characters of a failure's stack or detail kept for the log. */
export const maxDetailLength = 16_384

/** Cuts a text to `max` characters, ending with an ellipsis when it was cut. */
export function cut (text: string, max: number): string {
  return text.length > max ? text.slice(0, Math.max(0, max - 1)) + '…' : text
}

/** Progress, target and messages accumulated in the child since its last flush. */
export interface ProgressUpdate {
  /** Latest progress, when it changed since the last flush. */
  progress?: number
  /** Latest target, when it changed since the last flush. */
  target?: number
  /** Messages added since the last flush, in order (the newest, at most the cap). */
  messages?: string[]
  /** How many older messages the child dropped since the last flush (the cap). */
  dropped?: number
}

/** Caps on what a task sends back: messages (applied in the child and again in the record) and its result. */
export interface MessageLimits {
  /** Messages kept per task; the oldest go first. */
  maxMessages: number
  /** Characters kept per message; a longer one is cut and ends with an ellipsis. */
  maxMessageLength: number
  /** Bytes the result may take as JSON. */
  maxOutputSize: number
}

/** Parent -> child. */
export type ParentMessage =
  | { type: 'run', id: string, task: string, inputs: Record<string, unknown>, attempt: number }
  /** Abort the running task's signal (cancel or timeout); the parent escalates if it does not end. */
  | { type: 'abort', id: string }

/**
 * Child -> parent. In order, per child: one `ready`; then for each `run`, one `ack`,
 * any number of `update`s and one `done` or `fail`, all with the run's id. A `crash`
 * may come at any time, and the child exits right after it. Anything else is a
 * protocol error: the parent fails the task it was running and replaces the child.
 */
export type ChildMessage =
  /** The task modules are loaded. `loadErrors`: the modules that failed to load here (for the log). */
  | { type: 'ready', loadErrors?: string[] }
  /** The run was received; the task is starting. */
  | { type: 'ack', id: string }
  | { type: 'update', id: string, update: ProgressUpdate }
  | { type: 'done', id: string, value: unknown, update?: ProgressUpdate }
  /**
   * `retry: false`: another attempt cannot help (TaskError with retry false, an unsendable
   * result, a task that is unavailable here). `stack` and `detail` go to the server log only.
   */
  | { type: 'fail', id: string, message: string, stack?: string, detail?: string, update?: ProgressUpdate, retry?: boolean }
  /**
   * An uncaught exception or unhandled rejection; the child exits right after sending it.
   * `id`: the task that was running, if one was. `own`: the error came from that task's
   * own code (its async context), so its message may go into that task's record.
   */
  | { type: 'crash', id?: string, own: boolean, message: string, stack?: string }

/** Sent as the `data` of `fork()` so the child knows which modules to load. */
export interface ChildInit {
  modules: string[]
  progressInterval: number
  limits: MessageLimits
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null
}

/** Progress is a finite number of 0 or more, a target a finite number over 0: as setProgress and setTarget enforce. */
export function isProgress (value: unknown): value is number {
  return typeof value === 'number' && value >= 0 && value !== Infinity
}

export function isTarget (value: unknown): value is number {
  return typeof value === 'number' && value > 0 && value !== Infinity
}

function isUpdate (value: unknown): value is ProgressUpdate | undefined {
  if (value === undefined) return true
  if (!isObject(value)) return false
  if (value.progress !== undefined && !isProgress(value.progress)) return false
  if (value.target !== undefined && !isTarget(value.target)) return false
  if (value.messages !== undefined && !(Array.isArray(value.messages) && value.messages.every(m => typeof m === 'string'))) return false
  if (value.dropped !== undefined && !(typeof value.dropped === 'number' && Number.isInteger(value.dropped) && value.dropped >= 0)) return false
  return true
}

/** Checks the shape of a message received from a child. */
export function isChildMessage (value: unknown): value is ChildMessage {
  if (!isObject(value)) return false
  switch (value.type) {
    case 'ready':
      return value.loadErrors === undefined || (Array.isArray(value.loadErrors) && value.loadErrors.every(e => typeof e === 'string'))
    case 'ack':
      return typeof value.id === 'string'
    case 'update':
      return typeof value.id === 'string' && isUpdate(value.update) && value.update !== undefined
    case 'done':
      return typeof value.id === 'string' && isUpdate(value.update)
    case 'fail':
      return typeof value.id === 'string' && typeof value.message === 'string' && isUpdate(value.update) &&
        (value.stack === undefined || typeof value.stack === 'string') &&
        (value.detail === undefined || typeof value.detail === 'string') &&
        (value.retry === undefined || typeof value.retry === 'boolean')
    case 'crash':
      return (value.id === undefined || typeof value.id === 'string') && typeof value.own === 'boolean' &&
        typeof value.message === 'string' && (value.stack === undefined || typeof value.stack === 'string')
    default:
      return false
  }
}

/** Checks the shape of a message received from the parent. */
export function isParentMessage (value: unknown): value is ParentMessage {
  if (!isObject(value)) return false
  if (value.type === 'abort') return typeof value.id === 'string'
  return value.type === 'run' && typeof value.id === 'string' && typeof value.task === 'string' && isObject(value.inputs) &&
    typeof value.attempt === 'number'
}

/**
 * The result as the JSON that crosses the IPC channel, or why it cannot cross: a
 * circular object, a BigInt, or more than `maxOutputSize` bytes. `json` is undefined for
 * a value JSON has no text for (undefined, a function). The inline runner applies the
 * same rules, so both runners fail the same results with the same errors.
 */
export function encodeResult (value: unknown, maxOutputSize: number): { json: string | undefined } | { error: string } {
  let json: string | undefined
  try {
    json = stringify(value)
  } catch (err) {
    return { error: `task result cannot be sent from the child process: ${(err as Error).message}` }
  }
  const size = json === undefined ? 0 : byteLength(json)
  if (size > maxOutputSize) return { error: `task result is ${size} bytes as JSON, over the maxOutputSize of ${maxOutputSize} bytes` }
  return { json }
}
