import { readdir, readFile } from 'node:fs/promises'
import { performance } from 'node:perf_hooks'
import { check } from 'recheck'
import t from 'tap'
import ts from 'typescript'
import { build, fixture } from './helpers.js'

// No regular expression in lib/ may backtrack super-linearly: each literal is checked by
// recheck (a ReDoS checker), and none is built at run time from a string.

const lib = new URL('../lib/', import.meta.url)

interface Found { file: string, line: number, text: string }

async function sources (): Promise<Array<{ file: string, text: string }>> {
  const files = (await readdir(lib, { recursive: true })).filter(file => file.endsWith('.ts')).sort()
  return Promise.all(files.map(async file => ({ file, text: await readFile(new URL(file, lib), 'utf8') })))
}

/** Every regular expression literal, and every RegExp built from a string, in lib/**\/*.ts. */
async function scan (): Promise<{ literals: Found[], built: Found[] }> {
  const literals: Found[] = []
  const built: Found[] = []
  for (const { file, text } of await sources()) {
    const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true)
    const at = (node: ts.Node): Found => ({ file, line: source.getLineAndCharacterOfPosition(node.getStart()).line + 1, text: node.getText() })
    const visit = (node: ts.Node): void => {
      if (node.kind === ts.SyntaxKind.RegularExpressionLiteral) literals.push(at(node))
      if ((ts.isNewExpression(node) || ts.isCallExpression(node)) && ts.isIdentifier(node.expression) && node.expression.text === 'RegExp') built.push(at(node))
      ts.forEachChild(node, visit)
    }
    visit(source)
  }
  return { literals, built }
}

t.test('every regular expression in lib is safe from ReDoS, as recheck judges it', async (t) => {
  // The checker itself finds the numeric-conversion regex this project used to have.
  const old = await check(String.raw`^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$`, '')
  t.equal(old.status, 'vulnerable', 'the old numeric regex is caught')

  const { literals, built } = await scan()
  t.same(built, [], 'no RegExp is built from a string at run time')
  t.ok(literals.some(found => found.file === 'params.ts'), 'the numeric conversion regex is among those checked')
  t.ok(literals.length >= 5, `${literals.length} literals found`)
  for (const found of literals) {
    const slash = found.text.lastIndexOf('/')
    const result = await check(found.text.slice(1, slash), found.text.slice(slash + 1), { timeout: 30_000 })
    t.equal(result.status, 'safe', `${found.file}:${found.line} ${found.text}` +
      (result.status === 'vulnerable' ? ` (${result.complexity.summary}, attack ${result.attack.pattern})` : ''))
  }
})

t.test('a 1 MB numeric-looking string gets its answer: refused or converted', async (t) => {
  const mb = 1024 * 1024
  const app = await build(t, { tasks: [fixture('params.ts')], maxInputSize: 2 * mb }, { bodyLimit: 4 * mb, pluginTimeout: 120_000 })
  const cases: Array<[string, string, number]> = [
    ['digits then a letter (the attack on the old regex)', '0'.repeat(mb) + 'E', 400],
    ['digits, a dot, digits, then a letter', '1'.repeat(mb / 2) + '.' + '2'.repeat(mb / 2) + 'x', 400],
    ['spaces around a number', ' '.repeat(mb / 2) + '5' + ' '.repeat(mb / 2) + 'x', 400],
    ['a megabyte of zeros', '0'.repeat(mb), 201],
    ['a megabyte of nines: too big to be finite', '9'.repeat(mb), 400],
  ]
  for (const [name, number, status] of cases) {
    const start = performance.now()
    const res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'echo', inputs: { number } } })
    t.comment(`${name}: answered ${res.statusCode} in ${(performance.now() - start).toFixed(1)} ms`)
    t.equal(res.statusCode, status, name)
    if (status === 400) t.equal(res.json().message, 'inputs/number must be number', name)
    else t.same((await app.tasks.wait(res.json().uuid)).outputs.inputs, { number: 0, withDefault: 7 }, name)
  }
})
