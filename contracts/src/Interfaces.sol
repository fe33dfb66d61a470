// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice The ERC-20 calls the Escrow makes.
interface IERC20Minimal {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
    function balanceOf(address account) external view returns (uint256);
}

/// @notice What Anchor and Escrow ask of the validator set, at call time.
interface IValidatorSet {
    function isValidator(address account) external view returns (bool);
    function quorum() external view returns (uint256);
    /// Reverts with a custom error unless `signatures` are a quorum of current validators
    /// over `digest`, ordered by signer strictly ascending.
    function verifyQuorum(bytes32 digest, bytes[] calldata signatures) external view;
}

/// @notice What the Escrow and DeviceFactory ask of the user registry.
interface IUserRegistry {
    function hasRoles(address account, uint8 roles) external view returns (bool);
    function isIdTagValidFor(bytes32 idTagHash, address account) external view returns (bool);
}

/// @notice What the Escrow asks of the device registry.
interface IDeviceFactory {
    function deviceForSession(string calldata chargeBoxId)
        external
        view
        returns (bytes32 deviceId, address manager, uint8 connectorCount, bool active);
    function managerOf(bytes32 deviceId) external view returns (address);
    /// The device's current tariff (token base units per kWh, per started minute).
    function tariffOf(bytes32 deviceId) external view returns (uint128 pricePerKWh, uint128 perMinuteFee);
}
