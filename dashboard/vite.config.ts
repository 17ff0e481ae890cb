import { defineConfig } from "vitest/config";

export default defineConfig({
  // The gateway serves the build under /dashboard/ (and may sit behind a
  // path prefix), so asset URLs stay relative to index.html.
  base: "./",
  build: {
    // Relative to this directory, like every path in the config.
    outDir: "../gateway/static/dashboard",
    emptyOutDir: true,
    chunkSizeWarningLimit: 400,
  },
  server: {
    // `npm run dev` talks to a gateway running on its default port.
    proxy: { "/api": "http://localhost:5611" },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
