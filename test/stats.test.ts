import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { MemoryStore, type Store, type TaskApiOptions, type TaskRecord } from '../dist/index.js'
import { RedisStore } from '../dist/redis/index.js'
import { SqliteStore } from '../dist/store/sqlite.js'
import { finishedSinceQuery } from '../dist/store/sqlite-schema.js'
import { build, fixture } from './helpers.js'
import { startRedis } from './redis-server.js'
import { newRecord } from './store-contract.js'

// GET /tasks/stats: tasks finished per minute by final status, and durations per task,
// read from the store's index of finished records, on each store, by a clock the test
// sets. It exists when the list does, and counts what the list would show.

const redis = await startRedis(t)

type Factory = (t: Test) => Store
const stores: Array<[string, Factory]> = [
  ['MemoryStore', () => new MemoryStore()],
  ['SqliteStore', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'task-api-stats-'))
    // Teardowns run last first: the app (and the store with it) closes before this.
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    return new SqliteStore({ path: join(dir, 'tasks.db') })
  }],
  ['RedisStore', () => new RedisStore({ connection: redis.url, prefix: `{stats-${randomUUID().slice(0, 8)}}` })],
]

/** The test's clock: 12:30:25 on a day, so the current minute is 12:30. */
const now = Date.parse('2026-03-01T12:30:25.000Z')
const at = (time: string): number => Date.parse(`2026-03-01T${time}Z`)
const iso = (ms: number): string => new Date(ms).toISOString()

/** An app on `store` whose clock stands at `now`, the inline runner, the list on. */
async function app (t: Test, store: Store, options: Partial<TaskApiOptions> = {}): Promise<FastifyInstance> {
  return build(t, { tasks: [fixture('basic.ts')], runner: 'inline', store, clock: () => now, list: true, ...options })
}

interface Finish { task?: string, status: 'succeeded' | 'failed' | 'cancelled', finished: number, duration?: number, owner?: string | null }

/**
 * Records that finished as told, written to the store as the service would have left
 * them (`started` `duration` ms before `finished`, none without a duration). Half of them
 * go in, then an expire that removes nothing, then the rest: a store that files finished
 * records in its index later (SQLite) has both kinds.
 */
async function finish (store: Store, finishes: Finish[]): Promise<void> {
  const records = finishes.map(({ task = 'hello', status, finished, duration, owner = null }) => newRecord({
    task,
    status,
    owner,
    inputs: {},
    attempt: duration === undefined ? 0 : 1,
    created: iso(finished - (duration ?? 0) - 1000),
    started: duration === undefined ? null : iso(finished - duration),
    finished: iso(finished),
  }))
  const half = Math.ceil(records.length / 2)
  await createAll(store, records.slice(0, half))
  await store.expire('succeeded', '2000-01-01T00:00:00.000Z', 1)
  await createAll(store, records.slice(half))
}

/** Creates records 500 at a time: many at once, never thousands of commands waiting on one connection. */
async function createAll (store: Store, records: TaskRecord[]): Promise<void> {
  for (let i = 0; i < records.length; i += 500) await Promise.all(records.slice(i, i + 500).map(record => store.create(record)))
}

interface Stats {
  from: string
  to: string
  minutes: Array<{ start: string, succeeded: number, failed: number, cancelled: number }>
  durations: Array<{ task: string, count: number, p50: number, p95: number }>
  truncated: boolean
}

async function stats (t: Test, app: FastifyInstance, query = '', headers: Record<string, string> = {}): Promise<Stats> {
  const res = await app.inject({ url: `/tasks/stats${query}`, headers })
  t.equal(res.statusCode, 200, `GET /tasks/stats${query}: 200`)
  return res.json() as Stats
}

/** The counts of each minute, as [succeeded, failed, cancelled]. */
const counts = (answer: Stats): number[][] => answer.minutes.map(minute => [minute.succeeded, minute.failed, minute.cancelled])

for (const [name, factory] of stores) {
  t.test(`${name}: counts the tasks finished each minute by final status, and the p50 and p95 durations per task`, async (t) => {
    const store = factory(t)
    const server = await app(t, store)
    // hello: 20 runs of 100, 200, ... 2000 ms, every 12 s from 12:26:00 (five a minute,
    // every fourth one failed).
    const hello: Finish[] = Array.from({ length: 20 }, (_, i) => ({ status: (i + 1) % 4 === 0 ? 'failed' : 'succeeded', finished: at('12:26:00') + i * 12_000, duration: (i + 1) * 100 }))
    await finish(store, [
      ...hello,
      { task: 'alpha', status: 'succeeded', finished: at('12:28:30'), duration: 7 },
      { task: 'sleep', status: 'succeeded', finished: at('12:30:05'), duration: 42 },
      { task: 'sleep', status: 'cancelled', finished: at('12:29:59.999'), duration: 5000 }, // cancelled: no duration
      { task: 'edge', status: 'succeeded', finished: at('12:25:59.999') }, // before the window
      { task: 'edge', status: 'succeeded', finished: at('12:26:00.000') }, // its first millisecond
      { task: 'edge', status: 'succeeded', finished: now }, // now
      { task: 'edge', status: 'succeeded', finished: now + 1 }, // after now: another server's clock
      { task: 'edge', status: 'cancelled', finished: at('12:30:00.000') },
    ])
    for (const record of [newRecord(), newRecord({ status: 'running', started: iso(at('12:27:00')) })]) await store.create(record)

    const answer = await stats(t, server, '?minutes=5')
    t.equal(answer.from, '2026-03-01T12:26:00.000Z', 'from: the start of the first minute')
    t.equal(answer.to, '2026-03-01T12:30:25.000Z', 'to: now')
    t.same(answer.minutes.map(minute => minute.start), ['12:26', '12:27', '12:28', '12:29', '12:30'].map(time => `2026-03-01T${time}:00.000Z`), 'five minutes, the current one last')
    t.same(counts(answer), [[5, 1, 0], [4, 1, 0], [5, 1, 0], [3, 2, 1], [2, 0, 1]], '[succeeded, failed, cancelled] each minute')
    t.same(answer.durations, [
      { task: 'alpha', count: 1, p50: 7, p95: 7 },
      { task: 'hello', count: 20, p50: 1000, p95: 1900 },
      { task: 'sleep', count: 1, p50: 42, p95: 42 },
    ], 'by task name; succeeded and failed runs that started (nearest rank: the 10th and 19th of 20)')
    t.equal(answer.truncated, false)

    const hour = await stats(t, server)
    t.equal(hour.minutes.length, 60, 'an hour by default')
    t.equal(hour.from, '2026-03-01T11:31:00.000Z')
    t.same(counts(hour).slice(-5), counts(answer), 'the same last five minutes')
    t.same(counts(hour)[54], [1, 0, 0], 'and the one before, 12:25')
    t.same(counts(hour).slice(0, 54).flat().filter(n => n !== 0), [], 'nothing earlier')
    t.same(counts(await stats(t, server, '?minutes=1')), [[2, 0, 1]], 'one minute: the current one')
    t.same((await stats(t, server, '?minutes=1')).durations, [{ task: 'sleep', count: 1, p50: 42, p95: 42 }])
    const day = await stats(t, server, '?minutes=1440')
    t.equal(day.minutes.length, 1440, 'a day at most')
    t.equal(day.from, '2026-02-28T12:31:00.000Z')
    t.equal((await server.inject('/tasks/stats/?minutes=5')).json().from, answer.from, 'with a trailing slash too')

    const res = await server.inject('/tasks/stats')
    t.equal(res.headers['cache-control'], 'no-cache', 'the same for everyone: no-cache')
    t.match(res.headers['content-type'], /^application\/json/)
  })

  t.test(`${name}: with owner, only the requester's own tasks count`, async (t) => {
    const store = factory(t)
    const server = await app(t, store, { owner: request => (request.headers['x-user'] as string | undefined) ?? null })
    await finish(store, [
      { owner: 'ann', status: 'succeeded', finished: at('12:30:01'), duration: 10 },
      { owner: 'ann', status: 'failed', finished: at('12:29:01'), duration: 30 },
      { owner: 'ben', status: 'succeeded', finished: at('12:30:02'), duration: 1000 },
      { owner: 'ben', status: 'cancelled', finished: at('12:29:02') },
      { owner: 'ben', task: 'secret', status: 'succeeded', finished: at('12:30:03'), duration: 5 },
      { owner: null, status: 'succeeded', finished: at('12:30:04'), duration: 2 },
    ])
    const ann = await stats(t, server, '?minutes=2', { 'x-user': 'ann' })
    t.same(counts(ann), [[0, 1, 0], [1, 0, 0]], 'ann: hers')
    t.same(ann.durations, [{ task: 'hello', count: 2, p50: 10, p95: 30 }])
    const ben = await stats(t, server, '?minutes=2', { 'x-user': 'ben' })
    t.same(counts(ben), [[0, 0, 1], [2, 0, 0]], 'ben: his')
    t.same(ben.durations, [{ task: 'hello', count: 1, p50: 1000, p95: 1000 }, { task: 'secret', count: 1, p50: 5, p95: 5 }])
    const nobody = await stats(t, server, '?minutes=2')
    t.same(counts(nobody), [[0, 0, 0], [1, 0, 0]], 'no owner: the tasks without one, as the list shows')
    t.same(counts(await stats(t, server, '?minutes=2', { 'x-user': 'cat' })), [[0, 0, 0], [0, 0, 0]], 'someone without tasks: none')
    const res = await server.inject({ url: '/tasks/stats', headers: { 'x-user': 'ann' } })
    t.equal(res.headers['cache-control'], 'private, no-cache', 'per user: never in a shared cache')
  })

  t.test(`${name}: with authorize, only the tasks it lets the request read count`, async (t) => {
    const store = factory(t)
    const asked: Array<{ action: string, task: string, status: string | undefined }> = []
    const server = await app(t, store, {
      authorize: (request, { action, task, record }) => {
        asked.push({ action, task, status: record?.status })
        return task !== 'secret' || request.headers['x-admin'] === 'yes'
      },
    })
    await finish(store, [
      { status: 'succeeded', finished: at('12:30:01'), duration: 10 },
      { task: 'secret', status: 'succeeded', finished: at('12:30:02'), duration: 20 },
      { task: 'secret', status: 'failed', finished: at('12:29:02'), duration: 30 },
      { task: 'secret', status: 'cancelled', finished: at('12:29:03') },
    ])
    const user = await stats(t, server, '?minutes=2')
    t.same(counts(user), [[0, 0, 0], [1, 0, 0]], 'the secret task left out')
    t.same(user.durations, [{ task: 'hello', count: 1, p50: 10, p95: 10 }])
    t.same(asked.map(({ action }) => action), ['read', 'read', 'read', 'read'], 'asked to read each record')
    t.same(asked.map(({ status }) => status).sort(), ['cancelled', 'failed', 'succeeded', 'succeeded'], 'with the record')
    const admin = await stats(t, server, '?minutes=2', { 'x-admin': 'yes' })
    t.same(counts(admin), [[0, 1, 1], [2, 0, 0]], 'an admin: all of them')
    t.same(admin.durations.map(({ task, count }) => [task, count]), [['hello', 1], ['secret', 2]])
    t.equal((await server.inject('/tasks/stats')).headers['cache-control'], 'private, no-cache')
  })

  t.test(`${name}: truncated once a status has more than 10,000 tasks in the window; the oldest are left out`, async (t) => {
    const store = factory(t)
    const server = await app(t, store)
    const many: Finish[] = Array.from({ length: 10_000 }, (_, i) => ({ status: 'succeeded', finished: at('12:30:00') + i, duration: 1 }))
    await finish(store, [...many, { status: 'failed', finished: at('12:26:00'), duration: 3 }])
    const full = await stats(t, server, '?minutes=5')
    t.equal(full.truncated, false, '10,000: all of them')
    t.same(counts(full), [[0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [10_000, 0, 0]])
    await finish(store, [{ status: 'succeeded', finished: at('12:26:30'), duration: 2 }])
    const over = await stats(t, server, '?minutes=5')
    t.equal(over.truncated, true, '10,001: truncated')
    t.same(counts(over), [[0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [10_000, 0, 0]], 'the oldest succeeded one is left out; the failed one still counts')
    t.same(over.durations, [{ task: 'hello', count: 10_001, p50: 1, p95: 1 }])
  })
}

t.test('the runs of real tasks count, by the service clock', async (t) => {
  const server = await app(t, new MemoryStore())
  const uuids = []
  for (const name of ['a', 'b', 'c']) uuids.push((await server.tasks.submit('hello', { name, count: 1 })).uuid)
  uuids.push((await server.tasks.submit('raises', { message: 'no' })).uuid)
  const ended = await Promise.all(uuids.map(uuid => server.tasks.wait(uuid)))
  t.same(ended.map(task => task.status), ['succeeded', 'succeeded', 'succeeded', 'failed'])
  const answer = await stats(t, server, '?minutes=2')
  t.same(counts(answer), [[0, 0, 0], [3, 1, 0]])
  t.same(answer.durations, [{ task: 'hello', count: 3, p50: 0, p95: 0 }, { task: 'raises', count: 1, p50: 0, p95: 0 }], 'the clock stood still')
})

t.test('a minutes that is not an integer from 1 to 1440 answers 400 naming it', async (t) => {
  const server = await app(t, new MemoryStore())
  for (const [query, message] of [
    ['0', 'querystring/minutes must be >= 1'],
    ['1441', 'querystring/minutes must be <= 1440'],
    ['-5', 'querystring/minutes must be >= 1'],
    ['abc', 'querystring/minutes must be integer'],
    ['1.5', 'querystring/minutes must be integer'],
    ['', 'querystring/minutes must be integer'],
  ] as const) {
    const res = await server.inject(`/tasks/stats?minutes=${query}`)
    t.equal(res.statusCode, 400, `minutes=${query}`)
    t.match(res.json(), { statusCode: 400, code: 'FST_ERR_VALIDATION', message }, `minutes=${query}: ${res.json().message}`)
  }
})

t.test('the route exists exactly when the list does, behind the same auth', async (t) => {
  const off = await build(t, { tasks: [fixture('basic.ts')], runner: 'inline' })
  for (const url of ['/tasks/stats', '/tasks/stats/', '/tasks/stats?minutes=5']) {
    const res = await off.inject(url)
    t.equal(res.statusCode, 404, `no list: ${url} 404`)
    t.equal(res.json().minutes, undefined)
  }
  t.equal((await off.inject('/tasks')).statusCode, 404, 'as the list')
  const owner = (): string => 'ann'
  t.equal((await (await build(t, { tasks: [fixture('basic.ts')], runner: 'inline', owner, list: false })).inject('/tasks/stats')).statusCode, 404, 'owner, list: false')
  t.equal((await (await build(t, { tasks: [fixture('basic.ts')], runner: 'inline', owner })).inject('/tasks/stats')).statusCode, 200, 'owner: on')

  const auth = [async (request: { headers: Record<string, unknown> }) => {
    if (request.headers.authorization !== 'Bearer ann') throw new Error('missing or unknown bearer token')
  }]
  const guarded = await build(t, { tasks: [fixture('basic.ts')], runner: 'inline', auth })
  const refused = await guarded.inject('/tasks/stats')
  t.equal(refused.statusCode, 401, 'without credentials: 401, as the list')
  t.match(refused.json(), { code: 'FST_TASK_API_UNAUTHENTICATED', message: 'missing or unknown bearer token' })
  t.equal((await guarded.inject('/tasks')).statusCode, 401)
  const accepted = await guarded.inject({ url: '/tasks/stats?minutes=0', headers: { authorization: 'Bearer ann' } })
  t.equal(accepted.statusCode, 400, 'with them, the query is checked')
  const res = await guarded.inject({ url: '/tasks/stats', headers: { authorization: 'Bearer ann' } })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['cache-control'], 'private, no-cache', 'per user')
})

t.test('SqliteStore reads the retention index for them, newest first, without a sort (EXPLAIN QUERY PLAN)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-stats-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const store = new SqliteStore({ path: join(dir, 'tasks.db') })
  await store.close()
  const file = new Database(join(dir, 'tasks.db'), { readonly: true })
  t.teardown(() => file.close())
  const plan = (sql: string, params: unknown[]): string[] => (file.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as Array<{ detail: string }>).map(row => row.detail)
  t.same(plan(finishedSinceQuery, ['succeeded', iso(now - 3_600_000), '~', Number.MAX_SAFE_INTEGER, 500]), ['SEARCH tasks USING INDEX tasks_expiry (status=? AND finished>? AND finished<?)'], 'the first page')
  t.same(plan(finishedSinceQuery, ['succeeded', iso(now - 3_600_000), iso(now), 1234, 500]), ['SEARCH tasks USING INDEX tasks_expiry (status=? AND finished>? AND finished<?)'], 'a later one')
  t.match(finishedSinceQuery, /'\{\}' AS outputs, .*'\{\}' AS inputs, .* FROM tasks /, 'neither outputs nor inputs are read')
  t.notMatch(finishedSinceQuery, /\bmessages\b(?!_)/, 'nor messages')
})

t.test('requests that ask the same at once share one reading of the store; with authorize each reads its own', async (t) => {
  let reads = 0
  let active = 0
  let mostActive = 0
  class Counting extends MemoryStore {
    override async finishedSince (...args: Parameters<MemoryStore['finishedSince']>) {
      reads++
      mostActive = Math.max(mostActive, ++active)
      try {
        // A turn of the event loop inside, as a store reading pages takes.
        await new Promise(resolve => setImmediate(resolve))
        return await super.finishedSince(...args)
      } finally {
        active--
      }
    }
  }
  const shared = await app(t, new Counting())
  const answers = await Promise.all(Array.from({ length: 5 }, async () => await shared.inject('/tasks/stats')))
  t.same(answers.map(answer => answer.statusCode), [200, 200, 200, 200, 200])
  t.equal(reads, 3, 'five requests, one reading: one call per final status')
  await Promise.all([shared.inject('/tasks/stats?minutes=5'), shared.inject('/tasks/stats?minutes=6')])
  t.equal(reads, 9, 'another window is another reading')
  await shared.inject('/tasks/stats')
  t.equal(reads, 12, 'once answered, a new request reads again')
  reads = 0
  const filtered = await app(t, new Counting(), { authorize: () => true })
  await Promise.all([filtered.inject('/tasks/stats'), filtered.inject('/tasks/stats')])
  t.equal(reads, 6, 'authorize is asked per request: no sharing')
  t.equal(mostActive, 1, 'readings that differ run one after another, never at once')
})
