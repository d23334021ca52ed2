"""The registries behind model.decoder, --outputs, data.kind and HierSegModel.predict."""

import pytest

from hiertree.registry import PREDICTORS, Registry, RegistryError


def test_entries_come_back_by_name_in_registration_order():
    things = Registry("thing", "section.thing")
    things.register("b")(len)
    things.register("a")(str)
    assert things.names() == ["b", "a"] and list(things) == ["b", "a"]
    assert things.get("a") is str and "b" in things and "c" not in things


def test_a_lazy_entry_is_imported_on_first_use():
    things = Registry("thing", "section.thing")
    things.register_lazy("dumps", "json:dumps")
    assert things.names() == ["dumps"]
    import json

    assert things.get("dumps") is json.dumps
    with pytest.raises(RegistryError, match="expected 'module:attribute'"):
        things.register_lazy("bad", "json.dumps")


def test_a_name_is_registered_once_and_an_unknown_one_names_the_choices():
    things = Registry("thing", "section.thing")
    things.register("alpha")(int)
    with pytest.raises(RegistryError, match="thing 'alpha' is registered already"):
        things.register("alpha")(float)
    with pytest.raises(RegistryError, match="thing 'alpha' is registered already"):
        things.register_lazy("alpha", "json:dumps")
    with pytest.raises(RegistryError, match=r"section.thing: unknown thing 'alpah' \(did you mean 'alpha'\?\); "
                                            r"choose from alpha"):
        things.get("alpah")


def test_the_package_root_wires_the_predictor_behind_model_predict():
    from hiertree.inference.predictor import predict_with_model

    assert PREDICTORS.get("default") is predict_with_model
