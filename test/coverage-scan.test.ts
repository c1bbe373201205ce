import { readdir, readFile } from 'node:fs/promises'
import t from 'tap'
import { codes } from '../dist/errors.js'

/*
 * Keeps the suite honest as the API grows: every error code lib/errors.ts defines and
 * every option in the README's options table is used by at least one test file. A text
 * scan: an option counts when its name (the last part of a dotted one) appears as an
 * object key or shorthand property (`maxQueued: 1`, `{ store }`), a code when its name
 * appears at all. Not counted: this file, and errors.test.ts, which walks every code
 * without naming them.
 */

const testDir = new URL('./', import.meta.url)

async function testSources (): Promise<Map<string, string>> {
  const names = (await readdir(testDir)).filter(name => name.endsWith('.test.ts') && name !== 'coverage-scan.test.ts' && name !== 'errors.test.ts')
  return new Map(await Promise.all(names.map(async name => [name, await readFile(new URL(name, testDir), 'utf8')] as const)))
}

/** The option names of the README's options table, as written there (`streams.historySize`). */
async function documentedOptions (): Promise<string[]> {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const start = readme.indexOf('\n## Options')
  const section = readme.slice(start, readme.indexOf('\n## ', start + 1))
  return [...section.matchAll(/^\| `([\w.]+)` \|/gm)].map(match => match[1] as string)
}

const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

t.test('every error code is used by a test', async (t) => {
  const sources = await testSources()
  const names = Object.keys(codes)
  t.ok(names.length > 0)
  const unused = names.filter(code => ![...sources.values()].some(source => new RegExp(`\\b${code}\\b`).test(source)))
  t.same(unused, [], 'codes no test names')
})

t.test('every option in the README\'s options table is used by a test', async (t) => {
  const sources = await testSources()
  const options = await documentedOptions()
  t.ok(options.includes('concurrency') && options.includes('streams.historySize'), `the table was read (${options.length} options)`)
  const unused = options.filter((option) => {
    const key = new RegExp(`\\b${escape(option.split('.').at(-1) as string)}\\b\\s*[:,}]`)
    return ![...sources.values()].some(source => key.test(source))
  })
  t.same(unused, [], 'options no test passes')
})
