// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {DevsenDomain} from "./DevsenDomain.sol";
import {IERC20Minimal, IValidatorSet} from "./Interfaces.sol";
import {Signatures} from "./Signatures.sol";

error TooFewSignatures(uint256 given, uint256 required);
error DuplicateSigner(uint256 index, address signer);
error SignersNotSorted(uint256 index, address signer);
error SignerNotValidator(uint256 index, address signer);
error EpochMismatch(uint64 given, uint64 expected);
error ValidatorCountInvalid(uint256 count);
error ValidatorsNotSorted(uint256 index);
error ValidatorListLengthMismatch();
error PeerIdTooLong(uint256 index);
error EndpointTooLong(uint256 index);
error NotAValidator(address account);
error PeerIdTaken(bytes peerId, address holder);
error UnknownEpoch(uint64 epoch);
error StakeParamsInvalid();
error InsufficientStake(uint256 index, address validator, uint256 stake, uint256 minStake);
error StakeTransferFailed();
error StakeAmountZero();
error StillAValidator(address account);
error AlreadyUnbonding(address account, uint64 withdrawableAt);
error NotUnbonding(address account);
error UnbondingNotOver(uint64 withdrawableAt, uint64 now_);
error NothingToWithdraw(address account);
error Reentrancy();
error EvidenceVoteTypeInvalid(uint8 voteType);
error EvidenceNotConflicting();
error EvidenceSignersDiffer(address first, address second);
error EvidenceSignerNeverValidator(address signer);
error EvidenceAlreadySubmitted(bytes32 offence);
error NothingToSlash(address signer);
error AlreadyAnOperator(address account);
error OperatorsFull(uint256 max);
error NotAnOperator(address account);
error OperatorStakeZero();
error InsufficientOperatorStake(address account, uint256 stake, uint256 minOperatorStake);
error OperatorStakeSufficient(address account, uint256 stake, uint256 minOperatorStake);
error OperatorBanned(address account);

/// @title ValidatorSet
/// @notice The DEVSEN validators: secp256k1 address, libp2p peer id and OCPP endpoint URL, and
/// the quorum floor(2n/3)+1. The deployer bootstraps epoch 0 in the constructor and keeps no
/// power afterwards. Each validator maintains its own peer id and endpoint. Every later set
/// is approved by a quorum of the current one, signing `ValidatorSetUpdate(uint64 epoch,bytes32 validatorsHash)` under this contract's domain.
/// This contract's domain is also the network id of consensus votes (consensus/SIGNING.md).
///
/// A non-empty peer id is bound to at most one validator (`peerIdHolder`); it is freed when its
/// validator publishes another one or leaves the set. Every epoch's set stays readable with the
/// Ethereum block where it took effect (`epochInfo`, `epochValidators`, `epochAtBlock`), so a
/// commit certificate of any past height can be checked against the set in force then. The
/// history grows by one record (at most MAX_VALIDATORS addresses) per quorum-approved update;
/// every view returns at most one record, and `epochAtBlock` is a binary search.
///
/// Stake (contracts/STAKING.md): anyone bonds ChargeToken (`bond`; `registerCandidate` bonds
/// and announces a candidacy). A quorum-approved update refuses any member of the new set whose
/// bonded stake is below `minStake` or who is unbonding (`InsufficientStake`), so every set after
/// the bootstrap one is fully staked. An account outside the current set starts unbonding
/// (`beginUnbonding`) and withdraws its whole stake `unbondingSeconds` later (`withdraw`), a
/// window in which evidence of its past offences still slashes it. `submitVoteEvidence` takes
/// two Votes signed by one (past or present) validator for the same (voteType, height, round)
/// and different block hashes, verifies both signatures under this contract's domain (the
/// consensus network id), and slashes `slashBps` of its stake once per offence: the reporter
/// gets `reporterShareBps` of it, the rest stays locked in this contract forever (`totalBurnt`;
/// ChargeToken has no burn).
contract ValidatorSet is DevsenDomain, IValidatorSet {
    uint256 public constant MAX_VALIDATORS = 128;
    uint256 public constant MAX_PEER_ID_BYTES = 64;
    uint256 public constant MAX_ENDPOINT_BYTES = 256;
    /// @notice Registered network operators (full nodes vouching for charger events) at most.
    uint256 public constant MAX_OPERATORS = 256;
    bytes32 public constant VALIDATOR_SET_UPDATE_TYPEHASH =
        keccak256("ValidatorSetUpdate(uint64 epoch,bytes32 validatorsHash)");
    /// @notice What a quorum of the current set signs to remove (and bar) an operator.
    bytes32 public constant OPERATOR_REMOVAL_TYPEHASH =
        keccak256("OperatorRemoval(uint64 epoch,address operator)");

    struct ValidatorInfo {
        bytes peerId;
        string endpoint;
    }

    struct Epoch {
        uint64 startBlock; // the Ethereum block whose state first shows this set
        address[] validators;
    }

    bytes32 public constant VOTE_TYPEHASH =
        keccak256("Vote(uint8 voteType,uint64 height,uint32 round,bytes32 blockHash)");
    uint256 public constant BPS = 10_000;

    /// @notice Constructor parameters of staking (a struct: the constructor has many).
    struct StakingParams {
        IERC20Minimal token; // the ChargeToken
        uint256 minStake; // base units a member of any quorum-approved set must have bonded
        uint64 unbondingSeconds; // from beginUnbonding to withdraw
        uint16 slashBps; // share of the stake one offence takes
        uint16 reporterShareBps; // share of the slashed amount paid to whoever submitted the evidence
        uint256 minOperatorStake; // base units an operator must keep bonded (non-zero: a slot costs real stake)
    }

    IERC20Minimal public immutable stakeToken;
    uint256 public immutable minStake;
    uint64 public immutable unbondingSeconds;
    uint16 public immutable slashBps;
    uint16 public immutable reporterShareBps;
    uint256 public immutable minOperatorStake;

    uint64 public epoch;
    // bit CURRENT: in the current set; bit EVER: in the set of some epoch (one slot: one write)
    mapping(address => uint8) private _membership;
    uint8 private constant CURRENT = 1;
    uint8 private constant EVER = 2;
    mapping(address => ValidatorInfo) private _info;
    mapping(bytes32 => address) private _peerIdHolder; // keccak256(peerId) -> validator
    Epoch[] private _epochs; // _epochs[e] is epoch e
    mapping(address => uint256) public stakeOf;
    mapping(address => uint64) public withdrawableAt; // 0: not unbonding
    mapping(bytes32 => bool) public offenceSlashed; // offenceId(signer, voteType, height, round)
    uint256 public totalStaked;
    address[] private _operators; // registered operators, in registration order (swap-and-pop)
    mapping(address => uint256) private _operatorSlot; // operator -> index in _operators + 1 (0: none)
    mapping(address => bool) public operatorBanned; // removed by a quorum: may not register again
    uint256 public totalBurnt;
    uint256 private _lock = 1;

    event ValidatorSetUpdated(uint64 indexed epoch, address[] validators, uint256 quorum);
    event ValidatorInfoSet(address indexed validator, bytes peerId, string endpoint);
    event StakeBonded(address indexed account, uint256 amount, uint256 stake);
    event CandidateRegistered(address indexed candidate, uint256 stake, bytes peerId, string endpoint);
    event UnbondingStarted(address indexed account, uint256 stake, uint64 withdrawableAt);
    event StakeWithdrawn(address indexed account, uint256 amount);
    event OperatorRegistered(address indexed operator, uint256 stake, bytes peerId, string endpoint);
    event OperatorLeft(address indexed operator);
    event OperatorRemovedByQuorum(address indexed operator, uint64 indexed epoch);
    event Slashed(
        address indexed validator, bytes32 indexed offence, uint64 height, uint32 round,
        uint256 amount, address reporter, uint256 reward
    );

    modifier nonReentrant() {
        if (_lock != 1) revert Reentrancy();
        _lock = 2;
        _;
        _lock = 1;
    }

    /// @param validators the epoch-0 set, strictly ascending addresses, with their peer ids
    /// and endpoints: the deployer's one act of bootstrap authority (the bootstrap set needs no
    /// stake; the first update needs every member staked).
    /// @param staking token, minimum stake, unbonding period, slash and reporter shares, minimum
    /// operator stake (zero is refused: `OperatorStakeZero`, contracts/STAKING.md "Operators").
    constructor(
        address[] memory validators,
        bytes[] memory peerIds,
        string[] memory endpoints,
        StakingParams memory staking
    ) {
        if (staking.slashBps > BPS || staking.reporterShareBps > BPS) revert StakeParamsInvalid();
        if (staking.minOperatorStake == 0) revert OperatorStakeZero();
        if (address(staking.token) == address(0)) revert StakeParamsInvalid();
        stakeToken = staking.token;
        minStake = staking.minStake;
        unbondingSeconds = staking.unbondingSeconds;
        slashBps = staking.slashBps;
        reporterShareBps = staking.reporterShareBps;
        minOperatorStake = staking.minOperatorStake;
        uint256 n = validators.length;
        if (peerIds.length != n || endpoints.length != n) revert ValidatorListLengthMismatch();
        _install(validators);
        for (uint256 i; i < n; ++i) {
            _setInfo(validators[i], peerIds[i], endpoints[i], i);
        }
    }

    /// @notice Replace the set with `newValidators` (strictly ascending) at `newEpoch` =
    /// epoch + 1, approved by a quorum of the current set. Validators that stay keep their
    /// peer id and endpoint; new ones publish theirs with `setValidatorInfo` (the signed
    /// update covers addresses only, so nobody relaying it can bind foreign peer ids).
    function updateValidators(uint64 newEpoch, address[] calldata newValidators, bytes[] calldata signatures)
        external
    {
        if (newEpoch != epoch + 1) revert EpochMismatch(newEpoch, epoch + 1);
        bytes32 structHash = keccak256(
            abi.encode(VALIDATOR_SET_UPDATE_TYPEHASH, newEpoch, keccak256(abi.encode(newValidators)))
        );
        verifyQuorum(_typedDigest(structHash), signatures);
        for (uint256 i; i < newValidators.length; ++i) {
            address v = newValidators[i];
            uint256 stake = stakeOf[v];
            if (stake < minStake || withdrawableAt[v] != 0) revert InsufficientStake(i, v, stake, minStake);
        }
        address[] memory old = _epochs[epoch].validators;
        for (uint256 i; i < old.length; ++i) {
            _membership[old[i]] = EVER;
        }
        epoch = newEpoch;
        _install(newValidators);
        for (uint256 i; i < old.length; ++i) {
            if (!_isCurrent(old[i])) {
                _freePeerId(old[i]);
                delete _info[old[i]];
            }
        }
    }

    /// @notice Add `amount` ChargeToken to the caller's stake (approve this contract first).
    function bond(uint256 amount) external nonReentrant {
        _bond(msg.sender, amount);
    }

    /// @notice Add `amount` of the caller's ChargeToken to `account`'s stake (a sponsor, or the
    /// deployer bonding the bootstrap set). The stake is `account`'s: only it unbonds and
    /// withdraws, and slashing takes from it.
    function bondFor(address account, uint256 amount) external nonReentrant {
        _bond(account, amount);
    }

    /// @notice Bond `amount` and announce a candidacy with the node's peer id and endpoint (the
    /// validators then sign a set that includes the caller; once in, it publishes them with
    /// `setValidatorInfo`). The resulting stake must reach `minStake`.
    function registerCandidate(uint256 amount, bytes calldata peerId, string calldata endpoint)
        external
        nonReentrant
    {
        if (peerId.length > MAX_PEER_ID_BYTES) revert PeerIdTooLong(0);
        if (bytes(endpoint).length > MAX_ENDPOINT_BYTES) revert EndpointTooLong(0);
        _bond(msg.sender, amount);
        uint256 stake = stakeOf[msg.sender];
        if (stake < minStake) revert InsufficientStake(0, msg.sender, stake, minStake);
        emit CandidateRegistered(msg.sender, stake, peerId, endpoint);
    }

    /// @notice Bond `amount` and register as an operator of the network: a full node that
    /// accepts charger connections and vouches for their events (devsen/ledger/LEDGER.md
    /// "Events vouched by an operator"). The resulting stake must reach `minOperatorStake`
    /// (never zero, so a slot costs real stake); at most MAX_OPERATORS are registered at once.
    /// Unbonding ends the registration; an operator removed by a quorum may not register again.
    function registerOperator(uint256 amount, bytes calldata peerId, string calldata endpoint)
        external
        nonReentrant
    {
        if (peerId.length > MAX_PEER_ID_BYTES) revert PeerIdTooLong(0);
        if (bytes(endpoint).length > MAX_ENDPOINT_BYTES) revert EndpointTooLong(0);
        if (_operatorSlot[msg.sender] != 0) revert AlreadyAnOperator(msg.sender);
        if (operatorBanned[msg.sender]) revert OperatorBanned(msg.sender);
        if (_operators.length >= MAX_OPERATORS) revert OperatorsFull(MAX_OPERATORS);
        _bond(msg.sender, amount);
        uint256 stake = stakeOf[msg.sender];
        if (stake < minOperatorStake) revert InsufficientOperatorStake(msg.sender, stake, minOperatorStake);
        _operators.push(msg.sender);
        _operatorSlot[msg.sender] = _operators.length;
        emit OperatorRegistered(msg.sender, stake, peerId, endpoint);
    }

    /// @notice The caller stops being an operator (its stake stays bonded).
    function leaveOperators() external {
        if (_operatorSlot[msg.sender] == 0) revert NotAnOperator(msg.sender);
        _removeOperator(msg.sender);
    }

    /// @notice Anyone frees the slot of a registered operator whose stake fell below
    /// `minOperatorStake` (slashed): it already does not count (`operators`, `isOperator`).
    function pruneOperator(address account) external {
        if (_operatorSlot[account] == 0) revert NotAnOperator(account);
        uint256 stake = stakeOf[account];
        if (stake >= minOperatorStake) revert OperatorStakeSufficient(account, stake, minOperatorStake);
        _removeOperator(account);
    }

    /// @notice Remove `account` from the operators and bar it from registering again, approved
    /// by a quorum of the current set signing `OperatorRemoval(epoch, account)` (signatures
    /// sorted by signer, as for `updateValidators`). Its stake is untouched: it unbonds and
    /// withdraws as usual. The signature binds the current epoch, so a set change voids it.
    function removeOperator(address account, bytes[] calldata signatures) external {
        if (_operatorSlot[account] == 0) revert NotAnOperator(account);
        bytes32 structHash = keccak256(abi.encode(OPERATOR_REMOVAL_TYPEHASH, epoch, account));
        verifyQuorum(_typedDigest(structHash), signatures);
        operatorBanned[account] = true;
        _removeOperator(account);
        emit OperatorRemovedByQuorum(account, epoch);
    }

    /// @notice Start the unbonding period of the caller's whole stake. A validator first leaves
    /// the set (a quorum-approved update without it); a candidate can leave at any time; an
    /// operator stops being one.
    function beginUnbonding() external {
        if (_isCurrent(msg.sender)) revert StillAValidator(msg.sender);
        uint64 unbondingUntil = withdrawableAt[msg.sender];
        if (unbondingUntil != 0) revert AlreadyUnbonding(msg.sender, unbondingUntil);
        uint256 stake = stakeOf[msg.sender];
        if (stake == 0) revert NothingToWithdraw(msg.sender);
        if (_operatorSlot[msg.sender] != 0) _removeOperator(msg.sender);
        uint64 at = uint64(block.timestamp) + unbondingSeconds;
        withdrawableAt[msg.sender] = at;
        emit UnbondingStarted(msg.sender, stake, at);
    }

    /// @notice After the unbonding period, pay the caller's remaining stake out (checks,
    /// effects, then the transfer; guarded against re-entry).
    function withdraw() external nonReentrant {
        uint64 at = withdrawableAt[msg.sender];
        if (at == 0) revert NotUnbonding(msg.sender);
        if (block.timestamp < at) revert UnbondingNotOver(at, uint64(block.timestamp));
        uint256 amount = stakeOf[msg.sender];
        stakeOf[msg.sender] = 0;
        withdrawableAt[msg.sender] = 0;
        totalStaked -= amount;
        if (amount != 0 && !stakeToken.transfer(msg.sender, amount)) revert StakeTransferFailed();
        emit StakeWithdrawn(msg.sender, amount);
    }

    /// @notice Double-signing evidence: two Votes of one validator for the same (voteType,
    /// height, round) and different block hashes (a nil vote, hash zero, conflicts with a block
    /// vote too). Anyone may submit it; each offence slashes once. Returns the slashed amount.
    function submitVoteEvidence(
        uint8 voteType,
        uint64 height,
        uint32 round,
        bytes32 blockHashA,
        bytes calldata signatureA,
        bytes32 blockHashB,
        bytes calldata signatureB
    ) external nonReentrant returns (uint256 slashed) {
        if (voteType != 1 && voteType != 2) revert EvidenceVoteTypeInvalid(voteType);
        if (blockHashA == blockHashB) revert EvidenceNotConflicting();
        address signer = Signatures.recover(_voteDigest(voteType, height, round, blockHashA), signatureA, 0);
        address other = Signatures.recover(_voteDigest(voteType, height, round, blockHashB), signatureB, 1);
        if (signer != other) revert EvidenceSignersDiffer(signer, other);
        return _slash(signer, voteType, height, round);
    }

    /// @notice The id of the offence (signer, voteType, height, round); see `offenceSlashed`.
    function offenceId(address signer, uint8 voteType, uint64 height, uint32 round) public pure returns (bytes32) {
        return keccak256(abi.encode(signer, voteType, height, round));
    }

    function _slash(address signer, uint8 voteType, uint64 height, uint32 round) private returns (uint256 slashed) {
        if (!wasValidator(signer)) revert EvidenceSignerNeverValidator(signer);
        bytes32 offence = offenceId(signer, voteType, height, round);
        if (offenceSlashed[offence]) revert EvidenceAlreadySubmitted(offence);
        uint256 stake = stakeOf[signer];
        if (stake == 0) revert NothingToSlash(signer);
        offenceSlashed[offence] = true;
        slashed = (stake * slashBps) / BPS;
        uint256 reward = (slashed * reporterShareBps) / BPS;
        stakeOf[signer] = stake - slashed;
        totalStaked -= slashed;
        totalBurnt += slashed - reward;
        if (reward != 0 && !stakeToken.transfer(msg.sender, reward)) revert StakeTransferFailed();
        emit Slashed(signer, offence, height, round, slashed, msg.sender, reward);
    }

    /// @notice A validator publishes its own libp2p peer id and OCPP endpoint URL.
    function setValidatorInfo(bytes calldata peerId, string calldata endpoint) external {
        if (!_isCurrent(msg.sender)) revert NotAValidator(msg.sender);
        _setInfo(msg.sender, peerId, endpoint, 0);
    }

    /// @inheritdoc IValidatorSet
    function verifyQuorum(bytes32 digest, bytes[] calldata signatures) public view {
        uint256 required = quorum();
        if (signatures.length < required) revert TooFewSignatures(signatures.length, required);
        address previous = address(0);
        for (uint256 i; i < signatures.length; ++i) {
            address signer = Signatures.recover(digest, signatures[i], i);
            if (signer == previous) revert DuplicateSigner(i, signer);
            if (signer < previous) revert SignersNotSorted(i, signer);
            if (!_isCurrent(signer)) revert SignerNotValidator(i, signer);
            previous = signer;
        }
    }

    /// @inheritdoc IValidatorSet
    function isValidator(address account) external view returns (bool) {
        return _isCurrent(account);
    }

    /// @inheritdoc IValidatorSet
    function quorum() public view returns (uint256) {
        return (2 * _epochs[epoch].validators.length) / 3 + 1;
    }

    function validatorCount() external view returns (uint256) {
        return _epochs[epoch].validators.length;
    }

    /// @notice The current validators, ascending.
    function validators() external view returns (address[] memory) {
        return _epochs[epoch].validators;
    }

    /// @notice The registered operators whose stake still reaches `minOperatorStake` (a slashed
    /// one below it does not count), in registration order; at most MAX_OPERATORS.
    function operators() external view returns (address[] memory out) {
        uint256 n = _operators.length;
        out = new address[](n);
        uint256 kept;
        for (uint256 i; i < n; ++i) {
            address account = _operators[i];
            if (stakeOf[account] >= minOperatorStake) out[kept++] = account;
        }
        assembly {
            mstore(out, kept)
        }
    }

    /// @notice Every registered operator, counting or not (what `pruneOperator` may free), in
    /// registration order; at most MAX_OPERATORS.
    function registeredOperators() external view returns (address[] memory) {
        return _operators;
    }

    /// @notice Whether `account` is a registered operator with at least `minOperatorStake` bonded.
    function isOperator(address account) external view returns (bool) {
        return _operatorSlot[account] != 0 && stakeOf[account] >= minOperatorStake;
    }

    /// @notice The validator bound to `peerId` (zero address if none).
    function peerIdHolder(bytes calldata peerId) external view returns (address) {
        return _peerIdHolder[keccak256(peerId)];
    }

    /// @notice Epochs recorded so far (epoch + 1).
    function epochCount() external view returns (uint256) {
        return _epochs.length;
    }

    /// @notice Epoch `e`: the Ethereum block it took effect at and its validator count.
    function epochInfo(uint64 e) external view returns (uint64 startBlock, uint256 validatorCount_) {
        if (e >= _epochs.length) revert UnknownEpoch(e);
        Epoch storage record = _epochs[e];
        return (record.startBlock, record.validators.length);
    }

    /// @notice The validators of epoch `e`, ascending.
    function epochValidators(uint64 e) external view returns (address[] memory) {
        if (e >= _epochs.length) revert UnknownEpoch(e);
        return _epochs[e].validators;
    }

    /// @notice The epoch in force in the state of Ethereum block `blockNumber` (epoch 0 for
    /// blocks before the deployment).
    function epochAtBlock(uint256 blockNumber) external view returns (uint64) {
        uint256 low = 0;
        uint256 high = _epochs.length - 1;
        while (low < high) {
            uint256 mid = (low + high + 1) / 2;
            if (_epochs[mid].startBlock <= blockNumber) low = mid;
            else high = mid - 1;
        }
        return uint64(low);
    }

    function validatorInfo(address validator)
        external
        view
        returns (bytes memory peerId, string memory endpoint)
    {
        ValidatorInfo storage info = _info[validator];
        return (info.peerId, info.endpoint);
    }

    /// @notice Whether `account` was in the set of some epoch (evidence can only name such an account).
    function wasValidator(address account) public view returns (bool) {
        return _membership[account] & EVER != 0;
    }

    function _isCurrent(address account) private view returns (bool) {
        return _membership[account] & CURRENT != 0;
    }

    function _bond(address account, uint256 amount) private {
        if (amount == 0) revert StakeAmountZero();
        uint64 unbondingUntil = withdrawableAt[account];
        if (unbondingUntil != 0) revert AlreadyUnbonding(account, unbondingUntil);
        stakeOf[account] += amount;
        totalStaked += amount;
        if (!stakeToken.transferFrom(msg.sender, address(this), amount)) revert StakeTransferFailed();
        emit StakeBonded(account, amount, stakeOf[account]);
    }

    function _voteDigest(uint8 voteType, uint64 height, uint32 round, bytes32 blockHash)
        private
        view
        returns (bytes32)
    {
        return _typedDigest(keccak256(abi.encode(VOTE_TYPEHASH, voteType, height, round, blockHash)));
    }

    function _install(address[] memory validators_) private {
        uint256 n = validators_.length;
        if (n == 0 || n > MAX_VALIDATORS) revert ValidatorCountInvalid(n);
        address previous = address(0);
        for (uint256 i; i < n; ++i) {
            address v = validators_[i];
            if (v <= previous) revert ValidatorsNotSorted(i);
            _membership[v] = CURRENT | EVER;
            previous = v;
        }
        assert(_epochs.length == epoch); // the record of epoch e is _epochs[e]
        Epoch storage record = _epochs.push();
        record.startBlock = uint64(block.number);
        record.validators = validators_;
        emit ValidatorSetUpdated(epoch, validators_, quorum());
    }

    function _setInfo(address validator, bytes memory peerId, string memory endpoint, uint256 index) private {
        if (peerId.length > MAX_PEER_ID_BYTES) revert PeerIdTooLong(index);
        if (bytes(endpoint).length > MAX_ENDPOINT_BYTES) revert EndpointTooLong(index);
        _freePeerId(validator);
        if (peerId.length != 0) {
            bytes32 key = keccak256(peerId);
            address holder = _peerIdHolder[key];
            if (holder != address(0)) revert PeerIdTaken(peerId, holder);
            _peerIdHolder[key] = validator;
        }
        _info[validator] = ValidatorInfo(peerId, endpoint);
        emit ValidatorInfoSet(validator, peerId, endpoint);
    }

    function _removeOperator(address account) private {
        uint256 index = _operatorSlot[account] - 1;
        address last = _operators[_operators.length - 1];
        _operators[index] = last;
        _operatorSlot[last] = index + 1;
        _operators.pop();
        delete _operatorSlot[account];
        emit OperatorLeft(account);
    }

    function _freePeerId(address validator) private {
        bytes storage current = _info[validator].peerId;
        if (current.length != 0) delete _peerIdHolder[keccak256(current)];
    }
}
