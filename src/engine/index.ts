/** Public surface of the engine: the TernService facade and what exporters need to plug in. */
// Registers the 'snapshot-copy' exporter (cross-region copy, src/engine/dr/).
import './dr/engine-exporter.ts';
export type * from './service.ts';
export { Engine, openEngine, platformConfig, type EngineOptions } from './engine.ts';
export {
  registerExporter,
  getExporter,
  exporterKinds,
  type Exporter,
  type ExporterKind,
  type ExportContext,
  type ExportResult,
  type ExpireContext,
} from './exporter.ts';
export { datamoverExporter, openRepository, repositoryUrl, storeOptions } from './datamover.ts';
export { selectRetention, periodKey } from '../core/retention.ts';
export { Scheduler, nextCronTime, latestDue } from './scheduler.ts';
export {
  ActionRunner,
  DEFAULT_RETRY,
  ShutdownError,
  type RetryPolicy,
  type ActionHandler,
} from './runner.ts';
