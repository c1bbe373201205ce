import { randomUUID } from 'node:crypto'
import type { Test } from 'tap'
import { InvalidCursorError } from '../dist/index.js'
import { newRecord as initialRecord } from '../dist/store/types.js'
import type { FinalStatus, ListFilter, Store, TaskRecord, TaskStatus } from '../dist/index.js'

/*
 * The store contract: what every Store does, whatever keeps its records. Each store's
 * test file runs it with a factory (store-memory.test.ts, store-sqlite.test.ts, and the
 * Redis store's later). It uses the port alone, so that a store cannot pass it by
 * anything but behaving as the port says.
 */

/** Makes a fresh, empty store for one test, and registers its own cleanup with `t`. */
export type StoreFactory = (t: Test) => Store | Promise<Store>

/** A new pending record of task `hello`: the service's own initial values, then `fields`. */
export function newRecord (fields: Partial<TaskRecord> = {}): TaskRecord {
  return initialRecord({ uuid: randomUUID(), task: 'hello', inputs: { name: 'x' }, created: new Date().toISOString(), ...fields })
}

/** A fresh copy: what a record holds, whoever else keeps the object. */
const copy = (record: TaskRecord | undefined): TaskRecord | undefined => record === undefined ? undefined : structuredClone(record)

const uuidsOf = (records: ReadonlyArray<Readonly<TaskRecord>>): string[] => records.map(record => record.uuid)

async function listAll (store: Store, filter: Omit<ListFilter, 'limit'>, limit = 1000): Promise<string[]> {
  const uuids: string[] = []
  let cursor: string | undefined
  do {
    const page = await store.list({ ...filter, limit, ...(cursor === undefined ? {} : { cursor }) })
    uuids.push(...uuidsOf(page.records))
    cursor = page.next ?? undefined
  } while (cursor !== undefined)
  return uuids
}

const minutes = (base: number, n: number): string => new Date(base + n * 60_000).toISOString()

export function storeContract (t: Test, name: string, factory: StoreFactory): void {
  t.test(`${name}: create then get answers the record as created; an unknown uuid answers undefined`, async (t) => {
    const store = await factory(t)
    const plain = newRecord()
    const full = newRecord({
      task: 'sleep',
      owner: 'ann',
      status: 'running',
      progress: 0.5,
      target: 1e9,
      outputs: { greeting: 'héllo ✓ 🎉', nested: { list: [1, 'two', null, { three: 3 }] } },
      messages: ['first', 'second\nline', ''],
      messagesDropped: 4,
      attempt: 2,
      started: new Date().toISOString(),
      error: 'the first attempt failed: ✗',
      inputs: { name: 'Zoë', count: 3, flags: [true, false], deep: { a: { b: null } } },
      seq: 7,
    })
    const expected = [copy(plain), copy(full)]
    await store.create(plain)
    await store.create(full)
    t.same(copy(await store.get(plain.uuid)), expected[0])
    t.same(copy(await store.get(full.uuid)), expected[1], 'every field, numbers, nulls, unicode, nested outputs and inputs')
    t.equal(await store.get(randomUUID()), undefined)
    t.equal(await store.get('not a uuid'), undefined)
  })

  t.test(`${name}: update sets every patch field, appends messages then drops the oldest, and answers the record`, async (t) => {
    const store = await factory(t)
    const record = newRecord({ owner: 'ann' })
    await store.create(record)
    const started = new Date().toISOString()
    const running = await store.update(record.uuid, {
      status: 'running',
      progress: 3,
      target: 10,
      outputs: { partial: [1, 2] },
      error: 'a warning',
      attempt: 2,
      started,
      seq: 4,
      messagesDropped: 1,
      messages: ['a', 'b', 'c'],
      trimMessages: 1,
    })
    const expected: TaskRecord = {
      ...copy(record) as TaskRecord,
      status: 'running',
      progress: 3,
      target: 10,
      outputs: { partial: [1, 2] },
      error: 'a warning',
      attempt: 2,
      started,
      seq: 4,
      messagesDropped: 1,
      messages: ['b', 'c'],
    }
    t.same(copy(running), expected, 'the update answers the updated record')
    t.same(copy(await store.get(record.uuid)), expected, 'get answers the same')

    const finished = new Date().toISOString()
    const done = await store.update(record.uuid, { status: 'succeeded', finished, outputs: { result: 'done' }, error: null, progress: 10, seq: 5 })
    t.match(copy(done), { status: 'succeeded', finished, outputs: { result: 'done' }, error: null, progress: 10, target: 10, seq: 5, messages: ['b', 'c'], messagesDropped: 1, attempt: 2, started, owner: 'ann' })
    t.same(copy(await store.get(record.uuid)), copy(done))

    t.same(copy(await store.update(record.uuid, { messages: ['d', 'e', 'f'], trimMessages: 4 })), { ...copy(done), messages: ['f'] },
      'more to drop than there are old messages: the new ones go too, oldest first')
    t.same((await store.update(record.uuid, { trimMessages: 5 }))?.messages, [], 'dropping more than there are leaves none')
    t.same((await store.update(record.uuid, { messages: ['g'] }))?.messages, ['g'], 'and appending goes on')
    t.same((await store.get(record.uuid))?.messages, ['g'])
    t.equal(await store.update(randomUUID(), { status: 'running' }), undefined, 'an unknown uuid answers undefined')
  })

  t.test(`${name}: fields a patch leaves undefined are left as they were`, async (t) => {
    const store = await factory(t)
    const record = newRecord({ status: 'running', error: 'kept', progress: 2 })
    await store.create(record)
    const updated = await store.update(record.uuid, { error: undefined, progress: undefined, seq: 1 })
    t.match(copy(updated), { error: 'kept', progress: 2, seq: 1 })
    t.match(copy(await store.get(record.uuid)), { error: 'kept', progress: 2, seq: 1 })
  })

  t.test(`${name}: a record is right after many updates (300, in turns of one and of many)`, async (t) => {
    const store = await factory(t)
    const record = newRecord()
    await store.create(record)
    const max = 10
    let kept = 0
    let dropped = 0
    let pending: Array<Promise<unknown>> = []
    for (let i = 1; i <= 300; i++) {
      const trim = kept === max ? 1 : 0
      kept += 1 - trim
      dropped += trim
      pending.push(store.update(record.uuid, { status: 'running', progress: i, seq: i, messages: [`message ${i}`], trimMessages: trim, messagesDropped: dropped }))
      // Some turns carry one update, others up to seven of them.
      if (i % 7 === 0 || i < 20) {
        await Promise.all(pending)
        pending = []
      }
    }
    await Promise.all(pending)
    const expected = { status: 'running', progress: 300, seq: 300, messagesDropped: 290, messages: Array.from({ length: 10 }, (_, i) => `message ${291 + i}`) }
    t.match(copy(await store.get(record.uuid)), expected)
    await store.update(record.uuid, { status: 'succeeded', finished: new Date().toISOString(), seq: 301 })
    t.match(copy(await store.get(record.uuid)), { ...expected, status: 'succeeded', seq: 301 }, 'and once finished')
    t.match(copy((await store.list({ limit: 1 })).records[0]), { ...expected, status: 'succeeded', seq: 301 }, 'as listed')
  })

  t.test(`${name}: updates of one record made in one turn are applied in the order they were made`, async (t) => {
    const store = await factory(t)
    const record = newRecord()
    await store.create(record)
    const results = await Promise.all([
      store.update(record.uuid, { status: 'running', messages: ['a'], seq: 1 }),
      store.update(record.uuid, { messages: ['b', 'c'], trimMessages: 1, seq: 2 }),
      store.update(record.uuid, { progress: 1, target: 2, seq: 3 }),
      store.update(record.uuid, { progress: 2, messages: ['d'], seq: 4 }),
      store.update(record.uuid, { status: 'succeeded', finished: new Date().toISOString(), seq: 5 }),
    ])
    const expected = { status: 'succeeded', messages: ['b', 'c', 'd'], progress: 2, target: 2, seq: 5 }
    t.match(copy(results.at(-1)), expected)
    t.match(copy(await store.get(record.uuid)), expected)
    for (const result of results) t.equal(result?.uuid, record.uuid, 'each update answers the record')
  })

  t.test(`${name}: the inputs are kept while the task is live`, async (t) => {
    const store = await factory(t)
    const inputs = { secret: 'hunter2', list: [1, 2, 3], big: 'x'.repeat(5000) }
    const record = newRecord({ inputs })
    await store.create(record)
    await store.update(record.uuid, { status: 'running', seq: 1 })
    for (let i = 0; i < 5; i++) await store.update(record.uuid, { progress: i, messages: [`${i}`], seq: i + 2 })
    await store.update(record.uuid, { status: 'pending', error: 'retrying', seq: 10 }) // a retry
    t.same(copy(await store.get(record.uuid))?.inputs, inputs, 'get')
    t.same(copy((await store.live())[0])?.inputs, inputs, 'live')
    t.same(copy((await store.list({ limit: 1 })).records[0])?.inputs, inputs, 'list')
    await store.update(record.uuid, { status: 'failed', finished: new Date().toISOString(), seq: 11 })
    const after = copy(await store.get(record.uuid))?.inputs
    t.ok(JSON.stringify(after) === JSON.stringify(inputs) || JSON.stringify(after) === '{}', 'once finished, the inputs are kept or dropped ({})')
  })

  t.test(`${name}: list answers the newest first, for each combination of owner, status and task`, async (t) => {
    const store = await factory(t)
    const owners = [null, 'ann', 'ben', 'null']
    const names = ['hello', 'sleep']
    const statuses: TaskStatus[] = ['pending', 'running', 'succeeded', 'failed', 'cancelled']
    const all: TaskRecord[] = []
    for (let i = 0; i < 80; i++) {
      const record = newRecord({ owner: owners[i % 4] as string | null, task: names[i % 3 === 0 ? 1 : 0] as string })
      await store.create(record)
      all.push(record)
    }
    // Statuses change after creation, in another order than creation: a list still sorts by creation.
    for (let i = all.length - 1; i >= 0; i--) {
      const status = statuses[(i * 7) % 5] as TaskStatus
      const record = all[i] as TaskRecord
      if (status !== 'pending') await store.update(record.uuid, { status: 'running' })
      if (status !== 'pending' && status !== 'running') await store.update(record.uuid, { status, finished: new Date().toISOString() })
      record.status = status
    }
    const filters: Array<Omit<ListFilter, 'limit'>> = [{}]
    for (const owner of [undefined, ...owners, 'nobody']) {
      for (const status of [undefined, ...statuses]) {
        for (const task of [undefined, ...names, 'no-such-task']) {
          if (owner === undefined && status === undefined && task === undefined) continue
          filters.push({ ...(owner === undefined ? {} : { owner }), ...(status === undefined ? {} : { status }), ...(task === undefined ? {} : { task }) })
        }
      }
    }
    for (const filter of filters) {
      const expected = all
        .filter(record => (filter.owner === undefined || record.owner === filter.owner) &&
          (filter.status === undefined || record.status === filter.status) &&
          (filter.task === undefined || record.task === filter.task))
        .map(record => record.uuid)
        .reverse()
      const page = await store.list({ ...filter, limit: 1000 })
      t.same(uuidsOf(page.records), expected, `${JSON.stringify(filter)}: ${expected.length} records, newest first`)
      t.equal(page.next, null)
      if (expected.length > 2) {
        const first = await store.list({ ...filter, limit: 2 })
        t.same(uuidsOf(first.records), expected.slice(0, 2), `${JSON.stringify(filter)}, limit 2`)
      }
    }
    const listed = (await store.list({ owner: 'ann', status: 'running', limit: 1 })).records[0]
    t.same(copy(listed), copy(await store.get(listed?.uuid ?? '')), 'a listed record is the whole record')
  })

  t.test(`${name}: list pages: at most limit, next until the last page, which answers next null`, async (t) => {
    const store = await factory(t)
    const all: string[] = []
    for (let i = 0; i < 25; i++) {
      const record = newRecord({ owner: i % 2 === 0 ? 'ann' : 'ben' })
      await store.create(record)
      all.unshift(record.uuid)
    }
    const pages: string[][] = []
    let cursor: string | undefined
    do {
      const page = await store.list({ limit: 10, ...(cursor === undefined ? {} : { cursor }) })
      pages.push(uuidsOf(page.records))
      cursor = page.next ?? undefined
      if (cursor !== undefined) t.type(cursor, 'string')
    } while (cursor !== undefined && pages.length < 10)
    t.same(pages.map(page => page.length), [10, 10, 5])
    t.same(pages.flat(), all, 'every record once, newest first')
    const ann = all.filter((_, i) => i % 2 === 0) // 13 of them, newest first
    t.same(await listAll(store, { owner: 'ann' }, 4), ann, 'the same with a filter')
    const exact = await store.list({ owner: 'ben', limit: 12 })
    t.equal(exact.records.length, 12)
    t.equal(exact.next, null, 'a page holding exactly the last records answers next null')
  })

  t.test(`${name}: a cursor stays valid while records are created and deleted`, async (t) => {
    const store = await factory(t)
    const all: Array<{ uuid: string, owner: string | null }> = [] // newest first
    for (let i = 0; i < 30; i++) {
      const record = newRecord({ owner: i % 3 === 0 ? 'ann' : null })
      await store.create(record)
      all.unshift({ uuid: record.uuid, owner: record.owner })
    }
    for (const filter of [{}, { owner: null }] as Array<Omit<ListFilter, 'limit'>>) {
      const existing = all.filter(record => filter.owner === undefined || record.owner === filter.owner).map(record => record.uuid)
      const seen: string[] = []
      const deleted = new Set<string>()
      const created: string[] = []
      let page = await store.list({ ...filter, limit: 4 })
      seen.push(...uuidsOf(page.records))
      while (page.next !== null) {
        // Between pages: a new record, and deletions of one listed already and one not yet.
        const fresh = newRecord({ owner: null })
        await store.create(fresh)
        created.push(fresh.uuid)
        const ahead = existing.find(uuid => !seen.includes(uuid) && !deleted.has(uuid))
        const behind = seen.find(uuid => !deleted.has(uuid))
        for (const uuid of [ahead, behind]) {
          if (uuid === undefined) continue
          t.equal(await store.delete(uuid), true)
          deleted.add(uuid)
        }
        page = await store.list({ ...filter, limit: 4, cursor: page.next })
        seen.push(...uuidsOf(page.records))
      }
      t.ok(deleted.size > 4 && created.length > 2, `${JSON.stringify(filter)}: records came and went between pages`)
      t.equal(new Set(seen).size, seen.length, 'no record twice')
      t.same(seen.filter(uuid => created.includes(uuid)), [], 'records created since the first page never appear on later pages')
      t.same(seen.filter(uuid => !deleted.has(uuid)), existing.filter(uuid => !deleted.has(uuid)), 'none skipped, newest first')
      const remaining = all.filter(record => !deleted.has(record.uuid))
      all.length = 0
      all.push(...created.reverse().map(uuid => ({ uuid, owner: null })), ...remaining)
    }
    t.same(await listAll(store, {}), all.map(record => record.uuid), 'what is left, newest first')
  })

  t.test(`${name}: a cursor the store did not make throws InvalidCursorError`, async (t) => {
    const store = await factory(t)
    await store.create(newRecord())
    for (const cursor of ['abc', '', '0', '-1', '1.5', '1e3', ' 1', '0x10', 'x'.repeat(200), '1'.repeat(40)]) {
      await t.rejects(store.list({ limit: 10, cursor }), InvalidCursorError, JSON.stringify(cursor.slice(0, 20)))
    }
    const error = await store.list({ limit: 1, cursor: 'abc' }).catch((err: unknown) => err)
    t.equal((error as Error).name, 'InvalidCursorError')
  })

  t.test(`${name}: delete removes a record from get, list and live; deleting it again answers false`, async (t) => {
    const store = await factory(t)
    const [a, b, c] = [newRecord(), newRecord({ status: 'running' }), newRecord()]
    for (const record of [a, b, c]) await store.create(record)
    await store.update(c.uuid, { status: 'succeeded', finished: new Date().toISOString() })
    t.equal(await store.delete(b.uuid), true)
    t.equal(await store.delete(c.uuid), true, 'a finished one too')
    t.equal(await store.delete(b.uuid), false)
    t.equal(await store.delete(randomUUID()), false)
    t.equal(await store.get(b.uuid), undefined)
    t.equal(await store.get(c.uuid), undefined)
    t.equal(await store.update(b.uuid, { progress: 1 }), undefined, 'nor can it be updated')
    t.same(uuidsOf((await store.list({ limit: 10 })).records), [a.uuid])
    t.same(uuidsOf(await store.live()), [a.uuid])
    const d = newRecord()
    const created = store.create(d)
    const removed = store.delete(d.uuid)
    await created
    t.equal(await removed, true, 'deleted in the turn it was created')
    t.equal(await store.get(d.uuid), undefined)
    t.same(uuidsOf((await store.list({ limit: 10 })).records), [a.uuid])
  })

  t.test(`${name}: live answers the pending and running records, oldest first`, async (t) => {
    const store = await factory(t)
    const [a, b, c, d] = [newRecord(), newRecord(), newRecord(), newRecord({ status: 'failed', finished: new Date().toISOString() })]
    for (const record of [a, b, c, d]) await store.create(record)
    t.same(uuidsOf(await store.live()), [a.uuid, b.uuid, c.uuid])
    await store.update(b.uuid, { status: 'running' })
    await store.update(a.uuid, { status: 'running' })
    await store.update(c.uuid, { status: 'running' })
    await store.update(c.uuid, { status: 'cancelled', finished: new Date().toISOString() })
    const e = newRecord()
    await store.create(e)
    t.same(uuidsOf(await store.live()), [a.uuid, b.uuid, e.uuid], 'in creation order, not in the order of the changes')
    await store.update(b.uuid, { status: 'pending', error: 'retrying' })
    t.same(uuidsOf(await store.live()), [a.uuid, b.uuid, e.uuid], 'a retry is still live')
    t.match(copy((await store.live())[1]), { status: 'pending', error: 'retrying' }, 'as it is now')
  })

  t.test(`${name}: expire removes the oldest finished of one status before a time, at most limit at once, and keeps the rest`, async (t) => {
    const store = await factory(t)
    const base = Date.parse('2026-01-01T00:00:00.000Z')
    const byStatus: Record<FinalStatus, TaskRecord[]> = { succeeded: [], failed: [], cancelled: [] }
    const finals: FinalStatus[] = ['succeeded', 'failed', 'cancelled']
    for (let i = 0; i < 30; i++) {
      const status = finals[i % 3] as FinalStatus
      // Some are created finished, most finish through updates.
      const record = i % 4 === 0 ? newRecord({ status, finished: minutes(base, i) }) : newRecord()
      await store.create(record)
      if (i % 4 !== 0) {
        await store.update(record.uuid, { status: 'running' })
        await store.update(record.uuid, { status, finished: minutes(base, i) })
      }
      byStatus[status].push(record)
    }
    const live = [newRecord(), newRecord({ status: 'running' })]
    for (const record of live) await store.create(record)
    const cutoff = minutes(base, 20) // finished at minutes 0 to 19 are old
    const old = byStatus.succeeded.slice(0, 7).map(record => record.uuid) // minutes 0, 3, ..., 18

    t.same(await store.expire('succeeded', cutoff, 3), old.slice(0, 3), 'the three oldest')
    t.same(await store.expire('succeeded', cutoff, 3), old.slice(3, 6), 'the next three')
    t.same(await store.expire('succeeded', cutoff, 3), old.slice(6), 'the last old one')
    t.same(await store.expire('succeeded', cutoff, 3), [], 'then none')
    for (const uuid of old) t.equal(await store.get(uuid), undefined, 'expired: gone')
    const young = byStatus.succeeded.slice(7).map(record => record.uuid)
    for (const uuid of young) t.ok(await store.get(uuid), 'young: kept')
    for (const record of [...byStatus.failed, ...byStatus.cancelled, ...live]) t.ok(await store.get(record.uuid), 'other statuses and live tasks: kept')
    t.same(await listAll(store, { status: 'succeeded' }), [...young].reverse(), 'the list forgets the expired')

    t.same(await store.expire('failed', minutes(base, 100), 0), [], 'limit 0 removes nothing')
    t.same((await store.expire('failed', minutes(base, 100), 100)).length, 10, 'every failed one')
    t.same(await store.expire('cancelled', minutes(base, 0), 100), [], 'nothing finished before the oldest')
  })

  t.test(`${name}: expire goes by finished time, not by the order records finished in`, async (t) => {
    const store = await factory(t)
    const base = Date.parse('2026-01-01T00:00:00.000Z')
    // A clock set back: the record that finished last carries the oldest time.
    const young = newRecord()
    const old = newRecord()
    for (const record of [young, old]) await store.create(record)
    await store.update(young.uuid, { status: 'succeeded', finished: minutes(base, 60) })
    await store.update(old.uuid, { status: 'succeeded', finished: minutes(base, 0) })
    t.same(await store.expire('succeeded', minutes(base, 30), 10), [old.uuid])
    t.ok(await store.get(young.uuid))
  })

  t.test(`${name}: finishedSince answers one final status finished at or after a time, newest finished first, at most limit`, async (t) => {
    const store = await factory(t)
    const base = Date.parse('2026-01-01T00:00:00.000Z')
    const finals: FinalStatus[] = ['succeeded', 'failed', 'cancelled']
    const byStatus: Record<FinalStatus, Array<{ uuid: string, finished: number }>> = { succeeded: [], failed: [], cancelled: [] }
    const records = Array.from({ length: 30 }, (_, i) => newRecord({ owner: i % 2 === 0 ? 'ann' : null, task: i % 5 === 0 ? 'sleep' : 'hello' }))
    for (const record of records) await store.create(record)
    // They finish in another order than their times (and than their creation): i * 7 % 30
    // visits every minute once. Some are created finished instead.
    for (let i = 0; i < 30; i++) {
      const record = records[i] as TaskRecord
      const minute = (i * 7) % 30
      const status = finals[i % 3] as FinalStatus
      if (i % 4 === 0) {
        await store.delete(record.uuid)
        await store.create({ ...record, status, started: minutes(base, minute - 1), finished: minutes(base, minute), inputs: {} })
      } else {
        await store.update(record.uuid, { status: 'running', started: minutes(base, minute - 1) })
        await store.update(record.uuid, { status, finished: minutes(base, minute) })
      }
      byStatus[status].push({ uuid: record.uuid, finished: minute })
    }
    for (const record of [newRecord(), newRecord({ status: 'running', started: minutes(base, 40) }), newRecord({ status: 'succeeded' })]) await store.create(record)
    const expected = (status: FinalStatus, from: number): string[] => byStatus[status]
      .filter(record => record.finished >= from)
      .sort((a, b) => b.finished - a.finished)
      .map(record => record.uuid)

    for (const when of ['just finished', 'a while after']) {
      for (const status of finals) {
        t.same(uuidsOf(await store.finishedSince(status, minutes(base, 0), 100)), expected(status, 0), `${when}, ${status}: all ten, newest finished first`)
        t.same(uuidsOf(await store.finishedSince(status, minutes(base, 12), 100)), expected(status, 12), `${when}, ${status}: since minute 12`)
      }
      // Expires nothing, but a store that files finished records in its index later (SQLite) files them now.
      t.same(await store.expire('succeeded', minutes(base, -100), 10), [])
    }
    const [newest, second, third] = expected('succeeded', 0)
    t.same(uuidsOf(await store.finishedSince('succeeded', minutes(base, -60), 2)), [newest, second], 'at most limit: the newest')
    t.same(await store.finishedSince('succeeded', minutes(base, -60), 0), [], 'limit 0: none')
    const at = byStatus.succeeded.find(record => record.uuid === third) as { finished: number }
    t.same(uuidsOf(await store.finishedSince('succeeded', minutes(base, at.finished), 100)), [newest, second, third], 'since is inclusive: finished exactly then is in')
    t.same(uuidsOf(await store.finishedSince('succeeded', new Date(base + at.finished * 60_000 + 1).toISOString(), 100)), [newest, second], 'a millisecond later, it is out')
    t.same(await store.finishedSince('succeeded', minutes(base, 30), 100), [], 'nothing finished since the newest')
    const [first] = await store.finishedSince('failed', minutes(base, 0), 1)
    t.same(copy(first), { ...copy(await store.get(first?.uuid ?? '')), messages: [], outputs: {}, inputs: {} }, 'each is the record without its messages, outputs and inputs')
    t.match(first, { status: 'failed', started: String, finished: String })
  })

  t.test(`${name}: finishedSince answers thousands, each once, in order, many finished at the same time`, async (t) => {
    const store = await factory(t)
    const base = Date.parse('2026-01-01T00:00:00.000Z')
    // 2,500 records, seven a second: stores that read in pages (of 1,000, say) end them
    // among records of the same time.
    const records = Array.from({ length: 2500 }, (_, i) => newRecord({ status: 'succeeded', inputs: {}, finished: new Date(base + Math.floor(i / 7) * 1000).toISOString() }))
    for (let i = 0; i < records.length; i += 500) await Promise.all(records.slice(i, i + 500).map(record => store.create(record)))
    // Expires nothing, but a store that files finished records in its index later (SQLite) files them now.
    await store.expire('succeeded', minutes(base, -100), 10)
    const check = (found: ReadonlyArray<Readonly<TaskRecord>>, count: number, what: string): void => {
      const times = found.map(record => Date.parse(record.finished as string))
      t.equal(found.length, count, `${what}: ${count} records`)
      t.equal(new Set(uuidsOf(found)).size, found.length, `${what}: each once`)
      t.ok(times.every((time, i) => i === 0 || time <= (times[i - 1] as number)), `${what}: newest finished first`)
      const expected = records.map(record => Date.parse(record.finished as string)).sort((a, b) => b - a).slice(0, count)
      t.same(times, expected, `${what}: the newest ${count}`)
    }
    check(await store.finishedSince('succeeded', minutes(base, 0), 3000), 2500, 'all of them')
    check(await store.finishedSince('succeeded', minutes(base, 0), 2500), 2500, 'limit: exactly as many')
    check(await store.finishedSince('succeeded', minutes(base, 0), 1001), 1001, 'limit 1001')
    check(await store.finishedSince('succeeded', minutes(base, 0), 1500), 1500, 'limit 1500')
    const since = new Date(base + 200 * 1000).toISOString() // seconds 200 on: the newest 1,100
    check(await store.finishedSince('succeeded', since, 3000), 2500 - 1400, 'since')
    t.same(new Set(uuidsOf(await store.finishedSince('succeeded', minutes(base, 0), 3000))), new Set(uuidsOf(records)), 'the records created')
  })

  t.test(`${name}: finishedSince forgets deleted and expired records, and follows records that finish or change`, async (t) => {
    const store = await factory(t)
    const base = Date.parse('2026-01-01T00:00:00.000Z')
    const done = Array.from({ length: 6 }, (_, i) => newRecord({ status: 'succeeded', finished: minutes(base, i) }))
    for (const record of done) await store.create(record)
    const since = minutes(base, 0)
    const newestFirst = (...records: TaskRecord[]): string[] => uuidsOf(records).reverse()
    t.same(uuidsOf(await store.finishedSince('succeeded', since, 10)), newestFirst(...done))

    t.equal(await store.delete(done[4]?.uuid as string), true)
    t.same(await store.expire('succeeded', minutes(base, 2), 10), uuidsOf(done.slice(0, 2)), 'the two oldest expire')
    t.same(uuidsOf(await store.finishedSince('succeeded', since, 10)), newestFirst(done[2] as TaskRecord, done[3] as TaskRecord, done[5] as TaskRecord), 'deleted and expired: gone')

    const running = newRecord()
    await store.create(running)
    await store.update(running.uuid, { status: 'running', started: minutes(base, 2) })
    t.same(uuidsOf(await store.finishedSince('succeeded', since, 10)), newestFirst(done[2] as TaskRecord, done[3] as TaskRecord, done[5] as TaskRecord), 'a running record: not there')
    await store.update(running.uuid, { status: 'succeeded', finished: minutes(base, 4) })
    t.same(uuidsOf(await store.finishedSince('succeeded', since, 10)), [done[5]?.uuid, running.uuid, done[3]?.uuid, done[2]?.uuid], 'once it finished, in its place by finished time')
    t.same(uuidsOf(await store.finishedSince('succeeded', since, 2)), [done[5]?.uuid, running.uuid], 'and within the limit')

    // A finished record may still change: its status, or its finished time.
    await store.update(done[3]?.uuid as string, { status: 'failed', messages: ['late'] })
    t.same(uuidsOf(await store.finishedSince('failed', since, 10)), [done[3]?.uuid], 'it follows its status')
    await store.update(done[3]?.uuid as string, { error: 'late' })
    t.same((await store.finishedSince('failed', since, 10))[0]?.error, 'late', 'as it is now')
    await store.update(done[5]?.uuid as string, { finished: minutes(base, 1) })
    t.same(uuidsOf(await store.finishedSince('succeeded', since, 10)), [running.uuid, done[2]?.uuid, done[5]?.uuid], 'and its finished time')
    t.same(uuidsOf(await store.finishedSince('succeeded', minutes(base, 2), 10)), [running.uuid, done[2]?.uuid])
    const replaced = newRecord({ uuid: running.uuid })
    await store.create(replaced)
    t.same(uuidsOf(await store.finishedSince('succeeded', since, 10)), [done[2]?.uuid, done[5]?.uuid], 'replaced by a live record: gone')
  })

  t.test(`${name}: a finished record may still change`, async (t) => {
    const store = await factory(t)
    const record = newRecord({ owner: 'ann' })
    await store.create(record)
    await store.update(record.uuid, { status: 'failed', finished: minutes(0, 1), error: 'no' })
    await store.update(record.uuid, { messages: ['late'], messagesDropped: 3 })
    t.match(copy(await store.get(record.uuid)), { status: 'failed', messages: ['late'], messagesDropped: 3, error: 'no' })
    await store.update(record.uuid, { status: 'cancelled' })
    t.same(uuidsOf((await store.list({ owner: 'ann', status: 'cancelled', limit: 5 })).records), [record.uuid], 'the list follows its status')
    t.same(uuidsOf((await store.list({ owner: 'ann', status: 'failed', limit: 5 })).records), [])
    t.same(await store.expire('failed', minutes(0, 2), 5), [])
    t.same(await store.expire('cancelled', minutes(0, 2), 5), [record.uuid], 'and so does expire')
  })

  t.test(`${name}: a record created with the uuid of one that exists replaces it`, async (t) => {
    const store = await factory(t)
    const live = newRecord({ status: 'running', messages: ['old'] })
    const finished = newRecord({ status: 'succeeded', finished: minutes(0, 1), messages: ['old'] })
    const other = newRecord()
    for (const record of [live, other, finished]) await store.create(record)
    const newer = [newRecord({ uuid: live.uuid, task: 'sleep', messages: ['new'] }), newRecord({ uuid: finished.uuid, owner: 'ann' })]
    for (const record of newer) await store.create(record)
    t.same(copy(await store.get(live.uuid)), copy(newer[0]))
    t.same(copy(await store.get(finished.uuid)), copy(newer[1]))
    t.same(uuidsOf((await store.list({ limit: 10 })).records), [finished.uuid, live.uuid, other.uuid], 'listed once each, as the newest')
    t.same(uuidsOf(await store.live()), [other.uuid, live.uuid, finished.uuid])
    t.same(await store.expire('succeeded', minutes(0, 2), 10), [], 'the replaced finished one is gone')
  })

  t.test(`${name}: close resolves, and so does a second close`, async (t) => {
    const store = await factory(t)
    await store.create(newRecord())
    if (store.close === undefined) {
      t.equal(store.close, undefined, 'this store holds nothing to release')
      return
    }
    await t.resolves(store.close())
    await t.resolves(store.close())
  })
}

/**
 * `UpdateFence`, for stores several servers share (and the memory store): a fenced
 * update applies only while the record has the fence's status and attempt; otherwise it
 * answers undefined and changes nothing.
 */
export function fenceContract (t: Test, name: string, factory: StoreFactory): void {
  t.test(`${name}: a fenced update applies only while the record has the status and attempt it expects`, async (t) => {
    const store = await factory(t)
    const record = newRecord({ status: 'pending', attempt: 1 })
    await store.create(record)
    t.equal(await store.update(record.uuid, { status: 'running', attempt: 2, seq: 1 }, { status: 'running', attempt: 1 }), undefined, 'another status: refused')
    t.equal(await store.update(record.uuid, { status: 'running', attempt: 2, seq: 1 }, { status: 'pending', attempt: 0 }), undefined, 'another attempt: refused')
    t.match(await store.get(record.uuid), { status: 'pending', attempt: 1, seq: 0 }, 'and nothing changed')
    t.match(await store.update(record.uuid, { status: 'running', attempt: 2, seq: 1 }, { status: 'pending', attempt: 1 }), { status: 'running', attempt: 2 }, 'as expected: applied')
    t.equal(await store.update(record.uuid, { progress: 5, seq: 2 }, { status: 'pending', attempt: 1 }), undefined, 'a second writer that started from the same pending record: refused')
    t.match(await store.update(record.uuid, { progress: 1, seq: 2 }, { status: 'running', attempt: 2 }), { progress: 1 }, 'the writer that started it: applied')
    await store.update(record.uuid, { status: 'succeeded', finished: new Date().toISOString(), seq: 3 }, { status: 'running', attempt: 2 })
    t.equal(await store.update(record.uuid, { status: 'failed', error: 'late', seq: 4 }, { status: 'running', attempt: 2 }), undefined, 'a final record: refused')
    t.match(await store.get(record.uuid), { status: 'succeeded', error: null, seq: 3 })
    t.equal(await store.update(randomUUID(), { progress: 1 }, { status: 'running', attempt: 1 }), undefined, 'no record: undefined')
    t.match(await store.update(record.uuid, { seq: 5 }), { seq: 5 }, 'without a fence: applied as ever')
  })
}

/**
 * A fenced write sent again with the same id (its first answer was lost: Redis went away
 * after applying it) is not applied twice, and is not refused by its own first application.
 */
export function writeIdContract (t: Test, name: string, factory: StoreFactory): void {
  t.test(`${name}: a fenced write sent again with its id is applied once`, async (t) => {
    const store = await factory(t)
    const record = newRecord({ status: 'pending', attempt: 0 })
    await store.create(record)
    const start = { status: 'running' as const, attempt: 1, seq: 1 }
    const fence = { status: 'pending' as const, attempt: 0, write: randomUUID() }
    t.match(await store.update(record.uuid, start, fence), { status: 'running', attempt: 1, seq: 1 })
    t.match(await store.update(record.uuid, start, fence), { status: 'running', attempt: 1, seq: 1 }, 'sent again: the record, not a refusal')
    const step = { messages: ['step 1'], seq: 2 }
    const again = { status: 'running' as const, attempt: 1, write: randomUUID() }
    await store.update(record.uuid, step, again)
    t.match(await store.update(record.uuid, step, again), { messages: ['step 1'], seq: 2 }, 'a message sent again is not appended twice')
    t.equal(await store.update(record.uuid, { seq: 3 }, { status: 'pending', attempt: 0, write: randomUUID() }), undefined, 'another write with a stale fence: refused')
    t.same((await store.get(record.uuid))?.messages, ['step 1'])
  })
}
