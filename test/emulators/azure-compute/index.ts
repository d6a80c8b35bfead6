/**
 * The Azure Compute emulator lives in src/platforms/azure/emulator/ (the demo starts it too); tests import it
 * from here. startAzureCompute() = Azurite (test/harness/azurite.ts) + emulator + a platform config.
 */
import { sandboxAccounts, startAzureSandbox } from '../../../src/platforms/azure/sandbox.ts';
import type { AzureSandbox, AzureSandboxOptions } from '../../../src/platforms/azure/sandbox.ts';
import { startAzurite } from '../../harness/azurite.ts';

export { ComputeEmulator } from '../../../src/platforms/azure/emulator/index.ts';

export async function startAzureCompute(
  opts: Omit<AzureSandboxOptions, 'azurite'> = {},
): Promise<AzureSandbox> {
  const azurite = await startAzurite(sandboxAccounts(opts.regions), { inMemory: true });
  try {
    const sb = await startAzureSandbox({ ...opts, azurite });
    return {
      ...sb,
      stop: async () => {
        await sb.stop();
        await azurite.stop();
      },
    };
  } catch (err) {
    await azurite.stop();
    throw err;
  }
}
