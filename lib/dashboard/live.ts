import type { TaskState, TaskStatus, TaskSummary } from '../client/index.js'
import { isFinal, statuses } from './format.js'

/*
 * One multiplexed WebSocket ({prefix}/events) for the whole page. Views follow tasks
 * through it; a task followed by several views (a row and the detail) is subscribed
 * once. Frames are applied in seq order, each once; after a drop the socket reopens
 * with backoff and every unfinished task is subscribed again with `since` = the last
 * seq seen, so the server sends exactly what was missed (or a fresh snapshot).
 *
 * The socket also watches for new tasks (`watch`, on every connection: the server
 * forgets it with the socket). Each `watching` frame (the first, and those after a drop
 * or after the server's events were interrupted) tells the page to read its first page
 * again: a task created before it may not have been announced.
 */

/** What changed: a whole record, the progress, one more message, the status. */
export type Change = 'snapshot' | 'progress' | 'message' | 'status'

export interface Follower {
  /** The task's live record changed (the same object each time: copy it to keep a version). */
  update (task: TaskState, change: Change): void
  /** The server will not follow this task (deleted, not allowed): its message. */
  gone? (message: string): void
}

export interface Watcher {
  /** A task was created (here or anywhere) that this socket may read: its list summary. */
  created (task: TaskSummary): void
  /**
   * The socket watches (again): tasks created from now on arrive; those created before,
   * since the page was last read (or while the socket was away or the server's events
   * were interrupted), may have been missed.
   */
  resumed (): void
}

export interface LiveOptions {
  /** The socket's URL, asked before each connection (a bearer token needs a fresh events token). */
  url (): Promise<string>
  /** The socket opened (true) or dropped (false). */
  connection (open: boolean): void
  /** A followed task reached a final status. */
  ended (task: TaskState): void
  /** Getting the URL failed (a 401, the network). */
  error (err: unknown): void
}

interface Entry {
  followers: Set<Follower>
  /** The last seq applied; -1 before the snapshot. */
  seq: number
  record: TaskState | undefined
  /** Its final status arrived: the server ended the subscription, nothing to resubscribe. */
  ended: boolean
}

/** What the server may add to a record: the page keeps the newest 1000, like the server. */
const maxMessages = 1000

type Json = Record<string, unknown>
const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value)
const isStatus = (value: unknown): value is TaskStatus => statuses.includes(value as TaskStatus)
const isCount = (value: unknown): value is number | null => value === null || (typeof value === 'number' && Number.isFinite(value))

/** A task record as the server sends it; anything else is dropped. */
function asRecord (value: unknown): TaskState | undefined {
  if (!isObject(value) || typeof value['uuid'] !== 'string' || typeof value['task'] !== 'string' || !isStatus(value['status'])) return undefined
  const record = value as unknown as TaskState
  return {
    ...record,
    messages: Array.isArray(record.messages) ? record.messages.filter(message => typeof message === 'string') : [],
    messagesDropped: typeof record.messagesDropped === 'number' ? record.messagesDropped : 0,
    outputs: isObject(record.outputs) ? record.outputs : {},
  }
}

export interface Live {
  /** Opens the socket (once; later calls only hurry a reconnection that waits). */
  start (): void
  /** Follows a task until the returned function is called. A known record is handed over at once. */
  follow (uuid: string, follower: Follower): () => void
  /**
   * A record from a REST answer (a cancel, say). Live frames are newer than anything
   * REST says, except a final status, which nothing follows: only that is applied.
   */
  offer (task: TaskState): void
  /** Hears of new tasks from now on (one watcher for the page). */
  watch (watcher: Watcher): void
}

export function createLive (options: LiveOptions): Live {
  const entries = new Map<string, Entry>()
  let socket: WebSocket | undefined
  let open = false
  let started = false
  let failures = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  let watcher: Watcher | undefined

  const send = (frame: Json): void => {
    if (open) socket?.send(JSON.stringify(frame))
  }
  const subscribe = (uuid: string, entry: Entry): void => {
    send(entry.seq >= 0 ? { type: 'subscribe', uuid, since: entry.seq } : { type: 'subscribe', uuid })
  }

  const connect = async (): Promise<void> => {
    timer = undefined
    let url: string
    try {
      url = await options.url()
    } catch (err) {
      options.error(err)
      options.connection(false)
      retry()
      return
    }
    const current = new WebSocket(url)
    socket = current
    current.addEventListener('open', () => {
      if (socket !== current) return
      open = true
      failures = 0
      options.connection(true)
      if (watcher !== undefined) send({ type: 'watch' })
      for (const [uuid, entry] of entries) if (!entry.ended) subscribe(uuid, entry)
    })
    current.addEventListener('message', (event) => { if (socket === current) receive(event.data) })
    current.addEventListener('close', () => {
      if (socket !== current) return
      socket = undefined
      open = false
      options.connection(false)
      retry()
    })
  }

  const retry = (): void => {
    // 0.5 s, 1 s, 2 s, … up to 15 s, each ±25 %, so many pages do not come back at once.
    const delay = Math.min(15_000, 500 * 2 ** failures++) * (0.75 + Math.random() / 2)
    timer = setTimeout(() => { void connect() }, delay)
  }

  // Waiting to reconnect: try at once (back online, back to the tab, signed in).
  const hurry = (): void => {
    if (!started || socket !== undefined || timer === undefined) return
    clearTimeout(timer)
    void connect()
  }
  addEventListener('online', hurry)
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') hurry() })

  const receive = (data: unknown): void => {
    let frame: unknown
    try {
      frame = JSON.parse(String(data))
    } catch {
      return
    }
    if (!isObject(frame)) return
    if (frame['type'] === 'watching') {
      // Live again after the server's events were interrupted (or for the first time).
      if (open) options.connection(true)
      watcher?.resumed()
      return
    }
    if (frame['type'] === 'created') {
      const task = asRecord(frame['task'])
      if (task !== undefined) watcher?.created(task)
      return
    }
    // The server's events are interrupted (its Redis is away): paused until `watching`.
    if (frame['type'] === 'error' && frame['uuid'] === undefined && frame['code'] === 'FST_TASK_API_EVENTS_INTERRUPTED') {
      options.connection(false)
      return
    }
    if (typeof frame['uuid'] !== 'string') return
    const uuid = frame['uuid']
    const entry = entries.get(uuid)
    if (entry === undefined) return
    if (frame['type'] === 'error') {
      refused(uuid, entry, frame)
      return
    }
    const seq = frame['seq']
    if (typeof seq !== 'number' || seq <= entry.seq) return
    const change = apply(entry, frame)
    if (change === undefined) return
    entry.seq = seq
    changed(entry, change)
  }

  const changed = (entry: Entry, change: Change): void => {
    const record = entry.record as TaskState
    const ending = isFinal(record.status) && !entry.ended
    if (ending) entry.ended = true
    for (const follower of [...entry.followers]) follower.update(record, change)
    if (ending) options.ended(record)
  }

  const refused = (uuid: string, entry: Entry, frame: Json): void => {
    const message = typeof frame['message'] === 'string' ? frame['message'] : 'live events refused'
    if (message.startsWith('already subscribed')) return
    // The server lost track for a moment (events interrupted, the store away): ask again.
    if (frame['code'] === 'FST_TASK_API_STORE_UNAVAILABLE' || message.startsWith('live events are interrupted')) {
      setTimeout(() => { if (entries.get(uuid) === entry && !entry.ended) subscribe(uuid, entry) }, 1000)
      return
    }
    entry.ended = true
    for (const follower of [...entry.followers]) follower.gone?.(message)
  }

  return {
    start () {
      if (started) {
        hurry()
        return
      }
      started = true
      void connect()
    },
    follow (uuid, follower) {
      let entry = entries.get(uuid)
      if (entry === undefined) {
        entry = { followers: new Set(), seq: -1, record: undefined, ended: false }
        entries.set(uuid, entry)
        subscribe(uuid, entry)
      }
      entry.followers.add(follower)
      if (entry.record !== undefined) follower.update(entry.record, 'snapshot')
      const followed = entry
      return () => {
        followed.followers.delete(follower)
        if (followed.followers.size > 0 || entries.get(uuid) !== followed) return
        entries.delete(uuid)
        if (!followed.ended) send({ type: 'unsubscribe', uuid })
      }
    },
    offer (task) {
      const entry = entries.get(task.uuid)
      if (entry === undefined || !isFinal(task.status) || (entry.record !== undefined && isFinal(entry.record.status))) return
      entry.record = { ...task }
      changed(entry, 'status')
    },
    watch (hooks) {
      watcher = hooks
      send({ type: 'watch' })
    },
  }
}

/** Applies a frame to the entry's record; the kind of change, or undefined for a frame to drop. */
function apply (entry: Entry, frame: Json): Change | undefined {
  const type = frame['type']
  if (type === 'snapshot') {
    const record = asRecord(frame['task'])
    if (record === undefined) return undefined
    entry.record = record
    return 'snapshot'
  }
  const record = entry.record
  if (record === undefined) return undefined
  if (type === 'progress' && isCount(frame['progress']) && isCount(frame['target'])) {
    record.progress = frame['progress']
    record.target = frame['target']
    return 'progress'
  }
  if (type === 'message' && typeof frame['message'] === 'string') {
    record.messages.push(frame['message'])
    if (record.messages.length > maxMessages) {
      record.messages.shift()
      record.messagesDropped++
    }
    return 'message'
  }
  if (type === 'status' && isStatus(frame['status'])) {
    const whole = asRecord(frame['task'])
    if (whole !== undefined) entry.record = whole
    else record.status = frame['status']
    return 'status'
  }
  return undefined
}
