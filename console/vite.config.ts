import { defineConfig } from 'vite';

// `npm run dev` proxies the API to a running `bulkhead serve` (BULKHEAD_API, default
// http://127.0.0.1:8080); `npm run build` writes dist/, which `bulkhead serve
// --console-dir console/dist` serves.
export default defineConfig({
  base: './',
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 1500 },
  server: {
    proxy: {
      '/api': process.env.BULKHEAD_API ?? 'http://127.0.0.1:8080',
      '/healthz': process.env.BULKHEAD_API ?? 'http://127.0.0.1:8080',
    },
  },
  test: { environment: 'node', include: ['test/**/*.test.ts'] },
});
