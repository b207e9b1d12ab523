/** When abortJob counts the backup job as gone (hypervisor.ts backupJobGone): only on an answer that says so. */
import { describe, expect, it } from 'vitest';
import { backupJobGone } from '../../../strategies/libvirt-ssh/hypervisor.js';

const ok = (stdout: string) => ({ code: 0, stdout, stderr: '' });
const failed = (stderr: string) => ({ code: 1, stdout: '', stderr });
const NONE = 'Job type:         None\n';
const BACKUP = 'Job type:         Unbounded\nOperation:        Backup\n';
const NO_BACKUP = failed('error: Requested operation is not valid: no domain backup job with id \'0\'\n');

describe('backupJobGone', () => {
  it('gone: domjobinfo ran and shows no Backup job, and backup-dumpxml says there is none', () => {
    expect(backupJobGone([ok(NONE), NO_BACKUP])).toBe(true);
    // Another kind of job running is not ours to wait for.
    expect(backupJobGone([ok('Job type: Unbounded\nOperation: Outgoing migration\n'), NO_BACKUP])).toBe(true);
    // A domain that stopped has no job either.
    expect(backupJobGone([failed('error: Requested operation is not valid: domain is not running\n'), failed('error: domain is not running\n')])).toBe(true);
  });

  it('still there: either query shows the job', () => {
    expect(backupJobGone([ok(BACKUP), NO_BACKUP])).toBe(false);
    expect(backupJobGone([ok(NONE), ok('<domainbackup mode="pull">…</domainbackup>\n')])).toBe(false);
  });

  it('a poll that failed for another reason (lost connection, not run) does not count as gone', () => {
    expect(backupJobGone([failed('error: failed to connect to the hypervisor\n'), NO_BACKUP])).toBe(false);
    expect(backupJobGone([ok(NONE), failed('error: internal error: client socket is closed\n')])).toBe(false);
    expect(backupJobGone([{ code: undefined, stdout: '', stderr: 'the persistent virsh was lost before it answered' }, NO_BACKUP])).toBe(false);
  });
});
