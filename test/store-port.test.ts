import http from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { MemoryStore, type FinalStatus, type ListFilter, type ListPage, type RecordPatch, type Store, type TaskRecord } from '../dist/index.js'
import { build, fixture, untilRunning } from './helpers.js'

// README, Store: the MemoryStore's bound, and any object with the Store methods in its place.

t.test('MemoryStore keeps the newest maxFinished finished records, and every live one', async (t) => {
  const store = new MemoryStore({ maxFinished: 2 })
  const app = await build(t, { tasks: [fixture('basic.ts'), fixture('control.ts')], concurrency: 2, store })
  const live = await app.tasks.submit('cooperative')
  await untilRunning(app, live.uuid)
  const finished: string[] = []
  for (const name of ['a', 'b', 'c']) {
    const { uuid } = await app.tasks.submit('hello', { name })
    await app.tasks.wait(uuid)
    finished.push(uuid)
  }
  const [a, b, c] = finished as [string, string, string]
  t.equal((await app.inject(`/tasks/${a}`)).statusCode, 404, 'the oldest finished one is forgotten')
  t.equal(await app.tasks.get(a), undefined)
  t.equal((await app.tasks.get(b))?.status, 'succeeded')
  t.equal((await app.tasks.get(c))?.status, 'succeeded')
  t.equal((await app.tasks.get(live.uuid))?.status, 'running', 'a live task is never evicted, however old')
  t.equal(store.size, 3)
  await app.tasks.cancel(live.uuid)
  t.equal((await app.tasks.wait(live.uuid)).status, 'cancelled')
  t.equal(await app.tasks.get(b), undefined, 'once it finished, it counts: the oldest finished goes')
  t.same([await app.tasks.get(c), await app.tasks.get(live.uuid)].map(task => task?.status), ['succeeded', 'cancelled'])
  t.equal(store.size, 2)
})

t.test('a MemoryStore refuses a maxFinished that is not a positive integer', async (t) => {
  t.throws(() => new MemoryStore({ maxFinished: 0 }), { name: 'TypeError', message: 'options.maxFinished must be a positive integer, got 0' })
})

/**
 * A store as a durable one behaves: records go in and out as JSON, so the plugin only
 * ever holds copies; every call is journaled.
 */
class JsonStore implements Store {
  readonly rows = new Map<string, string>()
  readonly calls: string[] = []
  closed = false

  async create (record: TaskRecord): Promise<void> {
    this.calls.push('create')
    this.rows.set(record.uuid, JSON.stringify(record))
  }

  async get (uuid: string): Promise<TaskRecord | undefined> {
    this.calls.push('get')
    const row = this.rows.get(uuid)
    return row === undefined ? undefined : JSON.parse(row) as TaskRecord
  }

  async update (uuid: string, patch: RecordPatch): Promise<TaskRecord | undefined> {
    this.calls.push('update')
    const row = this.rows.get(uuid)
    if (row === undefined) return undefined
    const { messages, trimMessages, ...fields } = patch
    const record = { ...JSON.parse(row) as TaskRecord, ...fields }
    record.messages = [...record.messages, ...(messages ?? [])].slice(trimMessages ?? 0)
    this.rows.set(uuid, JSON.stringify(record))
    return JSON.parse(this.rows.get(uuid) as string) as TaskRecord
  }

  async list (filter: ListFilter): Promise<ListPage> {
    this.calls.push('list')
    // A Map keeps insertion order: its position is the record's creation order, the cursor.
    const all = [...this.rows.values()].map((row, position) => ({ position, record: JSON.parse(row) as TaskRecord }))
    const after = filter.cursor === undefined ? Infinity : Number(filter.cursor)
    const matching = all
      .filter(({ position, record }) => position < after &&
        (filter.owner === undefined || record.owner === filter.owner) &&
        (filter.status === undefined || record.status === filter.status) &&
        (filter.task === undefined || record.task === filter.task))
      .reverse()
    const page = matching.slice(0, filter.limit)
    const next = matching.length > page.length ? String(page.at(-1)?.position) : null
    return { records: page.map(({ record }) => record), next }
  }

  async delete (uuid: string): Promise<boolean> {
    this.calls.push('delete')
    return this.rows.delete(uuid)
  }

  async live (): Promise<TaskRecord[]> {
    this.calls.push('live')
    return [...this.rows.values()].map(row => JSON.parse(row) as TaskRecord).filter(record => record.status === 'pending' || record.status === 'running')
  }

  async expire (status: FinalStatus, before: string, limit: number): Promise<string[]> {
    this.calls.push('expire')
    const uuids = [...this.rows.values()].map(row => JSON.parse(row) as TaskRecord)
      .filter(record => record.status === status && (record.finished ?? '') < before).slice(0, limit).map(record => record.uuid)
    for (const uuid of uuids) this.rows.delete(uuid)
    return uuids
  }

  async finishedSince (status: FinalStatus, since: string, limit: number): Promise<TaskRecord[]> {
    this.calls.push('finishedSince')
    return [...this.rows.values()].map(row => JSON.parse(row) as TaskRecord)
      .filter(record => record.status === status && record.finished !== null && record.finished >= since)
      .sort((a, b) => (a.finished as string) < (b.finished as string) ? 1 : -1).slice(0, limit)
  }

  async close (): Promise<void> {
    this.closed = true
  }
}

t.test('a custom store serves the whole API: submit, fetch, follow, cancel, and close', async (t) => {
  const store = new JsonStore()
  const app = await build(t, { tasks: [fixture('basic.ts'), fixture('control.ts')], store, owner: request => (request.headers['x-user'] as string | undefined) ?? null })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`

  t.equal(store.calls[0], 'live', 'at start the plugin asked the store for what a previous server left running (restart recovery)')
  const before = store.calls.length
  const created = await app.inject({ method: 'POST', url: '/tasks', headers: { 'x-user': 'ann' }, payload: { task: 'hello', inputs: { name: 'store', count: '3' } } })
  t.equal(created.statusCode, 201)
  const uuid = created.json().uuid as string
  // (The retention sweep may call expire at any time.)
  t.equal(store.calls.slice(before).filter(call => call !== 'expire')[0], 'create', 'the record was created in the store')
  // Followed over SSE from the store's snapshot to the final status.
  const body = await new Promise<string>((resolve, reject) => {
    http.get(`${base}/tasks/${uuid}/events`, { headers: { 'x-user': 'ann' } }, (response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { text += chunk })
      response.on('end', () => resolve(text))
    }).on('error', reject)
  })
  const frames = body.split('\n\n').flatMap(block => /^data: (.*)$/m.exec(block)?.[1] ?? []).map(data => JSON.parse(data) as { type: string, status?: string, task?: { outputs: unknown } })
  t.equal(frames[0]?.type, 'snapshot')
  t.same(frames.at(-1)?.task?.outputs, { output: 'Hello store' }, 'the stream ends with the final record')

  const fetched = await app.inject({ url: `/tasks/${uuid}`, headers: { 'x-user': 'ann' } })
  t.equal(fetched.statusCode, 200)
  t.match(fetched.json(), { status: 'succeeded', progress: 3, target: 3, messages: ['step 0', 'step 1', 'step 2'], outputs: { output: 'Hello store' } })
  const row = JSON.parse(store.rows.get(uuid) as string) as TaskRecord
  t.same(row, { ...fetched.json(), inputs: { name: 'store', count: 3 }, owner: 'ann', seq: row.seq }, 'the stored row is what the API answers, plus the internals')
  t.ok(row.seq > 0)
  t.equal((await app.inject({ url: `/tasks/${uuid}`, headers: { 'x-user': 'ben' } })).statusCode, 404, 'the owner stored in the custom store scopes it')

  const running = await app.tasks.submit('cooperative')
  await untilRunning(app, running.uuid)
  t.equal((await app.inject({ method: 'POST', url: `/tasks/${running.uuid}/cancel` })).statusCode, 200)
  t.equal((await app.tasks.wait(running.uuid)).status, 'cancelled')
  t.equal(JSON.parse(store.rows.get(running.uuid) as string).status, 'cancelled')
  t.notOk(store.closed)
  await app.close()
  t.ok(store.closed, 'app.close() closes the store')
})
