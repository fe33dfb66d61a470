// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IUserRegistry} from "./Interfaces.sol";

error RolesNotSelfService(uint8 roles);
error NotAdmin(address caller);
error MissingRoles(address account, uint8 roles);
error IdTagHashZero();
error IdTagAlreadyRegistered(bytes32 idTagHash);
error UnknownIdTag(bytes32 idTagHash);
error NotIdTagOwner(bytes32 idTagHash, address caller);
error IdTagIsRevoked(bytes32 idTagHash);
error ExpiryInPast(uint64 expiry);

/// @title UserRegistry (the paper's UserDEVSEN)
/// @notice Accounts with roles (driver/occupant, device manager, operator) and OCPP idTags.
/// An idTag is only ever stored as keccak256(utf8 idTag) -> (account, expiry, revoked); the
/// plaintext never reaches the chain. Drivers and device managers register themselves; the
/// operator role is granted by the bootstrap admin. A revoked idTag hash stays revoked, so a
/// leaked tag cannot be re-registered by someone else.
contract UserRegistry is IUserRegistry {
    uint8 public constant ROLE_DRIVER = 1;
    uint8 public constant ROLE_DEVICE_MANAGER = 2;
    uint8 public constant ROLE_OPERATOR = 4;
    uint8 private constant SELF_SERVICE_ROLES = ROLE_DRIVER | ROLE_DEVICE_MANAGER;

    struct IdTag {
        address account;
        uint64 expiry; // unix seconds; 0 = never expires
        bool revoked;
    }

    address public immutable admin;
    mapping(address => uint8) public rolesOf;
    mapping(bytes32 => IdTag) private _idTags;

    event RolesChanged(address indexed account, uint8 roles);
    event IdTagRegistered(bytes32 indexed idTagHash, address indexed account, uint64 expiry);
    event IdTagRenewed(bytes32 indexed idTagHash, uint64 expiry);
    event IdTagRevoked(bytes32 indexed idTagHash, address indexed account);

    constructor(address admin_) {
        admin = admin_;
    }

    /// @notice Add driver and/or device-manager roles to the caller.
    function registerRoles(uint8 roles) external {
        if (roles == 0 || roles & ~SELF_SERVICE_ROLES != 0) revert RolesNotSelfService(roles);
        _setRoles(msg.sender, rolesOf[msg.sender] | roles);
    }

    /// @notice Drop any of the caller's roles.
    function dropRoles(uint8 roles) external {
        _setRoles(msg.sender, rolesOf[msg.sender] & ~roles);
    }

    /// @notice Grant or withdraw the operator role (bootstrap admin only).
    function setOperator(address account, bool isOperator) external {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        uint8 roles = rolesOf[account];
        _setRoles(account, isOperator ? roles | ROLE_OPERATOR : roles & ~ROLE_OPERATOR);
    }

    /// @notice Map `idTagHash` = keccak256(utf8 idTag) to the caller (a driver).
    function registerIdTag(bytes32 idTagHash, uint64 expiry) external {
        if (rolesOf[msg.sender] & ROLE_DRIVER == 0) revert MissingRoles(msg.sender, ROLE_DRIVER);
        if (idTagHash == bytes32(0)) revert IdTagHashZero();
        if (_idTags[idTagHash].account != address(0)) revert IdTagAlreadyRegistered(idTagHash);
        _checkExpiry(expiry);
        _idTags[idTagHash] = IdTag(msg.sender, expiry, false);
        emit IdTagRegistered(idTagHash, msg.sender, expiry);
    }

    /// @notice Change the expiry of one of the caller's idTags.
    function renewIdTag(bytes32 idTagHash, uint64 expiry) external {
        IdTag storage tag = _ownedTag(idTagHash);
        if (tag.revoked) revert IdTagIsRevoked(idTagHash);
        _checkExpiry(expiry);
        tag.expiry = expiry;
        emit IdTagRenewed(idTagHash, expiry);
    }

    /// @notice Revoke one of the caller's idTags, for good.
    function revokeIdTag(bytes32 idTagHash) external {
        IdTag storage tag = _ownedTag(idTagHash);
        if (tag.revoked) revert IdTagIsRevoked(idTagHash);
        tag.revoked = true;
        emit IdTagRevoked(idTagHash, msg.sender);
    }

    function idTag(bytes32 idTagHash)
        external
        view
        returns (address account, uint64 expiry, bool revoked)
    {
        IdTag storage tag = _idTags[idTagHash];
        return (tag.account, tag.expiry, tag.revoked);
    }

    /// @inheritdoc IUserRegistry
    function isIdTagValidFor(bytes32 idTagHash, address account) external view returns (bool) {
        IdTag storage tag = _idTags[idTagHash];
        return tag.account == account && account != address(0) && !tag.revoked
            && (tag.expiry == 0 || tag.expiry > block.timestamp);
    }

    /// @inheritdoc IUserRegistry
    function hasRoles(address account, uint8 roles) external view returns (bool) {
        return rolesOf[account] & roles == roles;
    }

    function _ownedTag(bytes32 idTagHash) private view returns (IdTag storage tag) {
        tag = _idTags[idTagHash];
        if (tag.account == address(0)) revert UnknownIdTag(idTagHash);
        if (tag.account != msg.sender) revert NotIdTagOwner(idTagHash, msg.sender);
    }

    function _checkExpiry(uint64 expiry) private view {
        if (expiry != 0 && expiry <= block.timestamp) revert ExpiryInPast(expiry);
    }

    function _setRoles(address account, uint8 roles) private {
        rolesOf[account] = roles;
        emit RolesChanged(account, roles);
    }
}
