import sys

from trajhub.shared.memory import tune_malloc


def test_tune_malloc_applies_on_linux_glibc() -> None:
    assert tune_malloc() is sys.platform.startswith("linux")
