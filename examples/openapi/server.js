import { build } from './app.js'

const app = await build()
const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'
await app.listen({ port, host })
app.log.info(`the document: http://${host}:${port}/documentation/json, the UI: http://${host}:${port}/documentation`)

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    app.log.info(`${signal}: closing`)
    app.close().then(() => process.exit(0), () => process.exit(1))
  })
}
