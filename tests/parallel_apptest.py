"""Run several AppTest sessions at the same time, in threads, as a server runs its sessions' scripts."""

from __future__ import annotations

import ast
import contextlib
import threading
from unittest.mock import MagicMock, patch

from streamlit import config
from streamlit.runtime import Runtime
from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import app_test
from streamlit.testing.v1.util import build_mock_config_get_option


@contextlib.contextmanager
def parallel_apptest():
    """Make AppTest.run safe to call from several threads at once.

    Around each run AppTest installs, then removes, a mock runtime and a config patch; with runs in
    parallel one run's cleanup pulls them from under another. Install both once for all sessions
    instead, as a server has one runtime and one config. And CPython 3.11's ast.parse can fail
    spuriously when threads parse at once (python/cpython#106905), which Streamlit does for each page
    on each AppTest run: parse one at a time.
    """
    runtime = MagicMock(spec=Runtime)
    runtime.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    runtime.dataframe_source_mgr = DataframeSourceManager()
    runtime.cache_storage_manager = MemoryCacheStorageManager()
    lock, parse = threading.Lock(), ast.parse

    def one_at_a_time(*args, **kwargs):
        with lock:
            return parse(*args, **kwargs)

    with contextlib.ExitStack() as stack:
        for target, name, value in (
            (Runtime, "_instance", runtime),
            (app_test, "Runtime", type("PerRunRuntime", (), {})),  # where AppTest would swap its own in and out
            (config, "get_option", build_mock_config_get_option({"global.appTest": True})),
            (app_test, "patch_config_options", lambda overrides: contextlib.nullcontext()),
            (ast, "parse", one_at_a_time),
        ):
            stack.enter_context(patch.object(target, name, value))
        yield
