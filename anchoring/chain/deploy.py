"""Deploy the DEVSEN contracts and describe where they are (`Deployment`, a JSON file).

`deploy_all` deploys ChargeToken, ValidatorSet (which holds the validators' stake in that
token, contracts/STAKING.md), UserRegistry, DeviceFactory, Escrow, Anchor and Rewards in that
order from one key; `deploy_main` is the `devsen chain deploy` command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

from anchoring.chain.errors import ChainError
from anchoring.chain.transact import TransactionSender, connect
from contracts import load_artifact
from primitives.eip712 import Domain

DEPLOYMENT_FORMAT = "devsen-deployment/1"
DEFAULT_REFUND_TIMEOUT_S = 24 * 3600
DEFAULT_INITIAL_HEIGHT = 1
DEFAULT_UNBONDING_S = 14 * 24 * 3600
DEFAULT_SLASH_BPS = 5_000  # one double-sign takes half the stake
DEFAULT_REPORTER_SHARE_BPS = 1_000  # 10 % of it to the reporter, the rest locked for good
# ValidatorSet.minOperatorStake: 1,000 DCT (6 decimals). Never zero (the constructor refuses it):
# with nothing to bond, anyone could take all MAX_OPERATORS = 256 operator slots (contracts/STAKING.md).
DEFAULT_MIN_OPERATOR_STAKE = 1_000 * 10**6
MIN_OPERATOR_STAKE_FIX = (f"give --min-operator-stake a positive number of ChargeToken base units (default "
                          f"{DEFAULT_MIN_OPERATOR_STAKE} = 1,000 DCT): with 0 anyone could take all 256 operator "
                          f"slots for one base unit each (contracts/STAKING.md \"Operators\")")
DEPLOY_GAS = {
    "ValidatorSet": 6_000_000,
    "UserRegistry": 1_500_000,
    "DeviceFactory": 2_500_000,
    "ChargeToken": 1_500_000,
    "Escrow": 4_000_000,
    "Anchor": 1_500_000,
    "Rewards": 1_500_000,
}
DEPLOY_GAS_PER_VALIDATOR = 120_000
KEY_ENV = "DEVSEN_DEPLOYER_KEY"
FUND_ETH_GAS = 21_000
FUND_TOKEN_GAS = 100_000
BOND_GAS = 120_000
FAUCET_MAX_PER_CALL = 1_000_000 * 10**6  # ChargeToken.FAUCET_MAX_PER_CALL


@dataclass(frozen=True, slots=True)
class ValidatorSpec:
    """An epoch-0 validator: address, libp2p peer id bytes, OCPP endpoint URL."""

    address: str
    peer_id: bytes = b""
    endpoint: str = ""


@dataclass(frozen=True, slots=True)
class StakingParams:
    """ValidatorSet staking parameters (contracts/STAKING.md); stakes in token base units."""

    min_stake: int = 0
    unbonding_s: int = DEFAULT_UNBONDING_S
    slash_bps: int = DEFAULT_SLASH_BPS
    reporter_share_bps: int = DEFAULT_REPORTER_SHARE_BPS
    min_operator_stake: int = DEFAULT_MIN_OPERATOR_STAKE

    def __post_init__(self) -> None:
        if self.min_stake < 0:
            raise ValueError("min_stake must be >= 0 token base units")
        if self.min_operator_stake <= 0 or self.min_operator_stake >= 1 << 256:
            raise ValueError(f"min_operator_stake: {self.min_operator_stake} is not allowed; {MIN_OPERATOR_STAKE_FIX}")
        if not 0 <= self.unbonding_s < 1 << 63:
            raise ValueError("unbonding_s must be >= 0 seconds")
        for name in ("slash_bps", "reporter_share_bps"):
            if not 0 <= getattr(self, name) <= 10_000:
                raise ValueError(f"{name} must be in 0..10000 (basis points)")


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the contracts of one DEVSEN network live."""

    chain_id: int
    deploy_block: int
    validator_set: str
    user_registry: str
    device_factory: str
    charge_token: str
    escrow: str
    anchor: str
    rewards: str = ""  # Rewards (uptime rewards); "" in deployments made before it existed

    def addresses(self) -> dict[str, str]:
        """Contract name -> checksum address."""
        return {
            "ValidatorSet": self.validator_set,
            "UserRegistry": self.user_registry,
            "DeviceFactory": self.device_factory,
            "ChargeToken": self.charge_token,
            "Escrow": self.escrow,
            "Anchor": self.anchor,
            **({"Rewards": self.rewards} if self.rewards else {}),
        }

    def domain(self, contract: str) -> Domain:
        """The EIP-712 domain of `contract` ("ValidatorSet", "Escrow", "Anchor", "Rewards", or
        "DeviceFactory": device managers' commands to their chargers, devsen/ledger/commands.py)."""
        if contract not in ("ValidatorSet", "Escrow", "Anchor", "Rewards", "DeviceFactory") \
                or contract not in self.addresses():
            raise ValueError(f"{contract} has no signing domain")
        return Domain(self.chain_id, bytes.fromhex(self.addresses()[contract][2:]))

    def to_json(self) -> str:
        return json.dumps({"format": DEPLOYMENT_FORMAT, **asdict(self)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        data: dict[str, Any] = json.loads(text)
        if not isinstance(data, dict) or data.pop("format", None) != DEPLOYMENT_FORMAT:
            raise ValueError(f"not a {DEPLOYMENT_FORMAT} file")
        try:
            deployment = cls(**data)
        except TypeError as exc:
            raise ValueError(f"bad deployment file: {exc}") from exc
        for address in deployment.addresses().values():
            if not Web3.is_checksum_address(address):
                raise ValueError(f"bad address {address!r} in deployment")
        return deployment

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        return cls.from_json(path.read_text())


def deploy_all(
    sender: TransactionSender,
    validators: list[ValidatorSpec],
    *,
    refund_timeout_s: int = DEFAULT_REFUND_TIMEOUT_S,
    initial_height: int = DEFAULT_INITIAL_HEIGHT,
    token_supply: int = 0,
    faucet: bool = False,
    admin: str | None = None,
    reward_epoch_budget: int = 0,
    reward_epoch_s: int = 3600,
    staking: StakingParams | None = None,
    genesis_stake: int = 0,
) -> Deployment:
    """Deploy every contract from `sender`'s key. Validators are sorted by address here;
    the token supply goes to the deployer; `admin` (default deployer) grants operator roles;
    `genesis_stake` base units of that supply are bonded for each bootstrap validator."""
    if not validators:
        raise ValueError("at least one validator")
    if genesis_stake < 0 or genesis_stake * len(validators) > token_supply:
        raise ValueError(f"genesis_stake: {genesis_stake} for each of {len(validators)} validators needs a "
                         f"token_supply of at least {genesis_stake * len(validators)} base units")
    ordered = sorted(validators, key=lambda v: bytes.fromhex(v.address.removeprefix("0x")))
    w3 = sender.w3
    chain_id = sender.rpc(lambda: w3.eth.chain_id)
    addresses: dict[str, str] = {}
    blocks: list[int] = []

    def deploy(name: str, *args: Any, extra_gas: int = 0) -> str:
        artifact = load_artifact(name)
        receipt = sender.deploy(artifact["abi"], artifact["bytecode"], args, gas=DEPLOY_GAS[name] + extra_gas)
        assert receipt.contract_address is not None
        blocks.append(receipt.block_number)
        addresses[name] = Web3.to_checksum_address(receipt.contract_address)
        return addresses[name]

    stake = staking or StakingParams()
    deploy("ChargeToken", sender.address, token_supply, faucet)
    first = deploy(
        "ValidatorSet",
        [Web3.to_checksum_address(v.address) for v in ordered],
        [v.peer_id for v in ordered],
        [v.endpoint for v in ordered],
        (addresses["ChargeToken"], stake.min_stake, stake.unbonding_s, stake.slash_bps, stake.reporter_share_bps,
         stake.min_operator_stake),
        extra_gas=DEPLOY_GAS_PER_VALIDATOR * len(ordered),
    )
    if genesis_stake:
        token = w3.eth.contract(address=Web3.to_checksum_address(addresses["ChargeToken"]),
                                abi=load_artifact("ChargeToken")["abi"])
        validator_set = w3.eth.contract(address=Web3.to_checksum_address(first), abi=load_artifact("ValidatorSet")["abi"])
        sender.send(token.functions.approve(first, genesis_stake * len(ordered)), gas=FUND_TOKEN_GAS)
        for v in ordered:
            sender.send(validator_set.functions.bondFor(Web3.to_checksum_address(v.address), genesis_stake),
                        gas=BOND_GAS)
    deploy("UserRegistry", admin or sender.address)
    deploy("DeviceFactory", addresses["UserRegistry"])
    deploy(
        "Escrow",
        addresses["ChargeToken"],
        first,
        addresses["DeviceFactory"],
        addresses["UserRegistry"],
        refund_timeout_s,
    )
    deploy("Anchor", first, initial_height)
    deploy("Rewards", addresses["ChargeToken"], first, reward_epoch_budget, reward_epoch_s)
    return Deployment(
        chain_id=chain_id,
        deploy_block=blocks[1],  # the ValidatorSet's block: the genesis set is readable from it
        validator_set=addresses["ValidatorSet"],
        user_registry=addresses["UserRegistry"],
        device_factory=addresses["DeviceFactory"],
        charge_token=addresses["ChargeToken"],
        escrow=addresses["Escrow"],
        anchor=addresses["Anchor"],
        rewards=addresses["Rewards"],
    )


def fund_devnet_accounts(
    sender: TransactionSender, deployment: Deployment, accounts: list[str], *, eth_wei: int, tokens: int
) -> None:
    """Devnet: send `eth_wei` from the sender and mint `tokens` from the faucet to each account."""
    if not accounts:
        return
    token = sender.w3.eth.contract(address=Web3.to_checksum_address(deployment.charge_token), abi=load_artifact("ChargeToken")["abi"])
    for account in accounts:
        if eth_wei:
            sender.send_data(account, b"", gas=FUND_ETH_GAS, value=eth_wei)
        remaining = tokens
        while remaining > 0:
            amount = min(remaining, FAUCET_MAX_PER_CALL)
            sender.send(token.functions.faucetMint(account, amount), gas=FUND_TOKEN_GAS)
            remaining -= amount


def _addresses(text: str) -> list[str]:
    """Checksum addresses from a comma-separated list; ValueError on a bad one."""
    result: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not Web3.is_address(item):
            raise ValueError(f"not an address: {item!r}")
        result.append(Web3.to_checksum_address(item))
    return result


def _read_key(args: argparse.Namespace) -> str:
    if args.key_file:
        return Path(args.key_file).read_text().strip()
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise ValueError(f"give --key-file or set {KEY_ENV} to the deployer's private key (hex)")
    return key


def _staking_params(args: argparse.Namespace) -> StakingParams:
    if args.min_operator_stake <= 0:
        raise ValueError(f"--min-operator-stake: {args.min_operator_stake} is refused; {MIN_OPERATOR_STAKE_FIX}")
    return StakingParams(args.min_stake, args.unbonding, args.slash_bps, args.reporter_share_bps,
                         args.min_operator_stake)


def deploy_main(argv: list[str]) -> int:
    """`devsen chain deploy`: deploy all contracts to --rpc and write --out. Returns an exit code.
    `argv` may start with the word "deploy" (as `devsen chain` passes it)."""
    if argv[:1] == ["deploy"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="devsen chain deploy", description=__doc__)
    parser.add_argument("--rpc", required=True, help='JSON-RPC URL (http://...), or "tester"')
    parser.add_argument("--validators", required=True, help="comma-separated validator addresses")
    parser.add_argument("--out", required=True, type=Path, help="deployment file to write")
    parser.add_argument("--key-file", help=f"file with the deployer key (hex); else ${KEY_ENV}")
    parser.add_argument("--refund-timeout", type=int, default=DEFAULT_REFUND_TIMEOUT_S, help="seconds")
    parser.add_argument("--initial-height", type=int, default=DEFAULT_INITIAL_HEIGHT)
    parser.add_argument("--token-supply", type=int, default=0, help="base units minted to the deployer")
    parser.add_argument("--faucet", action="store_true", help="devnet: enable ChargeToken.faucetMint")
    parser.add_argument("--fund", default="", help="devnet: comma-separated accounts to give ETH and tokens")
    parser.add_argument("--fund-eth-wei", type=int, default=10**18)
    parser.add_argument("--fund-tokens", type=int, default=1_000 * 10**6, help="base units (needs --faucet)")
    parser.add_argument("--reward-budget", type=int, default=0,
                        help="uptime rewards per epoch, token base units (Rewards.epochBudget; 0 = none)")
    parser.add_argument("--reward-epoch", type=int, default=3600, help="reward epoch, seconds of block time")
    parser.add_argument("--min-stake", type=int, default=0,
                        help="ChargeToken base units every member of an approved validator set must bond")
    parser.add_argument("--min-operator-stake", type=int, default=DEFAULT_MIN_OPERATOR_STAKE,
                        help="ChargeToken base units a full node must bond to register as an operator "
                             "(ValidatorSet.minOperatorStake; must be > 0; default 1,000 DCT)")
    parser.add_argument("--unbonding", type=int, default=DEFAULT_UNBONDING_S, help="unbonding period, seconds")
    parser.add_argument("--genesis-stake", type=int, default=0,
                        help="base units of --token-supply bonded for each bootstrap validator")
    parser.add_argument("--slash-bps", type=int, default=DEFAULT_SLASH_BPS, help="stake share one offence takes")
    parser.add_argument("--reporter-share-bps", type=int, default=DEFAULT_REPORTER_SHARE_BPS,
                        help="share of a slash paid to the evidence submitter")
    args = parser.parse_args(argv)
    try:
        validators = [ValidatorSpec(a) for a in _addresses(args.validators)]
        staking = _staking_params(args)  # before any RPC: a bad value costs nothing
        funded = _addresses(args.fund)
        if funded and args.fund_tokens and not args.faucet:
            raise ValueError("--fund with tokens needs --faucet (a devnet token)")
        sender = TransactionSender(connect(args.rpc), _read_key(args))
        deployment = deploy_all(
            sender,
            validators,
            refund_timeout_s=args.refund_timeout,
            initial_height=args.initial_height,
            token_supply=args.token_supply,
            faucet=args.faucet,
            reward_epoch_budget=args.reward_budget,
            reward_epoch_s=args.reward_epoch,
            staking=staking,
            genesis_stake=args.genesis_stake,
        )
        fund_devnet_accounts(sender, deployment, funded, eth_wei=args.fund_eth_wei, tokens=args.fund_tokens)
    except (ValueError, OSError, ChainError) as exc:
        print(f"devsen chain deploy: {exc}", file=sys.stderr)
        return 1
    deployment.save(args.out)
    print(f"deployed to chain {deployment.chain_id} at block {deployment.deploy_block}: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(deploy_main(sys.argv[1:]))
