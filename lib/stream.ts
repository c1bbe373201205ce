import type { ServerResponse } from 'node:http'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import { Access } from './access.js'
import { FST_TASK_API_STREAM_NOT_ACCEPTABLE, FST_TASK_API_STREAM_UPGRADE_REQUIRED, FST_TASK_API_TASK_NOT_FOUND } from './errors.js'
import type { ProgressEvent, TaskEvent } from './events.js'
import { Pace } from './pace.js'
import { paths } from './routes.js'
import type { TaskService } from './service.js'
import { finalStatuses, type TaskState } from './store/types.js'

/*
 * Live events to clients: one task per WebSocket, many tasks per WebSocket, or
 * Server-Sent Events. Every transport goes through a Subscription, which owns the
 * guarantees: snapshot first, nothing lost or duplicated between snapshot and live
 * frames, progress coalesced per subscriber, messages and status never dropped, slow
 * clients bounded.
 */

/** Options of the event streams (the plugin's `streams` option). */
export interface StreamOptions {
  /**
   * Most tasks one multiplexed socket (`GET /tasks/events`) may follow at once.
   * @default 100
   */
  maxSubscriptions?: number
  /**
   * Milliseconds between WebSocket pings (and SSE comment lines); a socket that has not
   * answered the previous ping is closed. 0 turns the heartbeat off.
   * @default 30000
   */
  heartbeatInterval?: number
  /**
   * Bytes waiting in a client's send buffer past which it only gets the latest progress.
   * @default 65536
   */
  softBufferLimit?: number
  /**
   * Bytes waiting in a client's send buffer past which it is disconnected (WebSocket
   * close 1013, SSE stream ended).
   * @default 1048576
   */
  hardBufferLimit?: number
  /**
   * Largest frame a client may send, in bytes. Applies when the plugin registers
   * @fastify/websocket itself.
   * @default 4096
   */
  maxPayload?: number
  /**
   * Events kept per followed task so that reconnecting clients (SSE `Last-Event-ID`,
   * WebSocket `?since=`) get exactly what they missed.
   * @default 512
   */
  historySize?: number
  /**
   * How long a finished task's recent events stay available for reconnecting clients, in ms.
   * @default 60000
   */
  historyTtl?: number
}

export type NormalizedStreamOptions = Required<StreamOptions>

export const streamDefaults: NormalizedStreamOptions = {
  maxSubscriptions: 100,
  heartbeatInterval: 30_000,
  softBufferLimit: 64 * 1024,
  hardBufferLimit: 1024 * 1024,
  maxPayload: 4096,
  historySize: 512,
  historyTtl: 60_000,
}

/** Where a subscription writes. One per transport. */
interface Sink {
  snapshot (seq: number, task: TaskState): void
  send (event: TaskEvent): void
  /** Bytes written but not yet sent to the client. */
  readonly buffered: number
  /** The task ended: its final status went out. */
  end (): void
  /** The client is too slow: past the hard buffer limit. */
  overflow (): void
}

// Each event is serialized once, whatever the number of subscribers: the same bytes go to all.
const wsFrames = new WeakMap<TaskEvent, Buffer>()
const sseFrames = new WeakMap<TaskEvent, Buffer>()

function wsFrame (event: TaskEvent): Buffer {
  let frame = wsFrames.get(event)
  if (frame === undefined) {
    frame = Buffer.from(JSON.stringify(event))
    wsFrames.set(event, frame)
  }
  return frame
}

function sseFrame (event: TaskEvent): Buffer {
  let frame = sseFrames.get(event)
  if (frame === undefined) {
    frame = Buffer.from(`id: ${event.seq}\ndata: ${JSON.stringify(event)}\n\n`)
    sseFrames.set(event, frame)
  }
  return frame
}

const snapshotJson = (seq: number, task: TaskState): string => JSON.stringify({ type: 'snapshot', seq, task })

const isFinal = (event: TaskEvent): boolean => event.type === 'status' && event.task !== undefined && finalStatuses.has(event.status)

interface SubscriptionOptions {
  progressInterval: number
  softBufferLimit: number
  hardBufferLimit: number
}

/** One client following one task. */
class Subscription {
  readonly #service: TaskService
  readonly #uuid: string
  readonly #sink: Sink
  readonly #options: SubscriptionOptions
  #buffer: TaskEvent[] | undefined = []
  #lastSeq = -1
  #pending: ProgressEvent | undefined
  readonly #pace: Pace
  #timer: NodeJS.Timeout | undefined
  #unsubscribe: (() => void) | undefined
  #stopped = false

  constructor (service: TaskService, uuid: string, sink: Sink, options: SubscriptionOptions) {
    this.#service = service
    this.#uuid = uuid
    this.#sink = sink
    this.#options = options
    this.#pace = new Pace(options.progressInterval)
  }

  /**
   * Subscribes, then sends what the client is missing: the events after `since` when the
   * server still holds them, else a snapshot. Resolves false when there is no such task.
   */
  async start (since?: number): Promise<boolean> {
    // Subscribe first, then read: an event published meanwhile waits in #buffer and is
    // dropped if the snapshot already covers it (seq), so nothing is lost or doubled.
    this.#unsubscribe = this.#service.subscribe(this.#uuid, (event) => {
      if (this.#buffer !== undefined) this.#buffer.push(event)
      else this.#deliver(event)
    }, { history: true })
    if (since !== undefined) {
      const missed = this.#service.eventsSince(this.#uuid, since)
      if (missed !== undefined) {
        this.#lastSeq = since
        this.#goLive(missed.events)
        if (missed.ended && !this.#stopped) this.#finish()
        return true
      }
    }
    const snapshot = await this.#service.snapshot(this.#uuid)
    if (this.#stopped) return true
    if (snapshot === undefined) {
      this.stop()
      return false
    }
    this.#sink.snapshot(snapshot.seq, snapshot.task)
    this.#lastSeq = snapshot.seq
    if (finalStatuses.has(snapshot.task.status)) {
      this.#finish()
      return true
    }
    this.#goLive([])
    return true
  }

  /** Stops following; idempotent. */
  stop (): void {
    if (this.#stopped) return
    this.#stopped = true
    this.#unsubscribe?.()
    clearTimeout(this.#timer)
    this.#pending = undefined
  }

  #goLive (first: TaskEvent[]): void {
    const buffered = this.#buffer ?? []
    this.#buffer = undefined
    for (const event of first) this.#deliver(event)
    for (const event of buffered) this.#deliver(event)
  }

  #deliver (event: TaskEvent): void {
    if (this.#stopped || event.seq <= this.#lastSeq) return
    if (event.type === 'progress') {
      const now = performance.now()
      const wait = this.#pace.wait(now)
      if (this.#pending === undefined && wait <= 0 && this.#sink.buffered <= this.#options.softBufferLimit) {
        this.#pace.sent(now)
        this.#emit(event)
      } else {
        // Coalesce: keep only the latest; it goes out when its turn comes (and the
        // client has drained its buffer), or before the next message or status.
        this.#pending = event
        this.#timer ??= setTimeout(this.#onTimer, Math.max(1, wait))
      }
      return
    }
    this.#flushPending()
    this.#emit(event)
    if (isFinal(event)) this.#finish()
  }

  #onTimer = (): void => {
    this.#timer = undefined
    if (this.#pending === undefined || this.#stopped) return
    if (this.#sink.buffered > this.#options.softBufferLimit) {
      this.#timer = setTimeout(this.#onTimer, Math.max(1, this.#options.progressInterval))
      return
    }
    this.#flushPending()
  }

  #flushPending (): void {
    const pending = this.#pending
    if (pending === undefined) return
    this.#pending = undefined
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#pace.sent(performance.now())
    this.#emit(pending)
  }

  #emit (event: TaskEvent): void {
    if (this.#stopped) return
    this.#lastSeq = event.seq
    this.#sink.send(event)
    if (this.#sink.buffered > this.#options.hardBufferLimit) {
      this.stop()
      this.#sink.overflow()
    }
  }

  #finish (): void {
    this.stop()
    this.#sink.end()
  }
}

/** Pings sockets and SSE streams on one timer; closes WebSockets that stopped answering. */
class Heartbeat {
  readonly #sockets = new Map<WebSocket, { alive: boolean }>()
  readonly #streams = new Set<ServerResponse>()
  #timer: NodeJS.Timeout | undefined

  constructor (interval: number) {
    if (interval > 0) this.#timer = setInterval(() => this.#beat(), interval).unref()
  }

  addSocket (socket: WebSocket): void {
    const state = { alive: true }
    this.#sockets.set(socket, state)
    socket.on('pong', () => { state.alive = true })
    socket.once('close', () => this.#sockets.delete(socket))
  }

  addStream (stream: ServerResponse): () => void {
    this.#streams.add(stream)
    return () => this.#streams.delete(stream)
  }

  #beat (): void {
    for (const [socket, state] of this.#sockets) {
      if (!state.alive) {
        socket.terminate()
        continue
      }
      state.alive = false
      socket.ping()
    }
    for (const stream of this.#streams) {
      if (!stream.writableEnded) stream.write(': ping\n\n')
    }
  }

  stop (): void {
    clearInterval(this.#timer)
  }
}

function parseSeq (value: unknown): number | undefined {
  if (typeof value !== 'string' || !/^\d{1,15}$/.test(value)) return undefined
  return Number(value)
}

/** Closes a socket, and destroys it if the close handshake does not finish (a client that stopped reading). */
function closeSocket (socket: WebSocket, code: number, reason: string): void {
  if (socket.readyState !== socket.OPEN) return
  socket.close(code, reason)
  const timer = setTimeout(() => socket.terminate(), 5000).unref()
  socket.once('close', () => clearTimeout(timer))
}

function wsSink (socket: WebSocket, onEnd: () => void): Sink {
  return {
    snapshot: (seq, task) => socket.send(snapshotJson(seq, task)),
    send: event => socket.send(wsFrame(event), { binary: false }),
    get buffered () { return socket.bufferedAmount },
    end: onEnd,
    overflow: () => closeSocket(socket, 1013, 'client too slow: send buffer over its limit'),
  }
}

type UuidRequest = FastifyRequest<{ Params: { uuid: string }, Querystring: { since?: string, token?: string } }>

/** The request as the log shows it: a stream token in the query string never reaches the log. */
const redactedRequest = (request: FastifyRequest): Record<string, unknown> => ({
  method: request.method,
  url: request.url.replace(/([?&]token=)[^&]*/g, '$1[redacted]'),
  host: request.host,
  remoteAddress: request.ip,
  remotePort: request.socket?.remotePort,
})

/** The event routes: `GET {prefix}/:uuid/events` (WebSocket or SSE) and `GET {prefix}/events` (WebSocket). */
export function registerStreams (
  app: FastifyInstance,
  service: TaskService,
  access: Access,
  prefix: string,
  options: NormalizedStreamOptions & { progressInterval: number }
): void {
  const heartbeat = new Heartbeat(options.heartbeatInterval)
  const subscriptions = new Set<Subscription>()
  const eventStreams = new Set<ServerResponse>()
  // An open SSE response would keep server.close() waiting: end them first. (WebSockets
  // are closed by @fastify/websocket's own preClose.)
  app.addHook('preClose', async () => {
    for (const stream of eventStreams) stream.end()
  })
  app.addHook('onClose', async () => {
    heartbeat.stop()
    for (const subscription of subscriptions) subscription.stop()
  })
  const subscriptionOptions: SubscriptionOptions = {
    progressInterval: options.progressInterval,
    softBufferLimit: options.softBufferLimit,
    hardBufferLimit: options.hardBufferLimit,
  }
  const track = (subscription: Subscription): Subscription => {
    subscriptions.add(subscription)
    return subscription
  }
  const untrack = (subscription: Subscription): void => {
    subscription.stop()
    subscriptions.delete(subscription)
  }

  // Everything is decided before the upgrade (or the SSE stream) opens, so a refusal is a
  // plain HTTP answer: 403 for a foreign origin, 401 without credentials, 404 for a task
  // that does not exist or is another owner's, 403 when authorize says no.
  const mayFollow = async (request: UuidRequest, reply: FastifyReply): Promise<void> => {
    if (request.ws) {
      const refused = access.checkOrigin(request)
      if (refused !== undefined) throw refused
    }
    const { uuid } = request.params
    const token = request.query.token
    if (token !== undefined) {
      // A token minted for this task stands in for the credentials a browser cannot send.
      if (!access.verifyToken(uuid, token)) throw Access.invalidToken()
      if (await service.record(uuid) === undefined) throw new FST_TASK_API_TASK_NOT_FOUND(uuid)
      return
    }
    await access.authenticate(request, reply)
    const visible = await access.visible(request, uuid, await service.record(uuid))
    if (!visible.ok) throw visible.error
  }

  const mayConnect = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (request.ws) {
      const refused = access.checkOrigin(request)
      if (refused !== undefined) throw refused
    }
    await access.authenticate(request, reply)
  }

  const oneTask = (socket: WebSocket, request: UuidRequest): void => {
    heartbeat.addSocket(socket)
    const subscription = track(new Subscription(service, request.params.uuid, wsSink(socket, () => closeSocket(socket, 1000, 'task finished')), subscriptionOptions))
    socket.on('close', () => untrack(subscription))
    socket.on('message', () => {
      socket.send(JSON.stringify({ type: 'error', message: 'this socket follows one task and takes no frames; use GET ' + `${prefix}/events to subscribe` }))
    })
    subscription.start(parseSeq(request.query.since)).then((found) => {
      if (!found) closeSocket(socket, 1008, 'task not found')
    }, (err: unknown) => {
      request.log.error({ err }, 'fastify-task-api: event stream failed')
      closeSocket(socket, 1011, 'internal error')
    })
  }

  const sse = async (request: UuidRequest, reply: FastifyReply): Promise<void> => {
    const accept = request.headers.accept ?? '*/*'
    if (!/text\/event-stream|\*\/\*|text\/\*/.test(accept)) {
      throw new FST_TASK_API_STREAM_NOT_ACCEPTABLE()
    }
    const lastId = request.headers['last-event-id']
    const since = parseSeq(Array.isArray(lastId) ? lastId[0] : lastId) ?? parseSeq(request.query.since)
    if (since !== undefined) {
      // An EventSource reconnects after every end of stream; a 204 tells it to stop once
      // it already has the final event.
      const state = await service.snapshot(request.params.uuid)
      if (state !== undefined && finalStatuses.has(state.task.status) && since >= state.seq) {
        return reply.code(204).send()
      }
    }
    reply.hijack()
    const raw = reply.raw
    raw.writeHead(200, {
      ...(reply.getHeaders() as Record<string, string | number | string[]>),
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    })
    raw.write('retry: 2000\n\n')
    const forget = heartbeat.addStream(raw)
    eventStreams.add(raw)
    const subscription = track(new Subscription(service, request.params.uuid, {
      snapshot: (seq, task) => raw.write(`id: ${seq}\ndata: ${snapshotJson(seq, task)}\n\n`),
      send: event => raw.write(sseFrame(event)),
      get buffered () { return raw.writableLength },
      end: () => {
        forget()
        eventStreams.delete(raw)
        raw.end()
      },
      overflow: () => raw.destroy(),
    }, subscriptionOptions))
    // A client that vanished mid-write is not the server's problem.
    raw.on('error', (err) => request.log.debug({ err }, 'fastify-task-api: event stream write failed'))
    raw.on('close', () => {
      forget()
      eventStreams.delete(raw)
      untrack(subscription)
    })
    const found = await subscription.start(since)
    if (!found) raw.end()
  }

  for (const url of paths(app, `${prefix}/:uuid/events`)) {
    app.route<{ Params: { uuid: string }, Querystring: { since?: string, token?: string } }>({
      method: 'GET',
      url,
      logSerializers: { req: redactedRequest },
      preHandler: mayFollow,
      handler: sse,
      wsHandler: oneTask,
    })
  }

  const manyTasks = (socket: WebSocket, request: FastifyRequest): void => {
    heartbeat.addSocket(socket)
    const following = new Map<string, Subscription>()
    const error = (message: string, uuid?: string): void => {
      socket.send(JSON.stringify(uuid === undefined ? { type: 'error', message } : { type: 'error', uuid, message }))
    }
    socket.on('close', () => {
      for (const subscription of following.values()) untrack(subscription)
      following.clear()
    })
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary || data.length > options.maxPayload) {
        error(`frames must be JSON text of at most ${options.maxPayload} bytes`)
        return
      }
      let frame: unknown
      try {
        frame = JSON.parse(data.toString('utf8'))
      } catch {
        error('frames must be JSON: {"type": "subscribe" | "unsubscribe", "uuid": "..."}')
        return
      }
      const { type, uuid, since, token } = (typeof frame === 'object' && frame !== null ? frame : {}) as Record<string, unknown>
      if (type !== 'subscribe' && type !== 'unsubscribe') {
        error('unknown frame type: expected {"type": "subscribe" | "unsubscribe", "uuid": "..."}')
        return
      }
      if (typeof uuid !== 'string') {
        error(`${type} needs a "uuid" string`)
        return
      }
      if (type === 'unsubscribe') {
        const subscription = following.get(uuid)
        if (subscription !== undefined) untrack(subscription)
        following.delete(uuid)
        return
      }
      if (following.has(uuid)) {
        error('already subscribed to this task', uuid)
        return
      }
      if (following.size >= options.maxSubscriptions) {
        error(`too many subscriptions on this socket (at most ${options.maxSubscriptions})`, uuid)
        return
      }
      const subscription = track(new Subscription(service, uuid, wsSink(socket, () => {
        untrack(subscription)
        following.delete(uuid)
      }), subscriptionOptions))
      following.set(uuid, subscription)
      const notFound = `task ${uuid} not found`
      const refuse = (message: string): void => {
        following.delete(uuid)
        untrack(subscription)
        error(message, uuid)
      }
      // Another owner's task gets the very same error frame as a uuid that does not exist.
      const allowed = typeof token === 'string'
        ? Promise.resolve(access.verifyToken(uuid, token) ? undefined : 'the stream token is invalid or expired')
        : service.record(uuid).then(record => access.visible(request, uuid, record)).then(visible =>
          visible.ok ? undefined : (visible.error as Error & { statusCode?: number }).statusCode === 404 ? notFound : 'not allowed')
      allowed.then(async (refusal) => {
        if (refusal !== undefined) {
          refuse(refusal)
          return
        }
        const found = await subscription.start(typeof since === 'number' && Number.isInteger(since) && since >= 0 ? since : undefined)
        if (!found) refuse(notFound)
      }).catch((err: unknown) => {
        request.log.error({ err }, 'fastify-task-api: event stream failed')
        following.delete(uuid)
        untrack(subscription)
        error('internal error', uuid)
      })
    })
  }

  for (const url of paths(app, `${prefix}/events`)) {
    app.route({
      method: 'GET',
      url,
      preHandler: mayConnect,
      handler: async () => { throw new FST_TASK_API_STREAM_UPGRADE_REQUIRED() },
      wsHandler: manyTasks,
    })
  }
}
