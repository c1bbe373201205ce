import http from 'node:http'
import { once } from 'node:events'
import Fastify, { type FastifyRequest } from 'fastify'
import t from 'tap'
import WebSocket from 'ws'
import taskApi from '../dist/index.js'
import { fixture } from './helpers.js'
import { eventually, follow, serve, upgradeStatus, type Frame } from './stream-helpers.js'

// Limits of the event routes against a real server: open streams per owner, HEAD, and
// subscriptions that race their own access check.

const missing = '3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b'
const user = (name: string) => ({ headers: { 'x-user': name } })
const ownerOf = (request: FastifyRequest): string | null => (request.headers['x-user'] as string | undefined) ?? null

/** An SSE request that resolves once the response head arrives; `close()` drops it. */
function openSse (base: string, path: string, headers: Record<string, string> = {}) {
  const request = http.get(`http://${base}${path}`, { headers: { accept: 'text/event-stream', ...headers } })
  request.on('error', () => {})
  const response = once(request, 'response').then(([response]) => {
    const message = response as http.IncomingMessage
    let body = ''
    message.setEncoding('utf8')
    message.on('data', (chunk: string) => { body += chunk })
    return { status: message.statusCode ?? 0, body: () => body, ended: once(message, 'end').catch(() => undefined) }
  })
  return { response, close: () => request.destroy() }
}

// Each test starts a server with its own pool of children: under load the file can take
// longer than tap's default 60 s.
t.setTimeout(180_000)

t.test('a per-owner cap on open streams: the next one gets 429 before it opens, another owner is unaffected, closing one frees a slot', async (t) => {
  const { app, base } = await serve(t, { owner: ownerOf, streams: { maxStreamsPerOwner: 3 } })
  const task = await app.tasks.submit('hold', { ms: 60_000 }, { owner: 'alice' })
  const events = `/tasks/${task.uuid}/events`
  // alice: one per-task WebSocket, one multiplexed socket, one SSE stream.
  const perTask = follow(`ws://${base}${events}`, user('alice'))
  await once(perTask.socket, 'message')
  const multiplexed = follow(`ws://${base}/tasks/events`, user('alice'))
  await once(multiplexed.socket, 'open')
  const stream = openSse(base, events, { 'x-user': 'alice' })
  t.equal((await stream.response).status, 200)
  t.equal(app.tasks.stats().streams, 3)

  for (const url of [`ws://${base}${events}`, `ws://${base}/tasks/events`]) {
    const refused = await upgradeStatus(url, user('alice'))
    t.equal(refused.status, 429, `a fourth stream on ${url.slice(base.length + 5)} is refused before the upgrade`)
    t.equal(JSON.parse(refused.body).code, 'FST_TASK_API_STREAM_LIMIT')
    t.match(JSON.parse(refused.body).message, /at most 3/, 'the message names the limit')
  }
  const sse = await app.inject({ url: events, headers: { accept: 'text/event-stream', 'x-user': 'alice' } })
  t.equal(sse.statusCode, 429, 'a fourth SSE stream is refused before it opens')
  t.equal(sse.json().code, 'FST_TASK_API_STREAM_LIMIT')
  const token = app.tasks.streamToken(task.uuid).token
  t.equal((await upgradeStatus(`ws://${base}${events}?token=${token}`)).status, 429, 'a token stream counts against the task\'s owner')
  t.equal(app.tasks.stats().streams, 3, 'no refused stream is counted')

  const bob = await upgradeStatus(`ws://${base}/tasks/events`, user('bob'))
  t.equal(bob.status, 101, 'another owner opens a stream')
  bob.socket.close()
  const anonymous = await upgradeStatus(`ws://${base}/tasks/events`)
  t.equal(anonymous.status, 101, 'a request without an owner counts against its IP')
  anonymous.socket.close()

  perTask.socket.close()
  await perTask.closed
  t.ok(await eventually(() => app.tasks.stats().streams === 2), 'closing a stream releases it')
  const again = await upgradeStatus(`ws://${base}/tasks/events`, user('alice'))
  t.equal(again.status, 101, 'and alice may open one again')
  stream.close()
  t.ok(await eventually(() => app.tasks.stats().streams === 2), 'an SSE stream the client dropped is released')
  again.socket.close()
  multiplexed.socket.close()
  t.ok(await eventually(() => app.tasks.stats().streams === 0), 'every stream released')
})

t.test('without an owner option, the cap counts per client IP', async (t) => {
  const { app, base } = await serve(t, { streams: { maxStreamsPerOwner: 1 } })
  const first = await upgradeStatus(`ws://${base}/tasks/events`)
  t.equal(first.status, 101)
  t.equal((await upgradeStatus(`ws://${base}/tasks/events`)).status, 429, 'a second stream from 127.0.0.1')
  const other = await upgradeStatus(`ws://${base}/tasks/events`, { localAddress: '127.0.0.2' })
  t.equal(other.status, 101, 'a stream from 127.0.0.2 is unaffected')
  first.socket.close()
  other.socket.close()
  t.ok(await eventually(() => app.tasks.stats().streams === 0))
})

t.test('HEAD on the event route answers the headers and holds no stream', async (t) => {
  const { app, base } = await serve(t)
  const task = await app.tasks.submit('hold', { ms: 60_000 })
  // Bounded, so that a server that never answers fails the test instead of hanging it.
  const head = await new Promise<{ status: number, type: string | undefined } | undefined>((resolve) => {
    const timer = setTimeout(() => resolve(undefined), 10_000)
    const request = http.request(`http://${base}/tasks/${task.uuid}/events`, { method: 'HEAD' }, (response) => {
      response.resume()
      response.on('end', () => {
        clearTimeout(timer)
        resolve({ status: response.statusCode ?? 0, type: response.headers['content-type'] })
      })
    })
    request.on('error', () => {})
    request.end()
  })
  t.ok(head !== undefined, 'the response ends')
  t.equal(head?.status, 200)
  t.match(head?.type, /^text\/event-stream/)
  t.same(app.tasks.stats(), { queued: 0, running: 1, subscribers: 0, streams: 0 }, 'no subscription, no stream')
  const unknown = await app.inject({ method: 'HEAD', url: `/tasks/${missing}/events` })
  t.equal(unknown.statusCode, 404)
  const many = await app.inject({ method: 'HEAD', url: '/tasks/events' })
  t.equal(many.statusCode, 426)
  t.same(app.tasks.stats(), { queued: 0, running: 1, subscribers: 0, streams: 0 })
})

t.test('20,000 subscribe/unsubscribe pairs racing the access check, and subscribes cut by a close, leave no listener behind', async (t) => {
  const { app, base } = await serve(t, {
    owner: ownerOf,
    // The access check takes a turn of the event loop, as a database would.
    authorize: async () => await new Promise<boolean>(resolve => setImmediate(() => resolve(true))),
    streams: { maxStreamsPerOwner: 0 },
  })
  const task = await app.tasks.submit('hold', { ms: 60_000 }, { owner: 'alice' })
  const other = await app.tasks.submit('hold', { ms: 60_000 }, { owner: 'alice' })
  const { socket, frames } = follow(`ws://${base}/tasks/events`, user('alice'))
  await once(socket, 'open')
  const subscribe = JSON.stringify({ type: 'subscribe', uuid: task.uuid })
  const unsubscribe = JSON.stringify({ type: 'unsubscribe', uuid: task.uuid })
  for (let i = 0; i < 20_000; i++) {
    socket.send(subscribe)
    socket.send(unsubscribe)
    if (i % 1000 === 999) await new Promise(resolve => setImmediate(resolve))
  }
  // A last subscribe, to another task: its snapshot comes after every check above ran.
  socket.send(JSON.stringify({ type: 'subscribe', uuid: other.uuid }))
  t.ok(await eventually(() => frames.some(frame => frame.type === 'snapshot' && (frame.task as { uuid: string }).uuid === other.uuid)),
    'the socket still serves')
  t.equal(frames.filter(frame => frame.type === 'error').length, 0, 'no error frame')
  t.ok(await eventually(() => app.tasks.stats().subscribers === 1), 'only the last subscription listens')
  t.equal(app.tasks.stats().subscribers, 1)

  // Subscribes whose socket closes while their check runs.
  const cut = Array.from({ length: 200 }, () => follow(`ws://${base}/tasks/events`, user('alice')))
  await Promise.all(cut.map(async ({ socket }) => {
    await once(socket, 'open')
    socket.send(subscribe)
    socket.terminate()
  }))
  await Promise.all(cut.map(client => client.closed))
  t.ok(await eventually(() => app.tasks.stats().streams === 1), 'the server saw every cut socket close')
  t.ok(await eventually(() => app.tasks.stats().subscribers === 1), 'and none of them left a listener')
  t.equal(app.tasks.stats().subscribers, 1)

  socket.send(JSON.stringify({ type: 'unsubscribe', uuid: other.uuid }))
  t.ok(await eventually(() => app.tasks.stats().subscribers === 0), 'zero listeners once the last one unsubscribes')
  socket.close()
})

t.test('a subscribe racing an unsubscribe and a second subscribe: the second one is served, the first leaves nothing', async (t) => {
  const { app, base } = await serve(t, {
    owner: ownerOf,
    authorize: async () => await new Promise<boolean>(resolve => setImmediate(() => resolve(true))),
  })
  const task = await app.tasks.submit('steps', { steps: 3, delay: 200 }, { owner: 'alice' })
  const { socket, frames } = follow(`ws://${base}/tasks/events`, user('alice'))
  await once(socket, 'open')
  socket.send(JSON.stringify({ type: 'subscribe', uuid: task.uuid }))
  socket.send(JSON.stringify({ type: 'unsubscribe', uuid: task.uuid }))
  socket.send(JSON.stringify({ type: 'subscribe', uuid: task.uuid }))
  const ended = (): boolean => frames.some(frame => frame.type === 'status' && frame.task !== undefined)
  t.ok(await eventually(ended), 'the task\'s final status arrives')
  t.equal(frames.filter((frame: Frame) => frame.type === 'snapshot').length, 1, 'one snapshot: only the second subscribe started')
  t.equal(frames.filter(frame => frame.type === 'status' && frame.task !== undefined).length, 1, 'the final status once')
  t.equal(frames.filter(frame => frame.type === 'error').length, 0, 'no error frame')
  t.ok(await eventually(() => app.tasks.stats().subscribers === 0), 'nothing listens after the end')
  t.equal(socket.readyState, WebSocket.OPEN)
  socket.close()
})

t.test('streams.maxStreamsPerOwner must be an integer, 0 or more: register fails naming it', async (t) => {
  for (const value of [-1, 1.5, '10']) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(taskApi, { tasks: [fixture('stream.ts')], streams: { maxStreamsPerOwner: value as number } }) }, {
      code: 'FST_TASK_API_OPT_INVALID',
      message: `options.streams.maxStreamsPerOwner must be an integer, 0 or more, got ${typeof value === 'string' ? `"${value}"` : value}`,
    }, String(value))
  }
})
