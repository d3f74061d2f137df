// Starts the upstream Node reference server (@durable-streams/server@0.3.7)
// for side-by-side benchmarks. Usage: node server.mjs [--data-dir DIR] [--long-poll-ms N]
// Prints `listening on URL` on stdout once bound, like `weir serve`.
import { DurableStreamTestServer } from "@durable-streams/server"

const args = process.argv.slice(2)
const opt = (name) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : undefined
}
const server = new DurableStreamTestServer({
  host: "127.0.0.1",
  port: 0,
  dataDir: opt("--data-dir"),
  longPollTimeout: Number(opt("--long-poll-ms") ?? 20000),
  compression: false,
})
const url = await server.start()
console.log(`listening on ${url}`)
const stop = async () => {
  await server.stop()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
