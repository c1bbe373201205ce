import type {
  CatalogEntry, Client, ClientOptions, ClientTasks, EventSourceConstructor, Frame, ProgressCallback, RunOptions,
  ListQuery, SubscribeHandlers, TaskState, Transport, WebSocketConstructor,
} from './types.js'

/*
 * The client for browsers and Node: fetch for REST; a task's events over a WebSocket,
 * else Server-Sent Events, else polling. Nothing here may import fastify, TypeBox or a
 * Node module: the same file is bundled for browsers (served at /tasks/client.js).
 */

export type * from './types.js'

/**
 * The server refused a request (its status and Fastify's error body), or could not be
 * reached (`statusCode` 0, the network error as `cause`). Errors of a followed task carry
 * its `uuid`.
 */
export class TaskApiError extends Error {
  /** The HTTP status; 0 when no answer came (a network failure: see `cause`). */
  readonly statusCode: number
  /** The error code, such as `FST_TASK_API_INPUT_INVALID`. */
  readonly code: string | undefined
  /** The task the request was about, when there was one. */
  readonly uuid: string | undefined

  constructor (statusCode: number, body: { message?: string, code?: string } | undefined, details: { uuid?: string, cause?: unknown } = {}) {
    super(body?.message ?? `the task API answered ${statusCode}`, details.cause === undefined ? undefined : { cause: details.cause })
    this.name = 'TaskApiError'
    this.statusCode = statusCode
    this.code = body?.code
    this.uuid = details.uuid
  }
}

/** A task ended without succeeding: `task` is its final record (status `failed` or `cancelled`). */
export class TaskRunError extends Error {
  /** The final record. */
  readonly task: TaskState

  constructor (task: TaskState) {
    super(task.status === 'failed' ? `task "${task.task}" failed: ${task.error ?? 'unknown error'}` : `task "${task.task}" was ${task.status}`)
    this.name = 'TaskRunError'
    this.task = task
  }
}

const isFinal = (task: TaskState): boolean => /^(succeeded|failed|cancelled)$/.test(task.status)

/** Messages the task has added so far, dropped ones included: the absolute index of the next one. */
const messageCount = (task: TaskState): number => task.messagesDropped + task.messages.length

// Frames come from the network: anything that is not a frame of the task is ignored.
function parseFrame (data: unknown, uuid: string): Frame | undefined {
  try {
    const frame = JSON.parse(String(data)) as { type?: string, seq?: unknown, uuid?: unknown, task?: { uuid?: unknown } } | null
    if (typeof frame?.seq !== 'number') return undefined
    if (frame.type === 'snapshot') return frame.task?.uuid === uuid ? frame as Frame : undefined
    return frame.uuid === uuid && /^(progress|message|status)$/.test(frame.type ?? '') ? frame as Frame : undefined
  } catch {
    return undefined
  }
}

interface Connection {
  request<T> (method: string, path: string, body?: unknown, uuid?: string): Promise<T>
  url (path: string, scheme?: 'ws'): string
  options: ClientOptions
}

/** The URL without its trailing slashes (a loop: /\/+$/ backtracks quadratically on many slashes). */
function trimSlashes (url: string): string {
  let end = url.length
  while (end > 0 && url.charCodeAt(end - 1) === 47) end--
  return url.slice(0, end)
}

function connection (options: ClientOptions): Connection {
  const fetchFn = options.fetch ?? ((input: string, init?: RequestInit) => fetch(input, init))
  const base = (): URL => {
    const raw = trimSlashes(options.baseURL ?? '/tasks')
    try {
      return new URL(raw, globalThis.location?.href)
    } catch {
      throw new TypeError(`options.baseURL must be an absolute URL outside a browser, got "${raw}"`)
    }
  }
  const headers = (): Record<string, string> => typeof options.headers === 'function' ? options.headers() : options.headers ?? {}
  return {
    options,
    url (path, scheme) {
      const url = base()
      const query = path.indexOf('?')
      url.pathname += query === -1 ? path : path.slice(0, query)
      if (query !== -1) url.search = path.slice(query)
      if (scheme === 'ws') url.protocol = url.protocol.replace('http', 'ws')
      return url.href
    },
    async request (method, path, body, uuid) {
      const url = this.url(path)
      let response: Response
      try {
        response = await fetchFn(url, {
          method,
          headers: body === undefined ? headers() : { ...headers(), 'content-type': 'application/json' },
          body: body === undefined ? null : JSON.stringify(body),
        })
      } catch (err) {
        // Never a bare "fetch failed": what was asked, of what, and why.
        const cause = (err as { cause?: { code?: unknown, message?: unknown } } | null)?.cause
        const why = cause?.code ?? cause?.message ?? (err as Error | null)?.message ?? String(err)
        throw new TaskApiError(0, { message: `the task API could not be reached (${method} ${url}): ${String(why)}` }, { uuid, cause: err })
      }
      const json = await response.json().catch(() => undefined)
      if (!response.ok) throw new TaskApiError(response.status, json, { uuid })
      return json
    },
  }
}

/**
 * Follows one task until it ends or `stop` is called. Frames are applied in seq order and
 * at most once, whatever the reconnects and fallbacks; messages are told by their
 * absolute index, so a snapshot after a gap yields exactly the missed ones.
 */
function follow (connection: Connection, uuid: string, given: SubscribeHandlers): () => void {
  const { options } = connection
  const WS = options.WebSocket ?? globalThis.WebSocket as WebSocketConstructor | undefined
  const ES = options.EventSource ?? globalThis.EventSource as EventSourceConstructor | undefined
  const transports = (options.transports ?? ['websocket', 'sse', 'poll'])
    .filter(kind => kind === 'poll' || (kind === 'websocket' ? WS : ES) !== undefined)
  let record: TaskState | undefined
  let seq = -1
  let stopped = false
  let closeCurrent = (): void => {}
  let wake = (): void => {}
  let timer: ReturnType<typeof setTimeout> | undefined

  // One frame can make several calls (a snapshot: status, progress, each message, update):
  // once stopped, by unsubscribing from one of them say, the rest are not made.
  const guard = <A extends unknown[]>(fn: ((...args: A) => void) | undefined): ((...args: A) => void) | undefined =>
    fn === undefined ? undefined : (...args: A) => { if (!stopped) fn.apply(given, args) }
  const handlers: SubscribeHandlers = {
    onUpdate: guard(given.onUpdate),
    onProgress: guard(given.onProgress),
    onMessage: guard(given.onMessage),
    onStatus: guard(given.onStatus),
    onEvent: guard(given.onEvent),
    // Called once stopped, by design.
    onEnd: given.onEnd,
    onError: given.onError,
  }

  const stop = (): void => {
    stopped = true
    clearTimeout(timer)
    wake()
    closeCurrent()
  }
  const sleep = (ms: number): Promise<void> => new Promise((resolve) => {
    wake = resolve
    timer = setTimeout(resolve, ms)
  })

  // onProgress hears of progress only: a changed pair, never (null, null).
  const progressed = (changed: boolean, task: TaskState): void => {
    if (changed && (task.progress !== null || task.target !== null)) handlers.onProgress?.(task.progress, task.target, task)
  }

  // A whole state (snapshot or poll): tell what changed since the last one. True when
  // anything did (a poll or a snapshot after a reconnect often brings nothing new).
  const applyState = (next: TaskState): boolean => {
    const previous = record
    record = next
    const known = previous === undefined ? 0 : messageCount(previous)
    if (previous?.status !== next.status) handlers.onStatus?.(next.status, next)
    progressed(previous === undefined || previous.progress !== next.progress || previous.target !== next.target, next)
    next.messages.forEach((message, index) => {
      if (next.messagesDropped + index >= known) handlers.onMessage?.(message, next)
    })
    return previous === undefined || previous.status !== next.status || previous.progress !== next.progress ||
      previous.target !== next.target || known !== messageCount(next) || previous.attempt !== next.attempt ||
      previous.error !== next.error || JSON.stringify(previous.outputs) !== JSON.stringify(next.outputs)
  }

  const applyFrame = (frame: Frame): void => {
    if (stopped || frame.seq <= seq) return
    if (frame.type !== 'snapshot' && record === undefined) return
    seq = frame.seq
    handlers.onEvent?.(frame)
    const task = record as TaskState
    let changed = true
    if (frame.type === 'snapshot') {
      changed = applyState(frame.task)
    } else if (frame.type === 'progress') {
      changed = task.progress !== frame.progress || task.target !== frame.target
      task.progress = frame.progress
      task.target = frame.target
      progressed(changed, task)
    } else if (frame.type === 'message') {
      task.messages.push(frame.message)
      handlers.onMessage?.(frame.message, task)
    } else if (frame.task !== undefined) {
      changed = applyState(frame.task)
    } else {
      changed = task.status !== frame.status
      task.status = frame.status
      if (changed) handlers.onStatus?.(frame.status, task)
    }
    if (changed) updated()
  }

  const updated = (): void => {
    const task = record as TaskState
    handlers.onUpdate?.(task)
    if (isFinal(task) && !stopped) {
      stop()
      handlers.onEnd?.(task)
    }
  }

  const streamUrl = async (): Promise<string> => {
    const query = new URLSearchParams()
    if (record !== undefined) query.set('since', String(seq))
    if (options.streamToken === true) {
      query.set('token', (await connection.request<{ token: string }>('GET', `/${uuid}/token`, undefined, uuid)).token)
    }
    const search = String(query)
    return connection.url(`/${uuid}/events`) + (search === '' ? '' : `?${search}`)
  }

  // Each stream resolves when its connection ends: true when it delivered a frame.
  const stream = (open: () => { close (): void, onmessage: unknown, onerror: unknown, onclose?: unknown }): Promise<boolean> =>
    new Promise((resolve) => {
      // Stopped while the URL (and its token) was on its way: open nothing.
      if (stopped) {
        resolve(false)
        return
      }
      let received = false
      const source = open()
      const done = (): void => {
        source.close()
        resolve(received)
      }
      closeCurrent = done
      source.onmessage = (event: { data: unknown }) => {
        const frame = parseFrame(event.data, uuid)
        if (frame === undefined) return
        received = true
        applyFrame(frame)
      }
      // A WebSocket ends with close (error comes first); an EventSource only errors.
      source.onerror = done
      source.onclose = done
    })

  const connect: Record<Transport, () => Promise<boolean>> = {
    websocket: async () => {
      const url = (await streamUrl()).replace(/^http/, 'ws')
      const headers = typeof options.headers === 'function' ? options.headers() : options.headers
      // The third argument reaches `ws` in Node (browsers ignore it and send cookies).
      return await stream(() => new (WS as WebSocketConstructor)(url, undefined, { headers: headers ?? {} }) as never)
    },
    sse: async () => {
      const url = await streamUrl()
      return await stream(() => new (ES as EventSourceConstructor)(url) as never)
    },
    poll: async () => {
      let failures = 0
      while (!stopped) {
        try {
          const state = await connection.request<TaskState>('GET', `/${uuid}`, undefined, uuid)
          failures = 0
          if (stopped) break
          if (applyState(state)) updated()
        } catch (err) {
          // Refusals are final; the network (no answer: status 0) gets two more tries.
          if ((err instanceof TaskApiError && err.statusCode !== 0) || ++failures > 2) throw err
        }
        if (!stopped) await sleep(options.pollInterval ?? 1000)
      }
      return true
    },
  }

  const run = async (): Promise<void> => {
    let index = 0
    while (!stopped) {
      const kind = transports[index]
      if (kind === undefined) throw new TaskApiError(0, { message: `no transport could follow task ${uuid} (tried: ${transports.join(', ') || 'none'})` }, { uuid })
      let delivered = false
      try {
        delivered = await connect[kind]()
      } catch (err) {
        if (kind === 'poll') throw err
      }
      if (stopped) return
      // A connection that delivered nothing falls back to the next transport; one that
      // dropped after delivering reconnects, resuming after the last seq.
      if (!delivered) index++
      else await sleep(options.retryDelay ?? 500)
    }
  }
  run().catch((err: Error) => {
    if (stopped) return
    stop()
    handlers.onError?.(err)
  })
  return stop
}

/**
 * Creates a client. Type it with the server's tasks for checked names, inputs and outputs:
 *
 * ```ts
 * import type * as tasks from './tasks/wait.js'
 * const client = createClient<typeof tasks>({ baseURL: '/tasks' })
 * const { waited } = await client.run('wait', { seconds: 3 }, { onProgress: (p, t) => draw(p, t) })
 * ```
 */
export function createClient<T = unknown> (options: ClientOptions = {}): Client<ClientTasks<T>> {
  const api = connection(options)
  const subscribe = (uuid: string, handlers: SubscribeHandlers): () => void => follow(api, uuid, handlers)
  const cancel = (uuid: string): Promise<TaskState> => api.request('POST', `/${uuid}/cancel`)
  const client: Client = {
    submit: (task: string, inputs?: Record<string, unknown>) => api.request('POST', '', { task, inputs: inputs ?? {} }),
    get: uuid => api.request('GET', `/${uuid}`),
    cancel,
    list: (query = {}) => api.request('GET', listPath(query)),
    delete: async (uuid) => { await api.request('DELETE', `/${uuid}`) },
    catalog: async () => (await api.request<{ tasks: CatalogEntry[] }>('GET', '/catalog')).tasks,
    subscribe,
    run: (task: string, inputs?: Record<string, unknown>, optionsOrProgress?: RunOptions | ProgressCallback | null, callback?: ((task: TaskState) => void) | null, errback?: ((error: Error) => void) | null) =>
      handled(settle(runToEnd(client, task, inputs, optionsOrProgress), callback, errback).then(final => final.outputs), errback),
  }
  return client as never
}

/** `GET /tasks`'s path and query for `query`; undefined fields are left out. */
function listPath (query: ListQuery): string {
  const params = new URLSearchParams()
  for (const [key, value] of Object.entries(query)) if (value !== undefined) params.set(key, String(value))
  const search = params.toString()
  return search === '' ? '' : `?${search}`
}

async function runToEnd (client: Client, task: string, inputs: Record<string, unknown> | undefined, optionsOrProgress: RunOptions | ProgressCallback | null | undefined): Promise<TaskState> {
  const options: RunOptions = typeof optionsOrProgress === 'function' ? { onUpdate: optionsOrProgress } : optionsOrProgress ?? {}
  const { signal } = options
  signal?.throwIfAborted()
  const submitted = await client.submit(task, inputs ?? {})
  let cancel = (): void => {}
  let stop = (): void => {}
  try {
    const final = await new Promise<TaskState>((resolve, reject) => {
      cancel = () => { client.cancel(submitted.uuid).catch(reject) }
      stop = client.subscribe(submitted.uuid, { ...options, onEnd: resolve, onError: reject })
      if (signal?.aborted === true) cancel()
      else signal?.addEventListener('abort', cancel, { once: true })
    })
    if (final.status !== 'succeeded') throw new TaskRunError(final)
    return final
  } finally {
    signal?.removeEventListener('abort', cancel)
    // Rejected before the end (a refused cancel, say): stop following, no handler more.
    stop()
  }
}

/** Calls the seed's callback or errback too. */
function settle (promise: Promise<TaskState>, callback?: ((task: TaskState) => void) | null, errback?: ((error: Error) => void) | null): Promise<TaskState> {
  return handled(promise.then((final) => {
    callback?.(final)
    return final
  }, (err: Error) => {
    errback?.(err)
    throw err
  }), errback)
}

/**
 * The promise itself, marked handled when an errback takes its failure: it still rejects
 * for a caller that awaits it, and one that does not gets no unhandled rejection (which
 * ends a Node process). Returned as is: an async wrapper would make a new, unhandled one.
 */
function handled<T> (promise: Promise<T>, errback?: ((error: Error) => void) | null): Promise<T> {
  if (typeof errback === 'function') promise.catch(() => {})
  return promise
}

/** django-task-api's `TaskAPI.options`: read at each call, so they can be changed at any time. */
export interface SeedOptions {
  /** @default '/tasks' */
  baseURL: string
  /** The cookie holding the CSRF token, sent back in `csrfHeaderName`. @default 'csrftoken' */
  csrfCookieName: string
  /** @default 'X-CSRFToken' */
  csrfHeaderName: string
  /** Extra headers for every request. */
  headers: Record<string, string>
  /**
   * How to follow a task: a WebSocket constructor (the browser's by default; in Node 20,
   * which has none, `WebSocket` from `ws`), else EventSource, else polling.
   */
  WebSocket?: WebSocketConstructor
  /** @default globalThis.EventSource */
  EventSource?: EventSourceConstructor
}

/**
 * django-task-api's client, for front ends that port by changing an import:
 * `TaskAPI.run(task, inputs, progressCallback, callback, errback)` resolves with the
 * final record (`json.outputs.sum`); `TaskAPI.options.baseURL` and the CSRF names work
 * as in the seed.
 */
export const TaskAPI: { options: SeedOptions, run (task: string, inputs?: Record<string, unknown>, progressCallback?: ProgressCallback | null, callback?: ((task: TaskState) => void) | null, errback?: ((error: Error) => void) | null): Promise<TaskState> } = {
  options: { baseURL: '/tasks', csrfCookieName: 'csrftoken', csrfHeaderName: 'X-CSRFToken', headers: {} },
  run (task, inputs, progressCallback, callback, errback) {
    const { options } = TaskAPI
    const client = createClient({
      baseURL: options.baseURL,
      ...(options.WebSocket === undefined ? {} : { WebSocket: options.WebSocket }),
      ...(options.EventSource === undefined ? {} : { EventSource: options.EventSource }),
      headers: () => {
        const prefix = `${options.csrfCookieName}=`
        const cookie = globalThis.document?.cookie.split('; ').find(pair => pair.startsWith(prefix))
        return cookie === undefined ? options.headers : { ...options.headers, [options.csrfHeaderName]: decodeURIComponent(cookie.slice(prefix.length)) }
      },
    })
    return settle(runToEnd(client, task, inputs, progressCallback), callback, errback)
  },
}

export default TaskAPI
