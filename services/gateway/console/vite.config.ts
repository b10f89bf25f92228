import { defineConfig } from "vite";

// The gateway serves the build at /console/ from the binary (rust-embed): relative to that base,
// hashed file names under assets/ (cached for a year), no source maps shipped.
export default defineConfig({
  base: "/console/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 200 },
  // `npm run dev` serves the page with hot reload against a running `make run`.
  server: {
    proxy: Object.fromEntries(
      ["/pagos", "/campaigns", "/api", "/event-collector", "/console/api"].map((p) => [p, "http://127.0.0.1:8000"]),
    ),
  },
});
