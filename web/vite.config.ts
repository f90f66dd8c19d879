import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The gateway package serves the build (services/gateway/.../static); see web.py there.
const outDir = fileURLToPath(
  new URL("../services/gateway/src/trajhub/gateway/static", import.meta.url),
);

export default defineConfig({
  base: "/",
  build: { outDir, emptyOutDir: true, chunkSizeWarningLimit: 1000 },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:5000",
      "/socket.io": { target: "ws://127.0.0.1:5000", ws: true },
    },
  },
});
