/**
 * Every message that crosses the parent <-> child IPC channel, as one discriminated
 * union per direction. This file imports nothing, so the child never pulls in fastify. What arrives is checked by `isChildMessage` /
 * `isParentMessage` before it is used: nothing is trusted across the process boundary.
 */

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

/** Child -> parent. */
export type ChildMessage =
  | { type: 'ready' }
  | { type: 'update', id: string, update: ProgressUpdate }
  | { type: 'done', id: string, value: unknown, update?: ProgressUpdate }
  /**
   * `fatal`: the child is exiting after this (an uncaught exception); do not give it more work.
   * `retry: false`: another attempt cannot help (TaskError with retry false, an unsendable result).
   */
  | { type: 'fail', id: string, message: string, stack?: string, update?: ProgressUpdate, fatal?: boolean, retry?: boolean }

/** Sent as the `data` of `fork()` so the child knows which modules to load. */
export interface ChildInit {
  modules: string[]
  progressInterval: number
  limits: MessageLimits
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null
}

function isUpdate (value: unknown): value is ProgressUpdate | undefined {
  if (value === undefined) return true
  if (!isObject(value)) return false
  if (value.progress !== undefined && typeof value.progress !== 'number') return false
  if (value.target !== undefined && typeof value.target !== 'number') return false
  if (value.messages !== undefined && !(Array.isArray(value.messages) && value.messages.every(m => typeof m === 'string'))) return false
  if (value.dropped !== undefined && !(typeof value.dropped === 'number' && Number.isInteger(value.dropped) && value.dropped >= 0)) return false
  return true
}

/** Checks the shape of a message received from a child. */
export function isChildMessage (value: unknown): value is ChildMessage {
  if (!isObject(value)) return false
  switch (value.type) {
    case 'ready':
      return true
    case 'update':
      return typeof value.id === 'string' && isUpdate(value.update) && value.update !== undefined
    case 'done':
      return typeof value.id === 'string' && isUpdate(value.update)
    case 'fail':
      return typeof value.id === 'string' && typeof value.message === 'string' && isUpdate(value.update) &&
        (value.fatal === undefined || typeof value.fatal === 'boolean') &&
        (value.retry === undefined || typeof value.retry === 'boolean')
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
    json = JSON.stringify(value)
  } catch (err) {
    return { error: `task result cannot be sent from the child process: ${(err as Error).message}` }
  }
  const size = json === undefined ? 0 : Buffer.byteLength(json)
  if (size > maxOutputSize) return { error: `task result is ${size} bytes as JSON, over the maxOutputSize of ${maxOutputSize} bytes` }
  return { json }
}
