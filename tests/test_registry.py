"""The registries and the schema agree: a name the schema allows has an entry, an entry has a name the schema
allows (else params would validate and then fail at the first lookup, or an entry would be unreachable)."""

from __future__ import annotations

from transferability import estimators
from transferability import params as tparams


def test_the_schemas_estimators_are_the_registrys():
    enum = tparams.schema()["properties"]["estimators"]["properties"]["methods"]["items"]["enum"]
    assert enum == list(estimators.ESTIMATORS), (f"schema only: {sorted(set(enum) - set(estimators.ESTIMATORS))}, "
                                                 f"registry only: {sorted(set(estimators.ESTIMATORS) - set(enum))}")


def test_each_estimator_reads_a_layer_or_the_whole_network():
    for name, e in estimators.ESTIMATORS.items():
        assert e.name == name and e.reads in (estimators.LAYER, estimators.NETWORK) and e.label and e.what
    assert estimators.WHOLE_NETWORK == ("leep", "nce")
    assert [e.name for e in estimators.own_base_readers(list(estimators.ESTIMATORS))] == ["cka"]

