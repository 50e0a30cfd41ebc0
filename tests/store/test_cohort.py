"""The cohort table: reading, checking and writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_wsi_mil.errors import CohortError
from napari_wsi_mil.store.cohort import (
    BINARY_CLASSES,
    PATH_HINT,
    Cohort,
    CohortEntry,
    parse_label,
    parse_split,
    read_cohort,
    write_cohort,
)


def _write(folder: Path, text: str, name: str = "cohort.csv", encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def _problems(path: Path, **kwargs) -> list[str]:
    with pytest.raises(CohortError) as info:
        read_cohort(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path))
    count = len(info.value.problems)
    hint = count > 1 and PATH_HINT in message  # the last line
    lines = 1 if count == 1 else min(count, 20) + 1 + (count > 20) + hint
    assert len(message.splitlines()) == lines
    return info.value.problems


@pytest.fixture
def slides(tmp_path: Path) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a1.svs", "a2.svs", "b1.svs", "c1.tiff"):
        (folder / name).write_bytes(b"")
    return folder


def test_valid_file_with_every_column(tmp_path, slides):
    csv_path = _write(
        tmp_path,
        "slide_id,label,path,case_id,split\n"
        "a1,tumor,slides/a1.svs,A,train\n"
        "a2,1,slides/a2.svs,A,train\n"
        f"b1,normal,{slides / 'b1.svs'},B,val\n"
        "c1,0,slides/c1.tiff,,test\n",
    )
    cohort = read_cohort(csv_path, require_paths=True)
    assert len(cohort) == 4
    assert cohort.slide_ids == ["a1", "a2", "b1", "c1"]
    assert [e.path for e in cohort] == [
        slides / n for n in ("a1.svs", "a2.svs", "b1.svs", "c1.tiff")
    ]
    assert cohort.labels() == {"a1": 1, "a2": 1, "b1": 0, "c1": 0}
    assert {k: [e.slide_id for e in v] for k, v in cohort.cases().items()} == {
        "A": ["a1", "a2"],
        "B": ["b1"],
        "c1": ["c1"],
    }
    assert cohort.case_labels() == {"A": 1, "B": 0, "c1": 0}
    assert [e.slide_id for e in cohort.by_split("train")] == ["a1", "a2"]
    assert [e.slide_id for e in cohort.by_split("validation")] == ["b1"]
    assert [e.slide_id for e in cohort.by_split("test")] == ["c1"]
    assert cohort.missing_paths() == []
    assert cohort.source == csv_path
    first = next(iter(cohort))
    assert first == CohortEntry("a1", 1, slides / "a1.svs", "A", "train")
    with pytest.raises(AttributeError):
        first.label = 0  # frozen


def test_defaults_for_optional_columns(tmp_path):
    cohort = read_cohort(_write(tmp_path, "slide_id,label\ns1,0\ns2,1\n"))
    entry = cohort.entries[0]
    assert (entry.path, entry.case_id, entry.split) == (None, "s1", "train")
    assert [e.slide_id for e in cohort.missing_paths()] == ["s1", "s2"]


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("0", 0),
        ("1", 1),
        ("1.0", 1),
        ("normal", 0),
        ("Normal", 0),
        (" NEGATIVE ", 0),
        ("tumor", 1),
        ("Tumour", 1),
        ("TUMOR", 1),
        ("positive", 1),
    ],
)
def test_label_spellings(text, label):
    assert parse_label(text) == label


@pytest.mark.parametrize("text", ["2", "-1", "yes", "", "tumors", "benign"])
def test_unknown_labels_are_rejected(text):
    with pytest.raises(ValueError):
        parse_label(text)


def test_split_spellings():
    assert parse_split("") == "train"
    assert parse_split(" Validation ") == "val"
    assert parse_split("TEST") == "test"
    with pytest.raises(ValueError):
        parse_split("holdout")


def test_bom_whitespace_case_and_blank_lines_are_tolerated(tmp_path):
    csv_path = _write(
        tmp_path,
        "\ufeff Slide_ID , Label ,Notes\r\n s1 , Tumor ,first \r\n\r\ns2,normal , \r\n,,\r\n",
    )
    cohort = read_cohort(csv_path)
    assert cohort.labels() == {"s1": 1, "s2": 0}


def test_semicolon_separated_file(tmp_path):
    cohort = read_cohort(_write(tmp_path, "slide_id;label;split\ns1;1;test\n"))
    assert cohort.entries[0].split == "test"


def test_trailing_empty_cells_are_tolerated(tmp_path):
    assert len(read_cohort(_write(tmp_path, "slide_id,label\ns1,1,,\n"))) == 1


def test_missing_required_columns(tmp_path):
    problems = _problems(_write(tmp_path, "id,path\ns1,x.svs\n"))
    assert problems == [
        "line 1: missing required column 'slide_id'",
        "line 1: missing required column 'label'",
    ]


def test_duplicate_columns(tmp_path):
    problems = _problems(_write(tmp_path, "slide_id,label,label\ns1,1,0\n"))
    assert problems == ["line 1: column 'label' appears more than once"]


@pytest.mark.parametrize("text", ["", "\n\n  \n", "\ufeff"])
def test_empty_file(tmp_path, text):
    assert _problems(_write(tmp_path, text)) == ["the file is empty"]


def test_header_only(tmp_path):
    problems = _problems(_write(tmp_path, "slide_id,label\n"))
    assert problems == ["line 1: no slides: the table has a header but no rows"]


def test_duplicate_slide_ids(tmp_path):
    problems = _problems(_write(tmp_path, "slide_id,label\ns1,1\ns2,0\ns1,1\n"))
    assert problems == ["line 4: duplicate slide id 's1' (line 2)"]


def test_unknown_label_and_empty_label(tmp_path):
    path = _write(tmp_path, "slide_id,label\ns1,maybe\ns2,\ns3,1\n")
    with pytest.raises(CohortError) as info:
        read_cohort(path, classes=BINARY_CLASSES)
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("line 2: unknown label 'maybe': use 0/1, normal/tumor")
    assert problems[1] == "line 3: empty label"


def test_a_misspelt_binary_label_is_not_a_new_class(tmp_path):
    problems = _problems(
        _write(tmp_path, "slide_id,label\ns1,tumor\ns2,normal\ns3,tumr\ns4,tumr\n")
    )
    assert len(problems) == 1
    assert problems[0].startswith("line 4: label 'tumr' looks like a misspelt 'tumor'")
    twins = _problems(_write(tmp_path, "slide_id,label\ns1,LUAD\ns2,luad\ns3,normal\n"))
    assert twins and all("looks like a misspelt" in p for p in twins)


def test_conflicting_labels_within_a_case(tmp_path):
    problems = _problems(_write(tmp_path, "slide_id,label,case_id\na1,1,A\na2,0,A\nb1,0,B\n"))
    assert problems == ["line 3: case 'A' has label 0 here but 1 for slide 'a1' (line 2)"]


def test_case_in_two_splits(tmp_path):
    problems = _problems(
        _write(tmp_path, "slide_id,label,case_id,split\na1,1,A,train\na2,1,A,test\n")
    )
    assert problems == [
        "line 3: case 'A' is in split 'test' here but in 'train' for slide 'a1' (line 2)"
    ]


def test_unknown_split(tmp_path):
    problems = _problems(_write(tmp_path, "slide_id,label,split\ns1,1,holdout\n"))
    assert problems == ["line 2: unknown split 'holdout': use train, val or test"]


def test_paths_are_checked_only_when_required(tmp_path):
    csv_path = _write(tmp_path, "slide_id,label,path\ns1,1,missing.svs\ns2,0,\n")
    cohort = read_cohort(csv_path)
    assert cohort.entries[0].path == tmp_path / "missing.svs"
    assert len(cohort.missing_paths()) == 2
    problems = _problems(csv_path, require_paths=True)
    assert problems == [
        f"line 2: slide file {tmp_path / 'missing.svs'} does not exist",
        "line 3: no path for slide 's2'",
    ]
    with pytest.raises(CohortError, match="--slide-dir"):
        read_cohort(csv_path, require_paths=True)
    with pytest.raises(CohortError) as info:
        read_cohort(csv_path, require_paths=True, slide_dir=tmp_path)
    assert "--slide-dir" not in str(info.value)  # a slide folder was given


def test_require_paths_without_path_column(tmp_path):
    problems = _problems(_write(tmp_path, "slide_id,label\ns1,1\n"), require_paths=True)
    assert problems == ["line 2: no path column for slide 's1'"]


def test_slide_dir_lookup(tmp_path, slides):
    (slides / "a1.geojson").write_text("{}")  # sidecar files are not slides
    (slides / "d1.ome.tiff").write_bytes(b"")
    csv_path = _write(tmp_path, "slide_id,label,path\na1,1,\nd1,0,\nb1,0,slides/c1.tiff\n")
    cohort = read_cohort(csv_path, slide_dir=slides, require_paths=True)
    assert [e.path for e in cohort] == [
        slides / "a1.svs",
        slides / "d1.ome.tiff",
        slides / "c1.tiff",
    ]


def test_slide_dir_ambiguous_and_not_found(tmp_path, slides):
    (slides / "a1.ndpi").write_bytes(b"")
    csv_path = _write(tmp_path, "slide_id,label\na1,1\nzz,0\n")
    problems = _problems(csv_path, slide_dir=slides)
    assert problems == [f"line 2: several files in {slides} match slide 'a1': a1.ndpi, a1.svs"]
    problems = _problems(csv_path, slide_dir=slides, require_paths=True)
    assert problems[1] == f"line 3: no path column for slide 'zz' and no file for it in {slides}"


def test_same_path_for_two_slides(tmp_path):
    problems = _problems(_write(tmp_path, "slide_id,label,path\ns1,1,x.svs\ns2,1,./x.svs\n"))
    assert problems == [f"line 3: path {tmp_path / 'x.svs'} is also slide 's1' (line 2)"]


@pytest.mark.parametrize(
    "slide_id",
    ["a/b", "a\\b", ".hidden", "..", "a..b", "with space", "-dash", "naïve", "a:b"],
)
def test_unsafe_slide_ids(tmp_path, slide_id):
    problems = _problems(_write(tmp_path, f'slide_id,label\n"{slide_id}",1\n'))
    assert len(problems) == 1
    assert problems[0].startswith(f"line 2: slide id {slide_id!r} is not usable as a file name")


def test_empty_slide_id_and_unsafe_case_id(tmp_path):
    problems = _problems(_write(tmp_path, "slide_id,label,case_id\n,1,\ns2,1,../up\n"))
    assert problems == [
        "line 2: empty slide id",
        "line 3: case id '../up' is not usable as a file name: use letters, digits, "
        "'.', '_' and '-', starting with a letter or digit",
    ]


def test_every_problem_is_reported_at_once(tmp_path):
    csv_path = _write(
        tmp_path,
        "slide_id,label,case_id,split\n"
        "a1,1,A,train\n"
        "a1,1,A,train\n"  # duplicate id
        "a2,0,A,train\n"  # label conflict in case A
        "b/1,1,B,train\n"  # unsafe id
        "c1,perhaps,C,train\n"  # unknown label
        "d1,1,D,later\n"  # unknown split
        "d2,1,D,test,extra\n",  # too many values
    )
    problems = _problems(csv_path)
    lines = [p.split(":")[0] for p in problems]
    assert lines == ["line 3", "line 4", "line 5", "line 6", "line 7", "line 8"]
    assert "duplicate slide id" in problems[0]
    assert "has label 0 here" in problems[1]
    assert "not usable as a file name" in problems[2]
    assert "unknown label" in problems[3]
    assert "unknown split" in problems[4]
    assert "5 values but the header has 4" in problems[5]


def test_unreadable_files(tmp_path):
    with pytest.raises(CohortError, match="no such file"):
        read_cohort(tmp_path / "nope.csv")
    latin = _write(tmp_path, "slide_id,label\nsé,1\n", encoding="latin-1")
    with pytest.raises(CohortError, match="not UTF-8"):
        read_cohort(latin)


def test_write_and_read_back(tmp_path, slides):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.svs"
    cohort = Cohort(
        [
            CohortEntry("a1", 1, slides / "a1.svs", "A", "train"),
            CohortEntry("a2", 1, slides / "a2.svs", "A", "train"),
            CohortEntry("b1", 0, None, "B", "val"),
            CohortEntry("c1", 0, outside, split="test"),
        ]
    )
    csv_path = write_cohort(cohort, tmp_path / "out.csv")
    text = csv_path.read_text()
    assert text.splitlines()[:2] == [
        "slide_id,label,path,case_id,split",
        "a1,1,slides/a1.svs,A,train",
    ]
    assert str(outside) in text
    again = read_cohort(csv_path)
    assert again == cohort
    assert not list(tmp_path.glob(".tmp-*"))


def test_cohort_constructor_checks_entries():
    with pytest.raises(CohortError, match="duplicate slide id 'a'"):
        Cohort([CohortEntry("a", 1), CohortEntry("a", 1)])
    with pytest.raises(CohortError, match="has label 0 here"):
        Cohort([CohortEntry("a", 1, case_id="X"), CohortEntry("b", 0, case_id="X")])
    with pytest.raises(CohortError, match="label must be a class index"):
        CohortEntry("a", -1)
    with pytest.raises(CohortError, match="label 2 is not a class index below 2"):
        Cohort([CohortEntry("a", 2)])
    assert Cohort([CohortEntry("a", 2)], classes=("n", "x", "y")).class_name(2) == "y"
    with pytest.raises(CohortError, match="split must be one of"):
        CohortEntry("a", 1, split="validation")
    with pytest.raises(CohortError, match="not usable as a file name"):
        CohortEntry("../a", 1)
    with pytest.raises(ValueError):
        Cohort([CohortEntry("a", 1)]).by_split("holdout")


def test_duplicate_of_a_row_with_problems_is_reported(tmp_path):
    problems = _problems(_write(tmp_path, "slide_id,label\ns1,maybe\ns1,1\n"))
    assert problems[1] == "line 3: duplicate slide id 's1' (line 2)"


def test_a_long_slide_id_is_refused_in_one_line(tmp_path):
    problems = _problems(_write(tmp_path, f"slide_id,label\n{'a' * 250},1\n"))
    assert problems == [
        "line 2: slide id 'aaaaaaaaaaaaaaaaaaaa'... is 250 characters long (at most 128)"
    ]


def test_ten_thousand_problems_are_summarised_after_twenty(tmp_path):
    slide = tmp_path / "one.svs"
    slide.write_bytes(b"x")
    rows = "".join(f"s{i},1,one.svs\n" for i in range(10_000))
    path = _write(tmp_path, "slide_id,label,path\n" + rows)
    with pytest.raises(CohortError) as info:
        read_cohort(path)
    lines = str(info.value).splitlines()
    assert len(info.value.problems) == 9_999 and len(lines) == 22
    assert lines[0].endswith("9999 problems") and lines[-1].strip() == "... and 9979 more"
