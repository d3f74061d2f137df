export default {
  test: {
    include: ["conformance.test.mjs"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // The suite's tests use unique stream names and may run concurrently.
    reporters: ["default"],
  },
}
