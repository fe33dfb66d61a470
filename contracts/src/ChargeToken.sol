// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

error InsufficientBalance(address account, uint256 balance, uint256 needed);
error InsufficientAllowance(address owner, address spender, uint256 allowance, uint256 needed);
error TransferToZeroAddress();
error FaucetDisabled();
error FaucetAmountTooLarge(uint256 amount, uint256 max);

/// @title ChargeToken
/// @notice The ERC-20 that pays for energy. `faucetMint` exists only where the deployer
/// enabled it (devnet); on a production network the supply is fixed at deployment.
contract ChargeToken {
    uint256 public constant FAUCET_MAX_PER_CALL = 1_000_000 * 10 ** 6;

    string public constant name = "DEVSEN Charge Token";
    string public constant symbol = "DCT";
    uint8 public constant decimals = 6;
    bool public immutable faucetEnabled;

    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    constructor(address holder, uint256 initialSupply, bool faucetEnabled_) {
        faucetEnabled = faucetEnabled_;
        if (initialSupply != 0) _mint(holder, initialSupply);
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        _transfer(msg.sender, to, amount);
        return true;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < amount) revert InsufficientAllowance(from, msg.sender, allowed, amount);
            allowance[from][msg.sender] = allowed - amount;
        }
        _transfer(from, to, amount);
        return true;
    }

    /// @notice Devnet only: mint up to FAUCET_MAX_PER_CALL to `to`.
    function faucetMint(address to, uint256 amount) external {
        if (!faucetEnabled) revert FaucetDisabled();
        if (amount > FAUCET_MAX_PER_CALL) revert FaucetAmountTooLarge(amount, FAUCET_MAX_PER_CALL);
        _mint(to, amount);
    }

    function _transfer(address from, address to, uint256 amount) private {
        if (to == address(0)) revert TransferToZeroAddress();
        uint256 balance = balanceOf[from];
        if (balance < amount) revert InsufficientBalance(from, balance, amount);
        unchecked {
            balanceOf[from] = balance - amount;
        }
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
    }

    function _mint(address to, uint256 amount) private {
        if (to == address(0)) revert TransferToZeroAddress();
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }
}
