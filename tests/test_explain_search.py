"""Full-text search over explanation versions."""

from __future__ import annotations

import pytest

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.store import Store


@pytest.fixture
def explained(store: Store) -> tuple[Store, int]:
    policy = store.add_policy(name="p", kind="torch", source="test", fingerprint="0",
                              observation_space="Box(4)", action_space="Discrete(2)",
                              layers={"hidden": 8})
    layer = store.get_layer(policy.policy_id, "hidden")
    store.add_explanation(layer_id=layer.layer_id, channel=1, text="fires when the pole leans right",
                          predicate="pole_angle > 0.02", author="ana", method="manual")
    store.add_explanation(layer_id=layer.layer_id, channel=2, text="tracks cart velocity",
                          author="ana", method="manual")
    return store, layer.layer_id


def test_search_finds_text_and_predicate(explained) -> None:
    store, layer_id = explained
    assert [e.channel for e in store.search_explanations("pole leans")] == [1]
    assert [e.channel for e in store.search_explanations("pole_angle")] == [1]
    assert [e.channel for e in store.search_explanations("velocity", layer_id=layer_id)] == [2]


@pytest.mark.parametrize("query", ['"unbalanced', "pole AND", "(", "a:b*", "NOT"])
def test_search_survives_fts5_syntax_errors(explained, query: str) -> None:
    store, _ = explained
    assert isinstance(store.search_explanations(query), list)


def test_search_rejects_nul_character(explained) -> None:
    store, _ = explained
    with pytest.raises(InvalidArgumentError, match="NUL"):
        store.search_explanations("pole\x00angle")
