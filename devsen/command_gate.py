"""The application's side of manager commands (devsen/ledger/commands.py): admission, proposal,
block validity and the inputs of the ledger, kept out of devsen/app.py but for hook lines.

- Mempool (`check`): a command that decodes, is well formed (schema of its action and version),
  recovers, is not expired, has a nonce the ledger has not seen used and, if this node knows the
  device's manager, is signed by it. An outcome signed by a validator of the set, or by a
  registered operator (a full node accepting chargers) for a charger whose last applied event
  that operator vouched (`Ledger.charger_operator`): it reports only for chargers connected to it.
- Proposal (`proposable`): an honest proposer includes a command only when it has read the
  device's manager (`managers`, filled from the HTTP submission's chain read, from every block's
  chain facts and by `read_unknown_managers` in propose_facts), so a gossiped forgery never makes
  an honest proposal invalid. At most MAX_COMMANDS_PER_BLOCK commands and
  MAX_OUTCOMES_PER_BLOCK outcomes a block, commands expiring within EXPIRY_MARGIN_MS left out.
- Validity (`block_problem`, pure over the block, its chain facts and the ledger state before
  it): every command must be admissible (CommandBook.refusal at the block's time, its manager
  read at the block's agreed Ethereum block) and no two may share (charger, nonce); every
  outcome must be signed by a validator or an operator registered at the block's Ethereum block.
  A block breaking either is refused. Whether an operator's outcome counts (it is the charger's
  ingress) is the ledger's deterministic decision (a refusal in the payload's TxResult).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

from devsen.ledger import Ledger
from devsen.ledger.chain import ChainView
from devsen.ledger.commands import (
    ChargerCommand,
    CommandError,
    CommandOutcome,
    command_problem,
)
from primitives.eip712 import Domain

MAX_COMMANDS_PER_BLOCK = 64  # each may cost one device read of the block
MAX_OUTCOMES_PER_BLOCK = 256
EXPIRY_MARGIN_MS = 30_000  # a proposer leaves out commands expiring this soon (block time is later)
MANAGERS_CACHED = 4_096
SIGNERS_CACHED = 4_096
UNKNOWN_READS_PER_PROPOSAL = 16  # managers read in one propose_facts


class CommandGate:
    """Signer caches, the known managers, and the command rules of the application."""

    def __init__(self, command_domain: Domain, outcome_domain: Domain) -> None:
        self.command_domain = command_domain
        self.outcome_domain = outcome_domain
        self.managers: OrderedDict[str, bytes | None] = OrderedDict()  # charger -> manager (None: not registered)
        self.unknown: OrderedDict[str, None] = OrderedDict()  # chargers of mempool commands, manager not read
        self._signers: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()  # payload -> (id, signer)

    # ------------------------------------------------------------ caches

    def identify(self, command: ChargerCommand) -> tuple[bytes, bytes]:
        """(command id, signer); CommandError if the signature does not recover. Cached, bounded."""
        payload = command.encode()
        known = self._signers.get(payload)
        if known is None:
            known = (command.digest(self.command_domain), command.signer(self.command_domain))
            self._signers[payload] = known
            while len(self._signers) > SIGNERS_CACHED:
                self._signers.popitem(last=False)
        return known

    def note_manager(self, charger_id: str, manager: bytes | None) -> None:
        """Remember a device's manager as read from chain (None: not registered or inactive)."""
        self.managers[charger_id] = manager
        self.managers.move_to_end(charger_id)
        self.unknown.pop(charger_id, None)
        while len(self.managers) > MANAGERS_CACHED:
            self.managers.popitem(last=False)

    def note_view(self, view: ChainView, chargers: Iterable[str]) -> None:
        """Managers of `chargers` as a block's chain facts have them."""
        for charger_id in chargers:
            self.note_manager(charger_id, Ledger.device_manager(view, charger_id))

    def read_unknown_managers(self, view: ChainView) -> None:
        """I/O (propose_facts): read the managers of a few mempool commands' chargers."""
        for charger_id in list(self.unknown)[:UNKNOWN_READS_PER_PROPOSAL]:
            try:
                self.note_manager(charger_id, Ledger.device_manager(view, charger_id))
            except Exception:  # an RPC blip: the next proposal reads it again
                continue

    # ------------------------------------------------------------ mempool

    def command_check(self, command: ChargerCommand, ledger: Ledger, now_ms: int | None = None) -> str | None:
        """Why this command cannot enter the mempool, or None (the block's ledger decision is final)."""
        try:
            _, signer = self.identify(command)
        except CommandError as exc:
            return str(exc)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if command.charger_id in self.managers:
            problem = ledger.commands.refusal(command, signer, self.managers[command.charger_id], now)
        else:
            problem = command_problem(command) or ledger.commands.refusal(command, signer, signer, now)
            if problem is None:
                self.unknown[command.charger_id] = None
                while len(self.unknown) > MANAGERS_CACHED:
                    self.unknown.popitem(last=False)
        return problem

    def outcome_signer(self, outcome: CommandOutcome) -> bytes | str:
        """The outcome's signer, or why its signature does not recover."""
        try:
            return outcome.signer(self.outcome_domain)
        except CommandError as exc:
            return str(exc)

    def outcome_check(self, outcome: CommandOutcome, validators: tuple[bytes, ...],
                      operators: frozenset[bytes] = frozenset(), ledger: Ledger | None = None) -> str | None:
        """Mempool admission of an outcome: a validator's, or a registered operator's for a
        charger it is the ingress of in `ledger` (the state before the next block)."""
        signer = self.outcome_signer(outcome)
        if isinstance(signer, str):
            return signer
        if signer in validators:
            return None
        if signer not in operators or ledger is None:
            return f"command outcome from 0x{signer.hex()}, neither a validator nor a registered operator"
        record = ledger.commands.get(outcome.command_id)
        if record is None:
            return f"no command 0x{outcome.command_id.hex()} is kept"
        return ledger.outcome_reporter_problem(record.charger_id, signer)

    # ------------------------------------------------------------ proposing

    def proposable(self, command: ChargerCommand, now_ms: int) -> bool:
        """Whether an honest proposer includes this (mempool-checked) command now."""
        manager = self.managers.get(command.charger_id)
        if manager is None:
            return False
        try:
            _, signer = self.identify(command)
        except CommandError:
            return False
        return signer == manager and command.expires_at_ms > now_ms + EXPIRY_MARGIN_MS

    # ------------------------------------------------------------ validity (pure)

    def block_problem(self, commands: list[ChargerCommand], outcomes: list[CommandOutcome], view: ChainView,
                      block_ms: int, ledger: Ledger, validators: tuple[bytes, ...],
                      operators: frozenset[bytes] = frozenset()) -> str | None:
        """Why a block carrying these commands and outcomes is invalid, or None."""
        if len(commands) > MAX_COMMANDS_PER_BLOCK:
            return f"{len(commands)} commands in one block, at most {MAX_COMMANDS_PER_BLOCK}"
        if len(outcomes) > MAX_OUTCOMES_PER_BLOCK:
            return f"{len(outcomes)} command outcomes in one block, at most {MAX_OUTCOMES_PER_BLOCK}"
        seen: set[tuple[str, int]] = set()
        for command in commands:
            try:
                _, signer = self.identify(command)
            except CommandError as exc:
                return f"command for {command.charger_id}: {exc}"
            problem = ledger.commands.refusal(command, signer, Ledger.device_manager(view, command.charger_id),
                                              block_ms)
            if problem is None and (command.charger_id, command.nonce) in seen:
                problem = f"nonce {command.nonce} twice in one block"
            if problem is not None:
                return f"command for {command.charger_id}: {problem}"
            seen.add((command.charger_id, command.nonce))
        for outcome in outcomes:
            reporter = self.outcome_signer(outcome)
            problem = reporter if isinstance(reporter, str) else None
            if isinstance(reporter, bytes) and reporter not in validators and reporter not in operators:
                problem = f"command outcome from 0x{reporter.hex()}, neither a validator nor a registered operator"
            if problem is not None:
                return f"outcome of command 0x{outcome.command_id.hex()}: {problem}"
        return None

    def ledger_inputs(self, commands: list[ChargerCommand], outcomes: list[CommandOutcome]
                      ) -> tuple[list[tuple[ChargerCommand, bytes, bytes]], list[tuple[CommandOutcome, bytes]]]:
        """(command, id, signer) and (outcome, reporter) for Ledger.apply_block; CommandError if one
        does not recover (a committed block is never re-judged: the caller refuses it whole)."""
        return ([(c, *self.identify(c)) for c in commands],
                [(o, o.signer(self.outcome_domain)) for o in outcomes])

