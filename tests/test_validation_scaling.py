"""Validating a workflow takes time in proportion to its size: 300 nodes cost about ten times what
30 do, not a hundred (auto-wiring once searched the graph for every candidate of every input)."""
import json
import time
from pathlib import Path

from segflow.workflow import spec

ROOT = Path(__file__).resolve().parents[1]


def workflow(size: int) -> str:
    """One training pipeline, then Predictor + Evaluator pairs until `size` nodes: the Predictors'
    inputs auto-wired, each Evaluator linked to its Predictor."""
    doc = json.loads((ROOT / "workflows" / "quickstart.json").read_text())
    links = []
    for i in range((size - len(doc["nodes"])) // 2):
        doc["nodes"] += [{"type": "Predictor", "name": f"predictor_{i}", "config": {"output_dir": f"predictions_{i}"}},
                         {"type": "Evaluator", "name": f"evaluator_{i}", "config": {}}]
        links.append({"source_node": f"predictor_{i}", "source_port": "predictions",
                      "target_node": f"evaluator_{i}", "target_port": "predictions"})
    doc["links"] = links
    assert len(doc["nodes"]) == size
    return json.dumps(doc)


def seconds_to_validate(text: str) -> float:
    """The fastest of five runs: the least disturbed by whatever else the machine is doing."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        wf = spec.loads(text)
        times.append(time.perf_counter() - started)
    assert len(wf.nodes) == json.loads(text)["nodes"].__len__()
    return min(times)


def test_validation_time_grows_linearly_with_the_number_of_nodes():
    small, large = workflow(31), workflow(301)
    seconds_to_validate(small)  # imports and caches warmed
    t30, t300 = seconds_to_validate(small), seconds_to_validate(large)
    assert t300 / t30 < 20, f"30 nodes: {t30 * 1000:.1f} ms, 300 nodes: {t300 * 1000:.1f} ms"
