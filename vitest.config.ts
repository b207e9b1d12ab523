import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests drive real daemons (sshd, libvirtd, Ceph, OpenStack) that share one
    // machine: running their files in parallel only adds contention and flaky timeouts.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 300_000,
    reporters: ['default'],
  },
});
