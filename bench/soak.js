// Soak: `npm run soak [-- minutes]` (default 10). Mixed work against a real server with a
// real pool: 70% succeed, 15% exit(1), 5% SIGKILL, 5% hang until their timeout (half in
// a loop that never yields), 5% cancelled. Every 10 s it checks that no task has been
// running longer than its timeout plus the grace periods, that the pool never holds more
// live children than its size, that there are no zombies, and samples this process's
// open file descriptors and RSS. Not part of CI; the figures go in the README.
import { execFileSync } from 'node:child_process'
import { readdirSync, mkdirSync, writeFileSync } from 'node:fs'
import Fastify from 'fastify'
import taskApi, { MemoryStore } from 'fastify-task-api'
import { createReport, fmt, pass } from './report.js'

const minutes = Number(process.argv[2] ?? 10)
const concurrency = 4
const inFlight = 12
const timeout = 1500
const cancelGrace = 300
const killGrace = 2000 // the pool's SIGTERM -> SIGKILL step
const slack = 1000 // the check itself runs every 10 s on a noisy machine
const mix = [['succeed', 70], ['exit', 15], ['kill', 5], ['hang', 5], ['cancel', 5]]

const report = createReport()
const app = Fastify({ logger: false })
// A bounded store: finished records are kept up to 2,000, so memory can plateau.
await app.register(taskApi, {
  tasks: [new URL('./soak-tasks.js', import.meta.url)],
  concurrency,
  timeout,
  cancelGrace,
  store: new MemoryStore({ maxFinished: 2000 }),
  list: true, // the soak lists running tasks over HTTP
})
await app.listen({ host: '127.0.0.1', port: 0 })
const base = `http://127.0.0.1:${app.server.address().port}/tasks`

function pick () {
  let roll = Math.random() * 100
  for (const [kind, weight] of mix) {
    if ((roll -= weight) < 0) return kind
  }
  return 'succeed'
}

const expected = {
  succeed: s => s.status === 'succeeded',
  exit: s => s.status === 'failed' && s.error === 'the child process running the task exited with code 1',
  kill: s => s.status === 'failed' && s.error === 'the child process running the task was killed by signal SIGKILL',
  hang: s => s.status === 'failed' && s.error === `timed out after ${timeout} ms`,
  cancel: s => s.status === 'cancelled',
}

const counts = { submitted: 0, finished: 0, wrong: 0, byKind: {} }
const wrongExamples = []
let stopping = false

async function one () {
  let kind = pick()
  const hangInLoop = kind === 'hang' && Math.random() < 0.5
  const res = await fetch(base, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ task: 'soak', inputs: { kind: hangInLoop ? 'spin' : kind, ms: 20 + Math.floor(Math.random() * 280) } }),
  })
  if (res.status !== 201) throw new Error(`submit answered ${res.status}: ${await res.text()}`)
  const { uuid } = await res.json()
  counts.submitted++
  if (kind === 'cancel') {
    setTimeout(() => { fetch(`${base}/${uuid}/cancel`, { method: 'POST' }).catch(() => {}) }, 50 + Math.random() * 250)
  }
  const done = await app.tasks.wait(uuid)
  counts.finished++
  counts.byKind[kind] = (counts.byKind[kind] ?? 0) + 1
  if (!expected[kind](done)) {
    counts.wrong++
    if (wrongExamples.length < 5) wrongExamples.push({ kind, status: done.status, error: done.error })
  }
}

async function worker () {
  while (!stopping) await one()
}

function children () {
  let out = ''
  try {
    out = execFileSync('ps', ['-o', 'pid=,stat=,comm=', '--ppid', String(process.pid)], { encoding: 'utf8' })
  } catch {}
  const rows = out.split('\n').map(line => line.trim().split(/\s+/)).filter(cols => cols.length >= 3 && cols[2] === 'node')
  return { live: rows.filter(r => !r[1].startsWith('Z')).length, zombies: rows.filter(r => r[1].startsWith('Z')).map(r => r[0]) }
}

/**
 * Zombies that are still zombies a second later. A child that has just died is a zombie
 * until the event loop reaps it, a matter of milliseconds: with several crashes a second,
 * a sample can catch one. A leak is one that stays.
 */
async function lastingZombies (seen) {
  if (seen.length === 0) return 0
  await new Promise(resolve => setTimeout(resolve, 1000))
  const again = children().zombies
  return seen.filter(pid => again.includes(pid)).length
}

const samples = []
let transientZombies = 0
const overdue = []
async function check (elapsed) {
  const now = Date.now()
  const res = await fetch(`${base}?status=running&limit=1000`)
  const { tasks: running } = await res.json()
  for (const task of running) {
    const ran = now - Date.parse(task.started)
    if (ran > timeout + cancelGrace + killGrace + slack) overdue.push({ uuid: task.uuid, ran })
  }
  const { live, zombies: dying } = children()
  const zombies = await lastingZombies(dying)
  transientZombies += dying.length
  const mem = process.memoryUsage()
  const sample = {
    s: Math.round(elapsed / 1000),
    finished: counts.finished,
    running: running.length,
    children: live,
    zombies,
    fds: readdirSync('/proc/self/fd').length,
    rssMb: mem.rss / 1024 / 1024,
    heapMb: mem.heapUsed / 1024 / 1024,
  }
  samples.push(sample)
  console.error(`  t=${sample.s}s finished=${sample.finished} running=${sample.running} children=${live} zombies=${zombies} fds=${sample.fds} rss=${fmt(sample.rssMb, 1)}MB heap=${fmt(sample.heapMb, 1)}MB overdue=${overdue.length}`)
}

console.error(`soak: ${minutes} min, pool of ${concurrency}, ${inFlight} tasks in flight, timeout ${timeout} ms, cancelGrace ${cancelGrace} ms`)
const started = Date.now()
const workers = Array.from({ length: inFlight }, () => worker())
const timer = setInterval(() => { check(Date.now() - started).catch(err => console.error(err)) }, 10_000)
await new Promise(resolve => setTimeout(resolve, minutes * 60_000))
clearInterval(timer)
stopping = true
await Promise.all(workers)
await check(Date.now() - started)
await app.close()
const after = children()

// Flatness: the first minute is warm-up (the pool, JIT, the store filling to its bound);
// compare the second minute's samples with the last minute's.
const window = samples.length >= 12 ? 6 : Math.max(1, Math.floor(samples.length / 3))
const mean = (list, key) => list.reduce((sum, s) => sum + s[key], 0) / list.length
const early = samples.slice(window, 2 * window)
const late = samples.slice(-window)
const rssEarly = mean(early, 'rssMb')
const rssLate = mean(late, 'rssMb')
const heapEarly = mean(early, 'heapMb')
const heapLate = mean(late, 'heapMb')
const fdsSeen = samples.map(s => s.fds)
const maxChildren = Math.max(...samples.map(s => s.children))
const maxZombies = Math.max(...samples.map(s => s.zombies))
const seconds = (Date.now() - started) / 1000

report.row('tasks finished', `${fmt(counts.finished)} in ${fmt(seconds)} s (${fmt(counts.finished / seconds, 1)}/s); ${Object.entries(counts.byKind).map(([k, n]) => `${k} ${fmt(n)}`).join(', ')}`, 'all end as expected', pass(counts.wrong === 0 && counts.finished === counts.submitted))
report.row('tasks that ended other than expected', `${counts.wrong}${wrongExamples.length ? ' ' + JSON.stringify(wrongExamples) : ''}`, '0', pass(counts.wrong === 0))
report.row('running past timeout + grace', `${overdue.length} (limit ${timeout + cancelGrace + killGrace} ms, checked every 10 s)`, '0', pass(overdue.length === 0))
report.row('live children (max of samples)', `${maxChildren} (pool ${concurrency})`, `≤ ${concurrency}`, pass(maxChildren <= concurrency))
report.row('zombies lasting 1 s (max of samples; after close)', `${maxZombies}; ${after.zombies.length} (${transientZombies} caught in the ms before reaping)`, '0', pass(maxZombies === 0 && after.zombies.length === 0))
report.row('children after close', String(after.live), '0', pass(after.live === 0))
// Open fds move with the HTTP client's keep-alive sockets; a leak shows as growth.
const fdsFirst = Math.max(...samples.slice(0, 2 * window).map(s => s.fds))
const fdsLast = Math.max(...late.map(s => s.fds))
report.row('open fds: max of the first 2 minutes → max of the last minute', `${fdsFirst} → ${fdsLast} (all samples ${Math.min(...fdsSeen)}–${Math.max(...fdsSeen)})`, 'no growth', pass(fdsLast <= fdsFirst))
report.row('RSS, 2nd minute → last minute', `${fmt(rssEarly, 1)} → ${fmt(rssLate, 1)} MB (${fmt((rssLate / rssEarly - 1) * 100, 1)}%)`, 'flat (≤ 10% growth)', pass(rssLate <= rssEarly * 1.1))
report.row('heap used, 2nd minute → last minute', `${fmt(heapEarly, 1)} → ${fmt(heapLate, 1)} MB`, 'flat', pass(heapLate <= heapEarly * 1.25))
report.notes.push(`Pool of ${concurrency}, ${inFlight} tasks in flight over HTTP, task timeout ${timeout} ms, cancelGrace ${cancelGrace} ms, MemoryStore bounded to 2,000 finished records.`)
report.notes.push(`Samples (every 10 s): ${samples.length}.`)

const markdown = report.markdown(`Soak, ${minutes} min`)
mkdirSync(new URL('./results/', import.meta.url), { recursive: true })
writeFileSync(new URL('./results/soak.md', import.meta.url), markdown)
writeFileSync(new URL('./results/soak-samples.json', import.meta.url), JSON.stringify(samples, null, 1))
console.log(markdown)
