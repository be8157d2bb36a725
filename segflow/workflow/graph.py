"""From node types and explicit links to a wired networkx DiGraph.

Pure graph logic: it knows node classes and ports, never configs or files. The spec layer
turns the `WiringProblem`s returned here into located issues.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx

from segflow.nodes.base import Node, Port

# A value of the key type may go where the value type is asked for (explicit links only;
# auto-wiring takes exact types, in each input's order of preference).
SUBTYPES = {"TrainedModel": "Model"}
ANY = "Any"  # an input of this type takes every output (a Print node's)
_LISTED = 6  # candidates an ambiguous_input names; more would make each message as long as the workflow


@dataclass(frozen=True)
class Wire:
    source: str
    source_port: str
    target: str
    target_port: str
    link_index: int | None = None  # index in the file's `links`; None when auto-wired

    @property
    def auto(self) -> bool:
        return self.link_index is None


@dataclass(frozen=True)
class WiringProblem:
    code: str  # missing_input | ambiguous_input | cycle
    node: str
    port: str
    message: str
    hint: str = ""


def fits(source_type: str, port: Port) -> bool:
    """Can an output of `source_type` be linked explicitly into `port`?"""
    return ANY in port.types or source_type in port.types or SUBTYPES.get(source_type) in port.types


def _producers(nodes: dict[str, type[Node]]) -> dict[str, list[tuple[str, str]]]:
    """Each port type's outputs as (node, output), in file order: looked up once, not per input."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name, cls in nodes.items():
        for out in cls.outputs:
            found.setdefault(out.type, []).append((name, out.name))
    return found


def _candidates(producers: dict[str, list[tuple[str, str]]], g: nx.DiGraph, target: str, port: Port,
                cycles_ok: bool = False) -> list[tuple[str, str]]:
    """The outputs that could feed `port` of `target`, of its most preferred type that has any.
    What depends on `target` is found once (not a path search per candidate), as a workflow of
    hundreds of nodes asks this for every input in every round."""
    downstream: set[str] | None = None
    for wanted in port.types:
        pool = [c for outs in producers.values() for c in outs] if wanted == ANY else producers.get(wanted, ())
        found = [c for c in pool if c[0] != target]
        if found and not cycles_ok:
            downstream = nx.descendants(g, target) if downstream is None else downstream
            found = [c for c in found if c[0] not in downstream]
        if found:
            return found
    return []


def _narrow(passing: dict[tuple[str, str], str], wired: dict, cands: list[tuple[str, str]], port: Port,
            final: bool) -> list | None:
    """Apply the pass-through and name-preference rules; None means 'decide later'. `passing` maps
    each output that hands on one of its node's inputs to that input."""
    replaced = set()
    for name, out_name in cands:
        passes = passing.get((name, out_name))
        if passes is None:
            continue
        source = wired.get((name, passes))
        if source is None and not final:
            return None  # what this output passes on is not known yet
        replaced.add(source)
    keep = [c for c in cands if c not in replaced]
    if len(keep) > 1:
        for preferred in port.prefer or (port.name,):
            chosen = [c for c in keep if c[1] == preferred]
            if chosen:
                return chosen
    return keep


def wire(nodes: dict[str, type[Node]], explicit: list[Wire]) -> tuple[list[Wire], nx.DiGraph, list[WiringProblem]]:
    """Complete `explicit` with auto-wired inputs. `nodes` is ordered as in the file."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    wires = list(explicit)
    wired: dict[tuple[str, str], tuple[str, str]] = {}
    for w in explicit:
        g.add_edge(w.source, w.target)
        wired[(w.target, w.target_port)] = (w.source, w.source_port)
    pending = [(name, p) for name, cls in nodes.items() for p in cls.inputs if (name, p.name) not in wired]
    producers = _producers(nodes)
    passing = {(name, out.name): out.passes for name, cls in nodes.items() for out in cls.outputs if out.passes}

    def settle(final: bool) -> bool:
        """One round over the inputs still open; whether it settled any."""
        still = []
        for name, port in pending:
            chosen = _narrow(passing, wired, _candidates(producers, g, name, port), port, final)
            if chosen is None or len(chosen) != 1:
                still.append((name, port))
                continue
            (src, src_port), = chosen
            wires.append(Wire(src, src_port, name, port.name))
            wired[(name, port.name)] = (src, src_port)
            g.add_edge(src, name)
        progress = len(still) < len(pending)
        pending[:] = still
        return progress

    while settle(final=False):
        pass
    while settle(final=True):
        pass
    return wires, g, _problems(passing, producers, g, wired, pending)


def _problems(passing: dict[tuple[str, str], str], producers: dict[str, list[tuple[str, str]]], g: nx.DiGraph,
              wired: dict, pending: list[tuple[str, Port]]) -> list[WiringProblem]:
    """Why each input left open is a problem (an optional one without candidates is none), and the
    first cycles the links make."""
    problems = []
    for name, port in pending:
        cands = _narrow(passing, wired, _candidates(producers, g, name, port), port, final=True)
        wanted = " or ".join(port.types)
        if len(cands) > 1:
            listed = ", ".join(f"{n}.{p}" for n, p in cands[:_LISTED])
            listed += f" and {len(cands) - _LISTED} more" if len(cands) > _LISTED else ""
            problems.append(WiringProblem(
                "ambiguous_input", name, port.name,
                f"input '{port.name}' ({wanted}) could come from any of: {listed}",
                f"add a link choosing one, e.g. {{\"source_node\": \"{cands[0][0]}\", \"source_port\": "
                f"\"{cands[0][1]}\", \"target_node\": \"{name}\", \"target_port\": \"{port.name}\"}}"))
        elif port.required and (closing := _closing(producers, g, name, port)):
            src = closing[0][0]
            path = " -> ".join([name, *nx.shortest_path(g, name, src)[1:], name])
            problems.append(WiringProblem(
                "cycle", name, port.name,
                f"input '{port.name}' could only come from {src}.{closing[0][1]}, which depends on '{name}': {path}",
                "a node cannot depend on its own output; remove the link that makes the cycle"))
        elif port.required:
            problems.append(WiringProblem(
                "missing_input", name, port.name,
                f"input '{port.name}' needs a {wanted}, and no node in the workflow produces one",
                f"add a node with a {port.type} output (see `segflow nodes`) or link one in"))

    for cycle in itertools.islice(nx.simple_cycles(g), 5):  # links can make exponentially many
        path = " -> ".join([*cycle, cycle[0]])
        problems.append(WiringProblem("cycle", cycle[0], "", f"the nodes form a cycle: {path}",
                                      "a node cannot depend on its own output; remove one of these links"))
    return problems


def _closing(producers: dict[str, list[tuple[str, str]]], g: nx.DiGraph, target: str,
             port: Port) -> list[tuple[str, str]]:
    """The candidates for `port` left out only because they depend on `target` (they would close a
    cycle); not those a pass-through rule removed, which have no path back to `target`."""
    downstream = nx.descendants(g, target)
    return [c for c in _candidates(producers, g, target, port, cycles_ok=True) if c[0] in downstream]


def execution_order(g: nx.DiGraph, file_order: list[str], until: str | None = None) -> list[str]:
    """Topological order, ties broken by position in the file; with `until`, only its ancestors."""
    index = {name: i for i, name in enumerate(file_order)}
    sub = g
    if until is not None:
        sub = g.subgraph(nx.ancestors(g, until) | {until})
    return list(nx.lexicographical_topological_sort(sub, key=lambda n: index[n]))
