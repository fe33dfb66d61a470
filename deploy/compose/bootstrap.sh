#!/bin/sh
# One-shot setup of the compose network (deploy/compose/docker-compose.yml), idempotent:
# keys for node-1..4 and full-1, the contracts deployed on the `chain` container with the
# four validators staked, and one node.toml each (`devsen node init`). Runs in the `bootstrap`
# container; the node containers start when it exits 0.
set -eu
NET="${DEVSEN_NET:-/net}"
RPC="${DEVSEN_RPC:-http://172.28.0.2:8545}"
MIN_STAKE=1000000000   # 1,000 DCT (6 decimals) per validator
if [ -f "$NET/deployment.json" ]; then
  echo "bootstrap: $NET/deployment.json exists; nothing to do"
  exit 0
fi
NODES="node-1 node-2 node-3 node-4 full-1"
for n in $NODES; do
  devsen keys init --dir "$NET/$n/keys" >/dev/null
done
ip_of() {  # the fixed addresses of docker-compose.yml
  case "$1" in node-1) echo 172.28.0.11;; node-2) echo 172.28.0.12;; node-3) echo 172.28.0.13;;
    node-4) echo 172.28.0.14;; full-1) echo 172.28.0.15;; esac
}
address() { devsen keys show --dir "$NET/$1/keys" | awk '/validator address/ {print $3}'; }
peer() { devsen keys show --dir "$NET/$1/keys" | awk '/peer id/ {print $4}'; }
VALIDATORS="$(address node-1),$(address node-2),$(address node-3),$(address node-4)"
# anvil wrote its funded dev accounts to anvil.json (--config-out): the first one deploys.
python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['private_keys'][0])" "$NET/anvil.json" \
  > "$NET/deployer.key"
devsen chain deploy --rpc "$RPC" --validators "$VALIDATORS" --out "$NET/deployment.json.tmp" \
  --key-file "$NET/deployer.key" --faucet --fund "$VALIDATORS,$(address full-1)" \
  --token-supply $((4 * MIN_STAKE)) --min-stake "$MIN_STAKE" --min-operator-stake "$MIN_STAKE" --genesis-stake "$MIN_STAKE" --unbonding 600
BOOT="/ip4/$(ip_of node-1)/tcp/4001/p2p/$(peer node-1)"
for n in $NODES; do
  devsen node init --dir "$NET/$n" --network "$NET/deployment.json.tmp" --use-existing-keys \
    --host 0.0.0.0 --public-host "$(ip_of "$n")" --rpc "$RPC" --bootstrap "$BOOT" >/dev/null
done
mv "$NET/deployment.json.tmp" "$NET/deployment.json"
echo "bootstrap: network deployed; validators $VALIDATORS"
