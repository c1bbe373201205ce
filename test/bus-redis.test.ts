import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import { RedisBus } from '../dist/redis/bus.js'
import type { TaskEvent } from '../dist/index.js'
import { startRedis } from './redis-server.js'
import { until } from './helpers.js'

// The Redis event bus: two buses on one redis-server stand for two servers. An event
// published on one reaches the subscribers of its task on both, in publishing order.

const redis = await startRedis(t)

async function openBus (t: Test, prefix: string): Promise<RedisBus> {
  const bus = new RedisBus({ connection: redis.url, prefix })
  t.teardown(() => bus.close())
  await bus.start(() => {})
  return bus
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
  await bus.start(err => errors.push(err))
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
  await bus.start(() => {})
  t.equal(bus.channel, '{fastify-task-api}:events')
  await t.resolves(bus.close())
  await t.resolves(bus.close())
  t.throws(() => new RedisBus(null as never), { name: 'TypeError', message: 'options must be an object with a connection, got null' })
  t.throws(() => new RedisBus({ connection: redis.url, prefix: '' }), { name: 'TypeError', message: 'options.prefix must be a non-empty string, got ""' })
})
