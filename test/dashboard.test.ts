import { gunzipSync } from 'node:zlib'
import Fastify from 'fastify'
import t from 'tap'
import taskApi from '../dist/index.js'
import { dashboardPolicy, dashboardSizes, loadDashboard } from '../dist/dashboard-assets.js'
import { build, childExecArgv, fixture, pluginTimeout } from './helpers.js'

/*
 * The dashboard as the server serves it: the option's rules, the page and its two
 * assets (types, CSP, gzip, ETags, caching), and the size budget. What the page does
 * in a browser is test/dashboard-browser.test.ts.
 */

/** The budget for the page, its script and its style together, gzipped (README, Dashboard). */
const budget = 24 * 1024

t.test('dashboard: true needs the list, and a boolean', async (t) => {
  const register = async (options: Record<string, unknown>): Promise<unknown> => {
    const app = Fastify({ pluginTimeout })
    try {
      await app.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv, ...options })
      await app.ready()
      return undefined
    } catch (err) {
      return err
    } finally {
      await app.close()
    }
  }
  t.match(await register({ dashboard: true }), {
    code: 'FST_TASK_API_OPT_INVALID',
    message: /options\.dashboard must be used with owner or auth .*or with list: true/,
  }, 'without owner, auth or list: true every visitor would see every task: refused')
  t.match(await register({ dashboard: true, owner: () => 'a', list: false }), { code: 'FST_TASK_API_OPT_INVALID', message: /dashboard must be false while list is false/ })
  t.match(await register({ dashboard: 'yes', list: true }), { code: 'FST_TASK_API_OPT_INVALID', message: /options\.dashboard must be a boolean/ })
  t.equal(await register({ dashboard: true, list: true }), undefined, 'with list: true')
  t.equal(await register({ dashboard: true, owner: () => 'a' }), undefined, 'with owner')
})

t.test('the page and its assets', async (t) => {
  const app = await build(t, { dashboard: true, list: true })
  const assets = await loadDashboard()
  const page = await app.inject({ url: '/tasks/dashboard' })
  t.equal(page.statusCode, 200)
  t.equal(page.headers['content-type'], 'text/html; charset=utf-8')
  t.equal(page.headers['content-security-policy'], dashboardPolicy)
  t.match(dashboardPolicy, /script-src 'self';/, 'no inline script may run')
  t.equal(page.headers['x-frame-options'], 'DENY')
  t.equal(page.headers['cache-control'], 'no-cache')
  t.notOk(page.body.includes('{{'), 'every placeholder is filled')
  t.match(page.body, `src="/tasks/dashboard/app.js?v=${assets.version}"`)
  t.match(page.body, `href="/tasks/dashboard/app.css?v=${assets.version}"`)
  t.notMatch(page.body, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script')
  t.notMatch(page.body, /\sstyle=/, 'no inline style')

  for (const [name, type] of [['app.js', 'text/javascript; charset=utf-8'], ['app.css', 'text/css; charset=utf-8']] as const) {
    const body = name === 'app.js' ? assets.script : assets.style
    const plain = await app.inject({ url: `/tasks/dashboard/${name}?v=${assets.version}` })
    t.equal(plain.statusCode, 200, name)
    t.equal(plain.headers['content-type'], type, name)
    t.equal(plain.headers['content-encoding'], undefined, `${name}: as it is to a client that takes no gzip`)
    t.same(plain.rawPayload, body, name)
    t.equal(plain.headers['cache-control'], 'public, max-age=31536000, immutable', `${name}: cached for good under its version`)
    t.equal(plain.headers['x-content-type-options'], 'nosniff')
    const zipped = await app.inject({ url: `/tasks/dashboard/${name}`, headers: { 'accept-encoding': 'gzip, deflate, br' } })
    t.equal(zipped.headers['content-encoding'], 'gzip', `${name}: gzipped for a client that takes it`)
    t.equal(zipped.headers.vary, 'accept-encoding')
    t.same(gunzipSync(zipped.rawPayload), body, `${name}: the same bytes`)
    t.ok(zipped.rawPayload.length < body.length / 2, `${name}: smaller`)
    t.equal(zipped.headers['cache-control'], 'no-cache', `${name}: without the version it is revalidated`)
    const again = await app.inject({ url: `/tasks/dashboard/${name}`, headers: { 'if-none-match': String(plain.headers.etag) } })
    t.equal(again.statusCode, 304, `${name}: 304 for its ETag`)
    t.equal(again.body, '')
  }
  const slash = await app.inject({ url: '/tasks/dashboard/' })
  t.equal(slash.statusCode, 302)
  t.equal(slash.headers.location, '/tasks/dashboard')
  t.equal((await app.inject({ url: '/tasks/dashboard/nothing.js' })).statusCode, 404)
})

t.test('the prefix is written into the page, escaped', async (t) => {
  const app = await build(t, { dashboard: true, list: true, prefix: '/a&b' })
  const page = await app.inject({ url: '/a&b/dashboard' })
  t.equal(page.statusCode, 200)
  t.match(page.body, 'src="/a&#38;b/dashboard/app.js?v=')
  t.notMatch(page.body, '/a&b/', 'never raw')
})

t.test('without the option there is no page; with auth the page is public and the data is not', async (t) => {
  const off = await build(t, { list: true })
  t.equal((await off.inject({ url: '/tasks/dashboard' })).statusCode, 404)
  t.equal((await off.inject({ url: '/tasks/dashboard/app.js' })).statusCode, 404)
  const guarded = await build(t, {
    dashboard: true,
    auth: [async (request) => { if (request.headers.authorization !== 'Bearer ok') throw new Error('who are you?') }],
  })
  t.equal((await guarded.inject({ url: '/tasks/dashboard' })).statusCode, 200, 'the page holds no data: a browser signing in with a token must load it first')
  t.equal((await guarded.inject({ url: '/tasks' })).statusCode, 401, 'the list it reads is guarded')
  t.equal((await guarded.inject({ url: '/tasks', headers: { authorization: 'Bearer ok' } })).statusCode, 200)
})

t.test(`the page, its script and its style weigh at most ${budget} bytes gzipped`, async (t) => {
  const sizes = dashboardSizes(await loadDashboard())
  t.comment(`gzip: page ${sizes.html} B, app.js ${sizes.script} B, app.css ${sizes.style} B, total ${sizes.total} B (budget ${budget} B)`)
  t.ok(sizes.total <= budget, `${sizes.total} B <= ${budget} B`)
  t.ok(sizes.script > 1000 && sizes.style > 200, 'the bundle was built with its content')
})
