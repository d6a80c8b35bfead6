/**
 * ARM compute client on the real SDK, authenticated as a service principal (OAuth2 client credentials).
 * Against the emulator (plain http) the SDK's bearer policy refuses to send a token, so it is swapped for one
 * that does; https endpoints keep the SDK's policy.
 */
import { ComputeManagementClient } from '@azure/arm-compute';
import type { AccessToken, GetTokenOptions, TokenCredential } from '@azure/core-auth';
import { AuthError, UnavailableError } from '../../core/index.ts';
import type { ParsedAzureConfig } from './config.ts';

/** Client-credentials token source (what @azure/identity's ClientSecretCredential does, minus the dependency). */
export class ClientSecretTokenCredential implements TokenCredential {
  private readonly o: { tenant: string; clientId: string; clientSecret: string; authorityHost: string };
  private cache = new Map<string, AccessToken>();

  constructor(o: { tenant: string; clientId: string; clientSecret: string; authorityHost?: string }) {
    this.o = {
      ...o,
      authorityHost: (o.authorityHost ?? 'https://login.microsoftonline.com').replace(/\/+$/, ''),
    };
  }

  async getToken(scopes: string | string[], options?: GetTokenOptions): Promise<AccessToken> {
    const scope = Array.isArray(scopes) ? scopes.join(' ') : scopes;
    const hit = this.cache.get(scope);
    if (hit && hit.expiresOnTimestamp - 5 * 60_000 > Date.now()) return hit;
    const url = `${this.o.authorityHost}/${encodeURIComponent(this.o.tenant)}/oauth2/v2.0/token`;
    let res: Response;
    try {
      res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({
          grant_type: 'client_credentials',
          client_id: this.o.clientId,
          client_secret: this.o.clientSecret,
          scope,
        }),
        ...(options?.abortSignal ? { signal: options.abortSignal as AbortSignal } : {}),
      });
    } catch (err) {
      throw new UnavailableError(`cannot reach the Azure token endpoint ${this.o.authorityHost}`, {
        cause: err,
      });
    }
    const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
    if (!res.ok || typeof body['access_token'] !== 'string') {
      const why =
        typeof body['error_description'] === 'string' ? body['error_description'] : `HTTP ${res.status}`;
      throw new AuthError(
        `Azure AD refused service principal "${this.o.clientId}" in tenant "${this.o.tenant}": ${why}`,
        {
          details: { clientId: this.o.clientId, tenant: this.o.tenant },
        },
      );
    }
    const token: AccessToken = {
      token: body['access_token'],
      expiresOnTimestamp: Date.now() + Number(body['expires_in'] ?? 3600) * 1000,
      tokenType: 'Bearer',
    };
    this.cache.set(scope, token);
    return token;
  }
}

export function createComputeClient(cfg: ParsedAzureConfig): {
  client: ComputeManagementClient;
  credential: ClientSecretTokenCredential;
} {
  const credential = new ClientSecretTokenCredential({
    tenant: cfg.tenant,
    clientId: cfg.clientId,
    clientSecret: cfg.clientSecret,
    ...(cfg.authorityHost ? { authorityHost: cfg.authorityHost } : {}),
  });
  const endpoint = cfg.endpoint ?? 'https://management.azure.com';
  const insecure = endpoint.startsWith('http:');
  // 429s carry Retry-After; the SDK's throttling policy sleeps for it. Allow more turns than its default 3.
  const client = new ComputeManagementClient(credential, cfg.subscription, {
    endpoint,
    allowInsecureConnection: insecure,
    retryOptions: { maxRetries: 8, retryDelayInMs: 200, maxRetryDelayInMs: 30_000 },
  });
  if (insecure) {
    const scope = 'https://management.azure.com/.default';
    client.pipeline.removePolicy({ name: 'bearerTokenAuthenticationPolicy' });
    client.pipeline.addPolicy(
      {
        name: 'ternBearerOverHttp',
        async sendRequest(request, next) {
          const t = await credential.getToken(scope, { abortSignal: request.abortSignal });
          request.headers.set('authorization', `Bearer ${t.token}`);
          return next(request);
        },
      },
      { phase: 'Sign' },
    );
  }
  return { client, credential };
}
