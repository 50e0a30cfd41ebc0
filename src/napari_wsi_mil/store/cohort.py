"""The cohort table: which slides there are, their labels, cases and splits.

A cohort is a CSV file the user writes, one slide per row::

    slide_id,label,path,case_id,split
    A-01,tumor,slides/A-01.svs,A,train
    A-02,tumor,slides/A-02.svs,A,train
    B-01,normal,slides/B-01.svs,B,test

``slide_id`` and ``label`` are required; ``path``, ``case_id`` and ``split``
are optional columns, and an empty cell takes the default. Column names are
case-insensitive, other columns are ignored, cells are stripped of whitespace,
a UTF-8 byte-order mark is tolerated and ``;`` or tab separators are accepted
when the header has no comma.

- ``label``: the slide's class. A binary table uses ``0``/``normal``/``negative`` and
  ``1``/``tumor``/``tumour``/``positive`` (case-insensitive; ``0.0``/``1.0`` too); its
  classes are :data:`BINARY_CLASSES`. Any other labels are class names (two or more,
  e.g. ``normal``, ``luad``, ``lusc``; case-sensitive), ordered by ``classes`` when
  given, else the *negative class* first (a label named ``normal``, ``negative``,
  ``benign`` or ``0``, any case, else the alphabetically first) and the rest in
  alphabetical order. Labels that are all whole numbers name classes by their codes
  (``0``, ``1``, ``2``, ...; ``0`` is the negative class); a table mixing ``0``/``1``
  with words is binary. Class 0 is the negative class: WeakSupCon's negative bags,
  WENO's and MS-CLAM's normal slides, and a slide without tumour tiles.
- ``path``: the slide file; a relative path is relative to the CSV's folder.
- ``case_id``: slides sharing a case form one bag; default: the slide id. All
  slides of a case must have the same label and the same split.
- ``split``: ``train`` (default), ``val`` or ``test``; ``training``,
  ``validation``, ``valid`` and ``testing`` are read as those.

Slide and case ids become file names in the project store, so they must match
:data:`napari_wsi_mil.names.SAFE_NAME` (letters, digits, ``.``, ``_``, ``-``;
starting with a letter or digit; no ``..``; no spaces or slashes), the store's rule.

:func:`read_cohort` checks everything and raises one
:class:`~napari_wsi_mil.errors.CohortError` listing every problem with its CSV
line number, so a user fixes the table in one go.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from napari_wsi_mil.errors import CohortError
from napari_wsi_mil.jobs import atomic_file
from napari_wsi_mil.names import name_problem
from napari_wsi_mil.slide.slide import SLIDE_EXTENSIONS

__all__ = [
    "BINARY_CLASSES",
    "COLUMNS",
    "SPLITS",
    "Cohort",
    "CohortEntry",
    "parse_label",
    "parse_split",
    "read_cohort",
    "write_cohort",
]

#: Columns of a cohort table, required ones first.
COLUMNS = ("slide_id", "label", "path", "case_id", "split")
REQUIRED_COLUMNS = ("slide_id", "label")
#: Split names, in the order they are used.
SPLITS = ("train", "val", "test")
#: Slide and case ids must match this (and must not contain "..").

_LABELS = {
    "0": 0,
    "0.0": 0,
    "normal": 0,
    "negative": 0,
    "1": 1,
    "1.0": 1,
    "tumor": 1,
    "tumour": 1,
    "positive": 1,
}
#: The classes of a binary cohort (labels 0/1): index 0 is the negative class.
BINARY_CLASSES = ("normal", "tumor")
#: Labels (lower case) taken for the negative class when no class order is given.
NEGATIVE_NAMES = ("normal", "negative", "benign", "0")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_EXTRA_SLIDE_EXTENSIONS = (".ome.tif", ".ome.tiff")


def parse_label(text: str) -> int:
    """0 or 1 from a label cell; raises ``ValueError`` for anything else."""
    key = str(text).strip().lower()
    if key not in _LABELS:
        raise ValueError(f"unknown label {text!r}: use 0/1, normal/tumor or negative/positive")
    return _LABELS[key]


def cohort_classes(cells: Iterable[str], classes: Iterable[str] | None = None) -> tuple[str, ...]:
    """The class names of a table whose label cells are ``cells`` (see the module doc).

    Raises ``ValueError`` when ``classes`` repeats a name or holds an empty one.
    """
    if classes is not None:
        classes = tuple(str(c).strip() for c in classes)
        if not classes or not all(classes):
            raise ValueError("the class list is empty or holds an empty name")
        if len(set(classes)) < len(classes):
            raise ValueError(f"the class list {', '.join(classes)} repeats a name")
        return classes
    names = sorted({str(c).strip() for c in cells if str(c).strip()})
    if all(name.isdigit() for name in names) and len(names) > 2:
        return tuple(str(k) for k in sorted(int(n) for n in names))  # class codes 0, 1, 2, ...
    if any(name in ("0", "1") for name in names) or all(n.lower() in _LABELS for n in names):
        return BINARY_CLASSES
    negatives = [n for n in names if n.lower() in NEGATIVE_NAMES] or names
    return (negatives[0], *(n for n in names if n != negatives[0]))


def look_alike_labels(classes: tuple[str, ...]) -> dict[str, str]:
    """Class names that look like a misspelling of another label: ``{name: the label
    it resembles}`` (a binary label such as ``tumr`` for ``tumor``, or a name differing
    from another class only in case)."""
    import difflib

    known = {*_LABELS, *(c.lower() for c in classes)} - {"0.0", "1.0"}
    found = {}
    for name in classes:
        lower = name.lower()
        if lower in _LABELS:
            continue
        twins = [c for c in classes if c != name and c.lower() == lower]
        close = twins or difflib.get_close_matches(lower, sorted(known - {lower}), 1, 0.8)
        if close:
            found[name] = close[0]
    return found


def class_index(text: str, classes: tuple[str, ...]) -> int:
    """The index of a label cell in ``classes``; with two classes the binary labels
    (``0``/``normal``/..., ``1``/``tumor``/...) index them too. Raises ``ValueError``."""
    name = str(text).strip()
    if name in classes:
        return classes.index(name)
    if len(classes) == 2 and name.lower() in _LABELS:
        return _LABELS[name.lower()]
    if classes == BINARY_CLASSES:
        raise ValueError(f"unknown label {text!r}: use 0/1, normal/tumor or negative/positive")
    raise ValueError(f"unknown label {text!r}: the classes are {', '.join(classes)}")


def parse_split(text: str) -> str:
    """``train``, ``val`` or ``test`` from a split cell (empty means ``train``)."""
    key = str(text).strip().lower() or "train"
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"unknown split {text!r}: use train, val or test")
    return _SPLIT_ALIASES[key]


@dataclass(frozen=True)
class CohortEntry:
    """One slide of a cohort. ``case_id`` defaults to ``slide_id``."""

    slide_id: str
    label: int
    path: Path | None = None
    case_id: str = ""
    split: str = "train"

    def __post_init__(self) -> None:
        if not self.case_id:
            object.__setattr__(self, "case_id", self.slide_id)
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        problems = [name_problem(self.slide_id, "slide id")]
        if self.case_id != self.slide_id:
            problems.append(name_problem(self.case_id, "case id"))
        problems = [p for p in problems if p]
        if not isinstance(self.label, int) or isinstance(self.label, bool) or self.label < 0:
            problems.append(f"label must be a class index (0, 1, ...), got {self.label!r}")
        if self.split not in SPLITS:
            problems.append(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if problems:
            raise CohortError(f"slide {self.slide_id!r}: " + "; ".join(problems))


@dataclass
class Cohort:
    """The slides of a study, in table order.

    Constructing one checks what concerns several entries (unique slide ids,
    one label and one split per case, labels indexing ``classes``) and raises
    :class:`CohortError`. ``classes[label]`` names a slide's class; ``classes[0]`` is
    the negative class.
    """

    entries: list[CohortEntry]
    source: Path | None = field(default=None, compare=False)
    classes: tuple[str, ...] = BINARY_CLASSES

    def __post_init__(self) -> None:
        self.entries = list(self.entries)
        self.classes = tuple(self.classes)
        problems = _cross_entry_problems(self.entries, [None] * len(self.entries))
        problems += [
            (
                None,
                f"slide {e.slide_id!r}: label {e.label} is not a class index below "
                f"{len(self.classes)}",
            )
            for e in self.entries
            if e.label >= len(self.classes)
        ]
        if problems:
            raise CohortError(_message(self.source or "cohort", problems))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[CohortEntry]:
        return iter(self.entries)

    @property
    def slide_ids(self) -> list[str]:
        """Slide ids in table order."""
        return [e.slide_id for e in self.entries]

    def by_split(self, split: str) -> list[CohortEntry]:
        """Entries of one split (``train``, ``val`` or ``test``; aliases accepted)."""
        name = parse_split(split)
        return [e for e in self.entries if e.split == name]

    def cases(self) -> dict[str, list[CohortEntry]]:
        """Entries grouped by case id, cases in order of first appearance."""
        grouped: dict[str, list[CohortEntry]] = {}
        for entry in self.entries:
            grouped.setdefault(entry.case_id, []).append(entry)
        return grouped

    @property
    def is_binary(self) -> bool:
        """Two classes (negative and positive)."""
        return len(self.classes) == 2

    def class_name(self, label: int) -> str:
        """The name of class ``label``."""
        return self.classes[label]

    def labels(self) -> dict[str, int]:
        """Slide id -> label."""
        return {e.slide_id: e.label for e in self.entries}

    def case_labels(self) -> dict[str, int]:
        """Case id -> label (all slides of a case share it)."""
        return {case: members[0].label for case, members in self.cases().items()}

    def missing_paths(self) -> list[CohortEntry]:
        """Entries without a path or whose path does not exist."""
        return [e for e in self.entries if e.path is None or not e.path.exists()]


def read_cohort(
    path: str | os.PathLike,
    *,
    require_paths: bool = False,
    slide_dir: str | os.PathLike | None = None,
    classes: Iterable[str] | None = None,
) -> Cohort:
    """Read and check a cohort CSV.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file.
    require_paths : bool
        Every slide must have a path (from the ``path`` column or found in
        ``slide_dir``) that exists. Without it paths are resolved but not
        checked, so a table can be used where only extracted features are
        (see :meth:`Cohort.missing_paths`).
    slide_dir : str or os.PathLike, optional
        For rows without a path, look for ``<slide_dir>/<slide_id><ext>`` with a
        known slide extension (``.svs``, ``.tiff``, ``.ome.tiff``, ...); more
        than one match is a problem.
    classes : iterable of str, optional
        The class names in order, the negative class first (``wsi-mil train --classes``;
        a trained model's classes when its predictions are evaluated). Default: from
        the labels (see the module doc).

    Returns
    -------
    Cohort

    Raises
    ------
    CohortError
        Listing every problem found, one line each with its CSV line number;
        the error's ``problems`` attribute holds the lines.
    """
    csv_path = Path(path)
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise CohortError(f"{csv_path}: no such file") from None
    except UnicodeDecodeError:
        raise CohortError(f"{csv_path}: not UTF-8 text; save the table as 'CSV UTF-8'") from None
    except OSError as exc:
        raise CohortError(f"{csv_path}: cannot read: {exc.strerror or exc}") from None

    rows, problems = _read_rows(text)
    if rows is None:
        _raise(csv_path, problems)
    folder = csv_path.parent
    slide_root = Path(slide_dir) if slide_dir is not None else None
    has_path_column = any("path" in row for _, row in rows)
    try:
        class_names = cohort_classes((row.get("label", "") for _, row in rows), classes)
    except ValueError as exc:
        raise CohortError(f"{csv_path}: {exc}") from None
    suspects = look_alike_labels(class_names) if classes is None else {}

    entries: list[CohortEntry] = []
    lines: list[int] = []
    id_lines: dict[str, int] = {}
    for line, row in rows:
        row_problems: list[str] = []
        slide_id = row.get("slide_id", "")
        if problem := name_problem(slide_id, "slide id"):
            row_problems.append(problem)
        elif slide_id in id_lines:  # found here too when the first row has problems
            problems.append((line, f"duplicate slide id {slide_id!r}{_also(id_lines[slide_id])}"))
            continue
        id_lines.setdefault(slide_id, line)
        case_id = row.get("case_id", "") or slide_id
        if row.get("case_id") and (problem := name_problem(case_id, "case id")):
            row_problems.append(problem)
        label = split = None
        try:
            if not row.get("label"):
                raise ValueError("empty label")
            if row["label"] in suspects:
                raise ValueError(
                    f"label {row['label']!r} looks like a misspelt {suspects.pop(row['label'])!r}; "
                    "fix it, or give the class list (--classes) if it is a class of its own"
                )
            label = class_index(row["label"], class_names)
        except ValueError as exc:
            row_problems.append(str(exc))
        try:
            split = parse_split(row.get("split", ""))
        except ValueError as exc:
            row_problems.append(str(exc))
        slide_path, problem = _slide_path(row.get("path", ""), folder, slide_id, slide_root)
        if problem is None and require_paths:
            if slide_path is None:
                where = "no path" if has_path_column else "no path column"
                problem = f"{where} for slide {slide_id!r}" + (
                    f" and no file for it in {slide_root}" if slide_root else ""
                )
            elif not slide_path.exists():
                problem = f"slide file {slide_path} does not exist"
        if problem:
            row_problems.append(problem)
        problems.extend((line, p) for p in row_problems)
        if not row_problems:
            entries.append(CohortEntry(slide_id, label, slide_path, case_id, split))
            lines.append(line)

    problems.extend(_cross_entry_problems(entries, lines))
    if problems:
        path_problem = any(p.startswith(("no path", "slide file ")) for _, p in problems)
        hint = PATH_HINT if path_problem and slide_root is None else ""
        _raise(csv_path, problems, hint)
    return Cohort(entries, source=csv_path, classes=class_names)


def write_cohort(cohort: Cohort | Iterable[CohortEntry], path: str | os.PathLike) -> Path:
    """Write a cohort CSV (atomically) that :func:`read_cohort` reads back equal (given
    the same ``classes`` when they are not in the default order).

    Binary cohorts' labels are written as 0/1, the others' as class names. Paths inside
    the CSV's folder are written relative to it, others absolute. Returns the path
    written.
    """
    if not isinstance(cohort, Cohort):
        cohort = Cohort(list(cohort))
    csv_path = Path(path)
    folder = csv_path.parent.resolve()
    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for e in cohort:
            cell = ""
            if e.path is not None:
                absolute = e.path if e.path.is_absolute() else Path.cwd() / e.path
                absolute = Path(os.path.normpath(absolute))
                try:
                    cell = absolute.relative_to(folder).as_posix()
                except ValueError:
                    cell = str(absolute)
            label = e.label if cohort.classes == BINARY_CLASSES else cohort.classes[e.label]
            writer.writerow([e.slide_id, label, cell, e.case_id, e.split])
    return csv_path


def _read_rows(text: str) -> tuple[list[tuple[int, dict[str, str]]] | None, list]:
    """(line, {column: stripped cell}) per data row, or None and the fatal problems."""
    if not text.strip():
        return None, [(None, "the file is empty")]
    first = next(line for line in text.splitlines() if line.strip())
    delimiter = ","
    if "," not in first:
        delimiter = ";" if ";" in first else "\t" if "\t" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)

    header: list[str] | None = None
    header_line = 0
    header_problems = False
    rows: list[tuple[int, dict[str, str]]] = []
    problems: list[tuple[int | None, str]] = []
    previous = 0
    for cells in reader:
        line, previous = previous + 1, reader.line_num
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue
        if header is None:
            header, header_line = [c.lower() for c in cells], line
            for name in sorted({c for c in header if c and header.count(c) > 1}):
                problems.append((line, f"column {name!r} appears more than once"))
            for name in REQUIRED_COLUMNS:
                if name not in header:
                    problems.append((line, f"missing required column {name!r}"))
            header_problems = bool(problems)
            continue
        extra = cells[len(header) :]
        if any(extra):
            problems.append(
                (line, f"{len(header) + len(extra)} values but the header has {len(header)}")
            )
        rows.append((line, {name: cell for name, cell in zip(header, cells, strict=False) if name}))
    if problems and header_problems:  # columns wrong: row-by-row checks would only add noise
        return None, problems
    if not rows:
        problems.append((header_line, "no slides: the table has a header but no rows"))
        return None, problems
    return rows, problems


def _slide_path(
    cell: str, folder: Path, slide_id: str, slide_dir: Path | None
) -> tuple[Path | None, str | None]:
    if cell:
        path = Path(cell).expanduser()
        return (path if path.is_absolute() else folder / path), None
    if slide_dir is None or name_problem(slide_id, "slide id"):
        return None, None

    extensions = {e.lower() for e in (*SLIDE_EXTENSIONS, *_EXTRA_SLIDE_EXTENSIONS)}
    try:
        names = sorted(p.name for p in slide_dir.iterdir())
    except OSError:
        return None, f"slide folder {slide_dir} cannot be read"
    matches = [
        n
        for n in names
        if n.startswith(slide_id + ".") and n[len(slide_id) :].lower() in extensions
    ]
    if len(matches) > 1:
        return None, f"several files in {slide_dir} match slide {slide_id!r}: {', '.join(matches)}"
    return (slide_dir / matches[0] if matches else None), None


def _cross_entry_problems(
    entries: list[CohortEntry], lines: list[int | None]
) -> list[tuple[int | None, str]]:
    problems: list[tuple[int | None, str]] = []
    seen_ids: dict[str, int | None] = {}
    seen_paths: dict[Path, tuple[str, int | None]] = {}
    case_first: dict[str, tuple[CohortEntry, int | None]] = {}
    for entry, line in zip(entries, lines, strict=True):
        if entry.slide_id in seen_ids:
            problems.append(
                (line, f"duplicate slide id {entry.slide_id!r}{_also(seen_ids[entry.slide_id])}")
            )
            continue
        seen_ids[entry.slide_id] = line
        if entry.path is not None:
            key = Path(os.path.normpath(entry.path))
            if key in seen_paths:
                other, other_line = seen_paths[key]
                problems.append(
                    (line, f"path {entry.path} is also slide {other!r}{_also(other_line)}")
                )
            else:
                seen_paths[key] = (entry.slide_id, line)
        first, first_line = case_first.setdefault(entry.case_id, (entry, line))
        if entry.label != first.label:
            problems.append(
                (
                    line,
                    f"case {entry.case_id!r} has label {entry.label} here but "
                    f"{first.label} for slide {first.slide_id!r}{_also(first_line)}",
                )
            )
        if entry.split != first.split:
            problems.append(
                (
                    line,
                    f"case {entry.case_id!r} is in split {entry.split!r} here but in "
                    f"{first.split!r} for slide {first.slide_id!r}{_also(first_line)}",
                )
            )
    return problems


def _also(line: int | None) -> str:
    return f" (line {line})" if line is not None else ""


def _problem_lines(problems: list[tuple[int | None, str]]) -> list[str]:
    return [f"line {line}: {text}" if line is not None else text for line, text in problems]


#: A cohort error lists at most this many problems (then says how many more there are).
MAX_LISTED_PROBLEMS = 20


#: Said once when slide files were not found and no slide folder was given.
PATH_HINT = (
    "relative paths are read from the CSV's folder; or give the slides' folder "
    "(--slide-dir in wsi-mil) to find <slide_id>.svs, .tiff, ... there"
)


def _message(
    source: str | os.PathLike, problems: list[tuple[int | None, str]], hint: str = ""
) -> str:
    lines = _problem_lines(problems)
    if len(lines) == 1:
        return f"{os.fspath(source)}: {lines[0]}" + (f"; {hint}" if hint else "")
    listed = lines[:MAX_LISTED_PROBLEMS]
    if len(lines) > len(listed):
        listed.append(f"... and {len(lines) - len(listed)} more")
    head = f"{os.fspath(source)}: {len(lines)} problems"
    return "\n  ".join([head, *listed, *([hint] if hint else [])])


def _raise(source: Path, problems: list[tuple[int | None, str]], hint: str = "") -> None:
    problems = sorted(problems, key=lambda problem: problem[0] or 0)  # stable: by line
    error = CohortError(_message(source, problems, hint))
    error.problems = _problem_lines(problems)  # type: ignore[attr-defined]
    raise error
