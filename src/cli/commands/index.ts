/**
 * The table of command groups. Each group module defines its commands and options with
 * commander and names the module that implements them, which is imported only when run.
 */
import type { Command } from 'commander';
import type { Action } from '../main.js';
import { backupCommands } from './backup.js';
import { cleanupCommands } from './cleanup.js';
import { inventoryCommands } from './inventory.js';
import { openstackCommands } from './openstack.js';
import { repositoryCommands } from './repository.js';

/** Wraps a lazily loaded action into a commander action handler. */
export type Bind = (load: () => Promise<Action>) => (...args: unknown[]) => Promise<void>;
export type CommandGroup = (program: Command, bind: Bind) => void;

export const commandGroups: CommandGroup[] = [inventoryCommands, backupCommands, repositoryCommands, openstackCommands, cleanupCommands];
