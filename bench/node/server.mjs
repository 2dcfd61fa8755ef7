// node-oidc-provider configured like bench/as.py's dpopkit server: client_credentials with
// client_secret_basic, DPoP required for the client (ES256 proofs, replay detection on, no
// nonce), ES256 JWT access tokens (RFC 9068 via resource indicators), in-memory storage.
// Usage: node server.mjs PORT
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'k1', alg: 'ES256', use: 'sig' };
const resource = 'https://api.bench';

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'bench',
    client_secret: 'bench-secret-value',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    dpop_bound_access_tokens: true,
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [jwk] },
  ttl: { ClientCredentials: 300 },
  enabledJWA: { dPoPSigningAlgValues: ['ES256'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    dPoP: { enabled: true, requireNonce: () => false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'read',
        audience: resource,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 300,
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.listen(port, '127.0.0.1', () => process.stderr.write(`node-oidc-provider on ${issuer}\n`));
