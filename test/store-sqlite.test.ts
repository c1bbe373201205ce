import { spawn, spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath, pathToFileURL } from 'node:url'
import Database from 'better-sqlite3'
import t, { type Test } from 'tap'
import { StoreUnavailableError } from '../dist/index.js'
import type { TaskRecord } from '../dist/index.js'
import { SqliteStore, type SqliteStoreOptions } from '../dist/store/sqlite.js'
import { byUuidQuery, columns, expireQuery, listFinishedQuery, listQuery, liveQuery, migrations } from '../dist/store/sqlite-schema.js'
import { build, fixtureSource, until } from './helpers.js'
import { newRecord, storeContract } from './store-contract.js'

// The SQLite store: the contract, and what a file adds to it: it outlives the process
// (reopened, or after a SIGKILL), commits in groups and only then resolves, is refused
// when it is not ours or not writable, is held by one process, and lists by index.

const distStore = new URL('../dist/store/', import.meta.url)

function tempDir (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-sqlite-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A store on a new file, closed (then its directory removed) when the test ends. */
function openStore (t: Test, options: Partial<SqliteStoreOptions> = {}): { store: SqliteStore, path: string } {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-sqlite-'))
  const path = join(dir, 'tasks.db')
  const store = new SqliteStore({ path, ...options })
  t.teardown(async () => {
    await store.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return { store, path }
}

/** A connection of the test's own to a store's file, closed when the test ends. */
function connect (t: Test, path: string, options: Database.Options = {}): Database.Database {
  const db = new Database(path, { timeout: 0, ...options })
  t.teardown(() => db.close())
  return db
}

const copy = (record: TaskRecord | undefined): TaskRecord | undefined => record === undefined ? undefined : structuredClone(record)
const count = (db: Database.Database, table = 'tasks'): number => (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n

/** Runs a snippet of ES module code in a new node process (as `uid` when given); resolves with what it printed. */
function runNode (code: string, options: { uid?: number } = {}): { stdout: string, stderr: string, status: number | null } {
  const ids = options.uid === undefined ? {} : { uid: options.uid, gid: options.uid }
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', cwd: fileURLToPath(distStore), timeout: 60_000, ...ids })
  return { stdout: result.stdout, stderr: result.stderr, status: result.status }
}

/** Code for runNode: opens a store on `path` and prints how that went, as JSON. */
function openCode (path: string): string {
  return `
    import { SqliteStore } from ${JSON.stringify(new URL('sqlite.js', distStore).href)}
    try {
      const store = new SqliteStore({ path: ${JSON.stringify(path)} })
      await store.close()
      console.log(JSON.stringify({ opened: true }))
    } catch (err) {
      console.log(JSON.stringify({ name: err.name, reason: err.reason, message: err.message }))
    }`
}

storeContract(t, 'SqliteStore', (t) => openStore(t).store)

t.test('is published as fastify-task-api/sqlite; the package root never loads better-sqlite3', async (t) => {
  const published = await import('fastify-task-api/sqlite')
  t.equal(published.SqliteStore, SqliteStore, 'the export is dist/store/sqlite.js')

  const sources = readdirSync(new URL('../lib/', import.meta.url), { recursive: true, encoding: 'utf8' }).filter(name => name.endsWith('.ts'))
  const loaders = sources.filter(name => /['"]better-sqlite3['"]/.test(readFileSync(new URL(`../lib/${name}`, import.meta.url), 'utf8')))
  t.same(loaders, ['store/sqlite.ts'], 'one module names better-sqlite3')

  const dir = tempDir(t)
  const loaded = (steps: string): string[] => {
    const { stdout, stderr } = runNode(`
      import { createRequire } from 'node:module'
      ${steps}
      console.log(JSON.stringify(Object.keys(createRequire(import.meta.url).cache).filter(key => key.includes('better-sqlite3'))))`)
    t.equal(stderr, '')
    return JSON.parse(stdout) as string[]
  }
  t.same(loaded(`await import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)})`), [], 'importing the package root loads none of it')
  t.same(loaded(`await import(${JSON.stringify(new URL('sqlite.js', distStore).href)})`), [], 'nor does importing the SQLite store: only opening one does')
  t.not(loaded(`
    const { SqliteStore } = await import(${JSON.stringify(new URL('sqlite.js', distStore).href)})
    await new SqliteStore({ path: ${JSON.stringify(join(dir, 'tasks.db'))} }).close()`).length, 0, 'opening one does (the check sees it)')
})

t.test('without better-sqlite3, the constructor says how to install it', async (t) => {
  // The store's modules alone, where no node_modules can be found.
  const dir = tempDir(t)
  const alone = join(dir, 'alone')
  mkdirSync(alone)
  for (const name of ['sqlite.js', 'sqlite-file.js', 'sqlite-schema.js', 'types.js']) copyFileSync(new URL(name, distStore), join(alone, name))
  writeFileSync(join(alone, 'package.json'), '{ "type": "module" }')
  t.throws(() => createRequire(join(alone, 'sqlite.js')).resolve('better-sqlite3'), { code: 'MODULE_NOT_FOUND' }, 'better-sqlite3 cannot be found from there')
  const { SqliteStore: Alone } = await import(pathToFileURL(join(alone, 'sqlite.js')).href) as { SqliteStore: typeof SqliteStore }
  const path = join(dir, 'tasks.db')
  t.throws(() => new Alone({ path }), {
    name: 'SqliteStoreError',
    reason: 'driver',
    message: 'SqliteStore needs better-sqlite3, which is not installed: npm install better-sqlite3@12',
  })
  t.equal(existsSync(path), false, 'nothing was created')
})

t.test('refuses bad options, naming them', async (t) => {
  const dir = tempDir(t)
  for (const path of [':memory:', '', 'file:tasks.db', 42, undefined]) {
    t.throws(() => new SqliteStore({ path } as unknown as SqliteStoreOptions), { name: 'TypeError', message: /^options\.path must be the path of a file \(use MemoryStore for records that need not last\), got / }, String(path))
  }
  t.throws(() => new SqliteStore({ path: new URL('https://example.com/tasks.db') }), { name: 'TypeError', message: 'options.path must be a file path or a file: URL, got https://example.com/tasks.db' })
  const path = join(dir, 'tasks.db')
  t.throws(() => new SqliteStore({ path, busyTimeout: 1.5 }), { name: 'TypeError', message: 'options.busyTimeout must be an integer >= 0, got 1.5' })
  t.throws(() => new SqliteStore({ path, busyRetries: -1 }), { name: 'TypeError', message: 'options.busyRetries must be an integer >= 0, got -1' })
  t.throws(() => new SqliteStore({ path, maxBatch: 0 }), { name: 'TypeError', message: 'options.maxBatch must be a positive integer, got 0' })
  t.equal(existsSync(path), false, 'nothing was created')
  const byUrl = new SqliteStore({ path: pathToFileURL(path) })
  t.equal(byUrl.path, path, 'a file: URL is a path')
  await byUrl.close()
})

t.test('creates the directory of the file when it is missing', async (t) => {
  const dir = tempDir(t)
  const path = join(dir, 'a', 'b', 'c', 'tasks.db')
  const store = new SqliteStore({ path })
  await store.create(newRecord())
  await store.close()
  t.ok(statSync(path).isFile())
})

t.test('reopening the file keeps every record as it was: fields, messages, seq, order', async (t) => {
  const dir = tempDir(t)
  const path = join(dir, 'tasks.db')
  let store = new SqliteStore({ path })
  const pending = newRecord({ owner: 'ann', inputs: { name: 'Zoë', list: [1, 2] } })
  const running = newRecord({ task: 'sleep' })
  const finished = newRecord()
  const removed = newRecord()
  for (const record of [pending, running, finished, removed]) await store.create(record)
  await store.update(running.uuid, { status: 'running', started: new Date().toISOString(), attempt: 1, progress: 0.25, target: 4, seq: 3, messages: ['one', 'two', 'three'] })
  await store.update(running.uuid, { messages: ['four'], trimMessages: 2, messagesDropped: 2, seq: 4 })
  await store.update(finished.uuid, { status: 'succeeded', finished: new Date().toISOString(), outputs: { result: { ok: true, text: 'héllo' } }, messages: ['done'], seq: 9 })
  await store.delete(removed.uuid)
  const before = await Promise.all([pending, running, finished].map(async record => copy(await store.get(record.uuid))))
  const listed = (await store.list({ limit: 10 })).records.map(record => record.uuid)
  await store.close()

  store = new SqliteStore({ path })
  t.teardown(() => store.close())
  const after = await Promise.all([pending, running, finished].map(async record => copy(await store.get(record.uuid))))
  t.same(after, before, 'every record, field for field')
  t.same(after[1]?.messages, ['three', 'four'])
  t.equal(after[1]?.seq, 4)
  t.equal(await store.get(removed.uuid), undefined, 'the deleted one stays deleted')
  t.same((await store.live()).map(record => record.uuid), [pending.uuid, running.uuid], 'the live ones, oldest first')
  t.same((await store.list({ limit: 10 })).records.map(record => record.uuid), listed)
  const later = newRecord()
  await store.create(later)
  t.same((await store.list({ limit: 10 })).records.map(record => record.uuid), [later.uuid, ...listed], 'a record created after the reopen is the newest')
  const more = await store.update(running.uuid, { messages: ['five'], trimMessages: 1, seq: 5 })
  t.same(more?.messages, ['four', 'five'], 'messages go on from where they were')
})

t.test('writes of one turn are one transaction, committed before their promises resolve', async (t) => {
  const { store, path } = openStore(t)
  const other = connect(t, path, { readonly: true })
  const records = Array.from({ length: 100 }, () => newRecord())
  const seen: number[] = []
  const creates = records.map(async (record) => {
    await store.create(record)
    seen.push(count(other))
  })
  t.equal(count(other), 0, 'nothing is in the file during the turn')
  t.ok(await store.get((records[99] as TaskRecord).uuid), 'but get sees the records at once')
  await Promise.all(creates)
  t.same(seen, Array(100).fill(100), 'when each promise resolves, all hundred are in the file: one commit')

  const first = records[0] as TaskRecord
  let resolved = false
  const update = store.update(first.uuid, { status: 'running', seq: 1 }).then(() => {
    resolved = true
    return (other.prepare('SELECT status FROM tasks WHERE uuid = ?').get(first.uuid) as { status: string }).status
  })
  t.equal((await store.get(first.uuid))?.status, 'running', 'get sees the change at once')
  t.equal(resolved, false, 'the update has not resolved within the turn')
  t.equal(await update, 'running', 'and the file has it when it resolves')
})

t.test('a transaction writes at most maxBatch rows: a turn\'s writes past it go in further transactions', async (t) => {
  const { store, path } = openStore(t, { maxBatch: 10 })
  const other = connect(t, path, { readonly: true })
  t.equal(store.stats().longestWriteMs, 0, 'nothing written yet')
  await store.create(newRecord())
  t.ok(store.stats().longestWriteMs > 0, `the longest the writes held the event loop: ${store.stats().longestWriteMs.toFixed(3)} ms`)
  const before = store.stats().transactions
  await Promise.all(Array.from({ length: 35 }, async () => store.create(newRecord())))
  t.equal(store.stats().transactions - before, 4, '35 rows: transactions of 10, 10, 10 and 5')
  t.equal(count(other), 36)
  const withMessages = newRecord()
  await store.create(withMessages)
  const messages = Array.from({ length: 25 }, (_, i) => `message ${i}`)
  const updated = await store.update(withMessages.uuid, { messages })
  t.same(updated?.messages, messages, 'a record whose writes alone pass maxBatch is written whole')
  t.equal(count(other, 'messages'), 25)
})

t.test('a listing that fails (the file busy past busyRetries) is made again once the file is free: retention still finds the records', async (t) => {
  const { store, path } = openStore(t, { busyRetries: 2 })
  const old = new Date(Date.now() - 3_600_000).toISOString()
  const records = Array.from({ length: 5 }, () => newRecord({ status: 'running', created: old }))
  for (const record of records) {
    await store.create(record)
    await store.update(record.uuid, { status: 'succeeded', finished: old, seq: 1 })
  }
  const reader = connect(t, path, { readonly: true })
  const unlisted = (): number => (reader.prepare('SELECT count(*) AS n FROM tasks WHERE listed = 0').get() as { n: number }).n
  t.equal(unlisted(), 5, 'committed, waiting to be listed')
  // Another connection holds the write lock past the listing's retries (about 30 ms with busyRetries 2).
  const other = connect(t, path)
  other.exec('BEGIN IMMEDIATE')
  await until('the listing to fail', () => store.stats().failures > 0)
  other.exec('COMMIT')
  t.equal(unlisted(), 5, 'the failed listing wrote nothing')
  await until('the records to be listed after all', () => unlisted() === 0)
  t.same((await store.expire('succeeded', new Date().toISOString(), 100)).sort(), records.map(record => record.uuid).sort(), 'retention removes them')
})

t.test('a write still pending at close() is committed by it, and nothing runs on the closed file afterwards', async (t) => {
  const { store } = openStore(t)
  const record = newRecord({ status: 'running' })
  await store.create(record)
  // Not awaited: the close commits it, and the finished record would wait to be listed.
  const finished = store.update(record.uuid, { status: 'succeeded', finished: new Date().toISOString(), seq: 1 })
  await store.close()
  t.match(await finished, { status: 'succeeded' })
  // Past the listing interval: a listing scheduled after the close would throw out of a timer (tap reports it).
  await new Promise(resolve => setTimeout(resolve, 600))
  t.pass('no listing ran on the closed file')
})

t.test('busy: a write waits while another connection holds the write lock, then commits', async (t) => {
  const { store, path } = openStore(t)
  const record = newRecord()
  await store.create(record)
  const other = connect(t, path)
  other.exec('BEGIN IMMEDIATE')
  let resolved = false
  const update = store.update(record.uuid, { status: 'running', messages: ['hello'], seq: 1 }).then((updated) => { resolved = true; return updated })
  await until('the store to find the file busy', () => store.stats().busyRetries > 0)
  t.equal(resolved, false, 'the first attempt found the file busy')
  t.equal(store.stats().pending, 1, 'one call waits')
  other.exec('COMMIT')
  t.match(copy(await update), { status: 'running', messages: ['hello'], seq: 1 }, 'a retry committed it')
  t.match(store.stats(), { pending: 0, failures: 0 })
  t.same(other.prepare('SELECT text FROM messages').all(), [{ text: 'hello' }])
})

t.test('busy past busyRetries: every waiting write rejects with StoreUnavailableError, nothing is half-written, the view is back to the file', async (t) => {
  const { store, path } = openStore(t, { busyRetries: 2 })
  const running = newRecord()
  const finished = newRecord()
  await store.create(running)
  await store.create(finished)
  await store.update(running.uuid, { status: 'running', messages: ['one', 'two'], progress: 1, seq: 2 })
  await store.update(finished.uuid, { status: 'succeeded', finished: new Date().toISOString(), seq: 1 })
  const before = copy(await store.get(running.uuid))
  const other = connect(t, path)
  other.exec('BEGIN IMMEDIATE')

  const added = newRecord()
  const writes = [
    store.update(running.uuid, { status: 'succeeded', finished: new Date().toISOString(), messages: ['three'], trimMessages: 1, outputs: { x: 1 }, seq: 3 }),
    store.create(added),
    store.delete(finished.uuid),
    store.update(running.uuid, { progress: 2, seq: 4 }),
  ]
  t.equal((await store.get(running.uuid))?.status, 'succeeded', 'the view changed at once')
  t.ok(await store.get(added.uuid))
  const results = await Promise.allSettled(writes)
  other.exec('ROLLBACK')
  t.equal(store.stats().failures, 1)
  for (const result of results) {
    t.equal(result.status, 'rejected')
    const reason = (result as PromiseRejectedResult).reason as Error
    t.ok(reason instanceof StoreUnavailableError, 'StoreUnavailableError')
    t.match(reason.message, `the SQLite store ${path} cannot write: SQLITE_BUSY after 2 retries`)
  }
  t.same(copy(await store.get(running.uuid)), before, 'the update is undone')
  t.equal(await store.get(added.uuid), undefined, 'the create is undone')
  t.match(copy(await store.get(finished.uuid)), { status: 'succeeded' }, 'the delete is undone')
  t.same((await store.live()).map(record => record.uuid), [running.uuid])
  t.same(other.prepare('SELECT uuid, status, progress, seq FROM tasks ORDER BY id').all(), [
    { uuid: running.uuid, status: 'running', progress: 1, seq: 2 },
    { uuid: finished.uuid, status: 'succeeded', progress: null, seq: 1 },
  ], 'the file holds no part of them')
  t.same(other.prepare('SELECT text FROM messages ORDER BY n').all(), [{ text: 'one' }, { text: 'two' }])

  const updated = await store.update(running.uuid, { messages: ['three'], trimMessages: 1, seq: 3 })
  t.same(updated?.messages, ['two', 'three'], 'once the file is free, writes go on from what it holds')
  t.same(other.prepare('SELECT text FROM messages ORDER BY n').all(), [{ text: 'two' }, { text: 'three' }])
})

t.test('a SIGKILLed writer leaves a file that passes integrity_check and holds every write whose promise resolved', async (t) => {
  const dir = tempDir(t)
  const path = join(dir, 'tasks.db')
  const writer = spawn(process.execPath, ['--import=tsx', fileURLToPath(fixtureSource('sqlite-writer-server.ts')), path], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { if (writer.exitCode === null && writer.signalCode === null) writer.kill('SIGKILL') })
  const exited = new Promise<NodeJS.Signals | null>(resolve => writer.once('exit', (_code, signal) => resolve(signal)))
  const resolved = new Map<string, number>()
  let finishedTasks = 0
  let killed = false
  const lines = createInterface({ input: writer.stdout })
  for await (const line of lines) {
    if (line === 'ready') continue
    const [uuid, seq] = line.split(' ')
    resolved.set(uuid as string, Number(seq))
    if (seq === '6') finishedTasks++
    // Mid-run: tasks at every stage, the writer still writing as fast as it can.
    if (finishedTasks >= 300 && !killed) killed = writer.kill('SIGKILL')
  }
  t.equal(await exited, 'SIGKILL')
  t.ok(resolved.size >= 300, `${resolved.size} tasks written, ${finishedTasks} finished`)

  const raw = new Database(path, { timeout: 1000 })
  t.equal(raw.pragma('integrity_check', { simple: true }), 'ok', 'PRAGMA integrity_check')
  raw.close()

  const store = new SqliteStore({ path }) // the dead writer's lock is gone with it
  t.teardown(() => store.close())
  const messagesAt = (seq: number): string[] => [[], [], ['message 2'], ['message 2', 'message 3'], ['message 3', 'message 4'], ['message 4', 'message 5'], ['message 4', 'message 5']][seq] as string[]
  let missing = 0
  let behind = 0
  let inconsistent = 0
  for (const [uuid, seq] of resolved) {
    const record = await store.get(uuid)
    if (record === undefined) {
      missing++
      continue
    }
    if (record.seq < seq) behind++
    // Whatever seq the file holds, the row and its messages are of that same write.
    const expected = record.seq === 0 ? 'pending' : record.seq === 6 ? 'succeeded' : 'running'
    if (record.status !== expected || JSON.stringify(record.messages) !== JSON.stringify(messagesAt(record.seq)) ||
      (record.seq === 6 && record.outputs.result !== uuid)) inconsistent++
  }
  t.equal(missing, 0, 'every task whose create resolved is there')
  // The last ones finished before the kill were not listed yet: opening listed them.
  const succeeded = new Set<string>()
  for (let cursor: string | null | undefined; cursor !== null;) {
    const page = await store.list({ limit: 100, status: 'succeeded', ...(cursor === undefined ? {} : { cursor }) })
    for (const record of page.records) succeeded.add(record.uuid)
    cursor = page.next
  }
  const done = [...resolved].filter(([, seq]) => seq === 6).map(([uuid]) => uuid)
  t.equal(done.filter(uuid => !succeeded.has(uuid)).length, 0, `every one of the ${done.length} finished tasks is listed`)
  t.equal(behind, 0, 'with at least the last change whose promise resolved')
  t.equal(inconsistent, 0, 'and no record is half-written')
})

t.test('one process per file: a second store on the file fails, in this process or another, until the first closes', async (t) => {
  const { store, path } = openStore(t)
  await store.create(newRecord())
  const message = `the SQLite store ${path} is already open in another process (or another SqliteStore): one server per file, or two would run the same tasks`
  t.throws(() => new SqliteStore({ path }), { name: 'SqliteStoreError', reason: 'locked', message }, 'in this process')
  t.same(JSON.parse(runNode(openCode(path)).stdout), { name: 'SqliteStoreError', reason: 'locked', message }, 'in another process')
  const reader = connect(t, path, { readonly: true })
  t.equal(count(reader), 1, 'other connections may still read it')
  await store.close()
  t.same(JSON.parse(runNode(openCode(path)).stdout), { opened: true }, 'once closed, another process opens it')
})

t.test('one process per file whatever the path: a symbolic link to the file, or to its directory, finds it locked', async (t) => {
  const { store, path } = openStore(t)
  const dir = tempDir(t)
  const fileLink = join(dir, 'link.db')
  symlinkSync(path, fileLink)
  const dirLink = join(dir, 'dir')
  symlinkSync(dirname(path), dirLink)
  t.equal(store.path, path, 'the store names the real file')
  for (const other of [fileLink, join(dirLink, 'tasks.db')]) {
    t.throws(() => new SqliteStore({ path: other }), { name: 'SqliteStoreError', reason: 'locked' }, `through ${other}`)
    t.match(JSON.parse(runNode(openCode(other)).stdout), { name: 'SqliteStoreError', reason: 'locked' }, `through ${other}, from another process`)
  }
  t.notOk(existsSync(`${fileLink}-lock`), 'no lock beside the link: the lock is the real file\'s')
  await store.close()
  const linked = new SqliteStore({ path: fileLink })
  t.equal(linked.path, path, 'a store opened through a link names the real file')
  await linked.close()
})

t.test('a file or lock removed or replaced under an open store: its writes reject with StoreUnavailableError, none is lost unseen', async (t) => {
  for (const [what, change] of [
    ['the file removed', (path: string) => { for (const suffix of ['', '-wal', '-shm']) rmSync(`${path}${suffix}`, { force: true }) }],
    ['the file replaced', (path: string) => { renameSync(path, `${path}.old`); copyFileSync(`${path}.old`, path) }],
    ['the lock removed', (path: string) => { rmSync(`${path}-lock`) }],
  ] as const) {
    const { store, path } = openStore(t)
    const kept = newRecord()
    await store.create(kept)
    change(path)
    // The store looks at most every 20 ms.
    await new Promise(resolve => setTimeout(resolve, 30))
    const lost = newRecord()
    const err = await store.create(lost).then(() => undefined, (err: unknown) => err)
    t.ok(err instanceof StoreUnavailableError, `${what}: the write rejects`)
    t.match((err as Error).message, what.endsWith('lock removed') ? /lock file .*-lock was removed or replaced/ : /the database file was (removed|replaced by another file) since the store opened it/, `${what}: saying so`)
    t.equal(await store.get(lost.uuid), undefined, `${what}: the rejected record is not in the view`)
    const again = await store.update(kept.uuid, { progress: 1 }).then(() => undefined, (err: unknown) => err)
    t.ok(again instanceof StoreUnavailableError, `${what}: and so does every later write`)
  }
})

t.test('a cursor past the safe integers is refused, not rounded', async (t) => {
  const { store } = openStore(t)
  await store.create(newRecord())
  for (const cursor of ['9007199254740993', '9999999999999999']) {
    await t.rejects(store.list({ limit: 10, cursor }), { name: 'InvalidCursorError' }, cursor)
  }
  t.equal((await store.list({ limit: 10, cursor: '9007199254740991' })).records.length, 1, 'the largest safe one is a cursor')
})

t.test('refuses a file that is not a store of ours, naming it, and leaves it as it was', async (t) => {
  const dir = tempDir(t)
  const text = join(dir, 'notes.txt')
  writeFileSync(text, 'not a database\n'.repeat(100))
  t.throws(() => new SqliteStore({ path: text }), { name: 'SqliteStoreError', reason: 'foreign', message: `${text} is not a fastify-task-api store: it is not an SQLite database` })
  t.equal(readFileSync(text, 'utf8'), 'not a database\n'.repeat(100))

  const other = join(dir, 'other.db')
  const db = new Database(other)
  db.exec("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ann')")
  db.close()
  t.throws(() => new SqliteStore({ path: other }), { name: 'SqliteStoreError', reason: 'foreign', message: `${other} is not a fastify-task-api store: it is the SQLite database of another application (application_id 0, user_version 0, 1 schema objects)` })
  const check = new Database(other)
  t.same(check.prepare('SELECT name FROM users').all(), [{ name: 'ann' }])
  t.equal(check.pragma('user_version', { simple: true }), 0)
  check.close()

  const tagged = join(dir, 'tagged.db')
  const empty = new Database(tagged)
  empty.pragma('application_id = 1234')
  empty.close()
  t.throws(() => new SqliteStore({ path: tagged }), { reason: 'foreign', message: /application_id 1234/ }, 'another application id, even without tables')

  t.same(readdirSync(dir).sort(), ['notes.txt', 'other.db', 'tagged.db'], 'no lock file, no WAL beside them')
})

t.test('refuses a file written by a newer version (schema version), naming both', async (t) => {
  const dir = tempDir(t)
  const path = join(dir, 'tasks.db')
  await new SqliteStore({ path }).close()
  const db = new Database(path)
  db.pragma('user_version = 99')
  db.close()
  t.throws(() => new SqliteStore({ path }), { name: 'SqliteStoreError', reason: 'version', message: `the SQLite store ${path} has schema version 99, written by a newer fastify-task-api; this one knows versions up to 3` })
})

t.test('migrates a file from an older user_version on open, in one transaction', async (t) => {
  const dir = tempDir(t)
  const older = join(dir, 'older.db')
  const db = new Database(older)
  db.pragma(`application_id = ${0x46544150}`) // ours, at version 0: before any schema
  db.close()
  const store = new SqliteStore({ path: older })
  const record = newRecord()
  await store.create(record)
  await store.close()
  const check = new Database(older)
  t.equal(check.pragma('user_version', { simple: true }), 3, 'brought to version 3')
  t.equal(count(check), 1)
  check.close()

  // A migration that fails halfway leaves the file as it found it.
  const clash = join(dir, 'clash.db')
  const half = new Database(clash)
  half.pragma(`application_id = ${0x46544150}`)
  half.exec("CREATE TABLE messages (kept TEXT); INSERT INTO messages VALUES ('mine')")
  half.close()
  t.throws(() => new SqliteStore({ path: clash }), { name: 'SqliteStoreError', reason: 'migration', message: `cannot migrate the SQLite store ${clash} to schema version 3: table messages already exists` })
  const after = new Database(clash)
  t.equal(after.pragma('user_version', { simple: true }), 0, 'still at version 0')
  t.same(after.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'").all(), [{ name: 'messages' }], 'the tasks table created before the failure is rolled back')
  t.same(after.prepare('SELECT kept FROM messages').all(), [{ kept: 'mine' }])
  after.close()
  t.throws(() => new SqliteStore({ path: clash }), { name: 'SqliteStoreError', reason: 'migration' }, 'trying again fails the same way, not as locked: the failed open let go of its lock')
})

for (const version of [1, 2]) {
  t.test(`a file of schema version ${version} migrates to 3 and lists as before`, async (t) => {
    const dir = tempDir(t)
    const path = join(dir, `v${version}.db`)
    const db = new Database(path)
    db.pragma('journal_mode = WAL')
    for (const migration of migrations.slice(0, version)) db.exec(migration)
    db.pragma(`application_id = ${0x46544150}`)
    db.pragma(`user_version = ${version}`)
    // The columns of versions 1 and 2: every one but listed.
    const older = columns.replace(', listed', '')
    const insert = db.prepare(`INSERT INTO tasks (${older}) VALUES (${older.split(',').map(() => '?').join(', ')})`)
    const at = (i: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString()
    const rows = ['succeeded', 'pending', 'failed', 'running', 'succeeded'].map((status, i) => {
      const final = status !== 'pending' && status !== 'running'
      return [i + 1, randomUUID(), i % 2 === 0 ? 'hello' : 'sleep', status, i < 3 ? 'ann' : null, null, null, '{}', null, 1, at(i), at(i), final ? at(i + 10) : null, 2, final ? '{}' : '{"name":"x"}', 0]
    })
    for (const row of rows) insert.run(...row)
    db.close()
    const store = new SqliteStore({ path })
    t.teardown(() => store.close())
    const uuids = (records: Array<Readonly<TaskRecord>>): string[] => records.map(record => record.uuid)
    const all = rows.map(row => row[1] as string).reverse()
    t.same(uuids((await store.list({ limit: 10 })).records), all, 'every record, newest first')
    t.same(uuids((await store.list({ limit: 10, owner: 'ann' })).records), all.slice(2), 'by owner: live and finished')
    t.same(uuids((await store.list({ limit: 10, status: 'pending' })).records), [all[3]], 'a live status')
    t.same(uuids((await store.list({ limit: 10, status: 'succeeded' })).records), [all[0], all[4]], 'a final status')
    const first = await store.list({ limit: 2 })
    const second = await store.list({ limit: 2, cursor: first.next as string })
    const third = await store.list({ limit: 2, cursor: second.next as string })
    t.same([...uuids(first.records), ...uuids(second.records), ...uuids(third.records)], all, 'paged, across live and finished')
    t.equal(third.next, null)
    t.same(uuids(await store.live()), [all[3], all[1]], 'live, oldest first')
    t.same(await store.expire('failed', at(100), 10), [all[2]], 'the retention index has the finished records')
    const check = connect(t, path, { readonly: true })
    t.equal(check.pragma('user_version', { simple: true }), 3)
    t.same(check.prepare('SELECT status, listed FROM tasks ORDER BY id').all().map(row => Object.values(row as object)),
      [['succeeded', 1], ['pending', 0], ['running', 0], ['succeeded', 1]], 'finished records listed, live ones not')
  })
}

t.test('a finished record enters the list indexes in a batch, a moment after its commit; lists and retention find it before', async (t) => {
  const { store, path } = openStore(t)
  const db = connect(t, path, { readonly: true })
  const listedOf = (uuid: string): number => (db.prepare('SELECT listed FROM tasks WHERE uuid = ?').get(uuid) as { listed: number }).listed
  const records = Array.from({ length: 5 }, () => newRecord())
  for (const record of records) await store.create(record)
  const finished = new Date().toISOString()
  await Promise.all(records.map(async record => store.update(record.uuid, { status: 'succeeded', finished, seq: 1 })))
  t.same(records.map(record => listedOf(record.uuid)), [0, 0, 0, 0, 0], 'committed finished, not yet listed')
  t.same((await store.list({ limit: 10, status: 'succeeded' })).records.map(record => record.uuid), records.map(record => record.uuid).reverse(), 'listed from memory meanwhile')
  await until('the records to be listed in the file', () => records.every(record => listedOf(record.uuid) === 1), 10_000)
  t.same((await store.list({ limit: 10, status: 'succeeded' })).records.map(record => record.uuid), records.map(record => record.uuid).reverse(), 'and from the file after')
  const more = newRecord()
  await store.create(more)
  await store.update(more.uuid, { status: 'failed', finished, seq: 1 })
  t.equal(listedOf(more.uuid), 0)
  t.same(await store.expire('failed', new Date(Date.now() + 1000).toISOString(), 10), [more.uuid], 'retention lists what waits first, then finds it')
  t.equal(await store.get(more.uuid), undefined)

  // A record created with the uuid of a listed one replaces it, in the file too.
  const [old] = records as [TaskRecord]
  await store.create({ ...newRecord(), uuid: old.uuid, task: 'again' })
  await store.update(old.uuid, { status: 'cancelled', finished, seq: 1 })
  t.equal((db.prepare('SELECT count(*) AS n FROM tasks WHERE uuid = ?').get(old.uuid) as { n: number }).n, 1, 'one row with that uuid')
  await until('the new record to be listed', () => listedOf(old.uuid) === 1, 10_000)
  t.match(await store.get(old.uuid), { task: 'again', status: 'cancelled' })
  t.same((await store.list({ limit: 10, status: 'succeeded' })).records.map(record => record.uuid), records.slice(1).map(record => record.uuid).reverse())
})

t.test('refuses a path it cannot create or write, naming it', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'a-file')
  writeFileSync(file, '')
  t.throws(() => new SqliteStore({ path: join(file, 'tasks.db') }), { name: 'SqliteStoreError', reason: 'unwritable', message: new RegExp(`^cannot create the directory of the SQLite store ${join(file, 'tasks.db')}: `) }, 'under a file')
  t.throws(() => new SqliteStore({ path: dir }), { name: 'SqliteStoreError', reason: 'unwritable', message: `the SQLite store ${dir} is not a file` }, 'a directory')

  // Read-only places. Root may write anywhere: then the store is opened by nobody.
  const asRoot = process.getuid?.() === 0
  chmodSync(dir, 0o755)
  const readOnly = join(dir, 'read-only')
  mkdirSync(readOnly, { mode: 0o755 })
  const inReadOnly = join(readOnly, 'tasks.db')
  const writable = join(dir, 'writable')
  mkdirSync(writable)
  chmodSync(writable, 0o777)
  const readOnlyFile = join(writable, 'tasks.db')
  await new SqliteStore({ path: readOnlyFile }).close()
  chmodSync(readOnlyFile, 0o444)
  if (asRoot) {
    chmodSync(readOnly, 0o755) // root's: nobody cannot write in it
  } else {
    chmodSync(readOnly, 0o555)
    t.teardown(() => chmodSync(readOnly, 0o755))
  }
  const attempt = (path: string): unknown => {
    if (asRoot) return JSON.parse(runNode(openCode(path), { uid: 65534 }).stdout)
    try {
      new SqliteStore({ path })
      return { opened: true }
    } catch (err) {
      return { name: (err as Error).name, reason: (err as { reason: string }).reason, message: (err as Error).message }
    }
  }
  t.same(attempt(inReadOnly), { name: 'SqliteStoreError', reason: 'unwritable', message: `the SQLite store ${inReadOnly} is not writable: cannot write in its directory ${readOnly} (EACCES)` }, 'a directory it cannot write in')
  t.same(attempt(readOnlyFile), { name: 'SqliteStoreError', reason: 'unwritable', message: `the SQLite store ${readOnlyFile} is not writable (EACCES)` }, 'a file it cannot write')
})

t.test('after close, every call rejects (reason closed); close writes what was pending first', async (t) => {
  const dir = tempDir(t)
  const path = join(dir, 'tasks.db')
  const store = new SqliteStore({ path })
  const record = newRecord()
  const created = store.create(record)
  await store.close()
  await t.resolves(created, 'the pending create was written')
  const closed = { name: 'SqliteStoreError', reason: 'closed', message: `the SQLite store ${path} is closed` }
  await t.rejects(store.get(record.uuid), closed)
  await t.rejects(store.create(newRecord()), closed)
  await t.rejects(store.update(record.uuid, { progress: 1 }), closed)
  await t.rejects(store.list({ limit: 1 }), closed)
  await t.rejects(store.delete(record.uuid), closed)
  await t.rejects(store.live(), closed)
  await t.rejects(store.expire('succeeded', new Date().toISOString(), 1), closed)
  await t.resolves(store.close(), 'closing again is fine')
  t.same(readdirSync(dir).sort(), ['tasks.db', 'tasks.db-lock'], 'the WAL was checkpointed into the file and removed')
  const again = new SqliteStore({ path })
  t.ok(await again.get(record.uuid))
  await again.close()
})

t.test('checkpoints in the background: the WAL reaches the database file while the store runs', async (t) => {
  const { store, path } = openStore(t)
  await store.create(newRecord())
  const size = statSync(path).size
  await Promise.all(Array.from({ length: 300 }, async () => store.create(newRecord({ messages: ['a message of some length'.repeat(4)] }))))
  await until('the database file to grow', () => statSync(path).size > size, 60_000)
  t.ok(statSync(path).size > size, `${size} -> ${statSync(path).size} bytes`)
})

t.test('under writes without pause the WAL stays bounded: past maxWalSize the checkpoint thread restarts it', async (t) => {
  const walSizes = async (maxWalSize: number): Promise<{ max: number, written: number }> => {
    const { store, path } = openStore(t, { maxWalSize })
    const message = 'x'.repeat(2000)
    let max = 0
    let written = 0
    // Records of 10 kB, 20 every 20 ms (about 10 MB/s, whatever the machine's speed, as
    // long as it keeps up), for 3 s: the checkpoint thread starts, then runs every 250 ms.
    for (const started = Date.now(); Date.now() - started < 3000;) {
      const round = Date.now()
      await Promise.all(Array.from({ length: 20 }, async () => store.create(newRecord({ messages: [message, message, message, message, message] }))))
      written += 20 * 5 * message.length
      await new Promise(resolve => setTimeout(resolve, Math.max(0, 20 - (Date.now() - round))))
      if (existsSync(`${path}-wal`)) max = Math.max(max, statSync(`${path}-wal`).size)
    }
    return { max, written }
  }
  const unbounded = await walSizes(1024 * 1024 * 1024)
  t.ok(unbounded.max >= unbounded.written, `maxWalSize 1 GiB: the WAL file reached ${(unbounded.max / 1e6).toFixed(1)} MB for ${(unbounded.written / 1e6).toFixed(1)} MB of messages (every commit kept, as without restarts)`)
  // Bounded, the WAL holds about what came before the thread's first checkpoint.
  const bounded = await walSizes(1024 * 1024)
  t.ok(bounded.max < unbounded.max / 2, `maxWalSize 1 MiB: the WAL file reached ${(bounded.max / 1e6).toFixed(1)} MB for ${(bounded.written / 1e6).toFixed(1)} MB of messages`)
})

t.test('every list query and the retention query search an index: no scan, no sort (EXPLAIN QUERY PLAN)', async (t) => {
  const { store, path } = openStore(t)
  for (let i = 0; i < 200; i++) await store.create(newRecord({ owner: i % 2 === 0 ? 'ann' : null, task: i % 3 === 0 ? 'sleep' : 'hello' }))
  const db = connect(t, path, { readonly: true })
  const plan = (sql: string, params: unknown[]): string[] => (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as Array<{ detail: string }>).map(row => row.detail)
  for (let fields = 0; fields < 8; fields++) {
    const params = [...(fields & 1 ? ['ann'] : []), ...(fields & 2 ? ['running'] : []), ...(fields & 4 ? ['hello'] : []), 1000, 21]
    const steps = plan(listQuery(fields), params)
    const names = ['owner', 'status', 'task'].filter((_, bit) => (fields & (1 << bit)) !== 0)
    // Without a field: the table newest first, skipping live records (they are listed from memory).
    const how = names.length === 0 ? 'INTEGER PRIMARY KEY (rowid<?)' : `INDEX tasks_${names.join('_')} (${names.map(name => `${name}=?`).join(' AND ')} AND rowid<?)`
    t.same(steps, [`SEARCH tasks USING ${how}`], `filter on ${names.join(', ') || 'nothing'}: ${steps.join('; ')}`)
  }
  t.same(plan(listQuery(1), [null, 1000, 21]), ['SEARCH tasks USING INDEX tasks_owner (owner=? AND rowid<?)'], 'a null owner too')
  t.same(plan(expireQuery, ['succeeded', new Date().toISOString(), 100]), ['SEARCH tasks USING INDEX tasks_expiry (status=? AND finished<?)'], 'retention')
  t.same(plan(liveQuery, []), ['SCAN tasks USING INDEX tasks_unlisted'], 'the live records, on opening')
  t.same(plan(listFinishedQuery, []), ['SCAN tasks USING INDEX tasks_unlisted'], 'listing what finished before the last stop, on opening')
  t.same(plan(byUuidQuery, [randomUUID()]), ['SEARCH tasks USING INDEX tasks_uuid (uuid=?)'], 'a listed record by uuid')
  t.same(plan('SELECT n, text FROM messages WHERE task_id = ? ORDER BY n', [1]), ['SEARCH messages USING PRIMARY KEY (task_id=?)'], 'its messages')
})

t.test('the plugin runs tasks on a SqliteStore, and app.close() closes it', async (t) => {
  const dir = tempDir(t)
  const path = join(dir, 'tasks.db')
  const app = await build(t, { store: new SqliteStore({ path }), list: true })
  const created = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'disk', count: 3 } } })
  t.equal(created.statusCode, 201)
  const { uuid } = created.json() as { uuid: string }
  const done = await app.tasks.wait(uuid)
  t.match(done, { status: 'succeeded', outputs: { output: 'Hello disk' }, messages: ['step 0', 'step 1', 'step 2'], progress: 3 })
  t.same((await app.inject('/tasks')).json().tasks.map((task: { uuid: string }) => task.uuid), [uuid])
  await app.close()
  const store = new SqliteStore({ path }) // app.close() released the file
  t.teardown(() => store.close())
  t.same(copy(await store.get(uuid)), { ...done, inputs: {}, owner: null, seq: (await store.get(uuid))?.seq }, 'the record as the app last answered it')
})

