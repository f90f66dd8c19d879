"""System tests of tests/system/test_system.py, unchanged, with the four services on a
Redis Cluster (see conftest.py): a round trip through every service, a storage crash
mid-upload (consumer groups, claims, reconciliation) and the Socket.IO broadcast (the
notify stream). Each test starts the four services (~30 s on a loaded 2-core machine),
so the others, which add nothing cluster-specific, are not repeated here; to run one
too, import it below. ``test_serve_keeps_everything_across_restart`` does not apply:
``trajhub serve`` starts its own embedded redis-server."""

from __future__ import annotations

import pytest

from tests.system.test_system import (
    test_kill_storage_mid_upload_loses_and_doubles_nothing,
    test_s22_and_emt_md_round_trip,
    test_socketio_client_sees_frames_changed_with_seq,
)

pytestmark = [pytest.mark.system]

__all__ = [
    "test_kill_storage_mid_upload_loses_and_doubles_nothing",
    "test_s22_and_emt_md_round_trip",
    "test_socketio_client_sees_frames_changed_with_seq",
]
