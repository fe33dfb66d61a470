"""Double-sign evidence on chain: vote-pair files, their checks, `devsen evidence`, and the
node's automatic reporter (contracts/STAKING.md).

Two Votes signed by one validator for the same (voteType, height, round) with different block
hashes prove equivocation; `ValidatorSet.submitVoteEvidence` re-verifies both signatures under
its own EIP-712 domain (the consensus network id) and slashes the signer's stake once per
offence. This module checks the same off chain first, so a bad file fails with a reason and
costs no gas.

A vote-pair file (JSON, at most MAX_FILE_BYTES):

    {"format": "devsen-double-sign/1", "chain_id": 31337, "validator_set": "0x...",
     "validator": "0x...", "vote_type": 2, "height": 10, "round": 0,
     "votes": [{"block_hash": "0x...", "signature": "0x..."}, {"block_hash": "0x...", "signature": "0x..."}]}

`devsen evidence submit --votes FILE --network deployment.json --rpc URL [--key-file F]` sends
it (the key pays the gas and receives the reporter share); `devsen evidence check` only checks.
A node writes such a file for each equivocation its consensus core reports (`ReportEvidence`)
into `DATA_DIR/double_sign/` and submits it with its own key (`DoubleSignReporter`): the
validators that saw it take turns (`turn_delay_s`), the first transaction slashes, the later
ones are refused at preflight (`EvidenceAlreadySubmitted`, no gas spent) and counted as
already slashed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from web3 import Web3

from anchoring.chain.deploy import Deployment
from anchoring.chain.errors import ChainError, ChainRevert
from anchoring.chain.transact import Receipt
from consensus.types import Evidence, EvidenceKind, Vote, VoteType, WireError, decode_message
from primitives.eip712 import Domain, to_checksum_hex

log = logging.getLogger(__name__)

FORMAT = "devsen-double-sign/1"
MAX_FILE_BYTES = 16 * 1024
MAX_PENDING = 64  # offences waiting for or sending their transaction; more are written to disk only
MAX_FILES = 1024  # vote-pair files a node keeps in its data dir
MAX_ATTEMPTS = 5
RETRY_S = 5.0
STAGGER_TURN_S = 6.0  # one node's turn to submit an offence before the next one tries
KEY_ENV = "DEVSEN_EVIDENCE_KEY"
# Reverts that mean "nothing (more) to do" for this offence: somebody slashed it, or it cannot be.
SETTLED_REVERTS = ("EvidenceAlreadySubmitted", "NothingToSlash", "EvidenceSignerNeverValidator")


class EvidenceFileError(ValueError):
    """A vote-pair file that proves no double-sign; the message names the field and the reason."""


@dataclass(frozen=True, slots=True)
class VotePair:
    """Two votes of one validator for one (vote_type, height, round)."""

    first: Vote
    second: Vote

    @property
    def offence(self) -> tuple[bytes, int, int, int]:
        """(validator, vote type, height, round): what the contract slashes at most once."""
        return (self.first.validator, int(self.first.vote_type), self.first.height, self.first.round)

    def check(self, domain: Domain) -> None:
        """EvidenceFileError unless this pair proves a double-sign under `domain`."""
        a, b = self.first, self.second
        if (a.vote_type, a.height, a.round) != (b.vote_type, b.height, b.round):
            raise EvidenceFileError(
                f"the votes are for different slots ({int(a.vote_type)}, {a.height}, {a.round}) and "
                f"({int(b.vote_type)}, {b.height}, {b.round}) (vote_type, height, round): not a double-sign")
        if a.block_hash == b.block_hash:
            raise EvidenceFileError("both votes are for block 0x" + a.block_hash.hex() + ": not conflicting")
        if a.validator != b.validator:
            raise EvidenceFileError("the votes name different validators")
        for index, vote in enumerate((a, b)):
            if not vote.verify(domain):
                raise EvidenceFileError(
                    f"votes[{index}].signature does not recover to 0x{vote.validator.hex()} under the "
                    f"ValidatorSet domain of chain {domain.chain_id} at {to_checksum_hex(domain.verifying_contract)}")

    def to_json(self, domain: Domain) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "chain_id": domain.chain_id,
            "validator_set": to_checksum_hex(domain.verifying_contract),
            "validator": to_checksum_hex(self.first.validator),
            "vote_type": int(self.first.vote_type),
            "height": self.first.height,
            "round": self.first.round,
            "votes": [{"block_hash": "0x" + v.block_hash.hex(), "signature": "0x" + v.signature.hex()}
                      for v in (self.first, self.second)],
        }


def pair_of_evidence(evidence: Evidence) -> VotePair | None:
    """The vote pair in a consensus core's equivocation evidence (None for proposals or junk)."""
    if evidence.kind != EvidenceKind.DUPLICATE_VOTE:
        return None
    try:
        a, b = decode_message(evidence.first), decode_message(evidence.second)
    except WireError:
        return None
    if not isinstance(a, Vote) or not isinstance(b, Vote):
        return None
    return VotePair(a, b)


def _hex_field(data: dict[str, Any], key: str, size: int, where: str) -> bytes:
    value = data.get(key)
    if not isinstance(value, str) or not value.startswith("0x"):
        raise EvidenceFileError(f"{where}{key}: expected 0x-hex of {size} bytes")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError as exc:
        raise EvidenceFileError(f"{where}{key}: not hex") from exc
    if len(raw) != size:
        raise EvidenceFileError(f"{where}{key}: {len(raw)} bytes, expected {size}")
    return raw


def _int_field(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise EvidenceFileError(f"{key}: expected an integer in {low}..{high}, got {value!r}")
    return value


def parse_pair(text: str) -> tuple[VotePair, int, str]:
    """(pair, chain id, ValidatorSet address) of a vote-pair file; EvidenceFileError if malformed."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise EvidenceFileError(f"file larger than {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvidenceFileError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EvidenceFileError(f'format: expected "{FORMAT}"')
    chain_id = _int_field(data, "chain_id", 1, (1 << 256) - 1)
    validator_set = to_checksum_hex(_hex_field(data, "validator_set", 20, ""))
    validator = _hex_field(data, "validator", 20, "")
    vote_type = _int_field(data, "vote_type", 1, 2)
    height = _int_field(data, "height", 1, (1 << 64) - 1)
    round_ = _int_field(data, "round", 0, (1 << 31) - 1)
    votes = data.get("votes")
    if not isinstance(votes, list) or len(votes) != 2 or not all(isinstance(v, dict) for v in votes):
        raise EvidenceFileError("votes: expected a list of two {block_hash, signature} objects")
    parsed = [Vote(VoteType(vote_type), height, round_, _hex_field(v, "block_hash", 32, f"votes[{i}]."),
                   validator, _hex_field(v, "signature", 65, f"votes[{i}]."))
              for i, v in enumerate(votes)]
    return VotePair(parsed[0], parsed[1]), chain_id, validator_set


def submit_pair(client: Any, pair: VotePair) -> Receipt:
    """Send the pair to `ValidatorSet.submitVoteEvidence` through `client` (a ChainClient with a sender)."""
    a, b = pair.first, pair.second
    receipt: Receipt = client.submit_vote_evidence(int(a.vote_type), a.height, a.round, a.block_hash, a.signature,
                                                   b.block_hash, b.signature)
    return receipt


def turn_delay_s(me: bytes, validators: Collection[bytes], pair: VotePair, turn_s: float = STAGGER_TURN_S) -> float:
    """This node's wait before submitting `pair`: validators take turns in address order,
    rotated by the offence's height so no one node always pays the gas."""
    ordered = sorted(validators)
    if me not in ordered:
        return 0.0
    return turn_s * ((ordered.index(me) - pair.first.height) % len(ordered))


class DoubleSignReporter:
    """A node's automatic path: each equivocation its consensus core reports is checked,
    written to `directory` and (with `submit`) sent on chain by `run`, once per offence."""

    def __init__(self, directory: Path, domain: Domain, submit: Callable[[VotePair], Receipt] | None,
                 stagger_s: Callable[[VotePair], float] = lambda pair: 0.0) -> None:
        self.directory = directory
        self.domain = domain
        self.submit = submit
        # Seconds to wait before the first attempt, so the honest nodes that all saw one
        # offence take turns instead of racing (the losers' transactions would revert and cost gas).
        self.stagger_s = stagger_s
        self._pending: deque[VotePair] = deque()
        self._in_flight = 0  # submission tasks started and not finished
        self._seen: set[tuple[bytes, int, int, int]] = set()
        self._wake = trio.Event()
        self.counts = {"reported": 0, "invalid": 0, "submitted": 0, "already_slashed": 0, "failed": 0, "dropped": 0}
        self.last_error = ""

    def on_evidence(self, evidence: Evidence) -> None:
        """Called from the consensus loop (synchronous, cheap: one file write at most)."""
        pair = pair_of_evidence(evidence)
        if pair is None:
            return  # proposal equivocation: not slashable on chain (the contract takes votes)
        if pair.offence in self._seen:
            return
        try:
            pair.check(self.domain)
        except EvidenceFileError as exc:
            self.counts["invalid"] += 1
            log.warning("equivocation evidence that does not verify: %s", exc)
            return
        if len(self._seen) >= MAX_FILES:
            self.counts["dropped"] += 1
            return
        self._seen.add(pair.offence)
        self.counts["reported"] += 1
        self._write(pair)
        if self.submit is not None:
            if len(self._pending) + self._in_flight >= MAX_PENDING:
                self.counts["dropped"] += 1
                return
            self._pending.append(pair)
            self._wake.set()

    def path_of(self, pair: VotePair) -> Path:
        validator, vote_type, height, round_ = pair.offence
        return self.directory / f"0x{validator.hex()}-h{height}-r{round_}-t{vote_type}.json"

    def _write(self, pair: VotePair) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.path_of(pair)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(pair.to_json(self.domain), indent=2) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.error("could not write double-sign evidence: %s", exc)

    async def run(self) -> None:
        """Submit pending pairs, each in its own task (its turn's wait does not hold up the
        others; at most MAX_PENDING at once), up to MAX_ATTEMPTS times, RETRY_S apart."""
        limit = trio.CapacityLimiter(MAX_PENDING)

        async def one(pair: VotePair) -> None:
            try:
                async with limit:
                    await self._submit_one(pair)
            finally:
                self._in_flight -= 1

        async with trio.open_nursery() as nursery:
            while True:
                if not self._pending:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                self._in_flight += 1
                nursery.start_soon(one, self._pending.popleft())

    async def _submit_one(self, pair: VotePair) -> None:
        assert self.submit is not None
        submit = self.submit
        validator = "0x" + pair.first.validator.hex()
        await trio.sleep(max(0.0, self.stagger_s(pair)))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                receipt = await trio.to_thread.run_sync(lambda: submit(pair))
            except ChainRevert as exc:
                if exc.name in SETTLED_REVERTS:
                    self.counts["already_slashed"] += 1
                    log.info("double-sign of %s at height %d: %s", validator, pair.first.height, exc.name)
                    return
                self.last_error = str(exc)
            except (ChainError, OSError, ValueError) as exc:
                self.last_error = str(exc)
            else:
                self.counts["submitted"] += 1
                log.warning("double-sign of %s at height %d round %d slashed on chain (tx 0x%s, %d gas)", validator,
                            pair.first.height, pair.first.round, receipt.tx_hash.hex(), receipt.gas_used)
                return
            log.warning("double-sign evidence against %s: attempt %d failed: %s", validator, attempt, self.last_error)
            await trio.sleep(RETRY_S)
        self.counts["failed"] += 1

    def status(self) -> dict[str, Any]:
        return {**self.counts, "pending": len(self._pending) + self._in_flight, "directory": str(self.directory),
                "last_error": self.last_error}


# ---- `devsen evidence` --------------------------------------------------------------------


def _read_key(path: str | None) -> str:
    if path:
        return Path(path).read_text().strip()
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise ValueError(f"give --key-file or set {KEY_ENV} to the submitter's private key (hex); "
                         "it pays the gas and receives the reporter share")
    return key


def evidence_main(argv: list[str]) -> int:
    """`devsen evidence check|submit --votes FILE --network deployment.json [--rpc URL]`."""
    parser = argparse.ArgumentParser(prog="devsen evidence", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("check", "submit"))
    parser.add_argument("--votes", required=True, type=Path, help=f"a {FORMAT} file (two conflicting votes)")
    parser.add_argument("--network", required=True, type=Path, help="the network's deployment.json")
    parser.add_argument("--rpc", help="JSON-RPC URL of the deployment's chain (submit)")
    parser.add_argument("--key-file", help=f"file with the submitter's key (hex); else ${KEY_ENV}")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    prog = f"devsen evidence {args.action}"
    try:
        deployment = Deployment.load(args.network)
        pair, chain_id, validator_set = parse_pair(args.votes.read_text())
        if (chain_id, validator_set) != (deployment.chain_id, Web3.to_checksum_address(deployment.validator_set)):
            raise EvidenceFileError(
                f"chain_id/validator_set: the file is for chain {chain_id} at {validator_set}, the network "
                f"is chain {deployment.chain_id} at {deployment.validator_set}")
        pair.check(deployment.domain("ValidatorSet"))
    except (OSError, ValueError) as exc:  # EvidenceFileError is a ValueError
        print(f"{prog}: {args.votes}: {exc}", file=sys.stderr)
        return 2
    validator, vote_type, height, round_ = pair.offence
    summary: dict[str, Any] = {"validator": to_checksum_hex(validator), "vote_type": vote_type,
                               "height": height, "round": round_}
    if args.action == "submit":
        if not args.rpc:
            print(f"{prog}: --rpc is required to submit", file=sys.stderr)
            return 2
        from anchoring.chain import ChainClient, TransactionSender, connect

        try:
            w3 = connect(args.rpc)
            client = ChainClient(w3, deployment, TransactionSender(w3, _read_key(args.key_file)))
            before = client.stake(summary["validator"], "latest").stake
            receipt = submit_pair(client, pair)
            after = client.stake(summary["validator"], "latest").stake
        except ChainRevert as exc:
            print(f"{prog}: refused on chain: {exc.name}"
                  + (" (this offence was slashed already)" if exc.name == "EvidenceAlreadySubmitted" else ""),
                  file=sys.stderr)
            return 1
        except (ChainError, OSError, ValueError) as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        summary.update(tx="0x" + receipt.tx_hash.hex(), block=receipt.block_number, gas_used=receipt.gas_used,
                       slashed_base_units=before - after, stake_left_base_units=after)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif args.action == "check":
        print(f"double-sign proven: validator {summary['validator']} signed two votes of type {vote_type} "
              f"at height {height} round {round_}")
    else:
        print(f"slashed {summary['slashed_base_units']} base units of {summary['validator']}'s stake "
              f"(left {summary['stake_left_base_units']}); tx {summary['tx']} in block {summary['block']}, "
              f"{summary['gas_used']} gas")
    return 0
