"""Content keys (flows.fingerprint): a class's `key_revision` re-keys exactly what holds an instance of it."""

import equinox as eqx

import flows


class _Part(eqx.Module):
    x: float


class _Other(eqx.Module):
    y: float


def test_a_key_revision_rekeys_what_holds_the_class_and_nothing_else(monkeypatch):
    part, other = _Part(1.0), _Other(1.0)
    holder = {"part": part, "options": (1e-6, "tsit5")}
    before = [flows.fingerprint(v) for v in (part, holder, other)]
    monkeypatch.setattr(_Part, "key_revision", 0, raising=False)
    assert [flows.fingerprint(v) for v in (part, holder, other)] == before  # 0 is the absent revision
    monkeypatch.setattr(_Part, "key_revision", 1, raising=False)
    after = [flows.fingerprint(v) for v in (part, holder, other)]
    assert after[0] != before[0] and after[1] != before[1] and after[2] == before[2]
    monkeypatch.setattr(_Part, "key_revision", 2, raising=False)
    assert flows.fingerprint(part) not in (before[0], after[0])


def test_momentum_flow_keys_carry_its_revision(monkeypatch):
    # Its runs' error control measures the moment by its effect on the parameters: stored runs of the earlier
    # measure (keyed at revision 0) are not reused.
    flow = flows.Flow(flows.sensing(n=4, m=8, rank=1, seed=0), flows.Direct(), dynamics=flows.Momentum(a=10.0))
    key = flows.fingerprint(flow)
    monkeypatch.setattr(flows.Momentum, "key_revision", 0)
    assert flows.fingerprint(flow) != key


class _Sentinel:
    pass


class _AnotherSentinel:
    pass


def test_objects_without_state_are_keyed_by_their_class_and_objects_with_state_are_refused():
    # Diffrax's implicit solvers hold such a sentinel in their root finders (Kvaerno5: "the controller's
    # tolerances"); two instances compute alike, two classes may not, and an object with fields of its own is
    # refused rather than keyed by its class.
    import diffrax
    import pytest

    assert flows.fingerprint(_Sentinel()) == flows.fingerprint(_Sentinel())
    assert flows.fingerprint(_Sentinel()) != flows.fingerprint(_AnotherSentinel())
    assert flows.fingerprint(diffrax.Kvaerno5()) == flows.fingerprint(diffrax.Kvaerno5())
    holding = _Sentinel()
    holding.value = 1.0
    with pytest.raises(TypeError, match="cannot fingerprint a _Sentinel"):
        flows.fingerprint(holding)


def test_a_budget_given_as_a_numpy_integer_keys_as_the_int():
    import numpy as np

    from flows._solve import Plan

    plans = [Plan.make(1.0, max_steps=steps) for steps in (1000, np.int64(1000), np.int32(1000))]
    assert all(type(plan.max_steps) is int for plan in plans)
    assert len({flows.fingerprint(plan) for plan in plans}) == 1


class _Slotted:
    __slots__ = ("x",)

    def __init__(self, x):
        self.x = x


class _SlottedChild(_Slotted):
    __slots__ = ()


class _DictChild(_Slotted):
    pass


def test_state_in_inherited_slots_is_refused_and_bound_builtins_are_keyed_by_their_object():
    import numpy as np
    import pytest

    # The state of these lives in a base class's slot: keying them by their class would give x = 1 and x = 2 one key.
    for cls in (_SlottedChild, _DictChild):
        with pytest.raises(TypeError, match="cannot fingerprint"):
            flows.fingerprint(cls(1))
    # A builtin method bound to an object computes with it.
    assert flows.fingerprint([1].append) != flows.fingerprint([2].append)
    assert flows.fingerprint(np.zeros(2).sum) != flows.fingerprint(np.ones(2).sum)
    assert flows.fingerprint(len) == flows.fingerprint(len)
