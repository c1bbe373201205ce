#!/usr/bin/env node
// Runs the whole test suite N times (default 3) while busy loops keep every core busy,
// and reports each run's counts and the names of the tests that failed. Exits non-zero
// if any run had a failure. Usage: npm run test:stress [-- N [test files...]]
// (files after N limit the runs to them, for a closer look at a few).
//
// Each run's TAP output is kept in test/output/stress-<n>.tap for a closer look.
import { spawn, spawnSync } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const runs = Number(process.argv[2] ?? 3)
const files = process.argv.slice(3)
if (!Number.isInteger(runs) || runs < 1) {
  console.error(`usage: npm run test:stress [-- N [test files...]]: N must be a positive integer, got ${process.argv[2]}`)
  process.exit(2)
}

// The same preparation as `npm test`: the build, then the compiled task fixtures.
const build = spawnSync('npm', ['run', 'pretest'], { cwd: root, stdio: 'inherit' })
if (build.status !== 0) process.exit(build.status ?? 1)

// One spinning process per core, for the whole time.
const loops = Array.from({ length: availableParallelism() }, () =>
  spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }))
const stopLoops = () => { for (const loop of loops) loop.kill('SIGKILL') }
process.on('exit', stopLoops)
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130))

/**
 * Reads tap's TAP output: the failed test points (leaves) with the names of the subtests
 * around them, and a failed subtest with no failed point inside (a file that crashed on
 * load, say) by its own path. The counts are tap's own summary line.
 */
function parse (tap) {
  const failures = []
  const stack = [] // { indent, name, failedInside }
  for (const line of tap.split('\n')) {
    const subtest = /^( *)# Subtest: (.*)$/.exec(line)
    if (subtest !== null) {
      stack.push({ indent: subtest[1].length, name: subtest[2], failedInside: false })
      continue
    }
    const point = /^( *)(not ok|ok) \d+ - (.*?)(?: # (?:time=|SKIP|TODO).*)?$/.exec(line)
    if (point === null) continue
    const indent = point[1].length
    const failed = point[2] === 'not ok'
    const top = stack.at(-1)
    if (top !== undefined && top.indent === indent) {
      // The point that closes a subtest.
      stack.pop()
      if (failed && !top.failedInside) failures.push([...stack.map(s => s.name), top.name].join(' > '))
      if (failed) for (const s of stack) s.failedInside = true
      continue
    }
    if (failed) {
      failures.push([...stack.map(s => s.name), point[3]].join(' > '))
      for (const s of stack) s.failedInside = true
    }
  }
  const summary = /^# \{ total: (\d+)(?:, pass: (\d+))?(?:, fail: (\d+))?(?:, skip: (\d+))?(?:, todo: (\d+))?/m.exec(tap)
  return {
    summary: summary === null ? undefined : { total: Number(summary[1]), pass: Number(summary[2] ?? 0), fail: Number(summary[3] ?? 0), skip: Number(summary[4] ?? 0) },
    failures,
  }
}

await mkdir(new URL('../test/output/', import.meta.url), { recursive: true })
const results = []
for (let n = 1; n <= runs; n++) {
  const started = Date.now()
  const file = fileURLToPath(new URL(`../test/output/stress-${n}.tap`, import.meta.url))
  const out = createWriteStream(file)
  let tap = ''
  const child = spawn(fileURLToPath(new URL('../node_modules/.bin/tap', import.meta.url)), ['-R', 'tap', ...files], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout.on('data', (chunk) => { tap += chunk; out.write(chunk) })
  child.stderr.on('data', (chunk) => { out.write(chunk) })
  const code = await new Promise(resolve => child.on('close', resolve))
  out.end()
  const { summary, failures } = parse(tap)
  const seconds = Math.round((Date.now() - started) / 1000)
  const ok = code === 0 && summary !== undefined && summary.fail === 0 && failures.length === 0
  results.push(ok)
  const counts = summary === undefined ? 'no summary (the run did not complete)' : `${summary.pass} passed, ${summary.fail} failed, ${summary.skip} skipped`
  console.log(`run ${n}/${runs}: ${counts}, exit ${code}, ${seconds} s (${file})`)
  for (const failure of failures) console.log(`  not ok: ${failure}`)
}
stopLoops()
const failed = results.filter(ok => !ok).length
console.log(failed === 0 ? `all ${runs} runs passed with every core busy` : `${failed} of ${runs} runs had failures`)
process.exit(failed === 0 ? 0 : 1)
