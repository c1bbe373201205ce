import t from 'tap'
import { MemoryStore } from '../dist/index.js'
import type { ListFilter, TaskRecord, TaskStatus } from '../dist/index.js'
import { build, fixture } from './helpers.js'
import { newRecord } from './store-contract.js'

// The memory store: a page of a list costs the same however many records there are, and
// memory stays bounded: finished records drop their inputs and are evicted past
// maxFinished or maxBytes, oldest finished first; live tasks never are.

/** Records that count every read of their fields while `counting` is on: what a store looks at. */
function instrumented () {
  const seen = new Set<object>()
  const probe = { counting: false, reads: 0, visited: () => seen.size, reset () { seen.clear(); this.reads = 0 } }
  const wrap = (record: TaskRecord): TaskRecord => {
    const proxy: TaskRecord = new Proxy(record, {
      get (target, key, receiver) {
        if (probe.counting) {
          probe.reads++
          seen.add(proxy)
        }
        return Reflect.get(target, key, receiver)
      },
    })
    return proxy
  }
  return { probe, wrap }
}

const owners = [null, 'ann', 'ben', 'cat']
const taskNames = ['hello', 'sleep', 'raises']
const statusesUsed: TaskStatus[] = ['pending', 'running', 'succeeded', 'failed', 'cancelled']

/**
 * A store of `n` records: the oldest ten belong to "rare" (a filter that a scan would
 * have to walk the whole store to fill), the rest spread over owners, tasks and statuses.
 */
async function filled (n: number) {
  const { probe, wrap } = instrumented()
  const store = new MemoryStore({ maxFinished: 1_000_000 })
  const all: TaskRecord[] = []
  for (let i = 0; i < n; i++) {
    const rare = i < 10
    const record = wrap(newRecord({ owner: rare ? 'rare' : owners[i % 4] as string | null, task: rare ? 'rare-task' : taskNames[i % 3] as string }))
    await store.create(record)
    all.push(record)
  }
  // Status changes after creation, as a task's would: the indexes must follow them.
  for (let i = 0; i < n; i++) {
    const status = statusesUsed[(i * 7) % 5] as TaskStatus
    if (status !== 'pending') await store.update((all[i] as TaskRecord).uuid, { status: 'running' })
    if (status !== 'pending' && status !== 'running') await store.update((all[i] as TaskRecord).uuid, { status })
  }
  return { store, all, probe }
}

const filters: Array<Omit<ListFilter, 'limit'>> = [
  {},
  { owner: 'ann' },
  { owner: null },
  { status: 'running' },
  { task: 'sleep' },
  { owner: 'ben', status: 'failed' },
  { owner: 'cat', task: 'raises' },
  { status: 'succeeded', task: 'hello' },
  { owner: null, status: 'cancelled', task: 'sleep' },
  { owner: 'rare' },
  { owner: 'rare', status: 'running', task: 'rare-task' },
  { owner: 'nobody' },
]

function expected (all: TaskRecord[], filter: Omit<ListFilter, 'limit'>, limit: number): string[] {
  return all
    .filter(record => (filter.owner === undefined || record.owner === filter.owner) &&
      (filter.status === undefined || record.status === filter.status) &&
      (filter.task === undefined || record.task === filter.task))
    .reverse()
    .slice(0, limit)
    .map(record => record.uuid)
}

t.test('a filtered page visits as many records with 100,000 records as with 1,000', async (t) => {
  const limit = 20
  const visits: Record<number, number[]> = {}
  for (const n of [1_000, 100_000]) {
    const { store, all, probe } = await filled(n)
    visits[n] = []
    for (const filter of filters) {
      // The first list with a new combination of fields builds its indexes, once.
      await store.list({ ...filter, limit })
      probe.reset()
      probe.counting = true
      const page = await store.list({ ...filter, limit })
      probe.counting = false
      visits[n]?.push(probe.visited())
      t.same(page.records.map(record => record.uuid), expected(all, filter, limit), `${n} records, ${JSON.stringify(filter)}: the newest matching, newest first`)
      t.ok(probe.visited() <= limit, `${n} records, ${JSON.stringify(filter)}: visited ${probe.visited()} records for a page of ${limit}`)
    }
    // Other values of fields already indexed cost no new pass: no owner can make the store scan.
    for (const owner of ['dan', 'eve', 'fay']) {
      probe.reset()
      probe.counting = true
      await store.list({ owner, status: 'running', limit })
      probe.counting = false
      t.equal(probe.visited(), 0, `${n} records: a new owner's list visits nothing`)
    }
  }
  t.same(visits[100_000], visits[1_000], 'the same visits, whatever the number of records')
})

t.test('the indexes follow status changes: a list by status is in creation order, not in the order of the changes', async (t) => {
  const store = new MemoryStore()
  await store.list({ status: 'succeeded', owner: 'ann', limit: 10 }) // indexes exist before the records
  const [a, b, c] = [newRecord({ owner: 'ann' }), newRecord({ owner: 'ann' }), newRecord({ owner: 'ann' })]
  for (const record of [a, b, c]) await store.create(record)
  for (const record of [c, a, b]) await store.update(record.uuid, { status: 'running' })
  await store.update(c.uuid, { status: 'succeeded' })
  await store.update(a.uuid, { status: 'succeeded' })
  const uuids = async (filter: Omit<ListFilter, 'limit'>) => (await store.list({ ...filter, limit: 10 })).records.map(record => record.uuid)
  t.same(await uuids({ status: 'succeeded', owner: 'ann' }), [c.uuid, a.uuid])
  t.same(await uuids({ status: 'running' }), [b.uuid])
  t.same(await uuids({ status: 'pending' }), [])
  await store.update(b.uuid, { status: 'pending' }) // a retry
  t.same(await uuids({ status: 'pending', owner: 'ann' }), [b.uuid])
  t.same(await uuids({ owner: 'ann' }), [c.uuid, b.uuid, a.uuid])
})

t.test('evicts the oldest finished records past maxFinished; live tasks never', async (t) => {
  const store = new MemoryStore({ maxFinished: 3 })
  await store.list({ limit: 1 }) // an index, to see eviction keep it right
  const live = [newRecord(), newRecord({ status: 'running' })]
  for (const record of live) await store.create(record)
  const finished: TaskRecord[] = []
  for (let i = 0; i < 6; i++) {
    const record = newRecord()
    await store.create(record)
    await store.update(record.uuid, { status: i % 2 === 0 ? 'succeeded' : 'failed' })
    finished.push(record)
  }
  t.equal(store.size, 5, 'two live, three finished')
  for (const record of finished.slice(0, 3)) t.equal(await store.get(record.uuid), undefined, 'an old finished one is gone')
  for (const record of [...live, ...finished.slice(3)]) t.ok(await store.get(record.uuid), 'kept')
  t.same((await store.list({ limit: 100 })).records.map(record => record.uuid), [...finished.slice(3).reverse(), ...[...live].reverse()].map(record => record.uuid),
    'the list forgets them too')
})

t.test('evicts the oldest finished records past maxBytes of messages, outputs and error; live tasks are never counted nor evicted', async (t) => {
  const store = new MemoryStore({ maxBytes: 20_000 })
  const big = 'x'.repeat(5_000)
  const live = newRecord({ inputs: { huge: big.repeat(20) } })
  await store.create(live)
  await store.update(live.uuid, { status: 'running', messages: Array(20).fill(big) })
  t.equal(store.bytes, 0, 'a live task is not counted')
  const finished: TaskRecord[] = []
  for (let i = 0; i < 10; i++) {
    const record = newRecord()
    await store.create(record)
    const patch = i % 3 === 0 ? { outputs: { output: big } } : i % 3 === 1 ? { messages: [big] } : { error: big }
    await store.update(record.uuid, { status: i % 3 === 2 ? 'failed' : 'succeeded', ...patch })
    finished.push(record)
    t.ok(store.bytes <= 20_000, `${store.bytes} bytes held after ${i + 1} finished`)
  }
  const kept = []
  for (const record of finished) kept.push(await store.get(record.uuid) !== undefined)
  const first = kept.indexOf(true)
  t.ok(first > 0, 'the oldest were evicted')
  t.same(kept, kept.map((_, i) => i >= first), 'the newest are kept, the oldest gone')
  t.ok(kept.filter(Boolean).length >= 3, 'as many as fit')
  t.ok(await store.get(live.uuid), 'the live task is kept, whatever it holds')
  t.equal((await store.get(live.uuid))?.inputs.huge, big.repeat(20), 'with its inputs')

  const huge = newRecord()
  await store.create(huge)
  await store.update(huge.uuid, { status: 'succeeded', outputs: { output: 'y'.repeat(50_000) } })
  t.ok(await store.get(huge.uuid), 'the record that has just finished is kept, even alone over maxBytes')
  t.equal(store.size, 2, 'with the live one; every older finished one is gone')
})

t.test('a finished record drops its inputs', async (t) => {
  const store = new MemoryStore()
  const record = newRecord({ inputs: { secret: 'hunter2', big: 'x'.repeat(1000) } })
  await store.create(record)
  await store.update(record.uuid, { status: 'running' })
  t.same((await store.get(record.uuid))?.inputs, { secret: 'hunter2', big: 'x'.repeat(1000) }, 'kept while it runs')
  await store.update(record.uuid, { status: 'cancelled' })
  t.same((await store.get(record.uuid))?.inputs, {}, 'gone once it has finished')
})

t.test('refuses a bad maxBytes, naming it', async (t) => {
  t.throws(() => new MemoryStore({ maxBytes: 0 }), { name: 'TypeError', message: 'options.maxBytes must be a positive integer, got 0' })
  t.throws(() => new MemoryStore({ maxBytes: 1.5 }), { name: 'TypeError', message: 'options.maxBytes must be a positive integer, got 1.5' })
})

t.test('authorize sees {} as the inputs of a finished task, the real ones while it runs', async (t) => {
  const seen: Array<{ action: string, inputs: unknown }> = []
  const app = await build(t, {
    tasks: [fixture('basic.ts')],
    authorize: (_request, { action, inputs }) => { seen.push({ action, inputs: { ...inputs } }); return true },
  }, { pluginTimeout: 120_000 })
  const created = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'secret' } } })
  const { uuid } = created.json()
  await app.tasks.wait(uuid)
  t.equal((await app.inject(`/tasks/${uuid}`)).statusCode, 200)
  t.same(seen, [{ action: 'submit', inputs: { name: 'secret' } }, { action: 'read', inputs: {} }])
})

t.test('a cursor past the safe integers is refused, not rounded', async (t) => {
  const store = new MemoryStore()
  await store.create(newRecord())
  for (const cursor of ['9007199254740993', '9999999999999999']) {
    await t.rejects(store.list({ limit: 10, cursor }), { name: 'InvalidCursorError' }, cursor)
  }
  t.equal((await store.list({ limit: 10, cursor: '9007199254740991' })).records.length, 1, 'the largest safe one is a cursor')
})
