import http from 'node:http'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'

import WebSocket from 'ws'
import type { FastifyInstance } from 'fastify'
import type { TaskApiOptions } from '../dist/index.js'
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import taskApi from '../dist/index.js'
import { build, childExecArgv, fixture, until } from './helpers.js'
import { follow, pluginTimeout, serve as serveStream, type Frame } from './stream-helpers.js'

// Real sockets on 127.0.0.1: the `ws` client and a raw HTTP client for SSE.

// Each test starts a server with its own pool of children: under load the file takes
// longer than tap's default 60 s.
t.setTimeout(240_000)


const missing = '3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b'

/** The shared server, with two children: most tests here follow two tasks at once. */
const serve = (t: Test, options: Partial<TaskApiOptions> = {}): ReturnType<typeof serveStream> => serveStream(t, { concurrency: 2, ...options })

function waitFor (predicate: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (predicate()) resolve()
      else if (Date.now() > deadline) reject(new Error('timed out waiting'))
      else setTimeout(check, 5)
    }
    check()
  })
}

/**
 * A round trip on a multiplexed socket: resolves once the server has answered a frame sent
 * now, so every frame it sent before has arrived (one socket keeps the order).
 */
async function roundTrip (socket: WebSocket, frames: Frame[], marker: string): Promise<void> {
  socket.send(JSON.stringify({ type: 'subscribe', uuid: marker }))
  await waitFor(() => frames.some(frame => frame.type === 'error' && frame.uuid === marker))
}

/** The first error frame at or after index `from`, once it arrives. */
async function errorFrom (frames: Frame[], from: number): Promise<Frame> {
  await waitFor(() => frames.slice(from).some(frame => frame.type === 'error'))
  return frames.slice(from).find(frame => frame.type === 'error') as Frame
}

/** Resolves once the task has published `count` more messages (events a disconnected client misses). */
function moreMessages (app: FastifyInstance, uuid: string, count: number): Promise<void> {
  return new Promise((resolve) => {
    let seen = 0
    const stop = app.tasks.subscribe(uuid, (event) => {
      if (event.type === 'message' && ++seen === count) {
        stop()
        resolve()
      }
    })
  })
}

/** Checks the guarantees on one task's frames; returns the messages it saw. */
function checkStream (t: Test, frames: Frame[], expectedMessages: string[]): void {
  t.equal(frames[0]?.type, 'snapshot', 'the first frame is the snapshot')
  const seqs = frames.map(frame => frame.seq as number)
  t.ok(seqs.every((seq, i) => i === 0 || seq > (seqs[i - 1] as number)), 'seq strictly increases')
  const snapshot = frames[0] as unknown as { task: { messages: string[] } }
  const messages = [...snapshot.task.messages, ...frames.filter(frame => frame.type === 'message').map(frame => frame.message as string)]
  t.same(messages, expectedMessages, 'every message exactly once, in order')
  const last = frames.at(-1) as Frame & { task: { status: string } }
  t.equal(last.type, 'status')
  t.equal(last.status, 'succeeded')
  t.equal(last.task.status, 'succeeded', 'the final status frame carries the record')
}

/** A file path whose creation lets `steps` tasks submitted with it start (see fixtures/stream.ts). */
function gate (t: Test): { path: string, open: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-gate-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'open')
  return { path, open: () => writeFileSync(path, '') }
}

t.test('one task per socket: snapshot, progress, messages, final status, close 1000', async (t) => {
  const { app, base } = await serve(t)
  const start = gate(t)
  const task = await app.tasks.submit('steps', { steps: 8, delay: 30, gate: start.path })
  const { frames, closed } = follow(`ws://${base}/tasks/${task.uuid}/events`)
  await waitFor(() => frames.length > 0)
  start.open()
  const { code } = await closed
  t.equal(code, 1000)
  checkStream(t, frames, Array.from({ length: 8 }, (_, i) => `step ${i + 1}`))
  const last = frames.at(-1) as Frame & { task: { outputs: unknown, progress: number } }
  t.same(last.task.outputs, { done: 8 })
  t.equal(last.task.progress, 8)
  t.ok(frames.some(frame => frame.type === 'progress' && frame.uuid === task.uuid && frame.target === 8), 'progress frames carry uuid and target')
  t.same((frames[0] as unknown as { task: { messages: string[] } }).task.messages, [], 'the snapshot came before the first step')
  t.equal(frames[0]?.uuid, task.uuid, 'the snapshot frame carries uuid')
})

t.test('a finished task: the snapshot, then close', async (t) => {
  const { app, base } = await serve(t)
  const task = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  await app.tasks.wait(task.uuid)
  const { frames, closed } = follow(`ws://${base}/tasks/${task.uuid}/events/`)
  t.equal((await closed).code, 1000)
  t.equal(frames.length, 1)
  t.equal(frames[0]?.type, 'snapshot')
  t.equal((frames[0] as unknown as { task: { status: string } }).task.status, 'succeeded')
})

t.test('an unknown or malformed uuid: the upgrade is refused with 404', async (t) => {
  const { base } = await serve(t)
  for (const uuid of [missing, 'not-a-uuid']) {
    const socket = new WebSocket(`ws://${base}/tasks/${uuid}/events`)
    const [, response] = await once(socket, 'unexpected-response') as [unknown, http.IncomingMessage]
    t.equal(response.statusCode, 404, uuid)
    socket.on('error', () => {})
    socket.terminate()
  }
})

t.test('an app that registered @fastify/websocket itself: app.injectWS reaches the same stream', async (t) => {
  const app = Fastify({ pluginTimeout })
  t.teardown(() => app.close())
  await app.register(websocket)
  await app.register(taskApi, { tasks: [fixture('stream.ts')], concurrency: 1, execArgv: childExecArgv })
  await app.ready()
  const task = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  await app.tasks.wait(task.uuid)
  let first: (data: Buffer) => void = () => {}
  const message = new Promise<Buffer>((resolve) => { first = resolve })
  // Frames can arrive before injectWS resolves: listen from the start.
  const socket = await app.injectWS(`/tasks/${task.uuid}/events`, {}, { onInit: ws => ws.once('message', first) })
  const frame = JSON.parse((await message).toString()) as Frame & { task: { uuid: string } }
  t.equal(frame.type, 'snapshot')
  t.equal(frame.task.uuid, task.uuid)
  socket.terminate()
  await t.rejects(app.injectWS(`/tasks/${missing}/events`), /404/)
})

t.test('many tasks per socket: two tasks at once, the socket stays open', async (t) => {
  const { app, base } = await serve(t)
  const { socket, frames, closed } = follow(`ws://${base}/tasks/events`)
  await once(socket, 'open')
  const start = gate(t)
  const a = await app.tasks.submit('steps', { steps: 5, delay: 20, gate: start.path })
  const b = await app.tasks.submit('steps', { steps: 3, delay: 35, gate: start.path })
  socket.send(JSON.stringify({ type: 'subscribe', uuid: a.uuid }))
  socket.send(JSON.stringify({ type: 'subscribe', uuid: b.uuid }))
  await waitFor(() => frames.filter(frame => frame.type === 'snapshot').length === 2)
  start.open()
  const ended = (uuid: string) => frames.some(frame => frame.type === 'status' && frame.uuid === uuid && frame.task !== undefined)
  await waitFor(() => ended(a.uuid) && ended(b.uuid))
  const snapshots = frames.filter(frame => frame.type === 'snapshot')
  t.same(snapshots.map(frame => frame.uuid).sort(), [a.uuid, b.uuid].sort(), 'each snapshot frame carries its task\'s uuid at the top, like every other frame')
  t.ok(snapshots.every(frame => frame.uuid === (frame.task as { uuid: string }).uuid), 'the same as its task\'s')
  const of = (uuid: string) => frames.filter(frame => frame.uuid === uuid)
  checkStream(t, of(a.uuid), ['step 1', 'step 2', 'step 3', 'step 4', 'step 5'])
  checkStream(t, of(b.uuid), ['step 1', 'step 2', 'step 3'])
  t.equal(socket.readyState, WebSocket.OPEN, 'the socket stays open after both tasks ended')
  // Subscribing to a finished task answers its snapshot.
  socket.send(JSON.stringify({ type: 'subscribe', uuid: a.uuid }))
  await waitFor(() => frames.filter(frame => frame.type === 'snapshot').length === 3)
  socket.close()
  t.equal((await closed).code, 1005)
})

t.test('unsubscribe stops the frames of that task', async (t) => {
  const { app, base } = await serve(t)
  const { socket, frames } = follow(`ws://${base}/tasks/events`)
  await once(socket, 'open')
  const start = gate(t)
  const task = await app.tasks.submit('steps', { steps: 10, delay: 20, gate: start.path })
  socket.send(JSON.stringify({ type: 'subscribe', uuid: task.uuid }))
  await waitFor(() => frames.length >= 1)
  start.open()
  await waitFor(() => frames.length >= 2)
  socket.send(JSON.stringify({ type: 'unsubscribe', uuid: task.uuid }))
  await roundTrip(socket, frames, 'marker-1')
  const count = frames.filter(frame => frame.uuid === task.uuid).length
  await app.tasks.wait(task.uuid)
  await roundTrip(socket, frames, 'marker-2')
  t.equal(frames.filter(frame => frame.uuid === task.uuid).length, count, 'no frame after unsubscribe')
  t.notOk(frames.some(frame => frame.type === 'status' && frame.task !== undefined))
  socket.close()
})

t.test('error frames for bad client frames, and the socket goes on serving', async (t) => {
  const { app, base } = await serve(t, { streams: { maxSubscriptions: 2 } })
  const { socket, frames } = follow(`ws://${base}/tasks/events`)
  await once(socket, 'open')
  const bad: Array<[string, Frame]> = [
    ['not json', { type: 'error', message: 'frames must be JSON: {"type": "subscribe" | "unsubscribe", "uuid": "..."}' }],
    ['[1,2]', { type: 'error', message: 'unknown frame type: expected {"type": "subscribe" | "unsubscribe", "uuid": "..."} or {"type": "watch" | "unwatch"}' }],
    [JSON.stringify({ type: 'dance' }), { type: 'error', message: 'unknown frame type: expected {"type": "subscribe" | "unsubscribe", "uuid": "..."} or {"type": "watch" | "unwatch"}' }],
    [JSON.stringify({ type: 'subscribe' }), { type: 'error', message: 'subscribe needs a "uuid" string' }],
    [JSON.stringify({ type: 'subscribe', uuid: missing }), { type: 'error', uuid: missing, message: `task ${missing} not found` }],
    [JSON.stringify({ type: 'subscribe', uuid: 'nope' }), { type: 'error', uuid: 'nope', message: 'task nope not found' }],
  ]
  // Only error frames answer these: the first one after each send is its answer.
  for (const [payload, expected] of bad) {
    const before = frames.length
    socket.send(payload)
    t.same(await errorFrom(frames, before), expected, payload)
  }
  // Two followed tasks keep sending frames from here on: match the answer, not the last frame.
  const one = await app.tasks.submit('hold', { ms: 2000 })
  const two = await app.tasks.submit('hold', { ms: 2000 })
  const three = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  for (const task of [one, two]) socket.send(JSON.stringify({ type: 'subscribe', uuid: task.uuid }))
  await waitFor(() => frames.filter(frame => frame.type === 'snapshot').length === 2)
  let before = frames.length
  socket.send(JSON.stringify({ type: 'subscribe', uuid: one.uuid }))
  t.same(await errorFrom(frames, before), { type: 'error', uuid: one.uuid, message: 'already subscribed to this task' })
  before = frames.length
  socket.send(JSON.stringify({ type: 'subscribe', uuid: three.uuid }))
  t.same(await errorFrom(frames, before), { type: 'error', uuid: three.uuid, message: 'too many subscriptions on this socket (at most 2)' })
  socket.send(JSON.stringify({ type: 'unsubscribe', uuid: one.uuid }))
  socket.send(JSON.stringify({ type: 'subscribe', uuid: three.uuid }))
  const served = (): boolean => frames.some(frame => frame.type === 'snapshot' && (frame.task as { uuid: string }).uuid === three.uuid)
  await waitFor(served)
  t.ok(served(), 'after an unsubscribe there is room again')
  socket.close()
})

t.test('garbage bytes, oversized frames and non-JSON never crash the server', async (t) => {
  const { app, base } = await serve(t, { streams: { maxPayload: 1024 } })
  // A frame with the RSV2 and RSV3 bits set: ws reports WS_ERR_UNEXPECTED_RSV_2_3.
  const rsv = follow(`ws://${base}/tasks/events`)
  await once(rsv.socket, 'open')
  ;(rsv.socket as unknown as { _socket: import('node:net').Socket })._socket.write(Buffer.from([0xa2, 0x00]))
  t.not((await rsv.closed).code, 1000, 'the offending socket is dropped')

  const big = follow(`ws://${base}/tasks/events`)
  await once(big.socket, 'open')
  big.socket.send('x'.repeat(10_000))
  t.equal((await big.closed).code, 1009, 'an oversized frame closes with 1009 (message too big)')

  const task = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  const again = follow(`ws://${base}/tasks/${task.uuid}/events`)
  t.equal((await again.closed).code, 1000, 'the server still serves')
  // The final record arrives either in the closing status frame or, when the task ended
  // before the socket opened, in the snapshot.
  t.equal((again.frames.at(-1)?.task as { status: string } | undefined)?.status, 'succeeded')
})

t.test('a million setProgress calls: a bounded number of progress frames and the exact final value', async (t) => {
  const { app, base } = await serve(t)
  const task = await app.tasks.submit('hold', { ms: 100 })
  const spin = await app.tasks.submit('spin', { calls: 1_000_000 })
  const started = performance.now()
  const { frames, closed } = follow(`ws://${base}/tasks/${spin.uuid}/events`)
  await closed
  const ms = performance.now() - started
  const progress = frames.filter(frame => frame.type === 'progress')
  t.ok(progress.length <= Math.ceil(ms / 20) + 2, `${progress.length} progress frames in ${Math.round(ms)} ms`)
  const last = frames.at(-1) as Frame & { task: { progress: number } }
  t.equal(last.task.progress, 1_000_000)
  const lastProgress = progress.at(-1)
  if (lastProgress !== undefined) t.equal(lastProgress.progress, 1_000_000, 'the last progress frame is exact')
  await app.tasks.wait(task.uuid)
})

t.test('per-subscriber coalescing: at most one progress frame per interval, final value exact', async (t) => {
  const { app, base } = await serve(t, { progressInterval: 100 })
  const task = await app.tasks.submit('steps', { steps: 40, delay: 5 })
  const started = performance.now()
  const { frames, closed } = follow(`ws://${base}/tasks/${task.uuid}/events`)
  await closed
  const ms = performance.now() - started
  const progress = frames.filter(frame => frame.type === 'progress')
  t.ok(progress.length <= Math.ceil(ms / 100) + 2, `${progress.length} progress frames in ${Math.round(ms)} ms`)
  t.equal((frames.at(-1) as unknown as { task: { progress: number } }).task.progress, 40)
  t.equal(frames.filter(frame => frame.type === 'message').length + ((frames[0] as unknown as { task: { messages: string[] } }).task.messages.length), 40, 'messages are never coalesced')
})

t.test('a client that stops reading is disconnected; the server stays up', async (t) => {
  // Messages are the frames that are never dropped: raise their cap so the flood reaches the socket.
  // The app registers @fastify/websocket itself, so that the test can see the server's side
  // of the socket (app.websocketServer).
  const app = Fastify({ pluginTimeout })
  t.teardown(() => app.close())
  await app.register(websocket, { options: { maxPayload: 4096, allowSynchronousEvents: false } })
  await app.register(taskApi, {
    tasks: [fixture('stream.ts')], concurrency: 2, progressInterval: 20, execArgv: childExecArgv, shutdownTimeout: 200,
    streams: { softBufferLimit: 16 * 1024, hardBufferLimit: 256 * 1024 }, maxMessages: 50_000,
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const task = await app.tasks.submit('flood', { count: 40_000, size: 500, hold: 500 })
  const slow = follow(`ws://${base}/tasks/${task.uuid}/events`)
  await once(slow.socket, 'open')
  const raw = (slow.socket as unknown as { _socket: import('node:net').Socket })._socket
  raw.pause()
  // The server closes the socket once its send buffer is over hardBufferLimit; the client
  // then reads what was buffered, and the close frame behind it. (Were it to stay paused
  // for 5 s more, the server would destroy the connection: 1006.)
  await until('the server to close the slow socket', () =>
    [...app.websocketServer.clients].some(socket => socket.readyState === WebSocket.CLOSING), 60_000)
  raw.resume()
  const { code } = await slow.closed
  t.equal(code, 1013, 'closed with 1013: client too slow')
  await app.tasks.wait(task.uuid)
  t.ok(slow.frames.filter(frame => frame.type === 'message').length < 40_000, 'it did not get everything')
  t.notOk(slow.frames.some(frame => frame.type === 'status' && frame.task !== undefined), 'nor the final status')
  const fast = follow(`ws://${base}/tasks/${task.uuid}/events`)
  t.equal((await fast.closed).code, 1000)
  t.equal((fast.frames[0] as unknown as { task: { messages: string[] } }).task.messages.length, 40_000, 'the record kept every message')
})

t.test('a dead connection is closed by the heartbeat', async (t) => {
  const { app, base } = await serve(t, { streams: { heartbeatInterval: 100 } })
  const task = await app.tasks.submit('hold', { ms: 3000 })
  const silent = follow(`ws://${base}/tasks/${task.uuid}/events`, { autoPong: false })
  const alive = follow(`ws://${base}/tasks/${task.uuid}/events`)
  const { code } = await silent.closed
  t.equal(code, 1006, 'the server terminated the silent socket')
  t.equal(alive.socket.readyState, WebSocket.OPEN, 'a socket that answers pings stays')
  alive.socket.close()
})

/** GET over raw HTTP and parse the event stream until it ends. */
function sse (base: string, path: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number, headers: http.IncomingHttpHeaders, events: Array<{ id?: string, data: Frame }>, body: string }>((resolve, reject) => {
    const request = http.get(`http://${base}${path}`, { headers: { accept: 'text/event-stream', ...headers } }, (response) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { body += chunk })
      response.on('end', () => {
        const events = body.split('\n\n').filter(block => block.includes('data: ')).map((block) => {
          const id = /^id: (.*)$/m.exec(block)?.[1]
          const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? 'null') as Frame
          return id === undefined ? { data } : { id, data }
        })
        resolve({ status: response.statusCode ?? 0, headers: response.headers, events, body })
      })
    })
    request.on('error', reject)
  })
}

t.test('SSE: the same events, id = seq, and the stream ends with the task', async (t) => {
  const { app, base } = await serve(t)
  const task = await app.tasks.submit('steps', { steps: 6, delay: 25 })
  const { status, headers, events, body } = await sse(base, `/tasks/${task.uuid}/events`)
  t.equal(status, 200)
  t.match(headers['content-type'], /^text\/event-stream/)
  t.match(body, /^retry: \d+/)
  checkStream(t, events.map(event => event.data), ['step 1', 'step 2', 'step 3', 'step 4', 'step 5', 'step 6'])
  t.ok(events.every(event => event.id === String(event.data.seq)), 'each id is the seq')
  // Without an Accept header (curl -N) it streams too.
  const plain = await new Promise<number>((resolve) => {
    http.get(`http://${base}/tasks/${task.uuid}/events`, (response) => { response.resume(); resolve(response.statusCode ?? 0) })
  })
  t.equal(plain, 200)
})

t.test('SSE with Last-Event-ID: only what was missed, else a fresh snapshot; 204 once the client has it all', async (t) => {
  const { app, base } = await serve(t)
  const task = await app.tasks.submit('steps', { steps: 12, delay: 40 })
  // Read until a few events arrived, then drop the connection.
  const seen: Frame[] = []
  await new Promise<void>((resolve) => {
    const request = http.get(`http://${base}/tasks/${task.uuid}/events`, { headers: { accept: 'text/event-stream' } }, (response) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => {
        body += chunk
        const blocks = body.split('\n\n')
        body = blocks.pop() ?? ''
        for (const block of blocks) {
          const data = /^data: (.*)$/m.exec(block)?.[1]
          if (data !== undefined) seen.push(JSON.parse(data) as Frame)
        }
        if (seen.filter(frame => frame.type === 'message').length >= 3) {
          request.destroy()
          resolve()
        }
      })
    })
    request.on('error', () => {})
  })
  const lastId = seen.at(-1)?.seq as number
  await moreMessages(app, task.uuid, 2) // events happen while disconnected
  const resumed = await sse(base, `/tasks/${task.uuid}/events`, { 'last-event-id': String(lastId) })
  t.equal(resumed.status, 200)
  t.not(resumed.events[0]?.data.type, 'snapshot', 'a resumed stream starts with the missed events, not a snapshot')
  t.equal(resumed.events[0]?.data.seq, lastId + 1, 'starting right after the last id')
  const all = [...seen, ...resumed.events.map(event => event.data)]
  checkStream(t, all, Array.from({ length: 12 }, (_, i) => `step ${i + 1}`))

  const finalSeq = resumed.events.at(-1)?.data.seq as number
  const done = await sse(base, `/tasks/${task.uuid}/events`, { 'last-event-id': String(finalSeq) })
  t.equal(done.status, 204, 'an EventSource that has the final event is told to stop')

  // A task the server holds no history for: a fresh snapshot.
  const other = await app.tasks.submit('steps', { steps: 2, delay: 1 })
  await app.tasks.wait(other.uuid)
  const fresh = await sse(base, `/tasks/${other.uuid}/events`, { 'last-event-id': '1' })
  t.equal(fresh.events[0]?.data.type, 'snapshot')
  t.equal(fresh.events.length, 1)
})

t.test('SSE and the multiplexed route refuse what they cannot serve', async (t) => {
  const { app, base } = await serve(t)
  const missingTask = await new Promise<number>((resolve) => {
    http.get(`http://${base}/tasks/${missing}/events`, { headers: { accept: 'text/event-stream' } }, (response) => { response.resume(); resolve(response.statusCode ?? 0) })
  })
  t.equal(missingTask, 404)
  const task = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  const json = await app.inject({ url: `/tasks/${task.uuid}/events`, headers: { accept: 'application/json' } })
  t.equal(json.statusCode, 406)
  t.equal(json.json().code, 'FST_TASK_API_STREAM_NOT_ACCEPTABLE')
  const plain = await app.inject('/tasks/events')
  t.equal(plain.statusCode, 426)
  t.equal(plain.json().code, 'FST_TASK_API_STREAM_UPGRADE_REQUIRED')
})

t.test('WebSocket resume: ?since= and "since" send only the missed events', async (t) => {
  const { app, base } = await serve(t)
  const task = await app.tasks.submit('steps', { steps: 10, delay: 40 })
  const first = follow(`ws://${base}/tasks/${task.uuid}/events`)
  await waitFor(() => first.frames.filter(frame => frame.type === 'message').length >= 2)
  const missed = moreMessages(app, task.uuid, 2)
  first.socket.terminate()
  const lastSeq = first.frames.at(-1)?.seq as number
  await missed
  const resumed = follow(`ws://${base}/tasks/${task.uuid}/events?since=${lastSeq}`)
  t.equal((await resumed.closed).code, 1000)
  t.equal(resumed.frames[0]?.seq, lastSeq + 1, 'the resumed socket starts right after the last seen seq')
  checkStream(t, [...first.frames, ...resumed.frames], Array.from({ length: 10 }, (_, i) => `step ${i + 1}`))

  const many = follow(`ws://${base}/tasks/events`)
  await once(many.socket, 'open')
  const finalSeq = resumed.frames.at(-1)?.seq as number
  many.socket.send(JSON.stringify({ type: 'subscribe', uuid: task.uuid, since: finalSeq - 1 }))
  await waitFor(() => many.frames.length >= 1)
  await roundTrip(many.socket, many.frames, 'marker')
  t.same(many.frames.filter(frame => frame.type !== 'error').map(frame => frame.seq), [finalSeq], 'a multiplexed subscribe with since gets only the final frame')
  many.socket.close()
})

t.test('app.close() ends open SSE streams and sockets', async (t) => {
  const app = await build(t, { tasks: [fixture('stream.ts')], concurrency: 1, shutdownTimeout: 100, cancelGrace: 100 }, { pluginTimeout })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const task = await app.tasks.submit('hold', { ms: 30_000 })
  const stream = sse(base, `/tasks/${task.uuid}/events`)
  const socket = follow(`ws://${base}/tasks/${task.uuid}/events`)
  await once(socket.socket, 'open')
  await waitFor(() => app.tasks.stats().streams === 2)
  const started = Date.now()
  await app.close()
  t.ok(Date.now() - started < 10_000, 'close did not wait for the streams')
  t.equal((await stream).status, 200)
  t.ok((await socket.closed).code >= 1000)
})
