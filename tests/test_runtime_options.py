"""RuntimeOptions: every Runtime tunable validated in one place, the environment
filling in what the arguments leave out. No process is started here."""
import os
import re

import pytest

from zerrow_pool.pipeline.budget import MIN_BUDGET
from zerrow_pool.pipeline.options import RuntimeOptions
from zerrow_pool.pipeline.sandbox import Isolation

ENV = ("ZERROW_CACHE_BYTES", "ZERROW_SPILL_DIR", "ZERROW_COPY_DIR", "ZERROW_DEBUG_INVARIANTS")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(clean_env):
    o = RuntimeOptions.resolve()
    assert o.workers == max(1, os.cpu_count() or 1)
    assert (o.transport, o.preload, o.memory_budget, o.tolerance) == ("zerrow", True, None, 0.10)
    assert o.cache and not o.strict_budget and o.node_memory_limit is None
    assert o.isolation is Isolation.PROCESS and not o.check_invariants
    quarter = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    assert o.cache_bytes == quarter


def test_sizes_are_parsed_to_bytes(clean_env):
    o = RuntimeOptions.resolve(workers=3, memory_budget="4G", cache_bytes="200K",
                               node_memory_limit="512M", isolation="none", strict_budget=True)
    assert (o.workers, o.memory_budget, o.cache_bytes) == (3, 4 << 30, 200 << 10)
    assert o.node_memory_limit == 512 << 20 and o.isolation is Isolation.NONE
    assert o.strict_budget


def test_options_are_frozen(clean_env):
    o = RuntimeOptions.resolve(workers=1)
    with pytest.raises(AttributeError):
        o.workers = 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(workers=0), "workers must be at least 1, not 0"),
    (dict(workers=-2), "workers must be at least 1, not -2"),
    (dict(transport="shm"), "unknown transport 'shm': use 'zerrow' or 'copy'"),
    (dict(isolation="vm"), "unknown isolation 'vm': use one of 'process', 'none'"),
    (dict(memory_budget=0), "below the minimum"),
    (dict(memory_budget="lots"), "cannot parse size 'lots'"),
    (dict(node_memory_limit=-1), "size -1 is negative"),
    (dict(cache_bytes="huge"), "cannot parse size 'huge'"),
])
def test_bad_values_are_refused_naming_the_value(clean_env, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RuntimeOptions.resolve(**kwargs)


def test_budget_minimum_is_one_byte_for_the_api(clean_env):
    # zerrow run asks for MIN_BUDGET; the API takes tiny budgets (tests use them).
    assert RuntimeOptions.resolve(memory_budget=1).memory_budget == 1 < MIN_BUDGET


def test_strict_budget_needs_a_budget(clean_env):
    assert not RuntimeOptions.resolve(strict_budget=True).strict_budget
    assert RuntimeOptions.resolve(strict_budget=True, memory_budget="1G").strict_budget


def test_cache_only_where_the_transport_uses_it(clean_env):
    clean_env.setenv("ZERROW_CACHE_BYTES", "not a size")  # never read without a cache
    o = RuntimeOptions.resolve(transport="copy")
    assert not o.cache and o.cache_bytes is None
    o = RuntimeOptions.resolve(cache=False)
    assert not o.cache and o.cache_bytes is None


def test_cache_bytes_from_the_environment(clean_env):
    clean_env.setenv("ZERROW_CACHE_BYTES", "1M")
    assert RuntimeOptions.resolve().cache_bytes == 1 << 20
    assert RuntimeOptions.resolve(cache_bytes="2M").cache_bytes == 2 << 20  # the argument wins
    clean_env.setenv("ZERROW_CACHE_BYTES", "1 lot")
    with pytest.raises(ValueError, match="cannot parse size '1 lot'"):
        RuntimeOptions.resolve()


def test_directories_from_the_environment(clean_env, tmp_path):
    clean_env.setenv("ZERROW_SPILL_DIR", str(tmp_path / "spill"))
    clean_env.setenv("ZERROW_COPY_DIR", str(tmp_path / "copy"))
    o = RuntimeOptions.resolve()
    assert (o.spill_dir, o.copy_dir) == (str(tmp_path / "spill"), str(tmp_path / "copy"))
    assert RuntimeOptions.resolve(spill_dir="/elsewhere").spill_dir == "/elsewhere"


def test_directories_default_to_ram_for_copies_and_disk_for_spills(clean_env):
    import tempfile

    o = RuntimeOptions.resolve()
    assert o.spill_dir == tempfile.gettempdir()
    assert o.copy_dir == ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())


@pytest.mark.parametrize("value, on", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_invariant_checks_from_the_environment(clean_env, value, on):
    clean_env.setenv("ZERROW_DEBUG_INVARIANTS", value)
    assert RuntimeOptions.resolve().check_invariants is on


def test_options_are_named_once_with_their_defaults(clean_env):
    from zerrow_pool.pipeline.options import OPTIONS

    given = RuntimeOptions.arguments()
    assert given == {o.name: o.default for o in OPTIONS}
    assert list(given)[:2] == ["workers", "transport"]
    assert RuntimeOptions.arguments(2, "copy", isolation="none") == {
        **given, "workers": 2, "transport": "copy", "isolation": "none"}
    o = RuntimeOptions.resolve(2, "copy")  # workers and transport may come positionally
    assert (o.workers, o.transport) == (2, "copy")


@pytest.mark.parametrize("args, kwargs, message", [
    ((), dict(budget="1G"), "unknown runtime option 'budget'; the options are: workers, "
                            "transport, memory_budget,"),
    ((), dict(b=1, a=2), "unknown runtime options 'a', 'b'; the options are:"),
    ((2,), dict(workers=3), "option 'workers' given twice"),
    ((2, "copy", 3), {}, "at most 2 options may be given without their names"),
])
def test_unknown_options_are_refused_naming_the_valid_ones(clean_env, args, kwargs, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        RuntimeOptions.resolve(*args, **kwargs)


def test_a_runtime_refuses_an_unknown_option_before_starting_anything(clean_env):
    from zerrow_pool.pipeline import Runtime

    with pytest.raises(TypeError, match="unknown runtime option 'worker'; the options are"):
        Runtime(worker=2)


def test_runtimes_document_every_option_in_their_signature_and_docstring():
    import inspect

    from zerrow_pool.pipeline import Runtime
    from zerrow_pool.pipeline.options import OPTIONS
    from zerrow_pool.ray.driver import RayRuntime

    for cls, first, last in [(Runtime, [], ["on_event", "ray"]),
                             (RayRuntime, ["address"], ["on_event", "pins"])]:
        params = inspect.signature(cls).parameters
        assert list(params) == first + [o.name for o in OPTIONS] + last
        for o in OPTIONS:
            assert params[o.name].default == o.default
            assert f"    {o.name} : default {o.default!r}\n" in cls.__doc__
        assert params["workers"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert params["memory_budget"].kind is inspect.Parameter.KEYWORD_ONLY
