"""What a dataset's classes mean beyond class indices: regions (nnU-Net's region-based training) and
the ignore label. The one record every consumer of labels reads: loader, losses, Trainer, Predictor,
Evaluator and overlays.

* Regions: overlapping unions of classes (BraTS: whole tumour = {1, 2, 3}, tumour core = {2, 3},
  enhancing tumour = {3}), one sigmoid output channel each. Label files stay class-index maps; a
  prediction becomes one again by nnU-Net's rule: each region's sigmoid thresholded at 0.5, painted
  in region order as its `regions_class_order` value, later regions over earlier ones.
* Ignore label: voxels whose truth is unknown (sparse or scribble annotation). They count in no loss
  term, no metric and no patch centre, and no prediction holds the value. As in nnU-Net it must be the
  highest label value; in class indices it is one past the last class (`ignore == num_classes`).

Everything here is in class indices (what `LabelCoding.decode` gives). Stdlib only, so node
declarations check configs with the same rules (`problems`) that the loader applies to the data.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    name: str
    classes: tuple[int, ...]  # the classes it unites, ascending

    @property
    def key(self) -> str:
        """The name as history columns and monitors spell it: "whole tumor" -> "whole_tumor"."""
        return column_name(self.name)


@dataclass(frozen=True)
class LabelScheme:
    """No regions and no ignore label: plain classes, one softmax channel each (`PLAIN`)."""

    regions: tuple[Region, ...] = ()
    paint: tuple[int, ...] = ()  # regions_class_order: the class written where each region is predicted
    ignore: int | None = None  # class index of the ignore label, one past the last class
    source: str = ""  # what declared it, for messages

    @property
    def region_based(self) -> bool:
        return bool(self.regions)

    @property
    def plain(self) -> bool:
        return not self.regions and self.ignore is None

    def channels(self, num_classes: int) -> int:
        """The network's output channels: one per region, else one per class."""
        return len(self.regions) if self.regions else num_classes

    def names(self) -> list[str]:
        return [r.name for r in self.regions]

    def describe(self) -> str:
        parts = []
        if self.regions:
            parts.append("regions " + ", ".join(f"{r.name} {list(r.classes)}" for r in self.regions)
                         + f" painted as {list(self.paint)}")
        if self.ignore is not None:
            parts.append(f"ignore label {self.ignore}")
        return "; ".join(parts) + (f" ({self.source})" if self.source and parts else "")

    def region_of_class(self) -> list[int]:
        """For class c (0 .. max class), 1 + the index of the last region in paint order holding it, 0 for
        none: what a picture colours a voxel of class c as (nested regions show their innermost)."""
        top = max([c for r in self.regions for c in r.classes] + list(self.paint) + [0])
        out = [0] * (top + 1)
        for i, region in enumerate(self.regions):
            for c in region.classes:
                out[c] = i + 1
        return out


PLAIN = LabelScheme()


def column_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "region"


@dataclass
class Problem:
    field: str  # the setting it is about: "regions", "regions_class_order" or "ignore_label"
    message: str
    hint: str = ""


def problems(scheme: LabelScheme, classes: Sequence[int] | None, names: dict[str, str] | None = None,
             order_given: bool = True) -> list[Problem]:
    """Why `scheme` cannot work for a dataset whose classes are `classes` (None: not known yet). `names`
    maps the settings to how the source spells them (dataset.json: "labels", "regions_class_order")."""
    say = {"regions": "regions", "regions_class_order": "regions_class_order", "ignore_label": "ignore_label",
           **(names or {})}
    found = _ignore_problems(scheme, classes, say) + _region_problems(scheme, classes, say)
    if scheme.regions and not found:
        found += _order_problems(scheme, say, order_given)
    return found


def _ignore_problems(scheme: LabelScheme, classes: Sequence[int] | None, say: dict[str, str]) -> list[Problem]:
    ignore = scheme.ignore
    if ignore is None or classes is None:
        return []
    if ignore in classes:
        return [Problem("ignore_label", f"{say['ignore_label']} {ignore} is also a class (classes "
                        f"{_listed(classes)}); the ignore label must be a value of its own",
                        f"give the ignore label the value {max(classes) + 1}, one above the last class")]
    if ignore < max(classes):
        return [Problem("ignore_label", f"{say['ignore_label']} {ignore} is not the highest label value (classes "
                        f"{_listed(classes)}); as in nnU-Net, the ignore label must be the highest value",
                        f"give the ignore label the value {max(classes) + 1}")]
    return []


def _region_problems(scheme: LabelScheme, classes: Sequence[int] | None, say: dict[str, str]) -> list[Problem]:
    where = say["regions"]
    found: list[Problem] = []
    seen: dict[str, str] = {}
    for r in scheme.regions:
        if not r.classes:
            found.append(Problem("regions", f"{where}: region {r.name!r} lists no label values"))
        elif 0 in r.classes:
            found.append(Problem("regions", f"{where}: region {r.name!r} includes 0, the background",
                                 "regions unite foreground classes; leave 0 out"))
        elif scheme.ignore is not None and scheme.ignore in r.classes:
            found.append(Problem("regions", f"{where}: region {r.name!r} includes the ignore label {scheme.ignore}"))
        elif classes is not None and not set(r.classes) <= set(classes):
            bad = sorted(set(r.classes) - set(classes))
            found.append(Problem("regions", f"{where}: region {r.name!r} names label value(s) {bad} that no class has "
                                 f"(classes {_listed(classes)})", "name existing label values"))
        if r.key in seen:
            found.append(Problem("regions", f"{where}: regions {seen[r.key]!r} and {r.name!r} have the same name "
                                 f"as a history column ({r.key})", "give every region its own name"))
        seen[r.key] = r.name
    return found or _overlap_problems(scheme.regions, where)


def _overlap_problems(regions: Iterable[Region], where: str) -> list[Problem]:
    """Regions must be nested or disjoint: painting in order cannot write a voxel in two partly
    overlapping regions as a value that is in both and in nothing else."""
    regions = list(regions)
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            sa, sb = set(a.classes), set(b.classes)
            if sa == sb:
                return [Problem("regions", f"{where}: regions {a.name!r} and {b.name!r} hold the same label values "
                                f"{sorted(sa)}", "remove one of them")]
            if sa & sb and not (sa < sb or sb < sa):
                return [Problem("regions", f"{where}: regions {a.name!r} {sorted(sa)} and {b.name!r} {sorted(sb)} "
                                f"overlap without one holding the other, so no label map can show both",
                                "make regions nested (one inside the other, like whole tumour > tumour core) or "
                                "disjoint")]
    return []


def _order_problems(scheme: LabelScheme, say: dict[str, str], order_given: bool) -> list[Problem]:
    where, regions, paint = say["regions_class_order"], scheme.regions, scheme.paint
    suggestion = [_own_values(scheme, i) for i in range(len(regions))]
    example = [v[0] if v else "?" for v in suggestion]
    if not order_given:
        return [Problem("regions_class_order", f"{where} is missing: region-based training writes predictions as "
                        "one label map, painting each region in order as its regions_class_order value",
                        f"add regions_class_order, e.g. {example}")]
    if len(paint) != len(regions):
        return [Problem("regions_class_order", f"{where} has {len(paint)} value(s) but there are {len(regions)} "
                        f"regions ({', '.join(r.name for r in regions)}): one value per region, in region order",
                        f"e.g. {example}")]
    for i, (region, value) in enumerate(zip(regions, paint)):
        if value not in region.classes:
            return [Problem("regions_class_order", f"{where}[{i}] paints region {region.name!r} as {value}, which is "
                            f"not one of its values {list(region.classes)}", f"e.g. {example}")]
        if value not in suggestion[i]:
            inner = next(r.name for r in regions if value in r.classes and set(r.classes) < set(region.classes))
            return [Problem("regions_class_order", f"{where}[{i}] paints region {region.name!r} as {value}, which "
                            f"also belongs to region {inner!r} inside it, so its voxels would read as {inner!r}",
                            f"use a value of {region.name!r} outside the regions it holds, e.g. {example}")]
    return _paint_order_problems(regions, say["regions"])


def _paint_order_problems(regions: Sequence[Region], where: str) -> list[Problem]:
    for i, inner in enumerate(regions):
        for outer in regions[i + 1:]:
            if set(outer.classes) > set(inner.classes):
                return [Problem("regions", f"{where}: region {outer.name!r} holds region {inner.name!r} but comes "
                                f"after it, so painting in order would cover {inner.name!r} entirely",
                                "list the outer regions first (whole tumour, tumour core, enhancing tumour)")]
    return []


def _own_values(scheme: LabelScheme, i: int) -> list[int]:
    """The values of region i in none of the regions it holds: what it may be painted as."""
    region = set(scheme.regions[i].classes)
    inner = set().union(*[set(r.classes) for r in scheme.regions if set(r.classes) < region])
    return sorted(region - inner)


def _listed(classes: Sequence[int]) -> str:
    values = sorted(classes)
    contiguous = values == list(range(values[0], values[-1] + 1)) if values else False
    return f"{values[0]}..{values[-1]}" if contiguous and len(values) > 2 else str(values)


def from_settings(regions: dict[str, list[int]] | None, order: list[int] | None, ignore: int | None,
                  source: str) -> LabelScheme:
    """The scheme a loader's settings declare (class indices already)."""
    made = tuple(Region(str(name), tuple(sorted(set(int(v) for v in values)))) for name, values in (regions or {}).items())
    return LabelScheme(made, tuple(int(v) for v in order or ()), ignore, source if made or ignore is not None else "")


@dataclass
class DeclaredLabels:
    """What a dataset.json `labels` entry (nnU-Net v2) declares."""

    class_names: list[str]  # by class index; the ignore label is not a class
    values: tuple[int, ...]  # the stored value of each class index, ascending, the ignore label's last
    scheme: LabelScheme = PLAIN


def from_dataset_labels(labels: dict, order: list | None, where: str) -> DeclaredLabels:
    """Read nnU-Net v2's `labels` ({"background": 0, "tumour": 1} or regions {"whole": [1, 2, 3], ...},
    an optional "ignore": value) and `regions_class_order`; raises ValueError naming `where` (the file)
    and the entry for anything malformed or against the rules (`problems`)."""
    ignore = labels.get("ignore")
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int)):
        raise ValueError(f"{where}: labels 'ignore' must be one label value (an integer), not {ignore!r}")
    entries = {k: _entry_values(k, v, where) for k, v in labels.items() if k != "ignore"}
    values = sorted(set().union(*entries.values())) if entries else []
    if 0 not in values:
        raise ValueError(f"{where}: label values {values} must include 0 (the background)")
    region_based = any(len(v) > 1 for v in entries.values())
    regions = tuple(Region(str(k), tuple(v)) for k, v in entries.items() if region_based and v != [0])
    ints = [int(v) for v in order] if isinstance(order, list) and all(isinstance(v, int) for v in order) else None
    if region_based and order is not None and ints is None:
        raise ValueError(f"{where}: regions_class_order must be a list of label values, not {order!r}")
    stored = LabelScheme(regions, tuple(ints or ()), ignore, f"labels in {where}")
    names = {"regions": f"{where}: labels", "regions_class_order": f"{where}: regions_class_order",
             "ignore_label": f"{where}: labels 'ignore'"}
    found = problems(stored, values, names, order_given=order is not None)
    if found:
        raise ValueError(found[0].message + (f"; {found[0].hint}" if found[0].hint else ""))
    return DeclaredLabels(_class_names(entries, values), tuple(values + ([ignore] if ignore is not None else [])),
                          _to_indices(stored, values))


def _entry_values(name: str, value, where: str) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple)) or \
            isinstance(value, (list, tuple)) and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{where}: label {name!r} must be a label value or a list of them (a region), not {value!r}")
    values = sorted(set(value)) if isinstance(value, (list, tuple)) else [value]
    if not values or min(values) < 0:
        raise ValueError(f"{where}: label {name!r} must name non-negative label values, not {value!r}")
    return values


def _class_names(entries: dict[str, list[int]], values: list[int]) -> list[str]:
    named = {v[0]: k for k, v in entries.items() if len(v) == 1}
    return [str(named.get(v, "background" if v == 0 else f"class_{v}")) for v in values]


def _to_indices(stored: LabelScheme, values: list[int]) -> LabelScheme:
    """The stored values' scheme in class indices (class c is the c-th value in ascending order)."""
    index = {v: i for i, v in enumerate(values)}
    regions = tuple(Region(r.name, tuple(index[v] for v in r.classes)) for r in stored.regions)
    return LabelScheme(regions, tuple(index[v] for v in stored.paint), None if stored.ignore is None else len(values),
                       stored.source)
