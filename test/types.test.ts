import { readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import ts from 'typescript'

/*
 * The type tests, as part of `npm test`. Each file under test/types/ is compiled with the
 * project's tsconfig and every `@ts-expect-error` lifted (the text is swapped for one of
 * the same length, so positions hold). Each directive names the error it stands for,
 * `// @ts-expect-error TS2322 \`fragment\`: why`: that code, with that fragment in its
 * message, must start on the line below; and no other error may appear anywhere.
 */

// Compiling TypeBox's and Fastify's types takes a while, more so on a busy machine.
t.setTimeout(240_000)

const root = fileURLToPath(new URL('..', import.meta.url))
const files = ['tasks.ts', 'client.ts'].map(name => fileURLToPath(new URL(`./types/${name}`, import.meta.url)))
const directive = /^\s*\/\/\s*@ts-expect-error(?<rest>.*)$/
const named = /^ TS(?<code>\d+) `(?<fragment>[^`]+)`: \S/

interface Expected { file: string, line: number, code: number, fragment: string }

function expectations (file: string): { expected: Expected[], malformed: string[] } {
  const expected: Expected[] = []
  const malformed: string[] = []
  readFileSync(file, 'utf8').split('\n').forEach((text, index) => {
    const rest = directive.exec(text)?.groups?.rest
    if (rest === undefined) return
    const match = named.exec(rest)?.groups
    if (match === undefined) malformed.push(`${path.relative(root, file)}:${index + 1}: ${text.trim()}`)
    else expected.push({ file, line: index + 2, code: Number(match.code), fragment: match.fragment as string })
  })
  return { expected, malformed }
}

function compile (files: string[], override: ts.CompilerOptions = {}): readonly ts.Diagnostic[] {
  const config = ts.getParsedCommandLineOfConfigFile(path.join(root, 'tsconfig.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (diagnostic) => { throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')) },
  })
  if (config === undefined) throw new Error('tsconfig.json could not be read')
  const options = { ...config.options, ...override, noEmit: true }
  const host = ts.createCompilerHost(options)
  const read = host.getSourceFile.bind(host)
  host.getSourceFile = (name, language, onError, create) => {
    if (!files.includes(path.resolve(name))) return read(name, language, onError, create)
    const text = readFileSync(name, 'utf8').replaceAll('@ts-expect-error', '@ts-expect-ERROR')
    return ts.createSourceFile(name, text, language, true)
  }
  return ts.getPreEmitDiagnostics(ts.createProgram(files, options, host))
}

function check (t: Test, files: string[], override: ts.CompilerOptions = {}): void {
  const diagnostics = compile(files, override).map((diagnostic) => {
    const file = diagnostic.file
    const line = file === undefined || diagnostic.start === undefined ? 0 : file.getLineAndCharacterOfPosition(diagnostic.start).line + 1
    return {
      file: file === undefined ? '' : path.resolve(file.fileName),
      line,
      code: diagnostic.code,
      message: ts.flattenDiagnosticMessageText(diagnostic.messageText, ' '),
    }
  })
  const describe = (d: { file: string, line: number, code: number, message: string }): string =>
    `${path.relative(root, d.file)}:${d.line} TS${d.code} ${d.message.slice(0, 300)}`
  const matched = new Set<(typeof diagnostics)[number]>()
  for (const file of files) {
    const { expected, malformed } = expectations(file)
    t.same(malformed, [], `${path.relative(root, file)}: every directive names its error code and a message fragment`)
    t.ok(expected.length > 0, `${path.relative(root, file)} has type tests`)
    for (const want of expected) {
      const found = diagnostics.find(d => d.file === want.file && d.line === want.line && d.code === want.code && d.message.includes(want.fragment))
      t.ok(found, `${path.relative(root, want.file)}:${want.line}: TS${want.code} "${want.fragment}"`, {
        got: diagnostics.filter(d => d.file === want.file && d.line === want.line).map(describe),
      })
      if (found !== undefined) matched.add(found)
    }
  }
  t.same(diagnostics.filter(d => !matched.has(d)).map(describe), [], 'no error that no directive names')
}

t.test('each type test file produces exactly the errors its directives name, each on its line', async (t) => {
  check(t, files)
})

// Files that need a program of their own: a global declaration (TaskRegistry, request.user)
// would change what the others see; the browser client is checked without Node's types.
const isolated = (name: string): string[] => [fileURLToPath(new URL(`./types-isolated/${name}`, import.meta.url))]

t.test('app.tasks typed for the whole app through TaskRegistry', async (t) => {
  check(t, isolated('registry.ts'))
})

t.test('the README\'s auth example, with request.user declared by merging, compiles under strict', async (t) => {
  check(t, isolated('auth.ts'))
})

t.test('the browser client\'s types (its .d.ts, as published) compile with DOM only, without @types/node', async (t) => {
  check(t, isolated('dom-client.ts'), { lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'], types: [], skipLibCheck: false })
})
