// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// Test-only hostile token for tests/contracts/test_contracts_staking.py: it stakes itself on a
/// ValidatorSet deployed with it as the stake token, and when the ValidatorSet pays its stake
/// out (`transfer`) it calls `withdraw` again, recording how the re-entry ended.
interface IStakingTarget {
    function bond(uint256 amount) external;
    function beginUnbonding() external;
    function withdraw() external;
}

contract ReentrantToken {
    IStakingTarget public target;
    uint256 public transfersIn; // payouts received
    uint256 public paidOut; // amount received in payouts
    bytes public reentryRevert; // revert data of the nested withdraw
    bool public reentrySucceeded;

    function setTarget(IStakingTarget target_) external {
        target = target_;
    }

    function stake(uint256 amount) external {
        target.bond(amount);
        target.beginUnbonding();
    }

    function attack() external {
        target.withdraw();
    }

    function transferFrom(address, address, uint256) external pure returns (bool) {
        return true;
    }

    function balanceOf(address) external pure returns (uint256) {
        return 0;
    }

    function transfer(address, uint256 amount) external returns (bool) {
        transfersIn += 1;
        paidOut += amount;
        try target.withdraw() {
            reentrySucceeded = true;
        } catch (bytes memory data) {
            reentryRevert = data;
        }
        return true;
    }
}
