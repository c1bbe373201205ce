import t from 'tap'
import { MemoryStore, StoreUnavailableError, type RecordPatch, type TaskRecord } from '../dist/index.js'
import { build, fixture } from './helpers.js'

// README, Store: a store that momentarily cannot write (StoreUnavailableError) costs a 503
// on submit, and nothing else: a running task's changes are written again until they go in.

/** A MemoryStore that refuses the next `refusals` writes with StoreUnavailableError, as SQLite busy past its retries would. */
class BusyStore extends MemoryStore {
  refuseCreates = 0
  refuseUpdates = 0
  refused = 0
  /** The seq each record had when its last write went in, read synchronously. */
  readonly storedSeq = new Map<string, number>()

  override async create (record: TaskRecord): Promise<void> {
    if (this.refuseCreates > 0) {
      this.refuseCreates--
      this.refused++
      throw new StoreUnavailableError('database is locked')
    }
    await super.create(record)
  }

  override async update (uuid: string, patch: RecordPatch): Promise<TaskRecord | undefined> {
    if (this.refuseUpdates > 0) {
      this.refuseUpdates--
      this.refused++
      throw new StoreUnavailableError('database is locked')
    }
    const record = await super.update(uuid, patch)
    if (record !== undefined) this.storedSeq.set(uuid, record.seq)
    return record
  }
}

t.test('submit while the store is busy: 503 FST_TASK_API_STORE_UNAVAILABLE with Retry-After, nothing created', async (t) => {
  const store = new BusyStore()
  const app = await build(t, { tasks: [fixture('basic.ts')], store, list: true })
  store.refuseCreates = 1
  const busy = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x' } } })
  t.equal(busy.statusCode, 503)
  t.equal(busy.headers['retry-after'], '1')
  t.same(busy.json(), { statusCode: 503, code: 'FST_TASK_API_STORE_UNAVAILABLE', error: 'Service Unavailable', message: 'the task store is busy: try again later' })
  t.same((await app.inject('/tasks')).json().tasks, [], 'nothing was created')
  const retried = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x' } } })
  t.equal(retried.statusCode, 201, 'the retry goes through')
  t.equal((await app.tasks.wait(retried.json().uuid)).status, 'succeeded')
})

t.test('a running task\'s changes wait for a busy store, in order, and nothing is published before it is stored', async (t) => {
  const store = new BusyStore()
  const app = await build(t, { tasks: [fixture('basic.ts')], store })
  const { uuid } = await app.tasks.submit('hello', { name: 'x', count: 3 })
  store.refuseUpdates = 4 // the running status, then some progress, each refused once or more
  const published: Array<{ type: string, seq: number, stored: number }> = []
  const stop = app.tasks.subscribe(uuid, (event) => {
    // What the store held at the moment the event went out.
    published.push({ type: event.type === 'status' ? `status ${event.status}` : event.type, seq: event.seq, stored: store.storedSeq.get(uuid) ?? 0 })
  })
  const final = await app.tasks.wait(uuid)
  stop()
  t.equal(store.refused, 4, 'the store refused four writes')
  t.match(final, { status: 'succeeded', outputs: { output: 'Hello x' }, progress: 3, target: 3, messages: ['step 0', 'step 1', 'step 2'] }, 'and the task ended as if nothing happened')
  const seqs = published.map(event => event.seq)
  t.same(seqs, [...seqs].sort((a, b) => a - b), 'events in order')
  t.ok(published.some(event => event.type === 'status running'), 'running was published')
  for (const event of published) {
    t.ok(event.stored >= event.seq, `${event.type} (seq ${event.seq}) was stored before it was published (the store was at seq ${event.stored})`)
  }
})
