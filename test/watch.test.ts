import { once } from 'node:events'
import { randomUUID } from 'node:crypto'
import type { FastifyRequest } from 'fastify'
import t from 'tap'
import { startWorker } from '../dist/redis/index.js'
import { childExecArgv, fixture, until } from './helpers.js'
import { startRedis } from './redis-server.js'
import { follow, serve, type Frame } from './stream-helpers.js'

/*
 * `{"type": "watch"}` on the multiplexed socket: a frame for each task created from then
 * on that the socket may see (what keeps the dashboard's first page live). Locally, and
 * across API nodes on Redis.
 */

const created = (frames: Frame[]): string[] => frames.filter(frame => frame.type === 'created').map(frame => frame.uuid as string)

/** A multiplexed socket that watches; resolves once the server said `watching`. */
async function watcher (url: string, headers: Record<string, string> = {}) {
  const client = follow(url, { headers })
  await once(client.socket, 'open')
  client.socket.send(JSON.stringify({ type: 'watch' }))
  await until('watching', () => client.frames.some(frame => frame.type === 'watching'))
  return client
}

t.test('a watching socket gets a created frame for each new task, until it unwatches', async (t) => {
  const { app, base } = await serve(t, { list: true })
  const client = await watcher(`ws://${base}/tasks/events`)
  const before = client.frames.length
  const first = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'steps', inputs: { steps: 1, delay: 1 } } })
  const uuid = first.json().uuid as string
  await until('the created frame', () => created(client.frames).includes(uuid))
  const frame = client.frames.find(frame => frame.type === 'created')
  t.same(Object.keys(frame?.task as object).sort(), ['attempt', 'created', 'error', 'finished', 'progress', 'started', 'status', 'target', 'task', 'uuid'], 'a summary, as the list has it')
  t.match(frame, { type: 'created', uuid, task: { uuid, task: 'steps', status: 'pending', attempt: 0, created: first.json().created } })
  const second = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  await until('server code\'s tasks too', () => created(client.frames).includes(second.uuid))
  t.equal(client.frames.length, before + 2, 'one frame each, nothing else')

  client.socket.send(JSON.stringify({ type: 'watch' }))
  await until('an error', () => client.frames.some(frame => frame.type === 'error'))
  t.match(client.frames.at(-1), { type: 'error', message: 'already watching for new tasks' })

  client.socket.send(JSON.stringify({ type: 'unwatch' }))
  // A subscribe round trip after the unwatch: frames are handled in order.
  client.socket.send(JSON.stringify({ type: 'subscribe', uuid: second.uuid }))
  await until('the snapshot', () => client.frames.some(frame => frame.type === 'snapshot'))
  const third = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  await app.tasks.wait(third.uuid)
  t.notOk(created(client.frames).includes(third.uuid), 'not after unwatch')
  t.same(created(client.frames), [uuid, second.uuid])
  client.socket.terminate()
})

t.test('only the tasks the socket may read: its owner\'s, and those authorize allows', async (t) => {
  const userOf = (request: FastifyRequest): string => {
    const user = request.headers['x-user']
    if (typeof user !== 'string') throw Object.assign(new Error('who are you?'), { statusCode: 401 })
    return user
  }
  const { app, base } = await serve(t, {
    auth: [async (request) => { userOf(request) }],
    owner: userOf,
    authorize: (request, { task, action }) => action !== 'read' || task !== 'hold' || userOf(request) === 'admin',
  })
  const ann = await watcher(`ws://${base}/tasks/events`, { 'x-user': 'ann' })
  const bob = await watcher(`ws://${base}/tasks/events`, { 'x-user': 'bob' })
  const submit = async (user: string, task: string, inputs: object): Promise<string> => {
    const res = await app.inject({ method: 'POST', url: '/tasks', headers: { 'x-user': user }, payload: { task, inputs } })
    t.equal(res.statusCode, 201)
    return res.json().uuid as string
  }
  const anns = await submit('ann', 'steps', { steps: 1, delay: 1 })
  const bobs = await submit('bob', 'steps', { steps: 1, delay: 1 })
  const annsHidden = await submit('ann', 'hold', { ms: 1 })
  const last = await submit('ann', 'steps', { steps: 1, delay: 1 })
  await until('ann\'s last', () => created(ann.frames).includes(last))
  await until('bob\'s', () => created(bob.frames).includes(bobs))
  t.same(created(ann.frames), [anns, last], 'ann: her own, not the one authorize hides from her')
  t.same(created(bob.frames), [bobs], 'bob: his own only')
  t.notOk(created(ann.frames).includes(annsHidden))
  ann.socket.terminate()
  bob.socket.terminate()
})

t.test('on Redis: a watcher on one API node sees tasks created on another; told when the bus is lost, and when it is back', async (t) => {
  const redis = await startRedis(t)
  const prefix = `{watch-${randomUUID().slice(0, 8)}}`
  const worker = await startWorker({ redis: { connection: redis.url, prefix }, tasks: [fixture('stream.ts')], concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200 })
  t.teardown(() => worker.close())
  const a = await serve(t, { redis: { connection: redis.url, prefix }, concurrency: 0, list: true })
  const b = await serve(t, { redis: { connection: redis.url, prefix }, concurrency: 0, list: true })
  const onB = await watcher(`ws://${b.base}/tasks/events`)
  const { uuid } = await a.app.tasks.submit('steps', { steps: 1, delay: 1 })
  await until('the created frame on node B', () => created(onB.frames).includes(uuid))

  const { Redis } = await import('ioredis')
  const admin = new Redis(redis.url)
  t.teardown(() => admin.quit())
  const watching = (): number => onB.frames.filter(frame => frame.type === 'watching').length
  await admin.client('KILL', 'TYPE', 'pubsub')
  await until('told of the interruption', () => onB.frames.some(frame => frame.code === 'FST_TASK_API_EVENTS_INTERRUPTED'))
  await until('watching again', () => watching() === 2)
  const after = await a.app.tasks.submit('steps', { steps: 1, delay: 1 })
  await until('a task created after the bus came back', () => created(onB.frames).includes(after.uuid))
  t.same(created(onB.frames), [uuid, after.uuid])
  t.equal(onB.socket.readyState, onB.socket.OPEN, 'the socket stayed open')
  onB.socket.terminate()
})

t.test('notices reach thousands of watchers in slices, in order, never after a watcher stopped', async (t) => {
  const { EventBus, fanOutSlice } = await import('../dist/events.js')
  const bus = new EventBus()
  const heard: string[][] = Array.from({ length: 1000 }, () => [])
  const stops = heard.map((list) => bus.watch(notice => { list.push(notice.uuid) }))
  const notice = (uuid: string) => ({ uuid, owner: null, summary: { uuid, task: 't', status: 'pending' as const, progress: null, target: null, attempt: 0, created: '', started: null, finished: null, error: null } })
  bus.announce(notice('a'), (err) => { throw err })
  bus.announce(notice('b'), (err) => { throw err })
  const atOnce = heard.filter(list => list.length > 0).length
  t.ok(atOnce <= fanOutSlice.listeners, `at most one slice at once (${atOnce} of 1000 watchers)`)
  stops[999]?.()
  await until('every watcher heard both', () => heard.slice(0, 999).every(list => list.length === 2))
  t.ok(heard.slice(0, 999).every(list => list[0] === 'a' && list[1] === 'b'), 'in the order announced')
  t.same(heard[999], [], 'a watcher that stopped before its turn is not called')
})
