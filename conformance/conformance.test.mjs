// The official Durable Streams conformance suite (pinned in package.json),
// run against the server at WEIR_URL. Its own CLI does not work when
// installed from the registry, so we import the test factory directly.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.WEIR_URL
if (!baseUrl) {
  throw new Error("set WEIR_URL to the server under test, e.g. http://127.0.0.1:4437")
}

runConformanceTests({
  baseUrl,
  // Must match the server's long-poll timeout (500 ms in the conformance profile).
  longPollTimeoutMs: Number(process.env.WEIR_LONG_POLL_MS ?? 500),
  subscriptions: true,
})
