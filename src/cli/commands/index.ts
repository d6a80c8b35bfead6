import type { Command } from 'commander';
import { registerControl } from './control.ts';
import { registerDemo } from './demo.ts';
import { registerDr } from './dr.ts';
import { registerKube } from './kube.ts';
import { registerRepo } from './repo.ts';
import { registerServer } from './server.ts';

/** Each command module registers its verbs on the root program. Add a module here to add verbs. */
export type Register = (program: Command) => void;

export const modules: Register[] = [
  registerRepo,
  registerControl,
  registerDemo,
  registerDr,
  registerServer,
  registerKube,
];
