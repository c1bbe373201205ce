import { execFile } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import t from 'tap'

// What the package ships: source maps that work without the repository (the sources are
// inside them), and a CommonJS path (require on Node 20.19+, which loads ES modules).

const dist = fileURLToPath(new URL('../dist/', import.meta.url))

function maps (dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap(entry =>
    entry.isDirectory() ? maps(join(dir, entry.name)) : entry.name.endsWith('.js.map') ? [join(dir, entry.name)] : [])
}

t.test('every source map carries its sources: stack traces map to TypeScript without lib/ (not shipped)', async (t) => {
  const files = maps(dist)
  t.ok(files.length > 20, `${files.length} maps`)
  const packageJson = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { files: string[] }
  t.notOk(packageJson.files.includes('lib'), 'lib/ is not shipped: the maps must not need it')
  const missing = files.filter((file) => {
    const map = JSON.parse(readFileSync(file, 'utf8')) as { sources: string[], sourcesContent?: Array<string | null> }
    return map.sourcesContent?.length !== map.sources.length || map.sourcesContent.some(content => typeof content !== 'string' || content.length === 0)
  })
  t.same(missing.map(file => file.slice(dist.length)), [], 'none without its sources')
})

t.test('a CommonJS app requires the plugin and registers a CommonJS task module', async (t) => {
  const server = fileURLToPath(new URL('./fixtures/cjs/server.cjs', import.meta.url))
  const { stdout } = await promisify(execFile)(process.execPath, [server], { timeout: 60_000 })
  t.match(JSON.parse(stdout), { task: 'cjs-hello', status: 'succeeded', outputs: { output: 'Hello require from CommonJS' }, progress: 1 })
})
