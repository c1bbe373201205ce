import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import { RedisBus } from '../dist/redis/bus.js'
import type { TaskEvent } from '../dist/index.js'
import { startRedis } from './redis-server.js'
import { until } from './helpers.js'
import { Redis } from 'ioredis'

// The Redis event bus: two buses on one redis-server stand for two servers. An event
// published on one reaches the subscribers of its task on both, in publishing order.

const redis = await startRedis(t)

async function openBus (t: Test, prefix: string): Promise<RedisBus> {
  const bus = new RedisBus({ connection: redis.url, prefix })
  t.teardown(() => bus.close())
  await bus.start({ error: () => {} })
  return bus
}

/** A bus whose server keeps a history of `size` events (ttl 3 s): the follower's side. */
function historyOf (t: Test, prefix: string, size: number): NonNullable<RedisBus['history']> {
  const follower = new RedisBus({ connection: redis.url, prefix, history: { size, ttl: 3000 } })
  t.teardown(() => follower.close())
  const history = follower.history
  if (history === undefined) throw new Error('a bus with history options has a history')
  return history
}

const progress = (uuid: string, seq: number): TaskEvent => ({ type: 'progress', uuid, seq, progress: seq, target: null })

t.test('an event published on one server reaches the task\'s subscribers on every server, in order', async (t) => {
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  const a = await openBus(t, prefix)
  const b = await openBus(t, prefix)
  const uuid = randomUUID()
  const other = randomUUID()
  const onA: number[] = []
  const onB: number[] = []
  const onOther: number[] = []
  a.subscribe(uuid, event => onA.push(event.seq))
  b.subscribe(uuid, event => onB.push(event.seq))
  b.subscribe(other, event => onOther.push(event.seq))
  for (let seq = 1; seq <= 2000; seq++) a.publish(progress(uuid, seq), err => t.error(err))
  const final: TaskEvent = { type: 'status', uuid, seq: 2001, status: 'succeeded', task: { uuid, task: 'hello', status: 'succeeded', progress: 1, target: 1, outputs: { list: [], nested: { a: 'é' } }, messages: ['m'], messagesDropped: 0, attempt: 1, created: new Date().toISOString(), started: null, finished: new Date().toISOString(), error: null } }
  // A task's events come from one server at a time (the one running it): order holds per publisher.
  a.publish(final, err => t.error(err))
  await until('both servers to get every event', () => onA.length === 2001 && onB.length === 2001)
  const inOrder = Array.from({ length: 2001 }, (_, i) => i + 1)
  t.same(onA, inOrder, 'the publishing server, through Redis like the others')
  t.same(onB, inOrder, 'the other server')
  t.same(onOther, [], 'another task\'s subscriber gets nothing')
  t.equal(a.size, 1)
  t.equal(b.size, 2)
  t.ok(a.has(), 'any task may have subscribers elsewhere')
})

t.test('a received event is the published one: the final record, whole', async (t) => {
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  const a = await openBus(t, prefix)
  const b = await openBus(t, prefix)
  const uuid = randomUUID()
  const got: TaskEvent[] = []
  b.subscribe(uuid, event => got.push(event))
  const event: TaskEvent = { type: 'message', uuid, seq: 3, message: 'line\nwith "quotes" ✓' }
  a.publish(event, err => t.error(err))
  await until('the event', () => got.length === 1)
  t.same(got, [event])
})

t.test('unsubscribing stops delivery; another prefix is another bus', async (t) => {
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  const a = await openBus(t, prefix)
  const elsewhere = await openBus(t, `{bus-${randomUUID().slice(0, 8)}}`)
  const uuid = randomUUID()
  const got: number[] = []
  const strays: number[] = []
  const off = a.subscribe(uuid, event => got.push(event.seq))
  elsewhere.subscribe(uuid, event => strays.push(event.seq))
  a.publish(progress(uuid, 1), err => t.error(err))
  await until('the first event', () => got.length === 1)
  off()
  a.publish(progress(uuid, 2), err => t.error(err))
  // A marker on another task shows the second event went by.
  const marker = randomUUID()
  const marked: number[] = []
  a.subscribe(marker, event => marked.push(event.seq))
  a.publish(progress(marker, 1), err => t.error(err))
  await until('the marker', () => marked.length === 1)
  t.same(got, [1], 'nothing after unsubscribe')
  t.same(strays, [], 'a bus under another prefix hears nothing')
  t.equal(a.size, 1)
})

t.test('a listener that throws is reported and does not stop the others', async (t) => {
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  const errors: unknown[] = []
  const bus = new RedisBus({ connection: redis.url, prefix })
  t.teardown(() => bus.close())
  await bus.start({ error: err => errors.push(err) })
  const uuid = randomUUID()
  const got: number[] = []
  bus.subscribe(uuid, () => { throw new Error('listener bug') })
  bus.subscribe(uuid, event => got.push(event.seq))
  bus.publish(progress(uuid, 1), err => t.error(err))
  await until('the event', () => got.length === 1)
  t.match(errors, [{ message: 'listener bug' }])
})

t.test('close resolves, twice; options are checked', async (t) => {
  const bus = new RedisBus({ connection: redis.url })
  await bus.start({ error: () => {} })
  t.equal(bus.channel, '{fastify-task-api}:events')
  await t.resolves(bus.close())
  await t.resolves(bus.close())
  t.throws(() => new RedisBus(null as never), { name: 'TypeError', message: 'options must be an object with a connection, got null' })
  t.throws(() => new RedisBus({ connection: redis.url, prefix: '' }), { name: 'TypeError', message: 'options.prefix must be a non-empty string, got ""' })
})

const status = (uuid: string, seq: number): TaskEvent => ({ type: 'status', uuid, seq, status: 'succeeded', task: { uuid, task: 'hello', status: 'succeeded', progress: 1, target: 1, outputs: {}, messages: [], messagesDropped: 0, attempt: 1, created: new Date().toISOString(), started: null, finished: new Date().toISOString(), error: null } })

t.test('history in Redis: a followed task\'s events are kept for a reconnect to any server; unfollowed tasks cost no key', async (t) => {
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  // The follower's server keeps a history; the publisher (a worker) has no history options of its own.
  const history = historyOf(t, prefix, 5)
  const worker = await openBus(t, prefix)
  const client = new Redis(redis.url)
  t.teardown(() => client.quit())
  const unfollowed = randomUUID()
  for (let seq = 1; seq <= 3; seq++) worker.publish(progress(unfollowed, seq), err => t.error(err))
  const uuid = randomUUID()
  await history.watch(uuid)
  for (let seq = 1; seq <= 8; seq++) worker.publish(progress(uuid, seq), err => t.error(err))
  await until('the history to hold the last event', async () => (await history.since(uuid, 7))?.events.length === 1)
  t.same((await history.since(uuid, 3))?.events.map(event => event.seq), [4, 5, 6, 7, 8], 'the events after 3: the list keeps the last 5')
  t.equal(await history.since(uuid, 2), undefined, 'trimmed past 2: it cannot tell (the stream sends a snapshot)')
  t.same(await history.since(uuid, 8), { events: [], ended: false }, 'nothing missed')
  t.equal(await history.since(uuid, 9), undefined, 'a seq it never saw')
  worker.publish(status(uuid, 9), err => t.error(err))
  await until('the final event', async () => (await history.since(uuid, 8))?.ended === true)
  t.same((await history.since(uuid, 8))?.events.map(event => event.type), ['status'])
  const ttl = await client.pttl(`${prefix}:history:${uuid}`)
  t.ok(ttl > 0 && ttl <= 3000, `an ended task's history lives historyTtl (${ttl} ms left)`)
  t.same(await client.keys(`${prefix}:*${unfollowed}`), [], 'a task nobody follows has no history key')
  t.equal(await history.since(unfollowed, 1), undefined)
  await history.forget(uuid)
  t.equal(await history.since(uuid, 8), undefined, 'forgotten (deleted)')
  t.same(await client.keys(`${prefix}:*${uuid}`), [])
  const bare = new RedisBus({ connection: redis.url, prefix })
  t.teardown(() => bare.close())
  t.equal(bare.history, undefined, 'no history options: the bus keeps none')
})

t.test('history in Redis never has a hole: a watch that lapsed and is made anew starts an empty list', async (t) => {
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  const history = historyOf(t, prefix, 100)
  const worker = await openBus(t, prefix)
  const client = new Redis(redis.url)
  t.teardown(() => client.quit())
  const uuid = randomUUID()
  await history.watch(uuid)
  for (let seq = 1; seq <= 3; seq++) worker.publish(progress(uuid, seq), err => t.error(err))
  await until('three events kept', async () => (await history.since(uuid, 0))?.events.length === 3)
  // The watch lapses (as it would after a long silence): event 4 is published unrecorded.
  await client.del(`${prefix}:watch:${uuid}`)
  t.equal(await history.since(uuid, 3), undefined, 'without its watch the list answers nothing: it may miss events')
  worker.publish(progress(uuid, 4), err => t.error(err))
  await history.watch(uuid)
  worker.publish(progress(uuid, 5), err => t.error(err))
  await until('event 5 kept', async () => (await history.since(uuid, 4))?.events.length === 1)
  t.equal(await history.since(uuid, 3), undefined, 'event 4 was not kept: a resume from 3 gets a snapshot, never 5 alone')
  t.same((await history.since(uuid, 4))?.events.map(event => event.seq), [5])
})

t.test('a bus tells its server when it loses Redis and when it listens again; events flow again after', async (t) => {
  const own = await startRedis(t)
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  const calls: string[] = []
  const bus = new RedisBus({ connection: own.url, prefix })
  t.teardown(() => bus.close())
  await bus.start({ error: () => {}, lost: () => calls.push('lost'), restored: () => calls.push('restored') })
  await own.stop('kill')
  await until('the bus to notice', () => calls.length === 1)
  t.same(calls, ['lost'])
  await own.start()
  await until('the bus to listen again', () => calls.length === 2, 20_000)
  t.same(calls, ['lost', 'restored'], 'once each, in order')
  const uuid = randomUUID()
  const got: number[] = []
  bus.subscribe(uuid, event => got.push(event.seq))
  const publisher = new RedisBus({ connection: own.url, prefix })
  t.teardown(() => publisher.close())
  await until('an event published after the restore to arrive', async () => {
    publisher.publish(progress(uuid, got.length + 1), () => {})
    await new Promise(resolve => setTimeout(resolve, 50))
    return got.length > 0
  }, 20_000)
  t.ok(got.length > 0)
})

t.test('a bus made while Redis is away: many callers wait for its first connection without piling up listeners, then work', async (t) => {
  const own = await startRedis(t)
  await own.stop('kill')
  const warnings: string[] = []
  const onWarning = (warning: Error): void => { warnings.push(`${warning.name}: ${warning.message}`) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  const bus = new RedisBus({ connection: own.url, prefix, history: { size: 10, ttl: 3000 } })
  t.teardown(() => bus.close())
  const uuid = randomUUID()
  // 30 callers while nothing listens on the port: each waits for the first connection
  // (2 s at most), then fails fast.
  const outcomes = await Promise.allSettled(Array.from({ length: 30 }, async () => await bus.history!.watch(uuid)))
  t.equal(outcomes.filter(outcome => outcome.status === 'rejected').length, 30, 'every call failed: Redis is away')
  await new Promise(resolve => setImmediate(resolve))
  t.same(warnings.filter(warning => /MaxListeners/.test(warning)), [], 'no MaxListenersExceededWarning')
  await own.start()
  await until('the history to answer once Redis is there', async () => {
    try {
      await bus.history!.watch(uuid)
      return true
    } catch {
      return false
    }
  }, 20_000)
  t.equal(await bus.history!.since(uuid, 0), undefined, 'an empty history answers nothing')
})

t.test('history in Redis answers nothing across a gap in seqs (an event that could not be published)', async (t) => {
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  const history = historyOf(t, prefix, 100)
  const worker = await openBus(t, prefix)
  const uuid = randomUUID()
  await history.watch(uuid)
  for (const seq of [1, 2, 4, 5]) worker.publish(progress(uuid, seq), err => t.error(err))
  await until('four events kept', async () => (await history.since(uuid, 4))?.events.length === 1)
  t.equal(await history.since(uuid, 0), undefined, 'from 0: event 3 is missing')
  t.equal(await history.since(uuid, 2), undefined, 'from 2: the same')
  t.same((await history.since(uuid, 3))?.events.map(event => event.seq), [4, 5], 'from 3: nothing missing')
})

t.test('an event published while Redis is away is sent again once it is back, in order with the task\'s next ones', async (t) => {
  const own = await startRedis(t, { persist: true })
  const prefix = `{bus-${randomUUID().slice(0, 8)}}`
  const follower = new RedisBus({ connection: own.url, prefix, history: { size: 100, ttl: 60_000 } })
  t.teardown(() => follower.close())
  const history = follower.history
  if (history === undefined) throw new Error('a bus with history options has a history')
  const publisher = new RedisBus({ connection: own.url, prefix })
  t.teardown(() => publisher.close())
  const uuid = randomUUID()
  // The follower's connection is fail-fast: the watch waits until it is connected.
  await until('the watch', async () => history.watch(uuid).then(() => true, () => false))
  publisher.publish(progress(uuid, 1), err => t.error(err))
  await until('event 1 kept', async () => (await history.since(uuid, 0))?.events.length === 1)
  await own.stop('term')
  const errors: unknown[] = []
  for (let seq = 2; seq <= 4; seq++) publisher.publish(progress(uuid, seq), err => errors.push(err))
  await new Promise(resolve => setTimeout(resolve, 300))
  await own.start()
  publisher.publish(progress(uuid, 5), err => errors.push(err))
  await until('every event kept', async () => (await history.since(uuid, 0).catch(() => undefined))?.events.length === 5, 20_000)
  t.same((await history.since(uuid, 0))?.events.map(event => event.seq), [1, 2, 3, 4, 5], 'all of them, in order')
  t.same(errors, [], 'none given up')
})
