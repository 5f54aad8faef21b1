"""The registries and the schema agree: a name the schema allows has an entry, an entry has a name the schema
allows (else params would validate and then fail at the first lookup, or an entry would be unreachable)."""

from __future__ import annotations

import pytest

from transferability import params as tparams
from transferability.data import sources
from transferability.errors import UserError
from transferability.estimators import scores as estimators


def test_the_schemas_estimators_are_the_registrys():
    enum = tparams.schema()["properties"]["estimators"]["properties"]["methods"]["items"]["enum"]
    assert enum == list(estimators.ESTIMATORS), (f"schema only: {sorted(set(enum) - set(estimators.ESTIMATORS))}, "
                                                 f"registry only: {sorted(set(estimators.ESTIMATORS) - set(enum))}")


def test_each_estimator_reads_a_layer_or_the_whole_network():
    for name, e in estimators.ESTIMATORS.items():
        assert e.name == name and e.reads in (estimators.LAYER, estimators.NETWORK) and e.label and e.what
    assert estimators.WHOLE_NETWORK == ("leep", "nce")
    assert [e.name for e in estimators.own_base_readers(list(estimators.ESTIMATORS))] == ["cka"]


def test_the_schemas_dataset_sources_are_the_registrys():
    enum = tparams.schema()["properties"]["dataset"]["properties"]["source"]["enum"]
    assert sorted(enum) == sorted(sources.SOURCES), (f"schema only: {sorted(set(enum) - set(sources.SOURCES))}, "
                                           f"registry only: {sorted(set(sources.SOURCES) - set(enum))}")


def test_an_unknown_source_is_named_never_read_as_an_image_folder(tmp_path, smoke_params):
    dataset = {**smoke_params["dataset"], "source": "tfrecord"}
    known = ", ".join(sources.SOURCES)
    for call in (lambda: sources.read_source(dataset, tmp_path), lambda: sources.fingerprint(dataset),
                 lambda: tparams.image_side(dataset)):
        with pytest.raises(UserError, match=rf"^dataset.source 'tfrecord' is unknown; known sources: {known}$"):
            call()
    assert not list(tmp_path.iterdir())  # nothing was read or decoded


def test_the_study_sources_keep_their_sides_and_counts(smoke_params):
    fmnist = smoke_params["dataset"]
    folder = {"source": "imagefolder", "root": "x", "name": "x", "image_size": 64, "channels": 1}
    assert tparams.image_side(fmnist) == 28 and tparams.image_side(folder) == 64
    assert sources.source_of(fmnist).expected(fmnist) == {"classes": 10, "train": 6000, "test": 1000}
    assert sources.source_of(folder).channels(folder) == 1 and sources.SOURCES["imagefolder"].sized
