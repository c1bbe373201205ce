import { readFile } from 'node:fs/promises'
import t from 'tap'
import * as exported from '../lib/index.js'
import { codes } from '../lib/errors.js'

t.test('every error code is exported by name and listed in the README', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const names = Object.keys(codes)
  t.ok(names.length >= 9)
  for (const name of names) {
    t.ok(readme.includes(`\`${name}\``), `${name} is in the README`)
    t.equal((exported as Record<string, unknown>)[name], codes[name as keyof typeof codes], `${name} is exported from the package root`)
    const ErrorClass = codes[name as keyof typeof codes] as unknown as new (...args: string[]) => Error & { code: string, statusCode: number }
    const err = new ErrorClass('a', 'b', 'c')
    t.equal(err.code, name)
    t.type(err.statusCode, 'number')
  }
  const listed = readme.match(/FST_TASK_API_[A-Z_]+/g) ?? []
  for (const code of new Set(listed)) t.ok(names.includes(code), `README's ${code} exists`)
})
