import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo, Socket } from 'node:net'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import type { FastifyInstance } from 'fastify'
import { MemoryStore, type TaskApiOptions, type TaskRecord } from '../dist/index.js'
import { build, fixture, until } from './helpers.js'

/*
 * README, Live events: the promises stream.test.ts leaves out. WebSocket close codes 1008
 * and 1011, resuming past historySize and after historyTtl, SSE heartbeat lines and
 * heartbeatInterval: 0, and an SSE client cut at hardBufferLimit. Real sockets on
 * 127.0.0.1.
 */

interface Frame { type: string, seq: number, status?: string, task?: TaskRecord, [key: string]: unknown }

async function serve (t: Test, options: Partial<TaskApiOptions> = {}): Promise<{ app: FastifyInstance, base: string }> {
  const app = await build(t, { tasks: [fixture('stream.ts')], concurrency: 1, progressInterval: 20, ...options })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, base: `127.0.0.1:${(app.server.address() as AddressInfo).port}` }
}

/** Opens a socket and collects every frame until it closes. */
function follow (url: string, options?: WebSocket.ClientOptions) {
  const socket = new WebSocket(url, options)
  const frames: Frame[] = []
  socket.on('message', data => frames.push(JSON.parse(data.toString()) as Frame))
  socket.on('error', () => {})
  const closed = new Promise<{ code: number, reason: string }>((resolve) => {
    socket.on('close', (code, reason) => resolve({ code, reason: reason.toString() }))
  })
  return { socket, frames, closed }
}

/**
 * A MemoryStore that can be made to lose a record, or fail reading it, right after the
 * next read: as a store shared with other servers might, between the upgrade's access
 * check and the snapshot.
 */
class FickleStore extends MemoryStore {
  readonly #after = new Map<string, 'vanish' | 'fail'>()
  readonly #gone = new Set<string>()

  /** After the next read of `uuid`, the record vanishes (or every read of it fails). */
  arm (uuid: string, what: 'vanish' | 'fail'): void {
    this.#after.set(uuid, what)
  }

  override async get (uuid: string): Promise<TaskRecord | undefined> {
    if (this.#gone.has(uuid)) {
      if (this.#after.get(uuid) === 'fail') throw new Error('the store is unreachable')
      return undefined
    }
    const record = await super.get(uuid)
    if (this.#after.has(uuid)) this.#gone.add(uuid)
    return record
  }
}

t.test('a task that vanishes from the store while its socket opens: close 1008', async (t) => {
  const store = new FickleStore()
  const { app, base } = await serve(t, { store })
  const { uuid } = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  await app.tasks.wait(uuid)
  store.arm(uuid, 'vanish')
  const { frames, closed } = follow(`ws://${base}/tasks/${uuid}/events`)
  t.same(await closed, { code: 1008, reason: 'task not found' }, 'the upgrade found it; the snapshot did not')
  t.same(frames, [], 'no frame')
})

t.test('a store that fails while a socket opens: close 1011; on the multiplexed socket an error frame', async (t) => {
  const store = new FickleStore()
  const { app, base } = await serve(t, { store })
  const { uuid } = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  await app.tasks.wait(uuid)
  store.arm(uuid, 'fail')
  const { frames, closed } = follow(`ws://${base}/tasks/${uuid}/events`)
  t.same(await closed, { code: 1011, reason: 'internal error' })
  t.same(frames, [])

  const other = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  await app.tasks.wait(other.uuid)
  store.arm(other.uuid, 'fail')
  const many = follow(`ws://${base}/tasks/events`)
  await once(many.socket, 'open')
  many.socket.send(JSON.stringify({ type: 'subscribe', uuid: other.uuid }))
  await until('the error frame', () => many.frames.length > 0)
  t.same(many.frames, [{ type: 'error', uuid: other.uuid, message: 'internal error' }])
  t.equal(many.socket.readyState, WebSocket.OPEN, 'the socket goes on serving')
  many.socket.close()
})

/** Follows a task over a WebSocket from before it starts to its end (so the server keeps its history). */
async function followToEnd (t: Test, app: FastifyInstance, base: string, inputs: { steps: number, delay: number }): Promise<{ uuid: string, frames: Frame[] }> {
  // The one worker is busy, so the socket opens while the task is still pending.
  const blocker = await app.tasks.submit('hold', { ms: 100 })
  const { uuid } = await app.tasks.submit('steps', inputs)
  const { frames, closed } = follow(`ws://${base}/tasks/${uuid}/events`)
  t.equal((await closed).code, 1000, 'followed to the end')
  await app.tasks.wait(blocker.uuid)
  return { uuid, frames }
}

t.test('resuming from further back than historySize events gets a fresh snapshot; from within it, exactly the missed events', async (t) => {
  const historySize = 2
  const { app, base } = await serve(t, { streams: { historySize } })
  const { uuid, frames } = await followToEnd(t, app, base, { steps: 6, delay: 5 })
  const final = frames.at(-1) as Frame
  t.equal(final.status, 'succeeded')
  // At least 9 events (running, a progress, 6 messages, the final status): past the 2 × historySize it ever holds.
  t.ok(final.seq > 4 * historySize, `the task published ${final.seq} events`)

  const recent = follow(`ws://${base}/tasks/${uuid}/events?since=${final.seq - 1}`)
  t.equal((await recent.closed).code, 1000)
  t.same(recent.frames.map(frame => frame.seq), [final.seq], 'the last events are still held: exactly the missed one')

  const old = follow(`ws://${base}/tasks/${uuid}/events?since=1`)
  t.equal((await old.closed).code, 1000)
  t.equal(old.frames.length, 1)
  t.equal(old.frames[0]?.type, 'snapshot', 'the events after seq 1 are no longer all held: a snapshot instead')
  t.equal(old.frames[0]?.seq, final.seq)
  t.same(old.frames[0]?.task?.messages, ['step 1', 'step 2', 'step 3', 'step 4', 'step 5', 'step 6'], 'which has everything')

  const sse = await new Promise<string>((resolve, reject) => {
    http.get(`http://${base}/tasks/${uuid}/events`, { headers: { 'last-event-id': '1' } }, (response) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { body += chunk })
      response.on('end', () => resolve(body))
    }).on('error', reject)
  })
  t.match(sse, new RegExp(`^retry: \\d+\\n\\nid: ${final.seq}\\ndata: \\{"type":"snapshot"`), 'SSE with an old Last-Event-ID: the same snapshot')
})

t.test('historyTtl: after it, a finished task\'s events are gone and a resume gets a snapshot; before it they are held', async (t) => {
  const short = await serve(t, { streams: { historyTtl: 50 } })
  const long = await serve(t, { streams: { historyTtl: 60_000 } })
  const expiring = await followToEnd(t, short.app, short.base, { steps: 3, delay: 5 })
  const kept = await followToEnd(t, long.app, long.base, { steps: 3, delay: 5 })
  const resume = async (base: string, uuid: string, since: number): Promise<Frame[]> => {
    const { frames, closed } = follow(`ws://${base}/tasks/${uuid}/events?since=${since}`)
    await closed
    return frames
  }
  const expiringSeq = (expiring.frames.at(-1) as Frame).seq
  // Nothing announces the expiry: resume until the server answers with a snapshot.
  let frames: Frame[] = []
  await until('the history to expire', async () => {
    frames = await resume(short.base, expiring.uuid, expiringSeq - 1)
    return frames[0]?.type === 'snapshot'
  })
  t.same(frames.map(frame => frame.type), ['snapshot'])
  const keptSeq = (kept.frames.at(-1) as Frame).seq
  const held = await resume(long.base, kept.uuid, keptSeq - 1)
  t.same(held.map(frame => [frame.type, frame.seq]), [['status', keptSeq]], 'by then the other server, with a long historyTtl, still holds the final event')
})

/** GET an SSE route; resolves once `enough(body)` holds (then drops the connection) or the stream ends. */
function sseUntil (url: string, enough: (body: string) => boolean): Promise<{ body: string, ended: boolean }> {
  return new Promise((resolve, reject) => {
    const request = http.get(url, { headers: { accept: 'text/event-stream' } }, (response) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => {
        body += chunk
        if (enough(body)) {
          request.destroy()
          resolve({ body, ended: false })
        }
      })
      response.on('end', () => resolve({ body, ended: true }))
    })
    request.on('error', (err) => { if (!request.destroyed) reject(err) })
  })
}

t.test('SSE: a comment line ": ping" goes out every heartbeatInterval', async (t) => {
  const { app, base } = await serve(t, { streams: { heartbeatInterval: 30 } })
  const { uuid } = await app.tasks.submit('hold', { ms: 20_000 })
  const { body, ended } = await sseUntil(`http://${base}/tasks/${uuid}/events`, text => text.includes('\n: ping\n\n'))
  t.notOk(ended, 'a ping came while the task ran')
  const blocks = body.split('\n\n').filter(block => block !== '')
  t.match(blocks[1], /^id: \d+\ndata: \{"type":"snapshot"/, 'after the snapshot')
  t.same([...new Set(blocks.filter(block => block.startsWith(':')))], [': ping'], 'each ping a comment block of its own')
  await app.tasks.cancel(uuid)
})

t.test('heartbeatInterval: 0 turns the heartbeat off: no ping line, no ping frame, a silent socket stays', async (t) => {
  const { app, base } = await serve(t, { streams: { heartbeatInterval: 0 } })
  const { uuid } = await app.tasks.submit('steps', { steps: 10, delay: 40 })
  let pings = 0
  const silent = follow(`ws://${base}/tasks/${uuid}/events`, { autoPong: false })
  silent.socket.on('ping', () => { pings++ })
  const { body, ended } = await sseUntil(`http://${base}/tasks/${uuid}/events`, () => false)
  t.ok(ended, 'the SSE stream ran to the end of the task')
  t.notMatch(body, /^:/m, 'without a comment line')
  t.equal((await silent.closed).code, 1000, 'the socket that never answers pings is closed by the task\'s end, not terminated')
  t.equal(pings, 0, 'it was never pinged')
  t.equal(silent.frames.at(-1)?.status, 'succeeded')
})

t.test('an SSE client that stops reading is cut at hardBufferLimit; the record keeps everything', async (t) => {
  // Messages are never dropped: raise their cap so that the flood reaches the stream.
  const { app, base } = await serve(t, { streams: { softBufferLimit: 16 * 1024, hardBufferLimit: 256 * 1024 }, maxMessages: 50_000 })
  const blocker = await app.tasks.submit('hold', { ms: 50 })
  const { uuid } = await app.tasks.submit('flood', { count: 40_000, size: 500 })
  const serverSide = new Promise<Socket>((resolve) => {
    app.server.on('request', (request: http.IncomingMessage) => { if (request.url === `/tasks/${uuid}/events`) resolve(request.socket) })
  })
  const response = await new Promise<http.IncomingMessage>((resolve, reject) => {
    http.get(`http://${base}/tasks/${uuid}/events`, { headers: { accept: 'text/event-stream' } }, resolve).on('error', reject)
  })
  // The client never reads: the response stays paused.
  let failure: (Error & { code?: string }) | undefined
  response.on('error', (err) => { failure = err })
  const clientClosed = new Promise(resolve => response.on('close', resolve))
  response.pause()
  const socket = await serverSide
  await app.tasks.wait(blocker.uuid)
  t.equal((await app.tasks.wait(uuid)).status, 'succeeded')
  if (!socket.destroyed) await once(socket, 'close')
  t.ok(socket.destroyed, 'the server dropped the connection of the client that does not read')
  // A paused client does not read its socket, so it cannot see the end of the connection
  // behind the data already in its buffers: read now, to reach that end.
  response.resume()
  await clientClosed
  t.equal(response.statusCode, 200)
  t.notOk(response.complete, 'the stream was cut, not ended: the client never got to the final status')
  t.match(failure, { message: 'aborted', code: 'ECONNRESET' }, 'the client saw its connection reset')
  const record = await app.tasks.get(uuid)
  t.equal(record?.messages.length, 40_000, 'the record kept every message')
  const fresh = await sseUntil(`http://${base}/tasks/${uuid}/events`, () => false)
  t.ok(fresh.ended, 'a client that reads gets the whole task')
  t.equal((fresh.body.match(/"\d+ x{500}"/g) ?? []).length, 40_000, 'every message, in the snapshot')
})
