// node-oidc-provider configured like bench/as.py's dpopkit server: client_credentials with
// client_secret_basic, DPoP required for the client (ES256 proofs, replay detection on, no
// nonce), ES256 JWT access tokens (RFC 9068 via resource indicators).
//
// Storage is durable, like dpopkit's default: every model node-oidc-provider saves goes to a
// SQLite file (WAL, synchronous=NORMAL: the settings of dpopkit's SQLite stores). For this
// scenario that is one row per token request: the DPoP proof's replay record
// (ReplayDetection). node-oidc-provider does not save JWT access tokens; the client is static
// configuration.
// Usage: node server.mjs PORT [DATABASE_FILE]   (default: an in-memory database)
import { generateKeyPairSync } from 'node:crypto';
import Database from 'better-sqlite3';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const db = new Database(process.argv[3] ?? ':memory:');
db.pragma('journal_mode = WAL');
db.pragma('synchronous = NORMAL');
db.exec(`CREATE TABLE IF NOT EXISTS models (
  model TEXT NOT NULL, id TEXT NOT NULL, payload TEXT NOT NULL, expires_at INTEGER,
  grant_id TEXT, user_code TEXT, uid TEXT, PRIMARY KEY (model, id))`);
const sql = {
  upsert: db.prepare(`INSERT INTO models (model, id, payload, expires_at, grant_id, user_code, uid)
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, id) DO UPDATE SET payload = excluded.payload,
    expires_at = excluded.expires_at, grant_id = excluded.grant_id,
    user_code = excluded.user_code, uid = excluded.uid`),
  find: db.prepare('SELECT payload, expires_at FROM models WHERE model = ? AND id = ?'),
  byUserCode: db.prepare('SELECT payload, expires_at FROM models WHERE model = ? AND user_code = ?'),
  byUid: db.prepare('SELECT payload, expires_at FROM models WHERE model = ? AND uid = ?'),
  destroy: db.prepare('DELETE FROM models WHERE model = ? AND id = ?'),
  byGrant: db.prepare('DELETE FROM models WHERE grant_id = ?'),
};

const live = (row) => {
  if (!row || (row.expires_at !== null && row.expires_at <= Date.now())) return undefined;
  return JSON.parse(row.payload);
};

// The storage adapter interface of node-oidc-provider, on the SQLite file above.
class SQLiteAdapter {
  constructor(model) { this.model = model; }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : null;
    sql.upsert.run(this.model, id, JSON.stringify(payload), expiresAt,
      payload.grantId ?? null, payload.userCode ?? null, payload.uid ?? null);
  }

  async find(id) { return live(sql.find.get(this.model, id)); }

  async findByUserCode(userCode) { return live(sql.byUserCode.get(this.model, userCode)); }

  async findByUid(uid) { return live(sql.byUid.get(this.model, uid)); }

  async consume(id) {
    const found = await this.find(id);
    if (found) {
      found.consumed = Math.floor(Date.now() / 1000);
      const row = sql.find.get(this.model, id);
      sql.upsert.run(this.model, id, JSON.stringify(found), row.expires_at,
        found.grantId ?? null, found.userCode ?? null, found.uid ?? null);
    }
  }

  async destroy(id) { sql.destroy.run(this.model, id); }

  async revokeByGrantId(grantId) { sql.byGrant.run(grantId); }
}

const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'k1', alg: 'ES256', use: 'sig' };
const resource = 'https://api.bench';

const provider = new Provider(issuer, {
  adapter: SQLiteAdapter,
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
