// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IDeviceFactory, IUserRegistry} from "./Interfaces.sol";

error ChargeBoxIdInvalid(string chargeBoxId);
error DeviceAlreadyExists(bytes32 deviceId);
error UnknownDevice(bytes32 deviceId);
error NotDeviceManager(bytes32 deviceId, address caller);
error NotADeviceManagerAccount(address account);
error ConnectorCountInvalid(uint8 connectorCount);
error MaxPowerInvalid(uint32 maxPowerW);
error LocationTooLong(uint256 length);
error ChargerPublicKeyTooLong(uint256 length);
error AuthCredentialInvalid();
error ManagerZero();
error SignedMeterNeedsKey(bytes32 deviceId);
error UnknownSite(uint32 siteId);
error NotSiteManager(uint32 siteId, address caller);
error SitePowerInvalid(uint32 maxPowerW, uint32 minSessionW);

/// @title DeviceFactory (FactoryDEVSEN + DeviceDEVSEN)
/// @notice One device record per EVSE, keyed by deviceId = keccak256(chargeBoxId).
///
/// Design choice: a registry mapping, not one minimal-proxy clone per device. A clone costs
/// a CREATE (32,000 gas plus code deposit) and an initializer call on top of the very same
/// storage writes; it also scatters devices over addresses that nodes would have to
/// discover and follow one by one. With a mapping, creation only pays for the record, every
/// node reads any device with one call at an agreed block number, and one contract's events
/// describe every change. Per-device logic (what a clone would buy) is not needed: a
/// device is data (manager, tariff, credential) that the validators interpret.
///
/// The OCPP basic-auth credential is stored as authSalt (16 bytes) and
/// authHash = scrypt(password, salt=authSalt, n=16384, r=8, p=1, dklen=32), computed off chain.
contract DeviceFactory is IDeviceFactory {
    uint256 public constant MAX_CHARGE_BOX_ID_BYTES = 48;
    uint256 public constant MAX_LOCATION_BYTES = 256;
    uint256 public constant MAX_PUBLIC_KEY_BYTES = 128;
    /// The ledger's bounds (devsen/ledger/chain.py): a device beyond them would be refused there.
    uint8 public constant MAX_CONNECTORS = 64;
    uint32 public constant MAX_POWER_W = 4_000_000; // 4 MW per connector: above MCS (3.75 MW), the largest standard
    uint32 public constant DEFAULT_MAX_POWER_W = 350_000;
    uint8 private constant ROLE_DEVICE_MANAGER = 2;

    struct Device {
        address manager;
        uint8 connectorCount;
        bool active;
        uint32 maxPowerW; // per connector / EVSE, watts: the ledger caps energy at this x duration
        bool requireSignedMeter; // settle only on OCMF readings signed with chargerPublicKey
        bytes16 authSalt;
        uint128 pricePerKWh; // token base units per kWh
        uint128 perMinuteFee; // token base units per started minute, 0 = none
        bytes32 authHash;
        string chargeBoxId;
        string location;
        bytes chargerPublicKey; // the meter's OCMF key: DER SubjectPublicKeyInfo (e.g. 91 bytes for P-256)
    }

    /// A site (issue 13, load management): chargers of one manager sharing a grid connection of
    /// `maxPowerW`; the ledger divides it among the site's running transactions, at least
    /// `minSessionW` each while it lasts (later ones are paused at 0 W).
    struct Site {
        address manager;
        uint32 maxPowerW;
        uint32 minSessionW;
    }

    uint32 public constant MAX_SITE_POWER_W = 4_000_000_000; // 4 GW: no grid connection is larger

    IUserRegistry public immutable users;
    mapping(bytes32 => Device) private _devices;
    bytes32[] private _deviceIds;
    mapping(uint32 => Site) private _sites;
    mapping(bytes32 => uint32) public siteOf; // deviceId -> its site (0: none)
    uint32 public siteCount;

    event DeviceCreated(
        bytes32 indexed deviceId, string chargeBoxId, address indexed manager, uint8 connectorCount
    );
    event DeviceLocationChanged(bytes32 indexed deviceId, string location);
    event DeviceConnectorsChanged(bytes32 indexed deviceId, uint8 connectorCount);
    event DeviceMaxPowerChanged(bytes32 indexed deviceId, uint32 maxPowerW);
    event DeviceTariffChanged(bytes32 indexed deviceId, uint128 pricePerKWh, uint128 perMinuteFee);
    event DeviceAuthChanged(bytes32 indexed deviceId, bytes16 authSalt, bytes32 authHash);
    event DevicePublicKeyChanged(bytes32 indexed deviceId, bytes chargerPublicKey);
    event DeviceActiveChanged(bytes32 indexed deviceId, bool active);
    event DeviceSignedMeterChanged(bytes32 indexed deviceId, bool requireSignedMeter);
    event DeviceManagerChanged(bytes32 indexed deviceId, address indexed manager);
    /// siteId is indexed as the first topic: the nodes' read cache drops ("site", siteId) on it.
    event SiteChanged(uint256 indexed siteId, address indexed manager, uint32 maxPowerW, uint32 minSessionW);
    event DeviceSiteChanged(bytes32 indexed deviceId, uint32 siteId);

    constructor(IUserRegistry users_) {
        users = users_;
    }

    /// @notice Register a charger; the caller (a device manager account) manages it.
    /// `maxPowerW` is the most one connector can deliver (1..MAX_POWER_W watts).
    function createDevice(
        string calldata chargeBoxId,
        string calldata location,
        uint8 connectorCount,
        uint32 maxPowerW,
        uint128 pricePerKWh,
        uint128 perMinuteFee,
        bytes16 authSalt,
        bytes32 authHash,
        bytes calldata chargerPublicKey
    ) external returns (bytes32 deviceId) {
        if (!users.hasRoles(msg.sender, ROLE_DEVICE_MANAGER)) {
            revert NotADeviceManagerAccount(msg.sender);
        }
        _checkChargeBoxId(chargeBoxId);
        deviceId = keccak256(bytes(chargeBoxId));
        if (_devices[deviceId].manager != address(0)) revert DeviceAlreadyExists(deviceId);
        _checkLocation(location);
        _checkPublicKey(chargerPublicKey);
        _initRecord(deviceId, connectorCount, maxPowerW, pricePerKWh, perMinuteFee, authSalt, authHash);
        _initText(deviceId, chargeBoxId, location, chargerPublicKey);
        _deviceIds.push(deviceId);
        emit DeviceCreated(deviceId, chargeBoxId, msg.sender, connectorCount);
        if (chargerPublicKey.length != 0) emit DevicePublicKeyChanged(deviceId, chargerPublicKey);
    }

    /// The fixed-size fields of a new record (split from createDevice to keep its stack small).
    function _initRecord(
        bytes32 deviceId,
        uint8 connectorCount,
        uint32 maxPowerW,
        uint128 pricePerKWh,
        uint128 perMinuteFee,
        bytes16 authSalt,
        bytes32 authHash
    ) private {
        _checkConnectors(connectorCount);
        _checkMaxPower(maxPowerW);
        _checkAuth(authSalt, authHash);
        Device storage d = _devices[deviceId];
        d.manager = msg.sender;
        d.connectorCount = connectorCount;
        d.active = true;
        d.maxPowerW = maxPowerW;
        d.authSalt = authSalt;
        d.pricePerKWh = pricePerKWh;
        d.perMinuteFee = perMinuteFee;
        d.authHash = authHash;
        emit DeviceMaxPowerChanged(deviceId, maxPowerW);
        emit DeviceTariffChanged(deviceId, pricePerKWh, perMinuteFee);
        emit DeviceAuthChanged(deviceId, authSalt, authHash);
    }

    /// The variable-size fields of a new record.
    function _initText(
        bytes32 deviceId,
        string calldata chargeBoxId,
        string calldata location,
        bytes calldata chargerPublicKey
    ) private {
        Device storage d = _devices[deviceId];
        d.chargeBoxId = chargeBoxId;
        d.location = location;
        d.chargerPublicKey = chargerPublicKey;
        emit DeviceLocationChanged(deviceId, location);
    }

    function setLocation(bytes32 deviceId, string calldata location) external {
        _checkLocation(location);
        _managed(deviceId).location = location;
        emit DeviceLocationChanged(deviceId, location);
    }

    function setConnectorCount(bytes32 deviceId, uint8 connectorCount) external {
        _checkConnectors(connectorCount);
        _managed(deviceId).connectorCount = connectorCount;
        emit DeviceConnectorsChanged(deviceId, connectorCount);
    }

    function setMaxPower(bytes32 deviceId, uint32 maxPowerW) external {
        _checkMaxPower(maxPowerW);
        _managed(deviceId).maxPowerW = maxPowerW;
        emit DeviceMaxPowerChanged(deviceId, maxPowerW);
    }

    function setTariff(bytes32 deviceId, uint128 pricePerKWh, uint128 perMinuteFee) external {
        Device storage d = _managed(deviceId);
        d.pricePerKWh = pricePerKWh;
        d.perMinuteFee = perMinuteFee;
        emit DeviceTariffChanged(deviceId, pricePerKWh, perMinuteFee);
    }

    function setAuth(bytes32 deviceId, bytes16 authSalt, bytes32 authHash) external {
        _checkAuth(authSalt, authHash);
        Device storage d = _managed(deviceId);
        d.authSalt = authSalt;
        d.authHash = authHash;
        emit DeviceAuthChanged(deviceId, authSalt, authHash);
    }

    /// The meter's OCMF signing key. Clearing it also clears `requireSignedMeter` (nothing could settle).
    function setChargerPublicKey(bytes32 deviceId, bytes calldata chargerPublicKey) external {
        _checkPublicKey(chargerPublicKey);
        Device storage d = _managed(deviceId);
        d.chargerPublicKey = chargerPublicKey;
        emit DevicePublicKeyChanged(deviceId, chargerPublicKey);
        if (chargerPublicKey.length == 0 && d.requireSignedMeter) {
            d.requireSignedMeter = false;
            emit DeviceSignedMeterChanged(deviceId, false);
        }
    }

    /// Policy: when set, the ledger settles this device's sessions only on signed meter readings.
    function setRequireSignedMeter(bytes32 deviceId, bool requireSignedMeter) external {
        Device storage d = _managed(deviceId);
        if (requireSignedMeter && d.chargerPublicKey.length == 0) revert SignedMeterNeedsKey(deviceId);
        d.requireSignedMeter = requireSignedMeter;
        emit DeviceSignedMeterChanged(deviceId, requireSignedMeter);
    }

    function setActive(bytes32 deviceId, bool active) external {
        _managed(deviceId).active = active;
        emit DeviceActiveChanged(deviceId, active);
    }

    /// @notice Hand the device to another device-manager account.
    function transferManagement(bytes32 deviceId, address manager) external {
        if (manager == address(0)) revert ManagerZero();
        if (!users.hasRoles(manager, ROLE_DEVICE_MANAGER)) revert NotADeviceManagerAccount(manager);
        _managed(deviceId).manager = manager;
        emit DeviceManagerChanged(deviceId, manager);
    }

    /// @notice Open a site managed by the caller (a device-manager account); ids count from 1.
    function createSite(uint32 maxPowerW, uint32 minSessionW) external returns (uint32 siteId) {
        if (!users.hasRoles(msg.sender, ROLE_DEVICE_MANAGER)) revert NotADeviceManagerAccount(msg.sender);
        _checkSitePower(maxPowerW, minSessionW);
        siteId = ++siteCount;
        _sites[siteId] = Site(msg.sender, maxPowerW, minSessionW);
        emit SiteChanged(siteId, msg.sender, maxPowerW, minSessionW);
    }

    /// @notice Change a site's power (only its manager).
    function setSitePower(uint32 siteId, uint32 maxPowerW, uint32 minSessionW) external {
        Site storage site = _managedSite(siteId);
        _checkSitePower(maxPowerW, minSessionW);
        site.maxPowerW = maxPowerW;
        site.minSessionW = minSessionW;
        emit SiteChanged(siteId, msg.sender, maxPowerW, minSessionW);
    }

    /// @notice Put a device in a site (0: take it out). The caller must manage the device and
    /// the site: nobody can load another manager's site, nor move another manager's charger.
    function setDeviceSite(bytes32 deviceId, uint32 siteId) external {
        _managed(deviceId);
        if (siteId != 0) _managedSite(siteId);
        siteOf[deviceId] = siteId;
        emit DeviceSiteChanged(deviceId, siteId);
    }

    function site(uint32 siteId) external view returns (Site memory) {
        Site storage s = _sites[siteId];
        if (s.manager == address(0)) revert UnknownSite(siteId);
        return s;
    }

    function device(bytes32 deviceId) external view returns (Device memory) {
        Device storage d = _devices[deviceId];
        if (d.manager == address(0)) revert UnknownDevice(deviceId);
        return d;
    }

    function deviceIdOf(string calldata chargeBoxId) external pure returns (bytes32) {
        return keccak256(bytes(chargeBoxId));
    }

    function deviceCount() external view returns (uint256) {
        return _deviceIds.length;
    }

    function deviceIdAt(uint256 index) external view returns (bytes32) {
        return _deviceIds[index];
    }

    /// @inheritdoc IDeviceFactory
    function deviceForSession(string calldata chargeBoxId)
        external
        view
        returns (bytes32 deviceId, address manager, uint8 connectorCount, bool active)
    {
        deviceId = keccak256(bytes(chargeBoxId));
        Device storage d = _devices[deviceId];
        if (d.manager == address(0)) revert UnknownDevice(deviceId);
        return (deviceId, d.manager, d.connectorCount, d.active);
    }

    /// @inheritdoc IDeviceFactory
    function managerOf(bytes32 deviceId) external view returns (address) {
        return _devices[deviceId].manager;
    }

    /// @inheritdoc IDeviceFactory
    function tariffOf(bytes32 deviceId) external view returns (uint128 pricePerKWh, uint128 perMinuteFee) {
        Device storage d = _devices[deviceId];
        return (d.pricePerKWh, d.perMinuteFee);
    }

    function _managed(bytes32 deviceId) private view returns (Device storage d) {
        d = _devices[deviceId];
        if (d.manager == address(0)) revert UnknownDevice(deviceId);
        if (d.manager != msg.sender) revert NotDeviceManager(deviceId, msg.sender);
    }

    function _managedSite(uint32 siteId) private view returns (Site storage s) {
        s = _sites[siteId];
        if (s.manager == address(0)) revert UnknownSite(siteId);
        if (s.manager != msg.sender) revert NotSiteManager(siteId, msg.sender);
    }

    function _checkSitePower(uint32 maxPowerW, uint32 minSessionW) private pure {
        if (maxPowerW == 0 || maxPowerW > MAX_SITE_POWER_W || minSessionW > maxPowerW) {
            revert SitePowerInvalid(maxPowerW, minSessionW);
        }
    }

    // OCPP charge point identity: 1..48 bytes of A-Z a-z 0-9 and * - _ = : + | @ . (OCPP 2.0.1).
    function _checkChargeBoxId(string calldata chargeBoxId) private pure {
        bytes calldata b = bytes(chargeBoxId);
        if (b.length == 0 || b.length > MAX_CHARGE_BOX_ID_BYTES) revert ChargeBoxIdInvalid(chargeBoxId);
        for (uint256 i; i < b.length; ++i) {
            bytes1 c = b[i];
            bool ok = (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9")
                || c == "*" || c == "-" || c == "_" || c == "=" || c == ":" || c == "+" || c == "|"
                || c == "@" || c == ".";
            if (!ok) revert ChargeBoxIdInvalid(chargeBoxId);
        }
    }

    function _checkConnectors(uint8 connectorCount) private pure {
        if (connectorCount == 0 || connectorCount > MAX_CONNECTORS) revert ConnectorCountInvalid(connectorCount);
    }

    function _checkMaxPower(uint32 maxPowerW) private pure {
        if (maxPowerW == 0 || maxPowerW > MAX_POWER_W) revert MaxPowerInvalid(maxPowerW);
    }

    function _checkLocation(string calldata location) private pure {
        if (bytes(location).length > MAX_LOCATION_BYTES) revert LocationTooLong(bytes(location).length);
    }

    function _checkAuth(bytes16 authSalt, bytes32 authHash) private pure {
        if (authSalt == bytes16(0) || authHash == bytes32(0)) revert AuthCredentialInvalid();
    }

    function _checkPublicKey(bytes calldata key) private pure {
        if (key.length > MAX_PUBLIC_KEY_BYTES) revert ChargerPublicKeyTooLong(key.length);
    }
}
