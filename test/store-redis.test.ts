import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { RedisStore } from '../dist/redis/index.js'
import type { TaskRecord } from '../dist/index.js'
import { startRedis } from './redis-server.js'
import { fenceContract, newRecord, storeContract, writeIdContract } from './store-contract.js'

// The Redis store: the contract, against a real redis-server of the test's own, each test
// under a prefix of its own; then what Redis adds: keys under the prefix only, a client
// of the app's own left open, fast 503s while Redis is away, and recovery.

const redis = await startRedis(t)

const prefixes: string[] = []
function openStore (t: Test, options: Partial<ConstructorParameters<typeof RedisStore>[0]> = {}): RedisStore {
  const prefix = `{test-${randomUUID().slice(0, 8)}}`
  prefixes.push(prefix)
  const store = new RedisStore({ connection: redis.url, prefix, ...options })
  t.teardown(() => store.close())
  return store
}

storeContract(t, 'RedisStore', t => openStore(t))
fenceContract(t, 'RedisStore', t => openStore(t))
writeIdContract(t, 'RedisStore', t => openStore(t))

t.test('every key is under the prefix, and a removed record leaves no key behind', async (t) => {
  const store = openStore(t)
  const client = new Redis(redis.url)
  t.teardown(() => client.quit())
  const records = [newRecord({ owner: 'ann', messages: ['a'] }), newRecord({ status: 'running' }), newRecord()]
  for (const record of records) await store.create(record)
  await store.update(records[0]!.uuid, { status: 'succeeded', finished: new Date().toISOString(), seq: 1, messages: ['b'] })
  const keys = await client.keys('*')
  t.ok(keys.length > 0)
  const stray = keys.filter(key => !prefixes.some(prefix => key.startsWith(`${prefix}:`)))
  t.same(stray, [], 'no key outside the stores\' prefixes')
  const mine = keys.filter(key => key.startsWith(`${store.prefix}:`))
  t.ok(mine.some(key => key === `${store.prefix}:l:"ann":"succeeded":"hello"`), 'an index per combination of owner, status and task')
  for (const record of records) t.equal(await store.delete(record.uuid), true)
  const left = (await client.keys(`${store.prefix}:*`)).sort()
  t.same(left, [`${store.prefix}:id`], 'only the creation counter is left')
})

t.test('outputs and inputs keep empty arrays and objects apart (they are never decoded by Lua)', async (t) => {
  const store = openStore(t)
  const record = newRecord({ inputs: { list: [], map: {} }, outputs: { list: [], map: {}, deep: [[], {}] } })
  await store.create(record)
  t.same((await store.get(record.uuid))?.inputs, { list: [], map: {} })
  const updated = await store.update(record.uuid, { outputs: { empty: [], also: {} } })
  t.same(updated?.outputs, { empty: [], also: {} })
  t.same((await store.get(record.uuid))?.outputs, { empty: [], also: {} })
})

t.test('a client of the app\'s own is used as it is and left open by close()', async (t) => {
  const client = new Redis(redis.url)
  t.teardown(() => client.quit())
  const store = new RedisStore({ connection: client, prefix: `{test-${randomUUID().slice(0, 8)}}` })
  const record = newRecord()
  await store.create(record)
  t.equal((await store.get(record.uuid))?.uuid, record.uuid)
  await store.close()
  t.equal(await client.ping(), 'PONG', 'still open')
})

t.test('options are checked', async (t) => {
  t.throws(() => new RedisStore(undefined as never), { name: 'TypeError', message: 'options must be an object with a connection, got undefined' })
  t.throws(() => new RedisStore({ connection: redis.url, prefix: '' }), { name: 'TypeError', message: 'options.prefix must be a non-empty string, got ""' })
  t.throws(() => new RedisStore({ connection: redis.url, commandTimeout: 0 }), { name: 'TypeError', message: 'options.commandTimeout must be a positive integer (ms), got 0' })
  t.throws(() => new RedisStore({ connection: 42 as never }), { name: 'TypeError', message: 'options.connection must be a redis:// URL, ioredis options or an ioredis client, got 42' })
})

t.test('while Redis is away every call fails fast with StoreUnavailableError; once it is back, the store works again by itself', async (t) => {
  const own = await startRedis(t, { persist: true })
  const store = new RedisStore({ connection: own.url, prefix: '{away}' })
  t.teardown(() => store.close())
  const kept = newRecord()
  await store.create(kept)
  await own.stop('kill')
  const started = Date.now()
  const calls = [store.get(kept.uuid), store.create(newRecord()), store.update(kept.uuid, { progress: 1 }), store.list({ limit: 1 }), store.live(), store.delete(kept.uuid), store.expire('succeeded', new Date().toISOString(), 1)]
  const results = await Promise.allSettled(calls)
  const elapsed = Date.now() - started
  t.same(results.map(result => result.status), calls.map(() => 'rejected'), 'every call rejects')
  for (const result of results) {
    t.match((result as PromiseRejectedResult).reason, { name: 'StoreUnavailableError', storeUnavailable: true, message: /^the Redis store cannot be reached: / })
  }
  t.ok(elapsed < 3000, `within the command timeout, not hanging (${elapsed} ms)`)
  await own.start()
  let back: Readonly<TaskRecord> | undefined
  const deadline = Date.now() + 20_000
  while (back === undefined && Date.now() < deadline) {
    back = await store.get(kept.uuid).catch(() => undefined)
    if (back === undefined) await new Promise(resolve => setTimeout(resolve, 100))
  }
  t.equal(back?.uuid, kept.uuid, 'reconnected by itself, with the record Redis kept (append-only file)')
})

t.test('one server per store: a second one waits for the lease, then fails naming the holder; it gets it once the first closes', async (t) => {
  const prefix = `{lease-${randomUUID().slice(0, 8)}}`
  // A lease of 2 s, renewed every 667 ms: a loaded machine may delay a renewal by a few
  // hundred ms without the lease lapsing (with 300 ms it lapsed under load).
  const first = new RedisStore({ connection: redis.url, prefix, leaseTtl: 2000 })
  const second = new RedisStore({ connection: redis.url, prefix, leaseTtl: 2000 })
  t.teardown(async () => { await first.close(); await second.close() })
  await first.open()
  // Longer than the lease's TTL: the first server renews it meanwhile.
  await new Promise(resolve => setTimeout(resolve, 2500))
  await t.rejects(second.open(), { name: 'RedisStoreLockedError', message: new RegExp(`^the Redis store \\{lease-[0-9a-f]{8}\\} is in use by another server \\(${process.pid}@`) })
  await first.close()
  await t.resolves(second.open(), 'free once the first closed')
  const shared = new RedisStore({ connection: redis.url, prefix, exclusive: false })
  t.teardown(() => shared.close())
  await t.resolves(shared.open(), 'exclusive: false takes no lease')
})

t.test('a SIGKILLed server\'s lease expires: the next server gets the store within leaseTtl', async (t) => {
  const prefix = `{lease-${randomUUID().slice(0, 8)}}`
  const { spawn } = await import('node:child_process')
  const holder = spawn(process.execPath, ['--input-type=module', '-e', `
    import { RedisStore } from ${JSON.stringify(new URL('../dist/redis/index.js', import.meta.url).href)}
    const store = new RedisStore({ connection: ${JSON.stringify(redis.url)}, prefix: ${JSON.stringify(prefix)}, leaseTtl: 1500 })
    await store.open()
    console.log('leased')
    setInterval(() => {}, 1000)`], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => holder.kill('SIGKILL'))
  await new Promise<void>(resolve => holder.stdout?.on('data', (chunk: Buffer) => { if (chunk.toString().includes('leased')) resolve() }))
  holder.kill('SIGKILL')
  const next = new RedisStore({ connection: redis.url, prefix, leaseTtl: 1500 })
  t.teardown(() => next.close())
  const started = Date.now()
  await t.resolves(next.open())
  t.comment(`the lease was free after ${Date.now() - started} ms`)
})

t.test('leaseTtl is checked', async (t) => {
  t.throws(() => new RedisStore({ connection: redis.url, leaseTtl: 50 }), { name: 'TypeError', message: 'options.leaseTtl must be an integer >= 100 (ms), got 50' })
})

t.test('every ioredis error of a connection that is away counts as "unavailable" (503, writes retried)', async (t) => {
  const { isUnavailable } = await import('../dist/redis/connection.js')
  const errors = await import('ioredis/built/errors/index.js') as unknown as { MaxRetriesPerRequestError: new (n: number) => Error }
  t.ok(isUnavailable(new errors.MaxRetriesPerRequestError(1)), 'MaxRetriesPerRequestError (its message names no error class)')
  t.ok(isUnavailable(new Error('Connection is closed.')))
  t.ok(isUnavailable(new Error('OOM command not allowed when used memory > \'maxmemory\'.')))
  t.notOk(isUnavailable(new Error('ERR wrong number of arguments')), 'a command error is not')
})
