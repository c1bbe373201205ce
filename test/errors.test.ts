import { readFile } from 'node:fs/promises'
import t from 'tap'
import * as exported from '../dist/index.js'
import { codes } from '../dist/errors.js'

/** The README's error-code table: code → the status it documents ('(register)' for errors thrown by register). */
async function documented (): Promise<Map<string, string>> {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const section = readme.slice(readme.indexOf('\n## Error codes'), readme.indexOf('\n## ', readme.indexOf('\n## Error codes') + 1))
  const rows = new Map<string, string>()
  for (const [, code, status] of section.matchAll(/^\| `(FST_TASK_API_[A-Z_]+)` \| ([^|]+?) \|/gm)) rows.set(code as string, status as string)
  return rows
}

t.test('every error code is exported by name and listed in the README with its status', async (t) => {
  const table = await documented()
  const names = Object.keys(codes)
  t.same([...table.keys()].sort(), [...names].sort(), 'the README\'s table lists exactly the codes lib/errors.ts defines')
  for (const name of names) {
    t.equal((exported as Record<string, unknown>)[name], codes[name as keyof typeof codes], `${name} is exported from the package root`)
    const ErrorClass = codes[name as keyof typeof codes] as unknown as new (...args: string[]) => Error & { code: string, statusCode: number }
    const err = new ErrorClass('a', 'b', 'c')
    t.equal(err.code, name)
    // Errors thrown by register are not answers to requests: they carry Fastify's default 500.
    const status = table.get(name)
    t.equal(err.statusCode, status === '(register)' ? 500 : Number(status), `${name}: status ${String(status)}`)
  }
})

t.test('every code the README mentions anywhere exists', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const listed = new Set(readme.match(/FST_TASK_API_[A-Z_]+/g) ?? [])
  t.same([...listed].filter(code => !(code in codes)), [], 'no code in the README that lib/errors.ts lacks')
})
