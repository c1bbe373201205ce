// Builds the dashboard's page (lib/dashboard, see README "Dashboard") into dist/dashboard:
// app.ts bundled and minified into app.js (an ES module), app.css minified, index.html
// copied. The plugin reads these three files when it is registered with `dashboard: true`.
import { copyFile, mkdir } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const source = fileURLToPath(new URL('../lib/dashboard/', import.meta.url))
const out = fileURLToPath(new URL('../dist/dashboard/', import.meta.url))
await mkdir(out, { recursive: true })
await Promise.all([
  build({
    entryPoints: [`${source}app.ts`],
    outfile: `${out}app.js`,
    bundle: true,
    format: 'esm',
    minify: true,
    platform: 'browser',
    target: 'es2020',
    logLevel: 'warning',
  }),
  build({
    entryPoints: [`${source}app.css`],
    outfile: `${out}app.css`,
    bundle: true,
    minify: true,
    logLevel: 'warning',
  }),
  copyFile(`${source}index.html`, `${out}index.html`),
])
