// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {DevsenDomain} from "./DevsenDomain.sol";
import {IValidatorSet} from "./Interfaces.sol";
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
contract ValidatorSet is DevsenDomain, IValidatorSet {
    uint256 public constant MAX_VALIDATORS = 128;
    uint256 public constant MAX_PEER_ID_BYTES = 64;
    uint256 public constant MAX_ENDPOINT_BYTES = 256;
    bytes32 public constant VALIDATOR_SET_UPDATE_TYPEHASH =
        keccak256("ValidatorSetUpdate(uint64 epoch,bytes32 validatorsHash)");

    struct ValidatorInfo {
        bytes peerId;
        string endpoint;
    }

    struct Epoch {
        uint64 startBlock; // the Ethereum block whose state first shows this set
        address[] validators;
    }

    uint64 public epoch;
    mapping(address => bool) private _isValidator;
    mapping(address => ValidatorInfo) private _info;
    mapping(bytes32 => address) private _peerIdHolder; // keccak256(peerId) -> validator
    Epoch[] private _epochs; // _epochs[e] is epoch e

    event ValidatorSetUpdated(uint64 indexed epoch, address[] validators, uint256 quorum);
    event ValidatorInfoSet(address indexed validator, bytes peerId, string endpoint);

    /// @param validators the epoch-0 set, strictly ascending addresses, with their peer ids
    /// and endpoints: the deployer's one act of bootstrap authority.
    constructor(address[] memory validators, bytes[] memory peerIds, string[] memory endpoints) {
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
        address[] memory old = _epochs[epoch].validators;
        for (uint256 i; i < old.length; ++i) {
            delete _isValidator[old[i]];
        }
        epoch = newEpoch;
        _install(newValidators);
        for (uint256 i; i < old.length; ++i) {
            if (!_isValidator[old[i]]) {
                _freePeerId(old[i]);
                delete _info[old[i]];
            }
        }
    }

    /// @notice A validator publishes its own libp2p peer id and OCPP endpoint URL.
    function setValidatorInfo(bytes calldata peerId, string calldata endpoint) external {
        if (!_isValidator[msg.sender]) revert NotAValidator(msg.sender);
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
            if (!_isValidator[signer]) revert SignerNotValidator(i, signer);
            previous = signer;
        }
    }

    /// @inheritdoc IValidatorSet
    function isValidator(address account) external view returns (bool) {
        return _isValidator[account];
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

    function _install(address[] memory validators_) private {
        uint256 n = validators_.length;
        if (n == 0 || n > MAX_VALIDATORS) revert ValidatorCountInvalid(n);
        address previous = address(0);
        for (uint256 i; i < n; ++i) {
            address v = validators_[i];
            if (v <= previous) revert ValidatorsNotSorted(i);
            _isValidator[v] = true;
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

    function _freePeerId(address validator) private {
        bytes storage current = _info[validator].peerId;
        if (current.length != 0) delete _peerIdHolder[keccak256(current)];
    }
}
