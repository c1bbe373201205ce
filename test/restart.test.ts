import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import Database from 'better-sqlite3'
import { fixtureSource, until } from './helpers.js'
import { startRedis } from './redis-server.js'

/*
 * README, Restart recovery, end to end: a server on a SQLite file (then on Redis) is
 * SIGKILLed while a few hundred tasks are queued, running and done; a new server on the
 * same store finishes the job. Real processes, a real file, a real redis-server, real HTTP.
 */

t.setTimeout(300_000)

const interrupted = 'interrupted: the server stopped while the task was running'
interface Record { uuid: string, task: string, status: string, attempt: number, error: string | null, outputs: { n?: number, attempt?: number }, progress: number | null }

async function startServer (t: Test, db: string, runLog: string): Promise<{ server: ChildProcess, base: string }> {
  const server = spawn(process.execPath, ['--import=tsx', fileURLToPath(fixtureSource('restart-server.ts')), db, runLog], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { server.kill('SIGKILL') })
  const port = await new Promise<number>((resolve, reject) => {
    let out = ''
    server.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      const line = out.split('\n')[0] as string
      if (out.includes('\n')) resolve((JSON.parse(line) as { port: number }).port)
    })
    server.once('exit', code => reject(new Error(`the server exited with ${String(code)}`)))
  })
  return { server, base: `http://127.0.0.1:${port}` }
}

async function json<T> (url: string, init?: RequestInit): Promise<{ status: number, body: T }> {
  const response = await fetch(url, init)
  return { status: response.status, body: (response.status === 204 ? null : await response.json()) as T }
}

t.test('SIGKILL mid-run, restart on the same file: every accepted task is there and ends; nothing runs twice that should not', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-restart-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const db = join(dir, 'data', 'tasks.db')
  await restartScenario(t, db, join(dir, 'runs.log'))
  const check = new Database(db, { readonly: true })
  t.equal(check.pragma('integrity_check', { simple: true }), 'ok', 'PRAGMA integrity_check is clean')
  check.close()
})

t.test('the same on Redis (RedisStore, append-only file): SIGKILL mid-run, restart on the same Redis', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-restart-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const redis = await startRedis(t, { persist: true })
  await restartScenario(t, redis.url, join(dir, 'runs.log'))
})

async function restartScenario (t: Test, db: string, runLog: string): Promise<void> {
  const first = await startServer(t, db, runLog)
  // 300 tasks: quick and slow ones without retries (at most once), and some with retries (at least once).
  const accepted = new Map<string, string>()
  const refused: number[] = []
  for (let i = 0; i < 300; i++) {
    const [task, inputs] = i % 3 === 0 ? ['again', { n: i, ms: 400 }] : i % 3 === 1 ? ['once', { n: i, ms: 300 }] : ['once', { n: i }]
    const { status, body } = await json<Record>(`${first.base}/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ task, inputs }) })
    if (status === 201) accepted.set(body.uuid, task)
    else refused.push(status)
  }
  t.same(refused, [], 'all 300 submissions were accepted (201)')
  // Clients follow a few tasks over SSE: the last seq each saw before the kill.
  const uuids = [...accepted.keys()]
  const followed = [...uuids.slice(30, 36), ...uuids.slice(-4)]
  const lastSeen = new Map<string, { id: number, final: boolean }>()
  for (const uuid of followed) {
    void (async () => {
      const response = await fetch(`${first.base}/tasks/${uuid}/events`, { headers: { accept: 'text/event-stream' } })
      const reader = (response.body as ReadableStream<Uint8Array>).getReader()
      const decoder = new TextDecoder()
      let text = ''
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        text += decoder.decode(value, { stream: true })
        for (const block of text.split('\n\n').slice(0, -1)) {
          const id = /^id: (\d+)/m.exec(block)
          if (id !== null) lastSeen.set(uuid, { id: Number(id[1]), final: /"status":"(succeeded|failed|cancelled)","task"/.test(block) || /"type":"snapshot".*"status":"(succeeded|failed|cancelled)"/.test(block) })
        }
        text = text.slice(text.lastIndexOf('\n\n') + 2)
      }
    })().catch(() => {}) // cut by the kill
  }
  await until('every followed stream to get its snapshot', () => followed.every(uuid => lastSeen.has(uuid)), 60_000)
  // Kill once some tasks are done and both children run one.
  for (;;) {
    const done = (await json<{ tasks: Record[] }>(`${first.base}/tasks?status=succeeded&limit=1000`)).body.tasks.length
    const running = (await json<{ tasks: Record[] }>(`${first.base}/tasks?status=running&limit=1000`)).body.tasks.length
    if (done >= 20 && running >= 2) break
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  first.server.kill('SIGKILL')
  await new Promise(resolve => first.server.once('exit', resolve))
  t.pass(`the first server was SIGKILLed`)

  const second = await startServer(t, db, runLog)
  const final = new Map<string, Record>()
  const deadline = Date.now() + 240_000
  while (final.size < accepted.size && Date.now() < deadline) {
    for (const uuid of accepted.keys()) {
      if (final.has(uuid)) continue
      const { status, body } = await json<Record>(`${second.base}/tasks/${uuid}`)
      if (status === 404) {
        t.fail(`task ${uuid} was accepted with 201 and is gone after the restart`)
        final.set(uuid, { uuid, status: 'lost' } as Record)
      } else if (['succeeded', 'failed', 'cancelled'].includes(body.status)) {
        final.set(uuid, body)
      }
    }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  t.equal(final.size, accepted.size, 'every accepted task is there and reached a final status')

  // What ran, in both servers: `<uuid> <attempt>` per entry into run().
  const entries = new Map<string, number[]>()
  for (const line of readFileSync(runLog, 'utf8').trim().split('\n')) {
    const [uuid, attempt] = line.split(' ') as [string, string]
    entries.set(uuid, [...(entries.get(uuid) ?? []), Number(attempt)])
  }
  const counts = { succeeded: 0, interrupted: 0, retried: 0 }
  const problems: string[] = []
  for (const [uuid, task] of accepted) {
    const record = final.get(uuid) as Record
    const runs = entries.get(uuid) ?? []
    if (task === 'once') {
      // At most once: entered once at most; a task that did not succeed was interrupted.
      if (runs.length > 1) problems.push(`${uuid} (no retries) ran ${runs.length} times`)
      if (record.status === 'succeeded') {
        counts.succeeded++
        if (runs.length !== 1) problems.push(`${uuid} succeeded with ${runs.length} runs`)
      } else {
        counts.interrupted++
        if (record.status !== 'failed' || record.error !== interrupted) problems.push(`${uuid}: ${record.status} ${record.error}`)
      }
    } else {
      // At least once: it succeeded, in as many attempts as it was entered, each a new attempt.
      if (record.status !== 'succeeded') problems.push(`${uuid} (with retries): ${record.status} ${record.error}`)
      if (record.outputs.attempt !== record.attempt) problems.push(`${uuid}: outputs.attempt ${record.outputs.attempt}, attempt ${record.attempt}`)
      if (new Set(runs).size !== runs.length) problems.push(`${uuid}: an attempt number ran twice: ${runs.join(',')}`)
      if (runs.at(-1) !== record.attempt) problems.push(`${uuid}: last run was attempt ${runs.at(-1)}, the record says ${record.attempt}`)
      if (record.attempt > 1) counts.retried++
      else counts.succeeded++
    }
  }
  t.same(problems, [], 'at most once without retries, at least once with them, the record matching what ran')
  t.ok(counts.interrupted + counts.retried >= 1, `the kill interrupted running tasks (${counts.interrupted} failed as interrupted, ${counts.retried} run again)`)
  t.comment(`after the restart: ${JSON.stringify(counts)}`)

  // A client that reconnects with the last seq it saw gets a fresh snapshot, never behind it, and goes on.
  let checked = 0
  problems.length = 0
  for (const uuid of followed) {
    const seen = lastSeen.get(uuid)
    if (seen === undefined || seen.final) continue
    const response = await fetch(`${second.base}/tasks/${uuid}/events`, { headers: { accept: 'text/event-stream', 'last-event-id': String(seen.id) } })
    const body = await response.text()
    const ids = [...body.matchAll(/^id: (\d+)/gm)].map(match => Number(match[1]))
    checked++
    if (!/"type":"snapshot"/.test(body)) problems.push(`${uuid}: no snapshot after the restart`)
    if (!(ids.length > 0 && (ids[0] as number) >= seen.id)) problems.push(`${uuid}: seq ${ids[0]} after the restart, ${seen.id} before`)
    if (ids.some((id, i) => i > 0 && id <= (ids[i - 1] as number))) problems.push(`${uuid}: seq went back: ${ids.join(',')}`)
  }

  t.same(problems, [], `${checked} clients reconnected after the restart: a snapshot, seq never behind what they saw, then only forward`)
  t.ok(checked >= 4, `at least the four newest tasks were still unfinished at the kill (${checked})`)

  second.server.kill('SIGTERM')
  t.equal(await new Promise(resolve => second.server.once('exit', resolve)), 0, 'the second server closed cleanly')
}
