"""No change: the control run (the same launcher, nothing patched)."""


def install() -> None:
    pass
