import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { TaskState } from '../dist/index.js'
import { startWorker } from '../dist/redis/index.js'
import { childExecArgv, fixture, until } from './helpers.js'
import { startRedis, type TestRedis } from './redis-server.js'
import { follow, serve, type Frame } from './stream-helpers.js'

// Event streams on a Redis deployment: API nodes (concurrency 0) and a worker, on a real
// redis-server. A client that reconnects to another node resumes exactly where it was;
// a node that loses Redis tells its streams' clients, and they catch up by themselves.

const gatePath = (): string => join(tmpdir(), `task-api-gate-${randomUUID()}`)

async function deployment (t: Test, redis: TestRedis): Promise<{ a: Awaited<ReturnType<typeof serve>>, b: Awaited<ReturnType<typeof serve>> }> {
  const prefix = `{streams-${randomUUID().slice(0, 8)}}`
  const worker = await startWorker({ redis: { connection: redis.url, prefix }, tasks: [fixture('stream.ts')], concurrency: 2, execArgv: childExecArgv, shutdownTimeout: 200 })
  t.teardown(() => worker.close())
  const node = async (): Promise<Awaited<ReturnType<typeof serve>>> => serve(t, { redis: { connection: redis.url, prefix }, concurrency: 0 })
  return { a: await node(), b: await node() }
}

const messagesOf = (frames: Frame[]): unknown[] => frames.filter(frame => frame.type === 'message').map(frame => frame.message)

/** What a client knows at the end: the messages of its last snapshot, then those of the frames after it. */
function knownMessages (frames: Frame[]): unknown[] {
  const lastSnapshot = frames.findLastIndex(frame => frame.type === 'snapshot')
  return [...((frames[lastSnapshot] as { task?: TaskState } | undefined)?.task?.messages ?? []), ...messagesOf(frames.slice(lastSnapshot + 1))]
}

/** The task followed from `base` on a socket of its own and on the multiplexed one, once both have their snapshot. */
async function followBoth (base: string, uuid: string): Promise<{ single: ReturnType<typeof follow>, many: ReturnType<typeof follow> }> {
  const single = follow(`ws://${base}/tasks/${uuid}/events`)
  const many = follow(`ws://${base}/tasks/events`)
  await new Promise(resolve => many.socket.once('open', resolve))
  many.socket.send(JSON.stringify({ type: 'subscribe', uuid }))
  await until('both snapshots', () => single.frames.length > 0 && many.frames.length > 0)
  return { single, many }
}

const steps = (count: number): string[] => Array.from({ length: count }, (_, i) => `step ${i + 1}`)

t.test('a WebSocket client that reconnects to another API node with ?since= gets exactly the events it missed, no snapshot', async (t) => {
  const redis = await startRedis(t)
  const { a, b } = await deployment(t, redis)
  const gate = gatePath()
  const { uuid } = await a.app.tasks.submit('steps', { steps: 8, delay: 60, gate })
  const first = follow(`ws://${a.base}/tasks/${uuid}/events`)
  await until('the snapshot on node A', () => first.frames.length > 0)
  writeFileSync(gate, '')
  t.teardown(() => import('node:fs').then(fs => fs.rmSync(gate, { force: true })))
  await until('three steps on node A', () => messagesOf(first.frames).length >= 3)
  first.socket.close()
  await first.closed
  const lastSeq = Math.max(...first.frames.map(frame => frame.seq ?? -1))
  // Let the task go on while the client is away.
  await until('two more steps to pass', async () => ((await b.app.tasks.get(uuid))?.messages.length ?? 0) >= messagesOf(first.frames).length + 2)
  const second = follow(`ws://${b.base}/tasks/${uuid}/events?since=${lastSeq}`)
  const closed = await second.closed
  t.equal(closed.code, 1000, 'closed as the task finished')
  t.notOk(second.frames.some(frame => frame.type === 'snapshot'), 'no snapshot: node B resumed from the history in Redis')
  t.equal(second.frames[0]?.seq, lastSeq + 1, 'the first frame is the first event missed')
  const seqs = second.frames.map(frame => frame.seq ?? -1)
  t.same(seqs, [...seqs].sort((x, y) => x - y), 'in seq order')
  t.same([...messagesOf(first.frames), ...messagesOf(second.frames)], steps(8), 'every message exactly once across the two nodes')
  t.match(second.frames.at(-1), { type: 'status', status: 'succeeded', task: { outputs: { done: 8 } } })
})

t.test('SSE Last-Event-ID on another API node resumes the same way', async (t) => {
  const redis = await startRedis(t)
  const { a, b } = await deployment(t, redis)
  const { uuid } = await a.app.tasks.submit('steps', { steps: 6, delay: 40 })
  const onA = follow(`ws://${a.base}/tasks/${uuid}/events`)
  await until('two steps on node A', () => messagesOf(onA.frames).length >= 2)
  onA.socket.close()
  await onA.closed
  const lastSeq = Math.max(...onA.frames.map(frame => frame.seq ?? -1))
  const text = await new Promise<string>((resolve, reject) => {
    const req = request(`http://${b.base}/tasks/${uuid}/events`, { headers: { accept: 'text/event-stream', 'last-event-id': String(lastSeq) } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve(body))
    })
    req.on('error', reject)
    req.end()
  })
  const frames = text.split('\n\n').flatMap(block => block.split('\n').filter(line => line.startsWith('data: ')).map(line => JSON.parse(line.slice(6)) as Frame))
  t.notOk(frames.some(frame => frame.type === 'snapshot'), 'no snapshot')
  t.equal(frames[0]?.seq, lastSeq + 1)
  t.same([...messagesOf(onA.frames), ...messagesOf(frames)], steps(6))
  t.match(frames.at(-1), { type: 'status', status: 'succeeded' })
})

t.test('Redis stopped and started under followed tasks: the streams say so, then catch up by themselves and end with the final status', async (t) => {
  const redis = await startRedis(t, { persist: true })
  const { a } = await deployment(t, redis)
  const gate = gatePath()
  t.teardown(() => import('node:fs').then(fs => fs.rmSync(gate, { force: true })))
  const { uuid } = await a.app.tasks.submit('steps', { steps: 30, delay: 50, gate })
  const { single, many } = await followBoth(a.base, uuid)
  writeFileSync(gate, '')
  await until('two steps', () => messagesOf(single.frames).length >= 2)
  await redis.stop('term')
  const interrupted = (frames: Frame[]): boolean => frames.some(frame => frame.type === 'error' && frame.code === 'FST_TASK_API_EVENTS_INTERRUPTED')
  await until('both clients to be told', () => interrupted(single.frames) && interrupted(many.frames))
  t.match(single.frames.find(frame => frame.type === 'error'), { uuid, code: 'FST_TASK_API_EVENTS_INTERRUPTED', message: /lost its connection to Redis/ })
  await redis.start()
  const closed = await single.closed
  t.equal(closed.code, 1000, 'the single-task socket ends as the task finished')
  await until('the final status on the multiplexed socket', () => many.frames.some(frame => frame.type === 'status' && frame.status === 'succeeded'))
  many.socket.close()
  for (const [name, frames] of [['single', single.frames], ['multiplexed', many.frames]] as const) {
    const seqs = frames.filter(frame => frame.seq !== undefined).map(frame => frame.seq as number)
    t.same(seqs, [...seqs].sort((x, y) => x - y), `${name}: seqs only grow (${seqs.join(',')})`)
    const final = frames.findLast(frame => frame.type === 'status') as { task: TaskState } | undefined
    t.match(final?.task, { status: 'succeeded', outputs: { done: 30 } }, `${name}: the final record`)
    // What the client knows at the end is the whole run: frames, or a snapshot that caught up.
    t.same(knownMessages(frames), steps(30), `${name}: every message, once`)
  }
})

for (const historySize of [512, 0]) {
  const how = historySize > 0 ? 'from the history in Redis' : 'from a snapshot (history off)'
  t.test(`a node whose pub/sub connection is cut misses events while it reconnects; its stream catches up ${how}`, async (t) => {
    const redis = await startRedis(t)
    const prefix = `{streams-${randomUUID().slice(0, 8)}}`
    const worker = await startWorker({ redis: { connection: redis.url, prefix }, tasks: [fixture('stream.ts')], concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200 })
    t.teardown(() => worker.close())
    const a = await serve(t, { redis: { connection: redis.url, prefix }, concurrency: 0, streams: { historySize } })
    const gate = gatePath()
    t.teardown(() => import('node:fs').then(fs => fs.rmSync(gate, { force: true })))
    const { uuid } = await a.app.tasks.submit('steps', { steps: 40, delay: 25, gate })
    const client = follow(`ws://${a.base}/tasks/${uuid}/events`)
    await until('the snapshot', () => client.frames.length > 0)
    writeFileSync(gate, '')
    await until('two steps', () => messagesOf(client.frames).length >= 2)
    // Only the node's subscriber goes: Redis stays up, the worker goes on publishing.
    const { Redis } = await import('ioredis')
    const admin = new Redis(redis.url)
    t.teardown(() => admin.quit())
    await admin.client('KILL', 'TYPE', 'pubsub')
    const closed = await client.closed
    t.equal(closed.code, 1000)
    t.ok(client.frames.some(frame => frame.code === 'FST_TASK_API_EVENTS_INTERRUPTED'), 'the client was told')
    const seqs = client.frames.filter(frame => frame.seq !== undefined).map(frame => frame.seq as number)
    t.same(seqs, [...seqs].sort((x, y) => x - y), 'seqs only grow')
    const snapshots = client.frames.filter(frame => frame.type === 'snapshot').length
    if (historySize > 0) t.equal(snapshots, 1, 'only the first snapshot: the missed events came from the history')
    t.same(knownMessages(client.frames), steps(40), 'every message, once')
    t.match(client.frames.at(-1), { type: 'status', status: 'succeeded' })
  })
}

t.test('a node whose pub/sub connection is cut again and again (every 100 to 300 ms) still gives its clients every message once and the final status', async (t) => {
  const redis = await startRedis(t)
  const prefix = `{streams-${randomUUID().slice(0, 8)}}`
  const worker = await startWorker({ redis: { connection: redis.url, prefix }, tasks: [fixture('stream.ts')], concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200 })
  t.teardown(() => worker.close())
  const a = await serve(t, { redis: { connection: redis.url, prefix }, concurrency: 0, streams: { historySize: 64 } })
  const gate = gatePath()
  t.teardown(() => import('node:fs').then(fs => fs.rmSync(gate, { force: true })))
  const stepCount = 150
  const { uuid } = await a.app.tasks.submit('steps', { steps: stepCount, delay: 15, gate })
  const { single, many } = await followBoth(a.base, uuid)
  writeFileSync(gate, '')
  const { Redis } = await import('ioredis')
  const admin = new Redis(redis.url)
  t.teardown(() => admin.quit())
  let kills = 0
  let ended = false
  void single.closed.then(() => { ended = true })
  while (!ended) {
    await new Promise(resolve => setTimeout(resolve, 100 + Math.random() * 200))
    if (!ended) {
      await admin.client('KILL', 'TYPE', 'pubsub')
      kills++
    }
  }
  await until('the final status on the multiplexed socket', () => many.frames.some(frame => frame.type === 'status' && frame.status === 'succeeded'), 30_000)
  many.socket.close()
  t.ok(kills >= 3, `the connection was cut ${kills} times`)
  for (const [name, frames] of [['single', single.frames], ['multiplexed', many.frames]] as const) {
    const seqs = frames.filter(frame => frame.seq !== undefined).map(frame => frame.seq as number)
    t.same(seqs, [...seqs].sort((x, y) => x - y), `${name}: seqs only grow`)
    t.same(knownMessages(frames), steps(stepCount), `${name}: every message, once`)
    t.match(frames.findLast(frame => frame.type === 'status'), { status: 'succeeded' })
  }
})

t.test('app.tasks.wait() on an API node resolves even when the final event came while its pub/sub connection was cut', async (t) => {
  const redis = await startRedis(t)
  const prefix = `{streams-${randomUUID().slice(0, 8)}}`
  const worker = await startWorker({ redis: { connection: redis.url, prefix }, tasks: [fixture('stream.ts')], concurrency: 2, execArgv: childExecArgv, shutdownTimeout: 200 })
  t.teardown(() => worker.close())
  const a = await serve(t, { redis: { connection: redis.url, prefix }, concurrency: 0 })
  const { Redis } = await import('ioredis')
  const admin = new Redis(redis.url)
  t.teardown(() => admin.quit())
  // Tasks end while the node's subscriber is cut every 10 to 40 ms: some final events
  // are published while it is away.
  let cutting = true
  const cutter = (async () => {
    while (cutting) {
      await admin.client('KILL', 'TYPE', 'pubsub').catch(() => {})
      await new Promise(resolve => setTimeout(resolve, 10 + Math.random() * 30))
    }
  })()
  const ends = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
    const { uuid } = await a.app.tasks.submit('steps', { steps: 2, delay: 20 + i * 10 })
    return await Promise.race([a.app.tasks.wait(uuid), new Promise(resolve => setTimeout(() => resolve('still waiting after 30 s'), 30_000).unref())])
  }))
  cutting = false
  await cutter
  t.same(ends.map(end => (end as TaskState).status ?? end), Array.from({ length: 20 }, () => 'succeeded'))
})
