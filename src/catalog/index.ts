/** Public surface of the catalog (SQLite control-plane state). */
export {
  Catalog,
  type CatalogOptions,
  type PolicyRow,
  type ActionQuery,
  type RestorePointQuery,
} from './catalog.ts';
export { SecretBox, loadMasterKey, parseMasterKey } from './secrets.ts';
export { MIGRATIONS } from './migrations.ts';
