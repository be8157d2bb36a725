"""One broken workflow per failure kind: the exact code, node, JSON path and line:column."""
from pathlib import Path

import pytest

from segflow.workflow import spec
from segflow.workflow.errors import WorkflowError

BROKEN = Path(__file__).parent / "broken"

# file -> (code, node, JSON path, text the issue must point at: its first occurrence)
CASES = {
    "json_syntax": ("json_syntax", None, "", '"name": "model"}'),
    "unknown_key": ("unknown_key", "optimizer", "nodes[3].config.learning_rte", '"learning_rte"'),
    "bad_value": ("bad_value", "data", "nodes[0].config.batch_size", '"eight"'),
    "unknown_node_type": ("unknown_node_type", "model", "nodes[1].type", '"Unet2D"'),
    "duplicate_node_name": ("duplicate_node_name", "model", "nodes[2].name", '"model", "config": {"loss_type"'),
    "duplicate_key": ("duplicate_key", "optimizer", "nodes[3].config.learning_rate", '"learning_rate"'),
    "missing_input": ("missing_input", "trainer", "nodes[3].name", '"trainer"'),
    "unknown_link_node": ("unknown_link_node", None, "links[0].source_node", '"modle"'),
    "unknown_port": ("unknown_port", "model", "links[0].source_port", '"net"'),
    "port_type_mismatch": ("port_type_mismatch", "optimizer", "links[0]", '{"source_node": "loss"'),
    "no_training_data": ("no_training_data", "trainer", "nodes[4].config", '{"epochs": 2}'),
}


def position_of(text: str, needle: str) -> tuple[int, int]:
    i = text.index(needle)
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1


def issues_of(name: str):
    path = BROKEN / f"{name}.json"
    with pytest.raises(WorkflowError) as info:
        spec.load(path)
    return path.read_text(), info.value.issues


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_failure_kind_is_located(name):
    code, node, json_path, needle = CASES[name]
    text, issues = issues_of(name)
    assert [i.code for i in issues] == [code], [i.format() for i in issues]
    issue = issues[0]
    assert issue.node == node
    assert issue.path == json_path
    assert (issue.line, issue.column) == position_of(text, needle)
    assert issue.file.endswith(f"{name}.json")


def test_suggestions_name_the_right_spelling():
    _, issues = issues_of("unknown_key")
    assert "'learning_rate'" in issues[0].hint
    _, issues = issues_of("unknown_node_type")
    assert "'UNet2D'" in issues[0].hint
    _, issues = issues_of("unknown_link_node")
    assert "'model'" in issues[0].hint


def test_ambiguous_inputs_list_candidates_and_a_fix():
    text, issues = issues_of("ambiguous_input")
    assert [(i.code, i.node) for i in issues] == [("ambiguous_input", "optimizer"), ("ambiguous_input", "trainer")]
    assert "model.model, model2.model" in issues[0].message
    assert '"target_port": "model"' in issues[0].hint
    assert (issues[0].line, issues[0].column) == position_of(text, '"optimizer", "config"')


def test_cycle_names_the_nodes_on_it():
    text, issues = issues_of("cycle")
    assert [i.code for i in issues] == ["cycle"]
    assert "trainer" in issues[0].message and "optimizer" in issues[0].message
    assert (issues[0].line, issues[0].column) == position_of(text, f'"{issues[0].node}", "config"')


def test_several_problems_are_reported_together_in_file_order():
    _, issues = issues_of("several")
    found = {(i.code, i.path) for i in issues}
    assert ("unknown_key", "nodes[0].config.shufle") in found
    assert ("bad_value", "nodes[2].config.loss_type") in found
    assert ("bad_value", "nodes[4].config.epochs") in found
    assert [i.line for i in issues] == sorted(i.line for i in issues)
    assert "'shuffle'" in next(i.hint for i in issues if i.path.endswith("shufle"))
