"""The backends implement the ``Backend`` protocol on their own: every member it names, none inherited from
another backend."""
from __future__ import annotations

import inspect

import pytest

from training.distributed import Backend, HorovodBackend, SingleProcess, TorchBackend


def protocol_members() -> tuple[set[str], set[str]]:
    """(methods, attributes) the protocol names."""
    methods = {name for name, value in vars(Backend).items() if inspect.isfunction(value) and not name.startswith("_")}
    return methods, set(Backend.__annotations__)


@pytest.mark.parametrize("backend", [SingleProcess, HorovodBackend, TorchBackend], ids=lambda b: b.__name__)
def test_every_backend_defines_the_whole_protocol_itself(backend):
    methods, attributes = protocol_members()
    assert backend.__bases__ == (object,)  # none borrows another backend's no-ops
    for name in methods:
        assert callable(getattr(backend, name, None)), f"{backend.__name__} lacks {name}"
        assert list(inspect.signature(getattr(backend, name)).parameters) == list(
            inspect.signature(getattr(Backend, name)).parameters), f"{backend.__name__}.{name}: other parameters"
    source = inspect.getsource(backend)
    for name in attributes:  # set in __init__ or as a class attribute or property
        assert name in source, f"{backend.__name__} never sets {name}"


def test_a_world_of_one_is_a_backend():
    single = SingleProcess("cpu")
    assert isinstance(single, SingleProcess) and single.device.type == "cpu"
    assert (single.rank, single.size, single.local_rank, single.local_size, single.hosts) == (0, 1, 0, 1, 1)
    backend: Backend = single  # what a type checker verifies; here, that the name is usable as a type
    assert backend.broadcast_object({"a": 1}, name="x") == {"a": 1}
