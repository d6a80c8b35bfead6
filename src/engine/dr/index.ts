/** Cross-region DR: exporters (datamover, snapshot copy), export runs, import at the DR site, restore, report. */
export * from './types.ts';
export { DatamoverExporter, openRepository, type DatamoverExporterOptions } from './datamover.ts';
export { SnapshotCopyExporter, type SnapshotCopyExporterOptions } from './snapshot-copy.ts';
export { runExport, type ExportRunOptions, type ExportRunResult } from './export.ts';
export { importRestorePoints, listImportable, type ImportOptions, type ImportResult } from './import.ts';
export {
  restoreAtDr,
  restoreImported,
  pickRestorePoint,
  type RestoreOptions,
  type RestoreResult,
  type StreamTarget,
} from './restore.ts';
export { drReport, type AppReport, type PathReport } from './report.ts';
export { readStreamDetails, type StreamDetails } from './token.ts';
export { listRecords, publishRecord, recordKey } from './records.ts';
export {
  DrStateStore,
  SourceStateStore,
  type DrState,
  type ImportStream,
  type ImportPolicy,
  ImportPolicySchema,
  type ImportedRestorePoint,
  type RestoreRun,
  type SourceState,
} from './state.ts';
export { DrService, type DrServiceOptions } from './service.ts';
export { publishExportDetails, type PublishOptions, type PublishResult } from './engine-publish.ts';
export { snapshotCopyExporter } from './engine-exporter.ts';
